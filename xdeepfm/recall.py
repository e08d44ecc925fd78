"""The recall stage: channels that each propose candidates from the whole catalogue, and their merge.

Every channel implements :class:`RecallChannel`:

- ``fit(interactions, items=None)``: learn from the training interactions, a DataFrame whose
  user / item / label / time columns are named by :class:`Columns`; a row with label 1 is a
  positive. The catalogue (the columns of ``score``) is ``items[columns.item]`` when an item
  table is given, else the items of ``interactions``. A user's history is their positive
  training items in time order.
- ``score(user_ids, histories=None) -> (B, n_items)``: a score per catalogue item (``item_ids``).
- ``recall(user_ids, n, exclude=None, histories=None) -> [(item ids, scores)]``: each user's top
  ``n`` catalogue items without ``exclude[b]``, best first (ties by catalogue position).

``histories`` (user id -> item ids, oldest first) replaces the training history, so a serving
process can pass what its user store knows now. The channels here:

- :class:`PopularityChannel`: score_i = number of training positives of item i.
- :class:`ItemCFChannel` (item-to-item collaborative filtering, [ItemCF] in docs/references.md):
  with R the binary (users x items) matrix of training positives, the co-occurrence
  C = R^T R, the cosine similarity S_ij = C_ij / sqrt(C_ii C_jj) with S_ii = 0, optionally only each
  item's ``neighbors`` largest kept, and score_u = sum_{j in H_u} S_j (scipy sparse throughout).
- :class:`BPRChannel`: matrix factorisation x_ui = <p_u, q_i> trained with BPR, the pairwise loss
  -ln sigma(x_ui - x_uj) over a positive i and a uniformly sampled non-positive j, plus
  lambda (|p_u|^2 + |q_i|^2 + |q_j|^2) ([BPR], Rendle et al. 2009).
- ``xdeepfm.two_tower.TwoTowerChannel``: the two-tower model with the FAISS index.

:func:`merge_candidates` merges channels into N candidates with per-channel quotas, and
:func:`recall_candidates` runs fitted channels for a batch of users and merges their lists (the
recall stage of a recommend request).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mmcore.config import check_range

log = logging.getLogger(__name__)


@dataclass
class Columns:
    """Which columns of an interactions frame hold the user, the item, the 0/1 label and the time."""

    user: str = "user_id"
    item: str = "item_id"
    label: str = "label"
    time: str = "timestamp"

    def check(self, frame: pd.DataFrame, where: str, need_time: bool = True) -> None:
        need = [self.user, self.item, self.label] + ([self.time] if need_time else [])
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"{where}: missing column(s) {missing} (columns: {sorted(map(str, frame.columns))})")


class RecallChannel(ABC):
    """The interface every recall channel implements (see the module docstring)."""

    name = "channel"

    def __init__(self, columns: Columns | None = None) -> None:
        self.columns = columns or Columns()
        self.item_ids: np.ndarray = np.zeros(0, np.int64)
        self.user_ids: np.ndarray = np.zeros(0, np.int64)
        self.positives: sp.csr_matrix | None = None  # (known users, catalogue) binary training positives
        self.history: dict = {}  # user id -> catalogue positions of their positives, oldest first

    # -- shared fitting --------------------------------------------------------------------
    def _fit_base(self, interactions: pd.DataFrame, items: pd.DataFrame | None) -> None:
        c = self.columns
        c.check(interactions, f"{self.name}.fit: interactions")
        if items is not None:
            if c.item not in items.columns:
                raise ValueError(f"{self.name}.fit: items table has no column {c.item!r} (columns: {sorted(map(str, items.columns))})")
            catalogue = pd.unique(items[c.item])
        else:
            catalogue = np.sort(pd.unique(interactions[c.item]))
        self.item_ids = np.asarray(catalogue)
        self._item_index = pd.Index(self.item_ids)
        positive = interactions[interactions[c.label].astype(float) == 1.0]
        positive = positive.sort_values([c.user, c.time], kind="stable")
        cols = self._item_index.get_indexer(positive[c.item])
        if (cols < 0).any():
            raise ValueError(f"{self.name}.fit: {int((cols < 0).sum())} positive rows name items outside the items table, "
                             f"e.g. {positive[c.item].iloc[int(np.flatnonzero(cols < 0)[0])]!r}")
        self.user_ids = np.sort(pd.unique(interactions[c.user]))
        self._user_index = pd.Index(self.user_ids)
        rows = self._user_index.get_indexer(positive[c.user])
        matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(self.user_ids), len(self.item_ids)))
        matrix.data[:] = 1.0  # a repeated (user, item) counts once
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        self.positives = matrix
        self.history = {user: group.to_numpy() for user, group in pd.Series(cols, index=positive[c.user].to_numpy()).groupby(level=0)}

    def item_positions(self, item_ids: Sequence) -> np.ndarray:
        """Catalogue positions of ``item_ids`` (-1 for ids outside the catalogue)."""
        return self._item_index.get_indexer(pd.Index(list(item_ids)) if not isinstance(item_ids, np.ndarray) else item_ids)

    def histories_of(self, user_ids: Sequence, histories: Mapping | None = None) -> list[np.ndarray]:
        """Each user's history as catalogue positions: ``histories[user]`` when given, else the training one."""
        out = []
        for user in user_ids:
            if histories is not None and user in histories:
                pos = self.item_positions(np.asarray(histories[user]))
                out.append(pos[pos >= 0])
            else:
                out.append(self.history.get(user, np.zeros(0, np.int64)))
        return out

    # -- the interface ---------------------------------------------------------------------
    @abstractmethod
    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> "RecallChannel": ...

    @abstractmethod
    def score(self, user_ids: Sequence, histories: Mapping | None = None) -> np.ndarray: ...

    def recall(self, user_ids: Sequence, n: int, exclude: Sequence[Sequence] | None = None,
               histories: Mapping | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top ``n`` catalogue items per user by ``score``, without ``exclude[b]`` (ties by catalogue position)."""
        check_range("n", n, low=1)
        scores = np.asarray(self.score(user_ids, histories), dtype=np.float64)
        return top_n(scores, self.item_ids, n, None if exclude is None else [self.item_positions(np.asarray(e)) for e in exclude])


def top_n(scores: np.ndarray, item_ids: np.ndarray, n: int, exclude_positions: Sequence[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of ``scores`` (B, n_items): the ``n`` best (item id, score), excluded positions removed."""
    scores = scores.copy()
    if exclude_positions is not None:
        for b, pos in enumerate(exclude_positions):
            pos = np.asarray(pos, dtype=np.int64)
            scores[b, pos[pos >= 0]] = -np.inf
    n_take = min(n, scores.shape[1])
    out = []
    for row in scores:
        top = np.argpartition(-row, n_take - 1)[:n_take] if n_take < len(row) else np.arange(len(row))
        top = top[np.lexsort((top, -row[top]))]  # score descending, then catalogue position
        top = top[np.isfinite(row[top])]
        out.append((item_ids[top], row[top]))
    return out


# --------------------------------------------------------------------------- popularity


class PopularityChannel(RecallChannel):
    """score_i = the number of training positives of item i (the same list for every user)."""

    name = "popularity"

    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> "PopularityChannel":
        self._fit_base(interactions, items)
        self.counts = np.asarray(self.positives.sum(axis=0)).reshape(-1).astype(np.float64)
        return self

    def score(self, user_ids: Sequence, histories: Mapping | None = None) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(user_ids), len(self.counts))).copy()


# --------------------------------------------------------------------------- ItemCF


@dataclass
class ItemCFConfig:
    neighbors: int | None = None  # keep each item's k most similar items; None keeps all

    def __post_init__(self) -> None:
        check_range("neighbors", self.neighbors, low=1)


class ItemCFChannel(RecallChannel):
    """Cosine item-to-item co-occurrence over users' positive histories (see the module docstring)."""

    name = "itemcf"

    def __init__(self, config: ItemCFConfig | None = None, columns: Columns | None = None) -> None:
        super().__init__(columns)
        self.config = config or ItemCFConfig()

    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> "ItemCFChannel":
        self._fit_base(interactions, items)
        r = self.positives.tocsc().astype(np.float64)
        co = (r.T @ r).tocsr()  # C = R^T R (items x items)
        norm = np.sqrt(co.diagonal())
        inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
        sim = sp.diags(inv) @ co @ sp.diags(inv)  # C_ij / sqrt(C_ii C_jj)
        sim = sim.tolil()
        sim.setdiag(0.0)
        sim = sim.tocsr()
        sim.eliminate_zeros()
        if self.config.neighbors is not None:
            sim = _keep_top_per_row(sim, self.config.neighbors)
        self.similarity = sim.astype(np.float32)
        return self

    def score(self, user_ids: Sequence, histories: Mapping | None = None) -> np.ndarray:
        hist = self.histories_of(user_ids, histories)
        rows = np.repeat(np.arange(len(hist)), [len(np.unique(h)) for h in hist])
        cols = np.concatenate([np.unique(h) for h in hist]) if hist else np.zeros(0, np.int64)
        h = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(hist), len(self.item_ids)))
        return np.asarray((h @ self.similarity).todense())  # score_u = sum_{j in H_u} S_j


def _keep_top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Only the ``k`` largest entries of each row (ties by column)."""
    indptr, indices, data = [0], [], []
    for i in range(matrix.shape[0]):
        start, end = matrix.indptr[i], matrix.indptr[i + 1]
        cols, vals = matrix.indices[start:end], matrix.data[start:end]
        if len(vals) > k:
            keep = np.lexsort((cols, -vals))[:k]
            cols, vals = cols[keep], vals[keep]
        indices.append(cols)
        data.append(vals)
        indptr.append(indptr[-1] + len(cols))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=matrix.shape)


# --------------------------------------------------------------------------- BPR-MF


@dataclass
class BPRConfig:
    dim: int = 64
    epochs: int = 30
    batch_size: int = 2048
    lr: float = 5e-3
    l2: float = 1e-4  # lambda of the squared norms of the batch's p_u, q_i, q_j
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("dim", "epochs", "batch_size"):
            check_range(key, getattr(self, key), low=1)
        check_range("lr", self.lr, low=0.0, low_open=True)
        check_range("l2", self.l2, low=0.0)


class BPRChannel(RecallChannel):
    """Matrix factorisation trained with the BPR pairwise loss (see the module docstring)."""

    name = "bpr"

    def __init__(self, config: BPRConfig | None = None, columns: Columns | None = None) -> None:
        super().__init__(columns)
        self.config = config or BPRConfig()
        self.losses: list[float] = []  # mean loss per epoch

    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> "BPRChannel":
        self._fit_base(interactions, items)
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        n_users, n_items = self.positives.shape
        users = torch.nn.Embedding(n_users, cfg.dim)
        items_emb = torch.nn.Embedding(n_items, cfg.dim)
        for table in (users, items_emb):
            torch.nn.init.normal_(table.weight, std=0.1, generator=generator)
        optimizer = torch.optim.Adam([users.weight, items_emb.weight], lr=cfg.lr)
        coo = self.positives.tocoo()
        pairs_u, pairs_i = coo.row.astype(np.int64), coo.col.astype(np.int64)
        known = set(zip(pairs_u.tolist(), pairs_i.tolist()))
        for _epoch in range(cfg.epochs):
            order = rng.permutation(len(pairs_u))
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                b = order[start:start + cfg.batch_size]
                u, i = pairs_u[b], pairs_i[b]
                j = rng.integers(0, n_items, size=len(b))
                for _ in range(10):  # resample the negatives that are positives of their user
                    clash = np.fromiter(((a, c) in known for a, c in zip(u.tolist(), j.tolist())), bool, len(b))
                    if not clash.any():
                        break
                    j[clash] = rng.integers(0, n_items, size=int(clash.sum()))
                pu, qi, qj = users(torch.from_numpy(u)), items_emb(torch.from_numpy(i)), items_emb(torch.from_numpy(j))
                x = (pu * qi).sum(-1) - (pu * qj).sum(-1)  # x_ui - x_uj
                loss = -torch.nn.functional.logsigmoid(x).mean() + cfg.l2 * (pu.square().sum(-1) + qi.square().sum(-1)
                                                                             + qj.square().sum(-1)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(b)
            self.losses.append(total / max(1, len(order)))
        self.user_vectors = users.weight.detach().numpy().copy()
        self.item_vectors = items_emb.weight.detach().numpy().copy()
        log.info("bpr: %d epochs, loss %.4f -> %.4f", cfg.epochs, self.losses[0], self.losses[-1])
        return self

    def score(self, user_ids: Sequence, histories: Mapping | None = None) -> np.ndarray:
        rows = self._user_index.get_indexer(pd.Index(list(user_ids)))
        vectors = np.where((rows >= 0)[:, None], self.user_vectors[np.maximum(rows, 0)], 0.0)  # unknown user: zeros
        return vectors @ self.item_vectors.T


# --------------------------------------------------------------------------- merge


@dataclass
class MergeConfig:
    """``n`` candidates; ``quotas``: slots per channel, in priority order (channels not named get 0)."""

    n: int = 200
    quotas: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("n", self.n, low=1)
        for name, slots in self.quotas.items():
            if slots < 0:
                raise ValueError(f"quotas.{name}={slots}: must be >= 0")


def merge_candidates(lists: Mapping[str, np.ndarray], n: int, quotas: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Merge channels' ranked item lists into at most ``n`` distinct items, remembering each item's channel.

    1. In quota order (then the other channels), each channel contributes its best items not yet
       taken, up to its quota (and never past ``n`` in total).
    2. Slots left (quotas below ``n``, or a channel with too few items) are filled round-robin,
       one item per channel per turn, from the channels' next items not yet taken.
    An item proposed by several channels belongs to the first that took it.
    Returns (item ids, channel names), both of length <= n.
    """
    unknown = sorted(set(quotas) - set(lists))
    if unknown:
        raise ValueError(f"quotas name channels {unknown} that produced no list (channels: {sorted(lists)})")
    order = [name for name in quotas] + [name for name in lists if name not in quotas]
    taken: dict = {}
    cursor = dict.fromkeys(order, 0)

    def next_new(name: str):
        items = lists[name]
        while cursor[name] < len(items):
            item = items[cursor[name]].item() if hasattr(items[cursor[name]], "item") else items[cursor[name]]
            cursor[name] += 1
            if item not in taken:
                return item
        return None

    for name in order:
        for _ in range(quotas.get(name, 0)):
            if len(taken) >= n:
                break
            item = next_new(name)
            if item is None:
                break
            taken[item] = name
    active = list(order)
    while len(taken) < n and active:
        for name in list(active):
            if len(taken) >= n:
                break
            item = next_new(name)
            if item is None:
                active.remove(name)
            else:
                taken[item] = name
    return np.array(list(taken.keys())), np.array(list(taken.values()), dtype=object)


def recall_candidates(channels: Sequence[RecallChannel], user_ids: Sequence, merge: MergeConfig,
                      exclude: Sequence[Sequence] | None = None, histories: Mapping | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each user's merged candidates: (item ids, the channel that produced each), at most ``merge.n``."""
    names = [channel.name for channel in channels]
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be distinct, got {names}")
    lists = {channel.name: channel.recall(user_ids, merge.n, exclude, histories) for channel in channels}
    return [merge_candidates({name: per_user[b][0] for name, per_user in lists.items()}, merge.n, merge.quotas)
            for b in range(len(user_ids))]
