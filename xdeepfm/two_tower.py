"""The two-tower recall model ([YouTube-DNN]/[Yi] in docs/references.md), a recall channel over a FAISS index.

Towers (every field encoded by the ranker's fitted ``xdeepfm.features.FeaturePipeline``, so the
text vectors come from the bundled MiniLM through its cache):

- item tower: v_i = normalize(MLP([e(f) for f in item_fields])): the item id and its content
  (title vector, genres/category, video semantics vectors when the data has them). A field's
  embedding e(f) is an ``nn.Embedding`` row (categorical), the masked mean of token rows
  (multi-valued), or a linear map of the value (numeric) or of the vector (text, vector).
  In training the id is replaced by the out-of-vocabulary code 0 with probability ``id_dropout``,
  so the content path carries signal and a new item gets a useful vector from its content alone.
- user tower: u = normalize(MLP([e(f) for f in user_fields] ; mean_{j in H_u} v_j)), H_u the
  user's last ``history_len`` positive training items before the training example in (time, row)
  order, so never the example itself (at recall time: the last ones of training, or the history
  the caller passes).

Loss: in-batch sampled softmax with the log-Q correction of Yi et al. 2019 (eq. 3): for a batch
of B (user, positive item) pairs, s_ij = <u_i, v_j> / temperature, the corrected logit
s^c_ij = s_ij - log q_j, and L = -(1/B) sum_i log(exp(s^c_ii) / sum_j exp(s^c_ij)), where q_j is
the probability that item j appears in a batch: its share of the training positives (exact here,
where Yi et al. estimate it from a stream). In-batch duplicates of the positive (j != i with the
same item) are masked out of the denominator.

:class:`TwoTowerChannel` implements ``xdeepfm.recall.RecallChannel``; ``recall`` searches the
``xdeepfm.index.VectorIndex`` of the item vectors, and ``add_items`` puts freshly ingested items
(never seen in training) into it from their content. ``save(directory)`` writes
``two_tower.safetensors`` (weights, item vectors, encoded item and user inputs),
``two_tower.json`` (config, columns, ids, histories, losses) and the index files;
``TwoTowerChannel.load(directory, pipeline)`` restores a channel that scores identically.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mmcore.config import build, check_range
from mmcore.files import write_bytes
from xdeepfm.features import FeaturePipeline, FeatureSpec
from xdeepfm.index import IndexConfig, VectorIndex
from xdeepfm.recall import Columns, RecallChannel

log = logging.getLogger(__name__)

MODEL_FILE, META_FILE = "two_tower.safetensors", "two_tower.json"
FORMAT_VERSION = 1


@dataclass
class TwoTowerConfig:
    """The towers, their training and the index (``two_tower:`` in a recall YAML)."""

    user_fields: list[str] = field(default_factory=lambda: ["user_id", "gender", "age_bucket", "occupation", "zip_prefix", "age"])
    item_fields: list[str] = field(default_factory=lambda: ["item_id", "genres", "release_year", "title"])
    item_id_field: str = "item_id"  # the field whose code id_dropout replaces by 0
    history_len: int = 20
    embedding_dim: int = 32
    hidden_units: list[int] = field(default_factory=lambda: [128])
    out_dim: int = 64
    temperature: float = 0.05
    logq: bool = True  # the log-Q correction (false: plain in-batch softmax, the ablation)
    id_dropout: float = 0.3
    epochs: int = 10
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        for key in ("history_len", "embedding_dim", "out_dim", "epochs", "batch_size"):
            check_range(key, getattr(self, key), low=1)
        check_range("temperature", self.temperature, low=0.0, low_open=True)
        check_range("lr", self.lr, low=0.0, low_open=True)
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout={self.id_dropout}: must be in [0, 1)")
        if self.item_id_field not in self.item_fields:
            raise ValueError(f"item_id_field={self.item_id_field!r}: not among item_fields {self.item_fields}")


def sampled_softmax_loss(users: torch.Tensor, items: torch.Tensor, log_q: torch.Tensor | None, temperature: float,
                         item_keys: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch sampled softmax with log-Q correction (Yi et al. 2019, eq. 3; module docstring).

    ``users``/``items``: (B, d), row i of each a positive pair; ``log_q``: (B,) log sampling
    probability of each row's item (None: no correction); ``item_keys``: (B,) item identities, so
    another row holding the same item is not counted as a negative.
    """
    logits = users @ items.T / temperature  # (B, B): s_ij
    if log_q is not None:
        logits = logits - log_q[None, :]  # s^c_ij = s_ij - log q_j
    if item_keys is not None:
        same = item_keys[None, :] == item_keys[:, None]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(users), device=users.device))


# --------------------------------------------------------------------------- towers


class FieldEmbedding(nn.Module):
    """One d-vector per field of a fitted pipeline, concatenated: (B, n_fields * d)."""

    def __init__(self, pipeline: FeaturePipeline, names: Sequence[str], dim: int) -> None:
        super().__init__()
        self.kinds = {name: pipeline.fitted[name].spec.kind for name in names}
        self.layers = nn.ModuleDict()
        for name, kind in self.kinds.items():
            fit = pipeline.fitted[name]
            if kind in ("categorical", "multi_valued"):
                self.layers[name] = nn.Embedding(fit.vocabulary_size, dim, padding_idx=0 if kind == "multi_valued" else None)
                nn.init.normal_(self.layers[name].weight, std=0.05)
            elif kind == "numeric":
                self.layers[name] = nn.Linear(1, dim)
            else:  # text, vector
                self.layers[name] = nn.Linear(fit.dim, dim)
        self.out_dim = dim * len(names)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for name, kind in self.kinds.items():
            x, layer = inputs[name], self.layers[name]
            if kind == "categorical":
                parts.append(layer(x))
            elif kind == "multi_valued":  # masked mean over the tokens (0 = padding / unknown)
                mask = (x > 0).float().unsqueeze(-1)  # (B, L, 1)
                parts.append((layer(x) * mask).sum(1) / mask.sum(1).clamp_min(1.0))
            elif kind == "numeric":
                parts.append(layer(x.unsqueeze(-1)))
            else:
                parts.append(layer(x))
        return torch.cat(parts, dim=-1)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers, width = [], in_dim
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class TwoTower(nn.Module):
    """The item tower and the user tower (module docstring)."""

    def __init__(self, pipeline: FeaturePipeline, config: TwoTowerConfig) -> None:
        super().__init__()
        self.item_fields = FieldEmbedding(pipeline, config.item_fields, config.embedding_dim)
        self.user_fields = FieldEmbedding(pipeline, config.user_fields, config.embedding_dim)
        self.item_mlp = mlp(self.item_fields.out_dim, config.hidden_units, config.out_dim)
        self.user_mlp = mlp(self.user_fields.out_dim + config.out_dim, config.hidden_units, config.out_dim)

    def items(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.item_mlp(self.item_fields(inputs)), dim=-1)  # (n, out_dim)

    def users(self, inputs: Mapping[str, torch.Tensor], history: torch.Tensor, history_vectors: torch.Tensor) -> torch.Tensor:
        """``history`` (B, N): rows of ``history_vectors`` + 1 (0 = padding); ``history_vectors`` (M, out_dim)."""
        mask = (history > 0).float().unsqueeze(-1)  # (B, N, 1)
        padded = torch.cat([history_vectors.new_zeros(1, history_vectors.shape[1]), history_vectors])
        pooled = (padded[history] * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, out_dim)
        return F.normalize(self.user_mlp(torch.cat([self.user_fields(inputs), pooled], dim=-1)), dim=-1)


def sub_pipeline(pipeline: FeaturePipeline, names: Sequence[str]) -> FeaturePipeline:
    """The fitted pipeline restricted to ``names`` (so an item table needs only the item columns)."""
    missing = [n for n in names if n not in pipeline.fitted]
    if missing:
        raise ValueError(f"two_tower: fields {missing} are not in the feature pipeline (fields: {sorted(pipeline.fitted)})")
    spec = FeatureSpec(fields=[pipeline.fitted[n].spec for n in names], text_cache_dir=pipeline.spec.text_cache_dir)
    return FeaturePipeline(spec, {n: pipeline.fitted[n] for n in names},
                           {n: pipeline.vector_tables[n] for n in names if n in pipeline.vector_tables})


def last_positions(history: np.ndarray, length: int) -> np.ndarray:
    """(length,) the last ``length`` entries of ``history`` + 1, left-aligned and 0-padded."""
    tail = np.asarray(history, dtype=np.int64)[-length:] + 1
    return np.pad(tail, (0, length - len(tail)))


# --------------------------------------------------------------------------- the channel


class TwoTowerChannel(RecallChannel):
    """Two-tower recall: train with :func:`sampled_softmax_loss`, recall through the FAISS index."""

    name = "two_tower"

    def __init__(self, pipeline: FeaturePipeline, config: TwoTowerConfig | None = None, columns: Columns | None = None) -> None:
        super().__init__(columns)
        if not pipeline.is_fitted:
            raise ValueError("two_tower: the feature pipeline must be fitted (the ranker's, or fit it on the train split)")
        self.config = config or TwoTowerConfig()
        self.item_pipeline = sub_pipeline(pipeline, self.config.item_fields)
        self.user_pipeline = sub_pipeline(pipeline, self.config.user_fields)
        with torch.random.fork_rng():  # the initial weights depend on config.seed only
            torch.manual_seed(self.config.seed)
            self.model = TwoTower(pipeline, self.config)
        self.losses: list[float] = []

    # -- inputs ----------------------------------------------------------------------------
    @staticmethod
    def _tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}

    @staticmethod
    def _take(inputs: Mapping[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: x[rows] for name, x in inputs.items()}

    def _item_inputs(self, items: pd.DataFrame, where: str) -> dict[str, torch.Tensor]:
        return self._tensors(self.item_pipeline.transform(items, where))

    def _user_inputs(self, user_ids: Sequence) -> dict[str, torch.Tensor]:
        rows = self._user_index.get_indexer(pd.Index(list(user_ids)))
        known = {name: x[torch.from_numpy(np.maximum(rows, 0))] for name, x in self._users.items()}
        unknown = torch.from_numpy(rows < 0)
        for name, x in known.items():  # a user never seen: OOV codes, zero values
            x[unknown] = 0
        return known

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> "TwoTowerChannel":
        c, cfg = self.columns, self.config
        if items is None:
            items = interactions.drop_duplicates(c.item)
        items = items.drop_duplicates(c.item).reset_index(drop=True)
        self._fit_base(interactions, items)
        self._items = self._item_inputs(items.set_index(c.item).loc[self.item_ids].reset_index(), "two_tower: items")
        users = interactions.drop_duplicates(c.user).set_index(c.user).loc[self.user_ids].reset_index()
        self._users = self._tensors(self.user_pipeline.transform(users, "two_tower: users"))

        # training examples: every positive with the user's earlier positives as its history
        positive = interactions[interactions[c.label].astype(float) == 1.0].sort_values([c.user, c.time], kind="stable")
        user_rows = self._user_index.get_indexer(positive[c.user])
        item_rows = self._item_index.get_indexer(positive[c.item])
        history = np.zeros((len(positive), cfg.history_len), np.int64)
        for lag in range(1, cfg.history_len + 1):  # column lag-1 holds the positive `lag` steps back
            same = np.zeros(len(positive), bool)
            same[lag:] = user_rows[lag:] == user_rows[:-lag]
            history[same, lag - 1] = item_rows[np.flatnonzero(same) - lag] + 1
        history = history[:, ::-1].copy()  # oldest first, like at recall time (order does not matter for the mean)
        counts = np.bincount(item_rows, minlength=len(self.item_ids)).astype(np.float64)
        log_q_all = torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))
        self._train(torch.from_numpy(user_rows), torch.from_numpy(item_rows), torch.from_numpy(history), log_q_all)
        self.refresh_index()
        return self

    def _train(self, user_rows: torch.Tensor, item_rows: torch.Tensor, history: torch.Tensor, log_q_all: torch.Tensor) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        id_field = cfg.item_id_field
        self.model.train()
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(user_rows), generator=generator)
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                b = order[start:start + cfg.batch_size]
                target, hist = item_rows[b], history[b]
                # the item tower runs once per distinct item of the batch (targets and histories)
                needed, inverse = torch.unique(torch.cat([target, hist.reshape(-1) - 1]).clamp_min(0), return_inverse=True)
                inputs = self._take(self._items, needed)
                if cfg.id_dropout > 0:
                    drop = torch.rand(len(needed), generator=generator) < cfg.id_dropout
                    inputs[id_field] = inputs[id_field].masked_fill(drop, 0)
                vectors = self.model.items(inputs)  # (M, d)
                target_vec = vectors[inverse[: len(b)]]
                hist_rows = torch.where(hist > 0, inverse[len(b):].reshape(hist.shape) + 1, 0)
                user_vec = self.model.users(self._take(self._users, user_rows[b]), hist_rows, vectors)
                loss = sampled_softmax_loss(user_vec, target_vec, log_q_all[target] if cfg.logq else None,
                                            cfg.temperature, item_keys=target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(b)
            self.losses.append(total / len(order))
            log.info("two_tower epoch %d: loss %.4f", epoch, self.losses[-1])
        self.model.eval()

    # -- vectors and the index ---------------------------------------------------------------
    @torch.inference_mode()
    def refresh_index(self) -> None:
        """Recompute every catalogue item's vector and rebuild the index."""
        self.item_vectors = self.model.items(self._items).numpy()
        self.index = VectorIndex(self.config.out_dim, self.config.index).build(self.item_ids, self.item_vectors)

    @torch.inference_mode()
    def user_vectors(self, user_ids: Sequence, histories: Mapping | None = None) -> np.ndarray:
        hist = self.histories_of(user_ids, histories)
        rows = torch.from_numpy(np.stack([last_positions(h, self.config.history_len) for h in hist])) if hist else torch.zeros(0, self.config.history_len, dtype=torch.long)
        return self.model.users(self._user_inputs(user_ids), rows, torch.from_numpy(self.item_vectors)).numpy()

    def score(self, user_ids: Sequence, histories: Mapping | None = None) -> np.ndarray:
        return self.user_vectors(user_ids, histories) @ self.item_vectors.T

    def recall(self, user_ids: Sequence, n: int, exclude: Sequence[Sequence] | None = None,
               histories: Mapping | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.index.search(self.user_vectors(user_ids, histories), n, exclude)

    @torch.inference_mode()
    def add_items(self, items: pd.DataFrame, given: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Ingest items (new or updated): their vectors from the item tower, into the catalogue and the index.

        An item never seen in training has the OOV id code, so its vector comes from its content.
        ``given``: encoded inputs by field name, one row per row of ``items`` (e.g. the video semantics
        and title vectors an item store keeps), used instead of encoding those fields again (a vector
        field's table knows only the training items). Returns the vectors (n, out_dim).
        """
        c = self.columns
        if c.item not in items.columns:
            raise ValueError(f"two_tower.add_items: no column {c.item!r} (columns: {sorted(map(str, items.columns))})")
        keep = ~items[c.item].duplicated(keep="last").to_numpy()
        items = items[keep].reset_index(drop=True)
        inputs = self._item_inputs(items, "two_tower.add_items")
        for name, values in (given or {}).items():
            if name in inputs:
                values = np.asarray(values, dtype=np.float32)[keep]
                if values.shape != tuple(inputs[name].shape):
                    raise ValueError(f"two_tower.add_items: given {name!r} has shape {values.shape}; "
                                     f"expected {tuple(inputs[name].shape)}")
                inputs[name] = torch.from_numpy(values)
        vectors = self.model.items(inputs).numpy()
        ids = items[c.item].to_numpy()
        position = self.item_positions(ids)
        new = position < 0
        self.item_vectors[position[~new]] = vectors[~new]
        for name, x in inputs.items():
            self._items[name][torch.from_numpy(position[~new])] = x[torch.from_numpy(~new)]
            self._items[name] = torch.cat([self._items[name], x[torch.from_numpy(new)]])
        self.item_ids = np.concatenate([self.item_ids, ids[new]])
        self.item_vectors = np.concatenate([self.item_vectors, vectors[new]])
        self._item_index = pd.Index(self.item_ids)
        self.index.add(ids, vectors)
        return vectors

    # -- files -----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Weights and arrays in safetensors, ids/histories/config in JSON, the FAISS index beside them (no pickle)."""
        from safetensors.torch import save

        directory = Path(directory)
        tensors = {f"model.{k}": v.contiguous() for k, v in self.model.state_dict().items()}
        tensors.update({f"items.{k}": v.contiguous() for k, v in self._items.items()})
        tensors.update({f"users.{k}": v.contiguous() for k, v in self._users.items()})
        tensors["item_vectors"] = torch.from_numpy(np.ascontiguousarray(self.item_vectors))
        write_bytes(directory / MODEL_FILE, save(tensors))
        meta = {"format_version": FORMAT_VERSION, "config": asdict(self.config), "columns": asdict(self.columns),
                "item_ids": self.item_ids.tolist(), "user_ids": self.user_ids.tolist(), "losses": self.losses,
                "history": [[u, h.tolist()] for u, h in zip(self.history.keys(), self.history.values())]}
        write_bytes(directory / META_FILE, json.dumps(meta).encode())
        self.index.save(directory)

    @classmethod
    def load(cls, directory: str | Path, pipeline: FeaturePipeline) -> "TwoTowerChannel":
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / META_FILE
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: two-tower channel not found") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        channel = cls(pipeline, build(TwoTowerConfig, meta["config"], f"{path}:config"), build(Columns, meta["columns"], f"{path}:columns"))
        tensors = load_file(str(directory / MODEL_FILE))
        channel.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        channel.model.eval()
        channel._items = {k[6:]: v for k, v in tensors.items() if k.startswith("items.")}
        channel._users = {k[6:]: v for k, v in tensors.items() if k.startswith("users.")}
        channel.item_vectors = tensors["item_vectors"].numpy()
        channel.item_ids, channel.user_ids = np.asarray(meta["item_ids"]), np.asarray(meta["user_ids"])
        channel._item_index, channel._user_index = pd.Index(channel.item_ids), pd.Index(channel.user_ids)
        channel.history = {u: np.asarray(h, dtype=np.int64) for u, h in meta["history"]}
        channel.losses = meta["losses"]
        channel.index = VectorIndex.load(directory)
        return channel
