"""BERT-enhanced xDeepFM on deepctr-torch blocks: the source paper's ranking model (section II.C, Fig. 2) over
xDeepFM, Lian et al. KDD 2018 (both in docs/references.md).

    logit(x) = b + linear(x) + w_cin^T p^+ + w_dnn^T DNN(e)

- linear(x): deepctr ``Linear``: a 1-d weight per categorical value (mean over multi-valued
  tokens) plus a weight vector on every dense input (numeric values, text and vector fields).
- fields e = [e_1; ...; e_m] in R^{m x D}: an embedding per categorical field, the masked mean
  of the token embeddings per multi-valued field, and for every text/vector field v in R^d a
  learned projection ``W v + c`` in R^{kD} reshaped into k fields (``fields_per_vector``), so
  the CIN crosses text semantics with the id fields.
- CIN (Lian et al. eq. 6): X^k_{h,*} = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_{i,*} o X^0_{j,*}),
  sum-pooled over the embedding dimension into p^+ (deepctr ``CIN``).
- DNN: deepctr ``DNN`` on [flatten(e); numeric values].
- sequence fields (behaviour histories; DIN, Zhou et al. KDD 2018, docs/references.md): every item i
  is represented by r(i) = [e_id(i); c_1(i); ...; c_C(i)] in R^{(1+C)D}: its id embedding (the
  target field's table) and one D-vector per content field (a categorical field's embedding, the
  masked mean of a multi-valued field's token embeddings -- the same tables as those fields -- and
  ``W_c v + b_c`` for a text / vector field). A history item's content comes from the pipeline's
  content table, the candidate's t = r(candidate) from the row's own fields. deepctr's
  ``AttentionSequencePoolingLayer`` gives the interest u = sum_j a_j r(h_j) with
  a_j = MLP([t, h_j, t - h_j, t * h_j]) (the local activation unit), padding (code 0) masked to
  a_j = 0. Without softmax (``attention_softmax: false``, DIN's choice) the weights keep the
  intensity of the interest and an empty history gives u = 0 exactly; with softmax an empty history
  is set to u = 0 too. u enters the CIN and the DNN as 1 + C fields of width D.

The model consumes the flat float matrix deepctr uses (``stack_inputs``), whose column slices
are given by ``build_input_features(feature_columns)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mmcore.config import ConfigError, check_range
from xdeepfm._deepctr import (
    CIN,
    DNN,
    AttentionSequencePoolingLayer,
    DenseFeat,
    Linear,
    SparseFeat,
    VarLenSparseFeat,
    build_input_features,
    create_embedding_matrix,
    get_varlen_pooling_list,
    varlen_embedding_lookup,
)
from xdeepfm.features import FittedField

VECTOR_KINDS = ("text", "vector")


@dataclass
class RankerConfig:
    """Sizes and regularisation of the ranking model."""

    implementation: str = "ours"  # "ours" (this module) or "deepctr" (stock xDeepFM, xdeepfm.baseline)
    embedding_dim: int = 16
    fields_per_vector: int = 1
    cin_layer_sizes: list[int] = field(default_factory=lambda: [128, 128])
    cin_split_half: bool = True
    cin_activation: str = "relu"
    dnn_hidden_units: list[int] = field(default_factory=lambda: [256, 128])
    dnn_activation: str = "relu"
    dnn_dropout: float = 0.0
    dnn_use_bn: bool = False
    l2_linear: float = 1e-5
    l2_embedding: float = 1e-5
    l2_dnn: float = 0.0
    l2_cin: float = 0.0
    init_std: float = 1e-4
    # sequence fields (DIN target attention)
    attention_hidden_units: list[int] = field(default_factory=lambda: [64, 32])
    attention_activation: str = "sigmoid"  # sigmoid | relu | prelu | dice | linear (deepctr names)
    attention_softmax: bool = False  # DIN: no softmax (see the module docstring)

    def __post_init__(self) -> None:
        if self.implementation not in ("ours", "deepctr"):
            raise ValueError(f"implementation {self.implementation!r}: expected 'ours' or 'deepctr'")
        check_range("embedding_dim", self.embedding_dim, low=1)
        check_range("fields_per_vector", self.fields_per_vector, low=1)
        if not 0.0 <= self.dnn_dropout < 1.0:  # NaN too
            raise ValueError(f"dnn_dropout {self.dnn_dropout}: expected a value in [0, 1)")
        if not self.attention_hidden_units or any(size < 1 for size in self.attention_hidden_units):
            raise ConfigError(f"attention_hidden_units={list(self.attention_hidden_units)}: expected at least one "
                              "layer, every size >= 1")
        if self.attention_activation.lower() not in ("sigmoid", "relu", "prelu", "dice", "linear"):
            raise ConfigError(f"attention_activation {self.attention_activation!r}: expected sigmoid, relu, prelu, "
                              "dice or linear")
        for name in ("cin_layer_sizes", "dnn_hidden_units"):  # an empty list switches the CIN / DNN off
            sizes = getattr(self, name)
            if any(size < 1 for size in sizes):
                raise ConfigError(f"{name}={list(sizes)}: every layer size must be >= 1")
        for name in ("l2_linear", "l2_embedding", "l2_dnn", "l2_cin", "init_std"):
            check_range(name, getattr(self, name), low=0.0)
        if self.cin_split_half and any(s % 2 for s in self.cin_layer_sizes[:-1]):
            raise ValueError(f"cin_layer_sizes {self.cin_layer_sizes}: all but the last must be even with cin_split_half")


def feature_columns(fields: list[FittedField], embedding_dim: int, kinds: tuple[str, ...] | None = None) -> list:
    """deepctr feature columns for the fitted fields (optionally only those of ``kinds``)."""
    columns = []
    by_name = {fit.spec.name: fit for fit in fields}
    for fit in fields:
        spec = fit.spec
        if kinds is not None and spec.kind not in kinds:
            continue
        if spec.kind == "sequence":  # the codes of the target's vocabulary, its embedding table shared
            target = by_name[spec.target]
            columns.append(VarLenSparseFeat(SparseFeat(spec.name, target.vocabulary_size, embedding_dim,
                                                       embedding_name=spec.target), spec.max_len, "mean"))
        elif spec.kind == "categorical":
            columns.append(SparseFeat(spec.name, fit.vocabulary_size, embedding_dim))
        elif spec.kind == "multi_valued":
            columns.append(VarLenSparseFeat(SparseFeat(spec.name, fit.vocabulary_size, embedding_dim), spec.max_len, "mean"))
        elif spec.kind == "numeric":
            columns.append(DenseFeat(spec.name, 1))
        else:
            columns.append(DenseFeat(spec.name, fit.dim))
    return columns


def stack_inputs(encoded: dict[str, np.ndarray], columns: list) -> np.ndarray:
    """The flat float32 matrix (N, sum of column widths) in ``build_input_features`` order."""
    index = build_input_features(columns)
    n = len(next(iter(encoded.values())))
    matrix = np.empty((n, max(end for _, end in index.values())), np.float32)
    for name, (start, end) in index.items():
        matrix[:, start:end] = encoded[name].reshape(n, end - start)
    return matrix


def cin_output_size(layer_sizes: list[int], split_half: bool) -> int:
    """Length of the pooled CIN output p^+ (deepctr convention)."""
    if not layer_sizes:
        return 0
    return sum(layer_sizes[:-1]) // 2 + layer_sizes[-1] if split_half else sum(layer_sizes)


def masked_mean(embeddings: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean of ``embeddings`` (..., L, D) over the positions whose ``codes`` (..., L) are not 0 (padding)."""
    mask = (codes != 0).to(embeddings.dtype).unsqueeze(-1)
    return (embeddings * mask).sum(-2) / (mask.sum(-2) + 1e-8)


class SequenceInterest(nn.Module):
    """DIN target attention over one sequence field (see the module docstring): ``forward`` -> u (B, 1 + C, D).

    ``embedding_dict`` is the ranker's (the id and content tables are shared, not copied); the content
    tables of the fitted field are non-persistent buffers (they are saved with the pipeline).
    """

    def __init__(self, fit: FittedField, fields: dict[str, FittedField], config: RankerConfig) -> None:
        super().__init__()
        spec, E = fit.spec, config.embedding_dim
        self.name, self.target, self.content = spec.name, spec.target, list(spec.content)
        self.kinds = {c: fields[c].spec.kind for c in self.content}
        for c in self.content:
            self.register_buffer(f"table_{c}", torch.from_numpy(fit.content[c]), persistent=False)
        self.projections = nn.ModuleDict({c: nn.Linear(fields[c].dim, E) for c in self.content
                                          if self.kinds[c] in VECTOR_KINDS})
        self.width = (1 + len(self.content)) * E
        self.softmax = config.attention_softmax
        self.attention = AttentionSequencePoolingLayer(
            att_hidden_units=tuple(config.attention_hidden_units), att_activation=config.attention_activation,
            weight_normalization=config.attention_softmax, supports_masking=True, embedding_dim=self.width)

    def represent(self, embedding_dict: nn.ModuleDict, ids: torch.Tensor, content: dict[str, torch.Tensor]) -> torch.Tensor:
        """r = [e_id; c_1; ...; c_C] (..., (1 + C) D) for item codes ``ids`` (...) and their encoded content
        (``content[c]``: (..., width of c) as the pipeline encodes field c)."""
        parts = [embedding_dict[self.target](ids.long())]
        for c in self.content:
            value = content[c]
            if self.kinds[c] == "categorical":
                parts.append(embedding_dict[c](value.long()[..., 0]))
            elif self.kinds[c] == "multi_valued":
                parts.append(masked_mean(embedding_dict[c](value.long()), value))
            else:
                parts.append(self.projections[c](value.float()))
        return torch.cat(parts, dim=-1)

    def item_table(self, embedding_dict: nn.ModuleDict) -> torch.Tensor:
        """r(i) for every code i of the target vocabulary: (V, (1 + C) D)."""
        n = embedding_dict[self.target].num_embeddings
        ids = torch.arange(n, device=embedding_dict[self.target].weight.device)
        return self.represent(embedding_dict, ids, {c: getattr(self, f"table_{c}") for c in self.content})

    def forward(self, embedding_dict: nn.ModuleDict, codes: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """u (B, 1 + C, D) for history codes (B, L) (0 = padding) and the candidate's r (B, (1 + C) D).

        The same function as deepctr's ``AttentionSequencePoolingLayer(candidate, keys, mask)`` (its
        parameters, state-dict names and masking), computed without the (B, L, 4F) activation-unit
        input: the first layer W [t; h; t - h; t * h] + b (4F inputs at each of the B L positions) is
        split as t (W_t + W_d) + b (once per row) + r(i) (W_h - W_d) (once per vocabulary item, then
        gathered) + (t * h) W_p, as ``xdeepfm.inference.FastRanker`` does. Values
        and gradients equal the layer's to float rounding (tested); a training step of the ML-100K
        history config is 1.1-1.6x faster (``bench/history_probe.py RUN --timing 5``; the CIN, not the
        attention, is most of the step).
        """
        B, L = codes.shape
        table = self.item_table(embedding_dict)  # (V, F)
        flat = codes.long().reshape(-1)
        keys = table.index_select(0, flat).view(B, L, -1)  # (B, L, F)
        local = self.attention.local_att
        first = local.dnn.linears[0]
        w_t, w_h, w_diff, w_prod = first.weight.split(self.width, dim=1)  # (H1, F) each: t, h, t - h, t * h
        h = (nn.functional.linear(candidate, w_t + w_diff, first.bias).unsqueeze(1)  # (B, 1, H1)
             + (table @ (w_h - w_diff).T).index_select(0, flat).view(B, L, -1)  # (B, L, H1)
             + nn.functional.linear(candidate.unsqueeze(1) * keys, w_prod))
        for i, (fc, activation) in enumerate(zip(local.dnn.linears, local.dnn.activation_layers)):
            if i:
                h = fc(h)
            if local.dnn.use_bn:
                h = local.dnn.bn[i](h)
            h = local.dnn.dropout(activation(h))
        score = local.dense(h).squeeze(-1)  # (B, L)
        mask = codes != 0  # (B, L)
        if self.softmax:  # softmax over an all-padding row would average the padding: an empty history is 0
            score = torch.softmax(torch.where(mask, score, torch.full_like(score, -2 ** 32 + 1)), dim=-1)
            score = score * mask.any(1, keepdim=True).to(score.dtype)
        else:
            score = torch.where(mask, score, torch.zeros_like(score))
        u = torch.bmm(score.unsqueeze(1), keys)  # (B, 1, F)
        return u.view(B, 1 + len(self.content), -1)

    def reference_forward(self, embedding_dict: nn.ModuleDict, codes: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """``forward`` through deepctr's layer itself (the (B, L, 4F) input): the reference the tests compare with."""
        keys = self.item_table(embedding_dict)[codes.long()]  # (B, L, F)
        mask = codes != 0  # (B, L)
        u = self.attention(candidate.unsqueeze(1), keys, None, mask)  # (B, 1, F)
        if self.softmax:
            u = u * mask.any(1).to(u.dtype)[:, None, None]
        return u.view(len(codes), 1 + len(self.content), -1)


class XDeepFMRanker(nn.Module):
    """Linear + CIN + DNN over id, multi-valued, numeric and projected text/vector fields."""

    def __init__(self, fields: list[FittedField], config: RankerConfig, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.config = config
        E, k = config.embedding_dim, config.fields_per_vector
        self.columns = feature_columns(fields, E)
        self.feature_index = build_input_features(self.columns)
        self.sparse = [c for c in self.columns if isinstance(c, SparseFeat)]
        kind_of = {f.spec.name: f.spec.kind for f in fields}
        self.varlen = [c for c in self.columns if isinstance(c, VarLenSparseFeat) and kind_of[c.name] != "sequence"]
        self.sequences = [c for c in self.columns if isinstance(c, VarLenSparseFeat) and kind_of[c.name] == "sequence"]
        self.numeric = [c for c in self.columns if isinstance(c, DenseFeat) and kind_of[c.name] == "numeric"]
        self.vectors = [c for c in self.columns if isinstance(c, DenseFeat) and kind_of[c.name] in VECTOR_KINDS]
        by_name = {f.spec.name: f for f in fields}
        self.interest = nn.ModuleDict({c.name: SequenceInterest(by_name[c.name], by_name, config) for c in self.sequences})
        self.n_fields = (len(self.sparse) + len(self.varlen) + k * len(self.vectors)
                         + sum(1 + len(m.content) for m in self.interest.values()))
        if self.n_fields == 0:
            raise ValueError("the model needs at least one categorical, multi-valued, text or vector field")

        # the linear part has no term for a history (its items enter through the attention only)
        self.linear = Linear([c for c in self.columns if c not in self.sequences], self.feature_index,
                             init_std=config.init_std)
        self.embedding_dict = create_embedding_matrix(self.sparse + self.varlen, init_std=config.init_std)
        self.projections = nn.ModuleDict({c.name: nn.Linear(c.dimension, k * E) for c in self.vectors})
        self.bias = nn.Parameter(torch.zeros(1))

        self.cin = None
        if config.cin_layer_sizes:
            self.cin = CIN(self.n_fields, list(config.cin_layer_sizes), config.cin_activation, config.cin_split_half,
                           config.l2_cin, seed)
            self.cin_linear = nn.Linear(cin_output_size(config.cin_layer_sizes, config.cin_split_half), 1, bias=False)
        self.dnn = None
        if config.dnn_hidden_units:
            self.dnn = DNN(self.n_fields * E + len(self.numeric), list(config.dnn_hidden_units), config.dnn_activation,
                           config.l2_dnn, config.dnn_dropout, config.dnn_use_bn, init_std=config.init_std, seed=seed)
            self.dnn_linear = nn.Linear(config.dnn_hidden_units[-1], 1, bias=False)

    def _slice(self, X: torch.Tensor, name: str) -> torch.Tensor:
        start, end = self.feature_index[name]
        return X[:, start:end]

    def field_embeddings(self, X: torch.Tensor) -> torch.Tensor:
        """The stacked fields e: (B, n_fields, D)."""
        B, E, k = X.shape[0], self.config.embedding_dim, self.config.fields_per_vector
        fields = [self.embedding_dict[c.embedding_name](self._slice(X, c.name).long()) for c in self.sparse]
        if self.varlen:
            looked_up = varlen_embedding_lookup(X, self.embedding_dict, self.feature_index, self.varlen)
            fields += get_varlen_pooling_list(looked_up, X, self.feature_index, self.varlen, X.device)
        fields += [self.projections[c.name](self._slice(X, c.name)).view(B, k, E) for c in self.vectors]
        fields += [self.interest_fields(X, name) for name in self.interest]
        return torch.cat(fields, dim=1)

    def candidate(self, X: torch.Tensor, name: str) -> torch.Tensor:
        """t = r(candidate) (B, (1 + C) D) of sequence field ``name``, from the row's target and content fields."""
        module = self.interest[name]
        return module.represent(self.embedding_dict, self._slice(X, module.target)[:, 0],
                                {c: self._slice(X, c) for c in module.content})

    def interest_fields(self, X: torch.Tensor, name: str) -> torch.Tensor:
        """The interest u of sequence field ``name`` as fields (B, 1 + C, D)."""
        return self.interest[name](self.embedding_dict, self._slice(X, name), self.candidate(X, name))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for the flat input matrix X (B, width)."""
        logit = self.linear(X) + self.bias
        fields = self.field_embeddings(X)
        if self.cin is not None:
            logit = logit + self.cin_linear(self.cin(fields))
        if self.dnn is not None:
            numeric = [self._slice(X, c.name) for c in self.numeric]
            dnn_input = torch.cat([fields.flatten(1), *numeric], dim=1)
            logit = logit + self.dnn_linear(self.dnn(dnn_input))
        return logit.squeeze(1)

    def regularization_loss(self) -> torch.Tensor:
        """sum of l2 * ||w||^2 over the linear weights, embeddings (+ projections), DNN and CIN."""
        c = self.config
        total = self.bias.new_zeros(())
        groups = [
            (c.l2_linear, [p for n, p in self.linear.named_parameters()]),
            (c.l2_embedding, [*self.embedding_dict.parameters(), *(m.weight for m in self.projections.values()),
                              *(p for n, p in self.interest.named_parameters() if n.split(".")[1] == "projections"
                                and n.endswith("weight"))]),
            (c.l2_dnn, ([p for n, p in self.dnn.named_parameters() if "weight" in n and "bn" not in n] + [self.dnn_linear.weight]
                        if self.dnn is not None else [])
             + [p for n, p in self.interest.named_parameters() if n.split(".")[1] == "attention" and n.endswith("weight")]),
            (c.l2_cin, [p for n, p in self.cin.named_parameters() if "weight" in n] if self.cin is not None else []),
        ]
        for l2, params in groups:
            if l2 > 0 and params:
                total = total + l2 * sum((p * p).sum() for p in params)
        return total
