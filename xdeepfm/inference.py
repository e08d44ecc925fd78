"""An inference-only copy of a trained ``XDeepFMRanker``: the same logits from fewer, larger kernels.

``FastRanker.from_model(model)`` copies the trained weights into a frozen module (buffers only, no
parameters); the training model and its checkpoint format are untouched. Only the layout of the
forward pass changes, and every rewrite is exact in real arithmetic (in float32 the logits agree
to rounding: ``tests/xdeepfm/test_inference.py``):

- **one gather for every categorical field**: the embedding tables and the linear model's 1-d
  weights are concatenated into one table of width D + 1 (rows offset per field), so a row's
  codes are looked up by one ``index_select`` instead of two lookups per field; a multi-valued
  field likewise gathers both parts of its masked mean at once;
- **one matmul per text/vector field** for its projection ``W v + c`` and its linear weights
  together (a (d, kD + 1) weight);
- **a field-major CIN** (Lian et al. eq. 6): the feature maps are held as X^k in R^{H_k x (B*D)}
  (a row per map; batch and embedding dimension together), so a layer's ``Conv1d(kernel 1)`` over
  the outer product Z = X^{k-1} (x) X^0 in R^{(H_{k-1} m) x (B*D)} is one GEMM ``W Z + b`` with a
  wide right-hand side, instead of B small (H x H_{k-1} m) @ (H_{k-1} m x D) products. The first
  layer uses the symmetry of X^0 (x) X^0 (z_ij = z_ji): only the m(m+1)/2 pairs i <= j are formed,
  against the summed weights W_ij + W_ji. Sum-pooling over D and ``cin_linear`` become one
  matrix-vector product per layer;
- **the DNN as ``addmm`` + in-place ReLU**, an eval-mode BatchNorm folded into its Linear;
- **row chunks** of ``chunk_rows`` rows, so that a layer's Z stays near a core's L2 cache;
- **sequence fields** (DIN target attention, ``xdeepfm.model.SequenceInterest``): the item
  representation r(i) is a function of the weights only, so the table R = [r(0); ...; r(V-1)] is
  computed once and a history is one gather. The attention MLP's first layer over
  [t, h, t - h, t * h] is split as t (W_1 + W_3) + h (W_2 - W_3) + (t * h) W_4: the t part once per
  row, the h part gathered from the precomputed R (W_2 - W_3), only the product per history item.

The FLOPs are those of the original except the first CIN layer's (``forward_flops``); the
figures are in docs/performance.md (``bench/xdeepfm_forward.py``).

Example::

    fast = FastRanker.from_model(model)        # model: a trained XDeepFMRanker
    with torch.inference_mode():
        logits = fast(X)                        # X: the flat input matrix (B, width)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from xdeepfm._deepctr import deepctr_torch
from xdeepfm.model import XDeepFMRanker

DEFAULT_CHUNK_ROWS = 128  # rows per pass: one pass for a 100-candidate request; at 1000 rows 64-128 beat 256 and unchunked
_IDENTITIES = (nn.Identity, deepctr_torch.layers.activation.Identity)


def _elementwise(module: nn.Module) -> nn.Module | None:
    """A frozen copy of the activation to call, or None for ReLU (applied in place) and the identity."""
    if isinstance(module, (nn.ReLU, *_IDENTITIES)):
        return None
    module = copy.deepcopy(module).eval()  # e.g. PReLU's slope: a copy, like every other weight
    module.requires_grad_(False)
    return module


class FastRanker(nn.Module):
    """Inference-only xDeepFM ranker holding a trained ``XDeepFMRanker``'s weights (see the module docstring).

    :param model: the trained ranker (read once; later changes to it are not seen).
    :param chunk_rows: rows per pass through the network (>= 1).
    :param symmetric_first_layer: form only the pairs i <= j of X^0 (x) X^0 in the first CIN layer.
    """

    def __init__(self, model: XDeepFMRanker, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 symmetric_first_layer: bool = True) -> None:
        super().__init__()
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows {chunk_rows}: expected >= 1")
        self.chunk_rows = chunk_rows
        self.embedding_dim = model.config.embedding_dim
        self.n_fields = model.n_fields
        self.feature_index = model.feature_index
        self.columns = model.columns
        with torch.no_grad():
            self._build_inputs(model)
            self.cin_layers: list[tuple[int, int, bool]] = []  # (maps kept as X^k, first direct map, last)
            if model.cin is not None:
                self._build_cin(model, symmetric_first_layer)
            self.dnn_relu: list[bool] = []
            self.dnn_activations = nn.ModuleList()
            if model.dnn is not None:
                self._build_dnn(model)
            self.sequences: list[dict] = []
            for n, (name, module) in enumerate(model.interest.items()):
                self._build_sequence(model, n, name, module)
        self.eval()

    @classmethod
    def from_model(cls, model: XDeepFMRanker, **options) -> "FastRanker":
        """The inference module for ``model``'s current weights (``options``: ``chunk_rows``, ``symmetric_first_layer``)."""
        return cls(model, **options)

    # -- construction ----------------------------------------------------------------------
    def _build_inputs(self, model: XDeepFMRanker) -> None:
        index, linear, E, k = model.feature_index, model.linear, self.embedding_dim, model.config.fields_per_vector

        def with_linear(name: str) -> torch.Tensor:  # [embedding | linear weight]: (V, D + 1)
            return torch.cat([model.embedding_dict[name].weight, linear.embedding_dict[name].weight], dim=1)

        tables = [with_linear(c.embedding_name) for c in model.sparse]
        offsets = [sum(len(t) for t in tables[:i]) for i in range(len(tables))]
        self.register_buffer("sparse_cols", torch.tensor([index[c.name][0] for c in model.sparse], dtype=torch.long))
        self.register_buffer("sparse_offsets", torch.tensor(offsets, dtype=torch.long))
        self.register_buffer("sparse_table", torch.cat(tables) if tables else torch.zeros(0, E + 1))
        self.varlen_ranges = [index[c.name] for c in model.varlen]
        for n, c in enumerate(model.varlen):
            self.register_buffer(f"varlen_table{n}", with_linear(c.embedding_name))
        # deepctr Linear: one weight per dense column (numeric, text, vector), in column order
        dense_names = {c.name for c in model.numeric + model.vectors}
        rows, row = {}, 0  # field -> its rows of linear.weight
        for c in model.columns:
            if c.name in dense_names:
                rows[c.name] = (row, row + index[c.name][1] - index[c.name][0])
                row = rows[c.name][1]
        self.has_numeric = bool(model.numeric)
        self.register_buffer("numeric_cols", torch.tensor([col for c in model.numeric for col in range(*index[c.name])],
                                                          dtype=torch.long))
        numeric_rows = [row for c in model.numeric for row in range(*rows[c.name])]
        self.register_buffer("numeric_weight", linear.weight[numeric_rows, 0].clone() if rows else torch.zeros(0))
        self.vector_ranges = [index[c.name] for c in model.vectors]
        for n, c in enumerate(model.vectors):  # [projection W^T | linear weights]: (d, kD + 1), bias [c | 0]
            projection = model.projections[c.name]
            self.register_buffer(f"vector_weight{n}",
                                 torch.cat([projection.weight.T, linear.weight[slice(*rows[c.name])]], dim=1).contiguous())
            self.register_buffer(f"vector_bias{n}", torch.cat([projection.bias, projection.bias.new_zeros(1)]))
        self.fields_per_vector = k
        self.register_buffer("bias", model.bias.detach().clone())

    def _build_sequence(self, model: XDeepFMRanker, n: int, name: str, module) -> None:
        """Buffers of sequence field ``name``: R, R (W_2 - W_3), the candidate's lookups and the attention MLP."""
        index, F = model.feature_index, module.width
        local = module.attention.local_att
        first = local.dnn.linears[0].weight.T  # (4F, H1): rows for t, h, t - h, t * h
        w_t, w_h, w_diff, w_prod = first.split(F)
        table = module.item_table(model.embedding_dict)  # (V, F)
        self.register_buffer(f"seq{n}_table", table.detach().clone())
        self.register_buffer(f"seq{n}_table_h", (table @ (w_h - w_diff)).detach().contiguous())  # (V, H1)
        self.register_buffer(f"seq{n}_w_t", (w_t + w_diff).contiguous())
        self.register_buffer(f"seq{n}_w_prod", w_prod.contiguous())
        self.register_buffer(f"seq{n}_b0", local.dnn.linears[0].bias.detach().clone())
        for layer, fc in enumerate(local.dnn.linears[1:], 1):
            self.register_buffer(f"seq{n}_w{layer}", fc.weight.T.contiguous())
            self.register_buffer(f"seq{n}_b{layer}", fc.bias.detach().clone())
        self.register_buffer(f"seq{n}_dense_w", local.dense.weight[0].clone())
        self.register_buffer(f"seq{n}_dense_b", local.dense.bias.detach().clone())
        self.register_buffer(f"seq{n}_id", model.embedding_dict[module.target].weight.detach().clone())
        content = []
        for c in module.content:
            kind = module.kinds[c]
            if kind in ("categorical", "multi_valued"):
                self.register_buffer(f"seq{n}_{c}", model.embedding_dict[c].weight.detach().clone())
            else:
                projection = module.projections[c]
                self.register_buffer(f"seq{n}_{c}", projection.weight.T.contiguous())
                self.register_buffer(f"seq{n}_{c}_bias", projection.bias.detach().clone())
            content.append((c, kind, index[c]))
        activations = nn.ModuleList(_elementwise(a) or nn.Identity() for a in local.dnn.activation_layers)
        self.add_module(f"seq{n}_activations", activations)
        self.sequences.append({"range": index[name], "target": index[module.target][0], "content": content,
                               "layers": len(local.dnn.linears), "softmax": module.softmax,
                               "relu": [isinstance(a, nn.ReLU) for a in local.dnn.activation_layers],
                               "fields": 1 + len(module.content)})

    def interest_fields(self, X: torch.Tensor, n: int) -> torch.Tensor:
        """The interest u (B, 1 + C, D) of the n-th sequence field (see the module docstring)."""
        seq, B = self.sequences[n], X.shape[0]
        buffer = lambda name: getattr(self, f"seq{n}_{name}")  # noqa: E731
        parts = [buffer("id").index_select(0, X[:, seq["target"]].long())]  # the candidate t: [e_id; content]
        for c, kind, (start, end) in seq["content"]:
            if kind == "categorical":
                parts.append(buffer(c).index_select(0, X[:, start].long()))
            elif kind == "multi_valued":
                codes = X[:, start:end].long()
                mask = (codes != 0).to(X.dtype).unsqueeze(2)
                looked_up = buffer(c).index_select(0, codes.reshape(-1)).view(B, end - start, -1)
                parts.append((looked_up * mask).sum(1) / (mask.sum(1) + 1e-8))
            else:
                parts.append(torch.addmm(buffer(f"{c}_bias"), X[:, start:end], buffer(c)))
        t = torch.cat(parts, dim=1)  # (B, F)
        codes = X[:, slice(*seq["range"])].long()  # (B, L)
        L = codes.shape[1]
        keys = buffer("table").index_select(0, codes.reshape(-1)).view(B, L, -1)  # (B, L, F)
        h = (torch.addmm(buffer("b0"), t, buffer("w_t")).unsqueeze(1)  # (B, 1, H1)
             + buffer("table_h").index_select(0, codes.reshape(-1)).view(B, L, -1)
             + (t.unsqueeze(1) * keys) @ buffer("w_prod"))  # (B, L, H1)
        activations = getattr(self, f"seq{n}_activations")
        for layer in range(seq["layers"]):
            if layer:
                h = h @ buffer(f"w{layer}") + buffer(f"b{layer}")
            h = h.relu_() if seq["relu"][layer] else activations[layer](h)
        score = h @ buffer("dense_w") + buffer("dense_b")  # (B, L)
        mask = codes != 0
        if seq["softmax"]:
            score = torch.softmax(score.masked_fill(~mask, -2 ** 32 + 1), dim=1) * mask.any(1, keepdim=True)
        else:
            score = score.masked_fill(~mask, 0.0)
        u = torch.bmm(score.unsqueeze(1), keys)  # (B, 1, F)
        return u.view(B, seq["fields"], -1)

    def _build_cin(self, model: XDeepFMRanker, symmetric: bool) -> None:
        cin, m = model.cin, self.n_fields
        self.cin_activation = _elementwise(cin.activation)
        self.cin_relu = isinstance(cin.activation, nn.ReLU)
        self.symmetric_first_layer = symmetric
        out_weight, position = model.cin_linear.weight[0], 0
        for layer, conv in enumerate(cin.conv1ds):
            size, last = conv.out_channels, layer == len(cin.conv1ds) - 1
            w = conv.weight[:, :, 0]  # (H, H_prev * m): input channel i * m + j is X^{k-1}_i o X^0_j
            if layer == 0 and symmetric:
                i, j = torch.triu_indices(m, m)
                square = w.view(size, m, m)
                w = torch.where(i == j, square[:, i, j], square[:, i, j] + square[:, j, i])  # (H, m(m+1)/2)
                self.register_buffer("pair_i", i)
                self.register_buffer("pair_j", j)
            kept = size // 2 if cin.split_half and not last else size  # maps passed on as X^k
            first_direct = size - kept if cin.split_half and not last else 0  # maps pooled into p^+
            self.register_buffer(f"cin_weight{layer}", w.clone().contiguous())  # a copy, not a view of the model's
            self.register_buffer(f"cin_bias{layer}", conv.bias.detach().unsqueeze(1).clone())
            self.register_buffer(f"cin_out{layer}", out_weight[position: position + size - first_direct].unsqueeze(0).clone())
            position += size - first_direct
            self.cin_layers.append((kept, first_direct, last))

    def _build_dnn(self, model: XDeepFMRanker) -> None:
        dnn = model.dnn
        for layer, fc in enumerate(dnn.linears):
            w, b = fc.weight, fc.bias
            if dnn.use_bn:  # eval mode: (x - mean) / sqrt(var + eps) * gamma + beta
                bn = dnn.bn[layer]
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w, b = w * scale[:, None], (b - bn.running_mean) * scale + bn.bias
            self.register_buffer(f"dnn_weight{layer}", w.T.contiguous())  # (in, out)
            self.register_buffer(f"dnn_bias{layer}", b.detach().clone())
            activation = dnn.activation_layers[layer]
            self.dnn_relu.append(isinstance(activation, nn.ReLU))
            self.dnn_activations.append(_elementwise(activation) or nn.Identity())
        self.register_buffer("dnn_out", model.dnn_linear.weight[0].clone())

    # -- forward ---------------------------------------------------------------------------
    def fields_and_linear(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked fields e (B, m, D) (the original's order) and bias + linear(x) (B,)."""
        B, E = X.shape[0], self.embedding_dim
        parts, linear = [], self.bias.expand(B)
        if len(self.sparse_cols):
            codes = X.index_select(1, self.sparse_cols).long() + self.sparse_offsets  # (B, S)
            looked_up = self.sparse_table.index_select(0, codes.view(-1)).view(B, -1, E + 1)  # (B, S, D + 1)
            parts.append(looked_up[:, :, :E])
            linear = linear + looked_up[:, :, E].sum(1)
        for n, (start, end) in enumerate(self.varlen_ranges):
            codes = X[:, start:end].long()  # (B, L); code 0 (padding, OOV) is masked out, as in deepctr
            mask = (codes != 0).to(X.dtype)
            looked_up = getattr(self, f"varlen_table{n}").index_select(0, codes.reshape(-1)).view(B, end - start, E + 1)
            pooled = (looked_up * mask.unsqueeze(2)).sum(1) / (mask.sum(1, keepdim=True) + 1e-8)  # (B, D + 1)
            parts.append(pooled[:, None, :E])
            linear = linear + pooled[:, E]
        if self.has_numeric:
            linear = linear + X.index_select(1, self.numeric_cols) @ self.numeric_weight
        for n, (start, end) in enumerate(self.vector_ranges):
            out = torch.addmm(getattr(self, f"vector_bias{n}"), X[:, start:end], getattr(self, f"vector_weight{n}"))
            parts.append(out[:, :-1].view(B, self.fields_per_vector, E))  # (B, k, D)
            linear = linear + out[:, -1]
        parts += [self.interest_fields(X, n) for n in range(len(self.sequences))]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)), linear

    def cin_logit(self, fields: torch.Tensor) -> torch.Tensor:
        """w_cin^T p^+ (B,) for the fields (B, m, D), field-major (see the module docstring)."""
        B, m, D = fields.shape
        x0 = fields.transpose(0, 1).reshape(m, B * D)  # (m, B*D)
        hidden, logit = x0, fields.new_zeros(1, B * D)
        for layer, (kept, first_direct, last) in enumerate(self.cin_layers):
            if layer == 0 and self.symmetric_first_layer:
                z = x0.index_select(0, self.pair_i) * x0.index_select(0, self.pair_j)  # (m(m+1)/2, B*D)
            else:
                z = (hidden.unsqueeze(1) * x0.unsqueeze(0)).view(-1, B * D)  # (H_prev * m, B*D)
            out = torch.addmm(getattr(self, f"cin_bias{layer}"), getattr(self, f"cin_weight{layer}"), z)  # (H, B*D)
            if self.cin_relu:
                out.relu_()
            elif self.cin_activation is not None:
                out = self.cin_activation(out)
            logit = torch.addmm(logit, getattr(self, f"cin_out{layer}"), out[first_direct:])  # sum_h w_h X^k_h
            if not last:
                hidden = out[:kept]
        return logit.view(B, D).sum(1)

    def dnn_logit(self, X: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        """w_dnn^T DNN([flatten(e); numeric]) (B,)."""
        h = fields.flatten(1)
        if self.has_numeric:
            h = torch.cat([h, X.index_select(1, self.numeric_cols)], dim=1)
        for layer, relu in enumerate(self.dnn_relu):
            h = torch.addmm(getattr(self, f"dnn_bias{layer}"), h, getattr(self, f"dnn_weight{layer}"))
            h = h.relu_() if relu else self.dnn_activations[layer](h)
        return h @ self.dnn_out

    def _forward(self, X: torch.Tensor) -> torch.Tensor:
        fields, logit = self.fields_and_linear(X)
        if self.cin_layers:
            logit = logit + self.cin_logit(fields)
        if self.dnn_relu:
            logit = logit + self.dnn_logit(X, fields)
        return logit

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for the flat input matrix X (B, width), ``chunk_rows`` rows at a time."""
        if X.shape[0] <= self.chunk_rows:
            return self._forward(X)
        return torch.cat([self._forward(chunk) for chunk in X.split(self.chunk_rows)])


def forward_flops(model: XDeepFMRanker, symmetric_first_layer: bool = True) -> dict[str, int]:
    """Floating-point operations per row of the forward pass without the embedding lookups (a multiply-add
    is 2; activations are not counted), by part: linear (its dense weights and the sum over fields),
    projections, each CIN layer (outer product, 1x1 conv, bias, pooling + output weight), DNN
    (layers with bias, output weight).

    ``symmetric_first_layer`` counts the first CIN layer over the m(m+1)/2 pairs i <= j (``FastRanker``);
    False counts the original's m^2 channels.
    """
    D, k, m = model.config.embedding_dim, model.config.fields_per_vector, model.n_fields
    index = model.feature_index
    width = {c.name: index[c.name][1] - index[c.name][0] for c in model.numeric + model.vectors}
    flops = {"linear": 2 * sum(width.values()) + 2 * (len(model.sparse) + len(model.varlen))}
    flops["projections"] = sum(2 * width[c.name] * k * D + k * D for c in model.vectors)
    if model.cin is not None:
        h_prev = m
        for layer, conv in enumerate(model.cin.conv1ds):
            size, last = conv.out_channels, layer == len(model.cin.conv1ds) - 1
            channels = m * (m + 1) // 2 if layer == 0 and symmetric_first_layer else h_prev * m
            kept = size // 2 if model.cin.split_half and not last else size
            direct = size - kept if model.cin.split_half and not last else size
            flops[f"cin layer {layer + 1}"] = channels * D + 2 * channels * size * D + size * D + 2 * direct * D
            h_prev = kept
    if model.dnn is not None:
        sizes = [model.dnn.linears[0].in_features] + [fc.out_features for fc in model.dnn.linears]
        flops["dnn"] = sum(2 * a * b + b for a, b in zip(sizes, sizes[1:])) + 2 * sizes[-1]
    return flops
