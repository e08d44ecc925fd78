"""Recall evaluation: each channel and their merge on the full catalogue (``python -m xdeepfm.recall_eval``).

Protocol (RecBole's full sort, ``xdeepfm.metrics``): the channels are fitted on the train split;
the catalogue is every item of the data set (train, valid and test); each test user's candidates
are the catalogue minus the items they interacted with in train and valid (``eval.exclude_valid``,
RecBole's choice), and their positives are their test items with label 1. For each channel:

- the full-sort top-K metrics (Recall/NDCG/HR/MRR@K, K in ``eval.ks``) of its dense scores;
- Recall@N (N = ``merge.n``, default 200) of its top-N list (``recall``: ties by catalogue position,
  the catalogue sorted by item id, where the full-sort metrics use the pessimistic tie rule), over all positives and over the
  positives that are cold items (never in the train split) only, among users with such a positive.

The merge (``xdeepfm.recall.merge_candidates`` with ``merge.quotas``) gets Recall@N and the cold
Recall@N. Trained channels (BPR, two-tower) and the merge run once per seed of ``eval.seeds``
(their ``seed`` is overridden); the table gives mean ± std over seeds (std 0 for a single run).

With ``ranker.run`` (``TwoStageConfig``) the second stage is measured too, per seed: the ranker alone
(its probability over the whole catalogue), the merged candidates ordered by the RRF of the fused
channels, and the two-stage system (the candidates by ``log p + alpha log RRF``, alpha chosen on the
valid split's users, then the other items), all with the full-sort metrics; and ``ctr``: AUC/GAUC of
every channel's, the RRF's and the two-stage score on the split's labelled impressions.
``PairScorer`` scores every (user, item) pair from the user's and the item's encoded rows.

Usage::

    python -m xdeepfm.recall_eval --config configs/recall_ml100k.yaml --out runs/recall/ml100k_temporal
    python -m xdeepfm.recall_eval --config configs/recall_ml100k.yaml --set 'ranker.run=runs/ml100k_temporal/seed{seed}' \
        --out runs/recall/ml100k_temporal   (the rankers: python train.py --config configs/ml100k_xdeepfm_temporal.yaml ...)
    python -m xdeepfm.recall_eval --config configs/recall_ml100k.yaml --set data.split=random --out runs/recall/ml100k_random
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from mmcore.config import apply_overrides, build, check_range, load_yaml, to_dict
from mmcore.files import write_json, write_text
from mmcore.loop import checkpoint_file
from xdeepfm._deepctr import build_input_features
from xdeepfm.checkpoint import load_ranking_checkpoint
from xdeepfm.data import DataConfig, load_splits
from xdeepfm.data.movielens import MovieLensConfig
from xdeepfm.features import FeaturePipeline, FeatureSpec
from xdeepfm.history import HistoryConfig, build_history
from xdeepfm.inference import FastRanker
from xdeepfm.metrics import auc, full_sort_ranks, full_sort_topk, gauc, metrics_from_ranks, ranks_in_lists
from xdeepfm.model import RankerConfig, XDeepFMRanker
from xdeepfm.recall import (
    BPRChannel,
    BPRConfig,
    Columns,
    ItemCFChannel,
    ItemCFConfig,
    MergeConfig,
    PopularityChannel,
    RecallChannel,
    merge_candidates,
)
from xdeepfm.two_tower import TwoTowerChannel, TwoTowerConfig

log = logging.getLogger(__name__)

CHANNELS = ("popularity", "itemcf", "bpr", "two_tower")
TRAINED = ("bpr", "two_tower")


@dataclass
class RecallEvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    exclude_valid: bool = True  # exclude the user's valid items from the test candidates (RecBole)
    split: Literal["test", "valid"] = "test"  # valid: positives from valid, only train excluded (for tuning)
    batch_size: int = 256  # users per score matrix

    def __post_init__(self) -> None:
        if not self.ks or not self.seeds:
            raise ValueError("ks and seeds must each name at least one value")
        for k in self.ks:
            check_range("ks", k, low=1)
        check_range("batch_size", self.batch_size, low=1)


@dataclass
class TwoStageConfig:
    """The second stage: a trained ranker re-ranks the merged candidates (``ranker:`` of a recall YAML).

    ``run``: the ranker's run directory (its ``best.safetensors``) or a checkpoint file, trained on the
    same data and split; ``{seed}`` in it is replaced by the evaluation seed (a ranker per seed).
    Candidates are ordered by ``log p + alpha * log RRF`` (p: the ranker's probability, RRF: the
    reciprocal-rank fusion of the merge channels' full orders, ``sum_c 1 / (rrf_k + rank_c)``), the
    other catalogue items after them by the RRF; ``alpha`` is chosen per seed among ``alphas``
    on the valid split's users (``select``). ``quota_options``: merge quotas tried on the valid split
    too, each with its own fused channels (those with a quota, unless ``fusion`` names them); the pair
    (quotas, alpha) with the best valid ``select`` is kept per seed (ties: the earlier option, the smaller
    alpha), and the test merge, fusion and two-stage rows use it; empty: ``merge.quotas`` only.
    ``user_fields``: the ranker's fields read from the user (default: ``two_tower.user_fields``); every
    other field is read from the item.
    """

    run: str | None = None
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    rrf_k: float = 60.0
    select: str = "ndcg@10"
    user_fields: list[str] | None = None
    fusion: list[str] | None = None  # the channels fused by the RRF; default: those with a merge quota
    quota_options: list[dict[str, int]] = field(default_factory=list)  # merge quotas chosen on valid (with alpha)
    # a second two-stage variant: the RRF of these channels fitted on every training interaction (label ignored)
    interaction_fusion: list[Literal["itemcf", "popularity"]] = field(default_factory=list)
    batch_rows: int = 8192  # ranker rows per forward batch

    def __post_init__(self) -> None:
        if not self.alphas:
            raise ValueError("ranker.alphas must name at least one value")
        for a in self.alphas:
            check_range("ranker.alphas", a, low=0.0)
        check_range("ranker.rrf_k", self.rrf_k, low=0.0)
        check_range("ranker.batch_rows", self.batch_rows, low=1)
        for i, option in enumerate(self.quota_options):
            if not option or any(not isinstance(v, int) or v < 0 for v in option.values()) or not any(option.values()):
                raise ValueError(f"ranker.quota_options[{i}] = {option!r}: expected channel -> slots (ints >= 0, one > 0)")
        name, _, k = self.select.partition("@")
        if name not in ("recall", "ndcg", "hr", "mrr", "precision") or not k.isdigit():
            raise ValueError(f"ranker.select {self.select!r}: expected e.g. ndcg@10 or recall@50")


@dataclass
class RecallExperiment:
    """A recall YAML (``task: recall``): data, the feature spec the two-tower encodes with, channels, merge."""

    features: FeatureSpec
    task: Literal["recall"] = "recall"
    data: DataConfig = field(default_factory=MovieLensConfig)
    columns: Columns = field(default_factory=Columns)
    channels: list[str] = field(default_factory=lambda: list(CHANNELS))
    itemcf: ItemCFConfig = field(default_factory=ItemCFConfig)
    bpr: BPRConfig = field(default_factory=BPRConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    merge: MergeConfig = field(default_factory=lambda: MergeConfig(quotas={"two_tower": 100, "itemcf": 60, "popularity": 40}))
    eval: RecallEvalConfig = field(default_factory=RecallEvalConfig)
    ranker: TwoStageConfig = field(default_factory=TwoStageConfig)

    def __post_init__(self) -> None:
        if self.ranker.run is not None and int(self.ranker.select.partition("@")[2]) not in self.eval.ks:
            raise ValueError(f"ranker.select {self.ranker.select!r}: its K must be one of eval.ks {self.eval.ks}")
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown:
            raise ValueError(f"channels: {unknown} unknown (expected some of {list(CHANNELS)})")
        options = self.ranker.quota_options if self.ranker.run is not None else []  # only the second stage reads them
        named = set(self.merge.quotas) | set(self.ranker.fusion or ()) | {c for o in options for c in o}
        outside = sorted(named - set(self.channels))
        if outside:
            raise ValueError(
                f"merge.quotas, ranker.fusion or ranker.quota_options names {outside}, which are not in channels {self.channels}"
            )
        self.data.check()


def load_recall_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecallExperiment:
    return build(RecallExperiment, apply_overrides(load_yaml(path), list(overrides)), where=str(path))


def make_channel(name: str, cfg: RecallExperiment, pipeline: FeaturePipeline, seed: int) -> RecallChannel:
    if name == "popularity":
        return PopularityChannel(cfg.columns)
    if name == "itemcf":
        return ItemCFChannel(cfg.itemcf, cfg.columns)
    if name == "bpr":
        return BPRChannel(dataclasses.replace(cfg.bpr, seed=seed), cfg.columns)
    return TwoTowerChannel(pipeline, dataclasses.replace(cfg.two_tower, seed=seed), cfg.columns)


@dataclass
class TestSet:
    """Test users, their positives and exclusions (item ids), and the cold items."""

    users: np.ndarray
    positives: list[np.ndarray]
    exclude: list[np.ndarray]
    cold_items: set
    skipped_users: int


def test_set(splits: dict[str, pd.DataFrame], c: Columns, exclude_valid: bool, target: str = "test") -> TestSet:
    """The users of split ``target`` with a positive; excluded: their train items (and valid ones for the test split)."""
    seen = pd.concat([splits["train"], splits["valid"]] if exclude_valid and target == "test" else [splits["train"]])
    seen_by_user = seen.groupby(c.user)[c.item].agg(lambda s: np.unique(s.to_numpy()))
    test = splits[target]
    positive = test[test[c.label].astype(float) == 1.0].groupby(c.user)[c.item].agg(lambda s: np.unique(s.to_numpy()))
    users = np.sort(test[c.user].unique())
    empty = test[c.item].iloc[:0].to_numpy()
    positives, exclude, kept = [], [], []
    for user in users:
        ex = seen_by_user.get(user, empty)
        pos = np.setdiff1d(positive.get(user, empty), ex)
        if len(pos):
            kept.append(user)
            positives.append(pos)
            exclude.append(ex)
    cold = set(pd.unique(test[c.item])) - set(pd.unique(splits["train"][c.item]))
    return TestSet(np.array(kept), positives, exclude, cold, len(users) - len(kept))


def catalogue(splits: dict[str, pd.DataFrame], c: Columns) -> pd.DataFrame:
    """One row per item of the data set (its item columns as in the first row that names it), by item id."""
    frame = pd.concat([splits["train"], splits["valid"], splits["test"]]).drop_duplicates(c.item)
    return frame.sort_values(c.item, kind="stable").reset_index(drop=True)


def evaluate_channel(
    channel: RecallChannel, data: TestSet, ks: list[int], n: int, batch_size: int
) -> tuple[dict, list[np.ndarray]]:
    """(metrics, top-n lists) of one fitted channel on the test set."""
    positions = [channel.item_positions(p) for p in data.positives]
    excluded = [channel.item_positions(e) for e in data.exclude]
    excluded = [e[e >= 0] for e in excluded]
    metrics = full_sort_topk(lambda rows: channel.score(data.users[rows]), positions, excluded, tuple(ks), batch_size)
    lists = []
    for start in range(0, len(data.users), batch_size):
        rows = slice(start, start + batch_size)
        lists += [items for items, _ in channel.recall(data.users[rows], n, data.exclude[rows])]
    metrics.update(recall_at_n(lists, data, n))
    return metrics, lists


def recall_at_n(lists: list[np.ndarray], data: TestSet, n: int) -> dict:
    overall = metrics_from_ranks(ranks_in_lists(lists, data.positives), (n,))
    cold_pos = [np.array([p for p in pos.tolist() if p in data.cold_items]) for pos in data.positives]
    cold = metrics_from_ranks(ranks_in_lists(lists, cold_pos), (n,))
    return {
        f"list_recall@{n}": overall[f"recall@{n}"],
        f"cold_recall@{n}": cold[f"recall@{n}"],
        "cold_users": cold["users"],
        "cold_positives": int(sum(len(p) for p in cold_pos)),
    }


# --------------------------------------------------------------------------- the second stage


class PairScorer:
    """A trained ranker scoring every (user, item) pair of a user batch against the catalogue.

    The ranker's input row of a pair is its user fields' columns from the user's row and the other
    fields' columns from the item's row (both encoded once by the ranker's fitted pipeline), so a
    user batch costs one forward pass over ``B x n_items`` rows and no per-pair feature encoding.
    A ranker with a behaviour history (``sequence`` fields) reads it as a user field: the ``users``
    frame must carry its columns, one history per user (``users_as_of``: as of their first row of the
    evaluated split); a ranker with as-of-time statistics (``history.stats``) is refused, as those
    differ per item and time.
    """

    def __init__(
        self, path: str | Path, users: pd.DataFrame | None, items: pd.DataFrame, user_fields: list[str], data: dict | None = None
    ) -> None:
        path = checkpoint_file(path)
        ckpt = load_ranking_checkpoint(path)
        model_cfg = build(RankerConfig, dict(ckpt.config.get("model", {})), f"{path}:config.model")
        if model_cfg.implementation != "ours":
            raise ValueError(
                f"{path}: a {model_cfg.implementation!r} checkpoint; the two-stage evaluation reads the project's ranker (ours)"
            )
        ranker_data = ckpt.config.get("data")
        if data is not None and isinstance(ranker_data, dict):
            differ = {k: (ranker_data[k], v) for k, v in data.items() if k in ranker_data and ranker_data[k] != v}
            if differ:
                raise ValueError(
                    f"{path}: the ranker was trained on other data than this evaluation's (key: (ranker, here)): {differ}"
                )
        pipeline = ckpt.features
        specs = pipeline.spec.fields
        self.history = self.history_of(path, ckpt)
        if self.history is not None and self.history.stats:
            raise ValueError(f"{path}: as-of-time statistics (history.stats); the full-sort evaluation scores rankers "
                             "without them (a sequence history is read from the users frame)")
        unknown = sorted(set(user_fields) - {f.name for f in specs})
        if unknown:
            raise ValueError(f"ranker.user_fields {unknown}: not fields of the ranker ({[f.name for f in specs]})")
        seed = int(ckpt.config.get("train", {}).get("seed", 0))
        self.model = XDeepFMRanker([pipeline.fitted[f.name] for f in specs], model_cfg, seed=seed)
        self.model.load_state_dict(ckpt.model_state)
        self.model.eval()
        self.fast = FastRanker.from_model(self.model)  # the same logits to 1e-5 (tests/xdeepfm), faster on a CPU
        self.path = path
        self._pipeline, self._index = pipeline, build_input_features(self.model.columns)
        self._width = max(end for _, end in self._index.values())
        self._user_fields = set(user_fields) | {f.name for f in specs if f.kind == "sequence"}  # a history is the user's
        history_columns = {f.column: "" for f in specs if f.kind == "sequence" and f.column not in items.columns}
        self.item_rows = self._encode(  # (the items carry no history: an empty one fills the column, which is not kept)
            pipeline, items.assign(**history_columns), self._index, self._width, {f.name for f in specs} - self._user_fields
        )
        self.user_rows, self._user_index = torch.zeros((0, self._width)), pd.Index([])  # no user scores until set_users
        if users is not None:  # else set_users before scoring (e.g. with users_as_of(..., self.history))
            self.set_users(users)

    @staticmethod
    def history_of(path: str | Path, ckpt=None) -> HistoryConfig | None:
        """The ranker's ``history:`` section when it has a ``sequence`` field, else None."""
        ckpt = ckpt or load_ranking_checkpoint(checkpoint_file(path))
        if not any(f.kind == "sequence" for f in ckpt.features.spec.fields):
            return None
        raw = ckpt.config.get("history")
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a sequence field but no history section in its config")
        return build(HistoryConfig, dict(raw), f"{path}:config.history")

    def set_users(self, users: pd.DataFrame) -> None:
        """Encode the user rows (one per user, indexed by user id) the pairs read their user fields from."""
        columns = [f.column for f in self._pipeline.spec.fields if f.kind == "sequence"]
        missing = [col for col in columns if col not in users.columns]
        if missing:
            raise ValueError(f"{self.path}: the ranker reads a history; the users frame has no column {missing} "
                             "(build it with users_as_of)")
        self.user_rows = self._encode(self._pipeline, users, self._index, self._width, self._user_fields)
        self._user_index = pd.Index(users.index)

    @staticmethod
    def _encode(pipeline: FeaturePipeline, frame: pd.DataFrame, index: dict, width: int, keep: set) -> torch.Tensor:
        """Rows of ``frame`` encoded, only the columns of the ``keep`` fields filled (others 0)."""
        encoded = pipeline.transform(frame.reset_index(drop=True), "two-stage evaluation")
        matrix = np.zeros((len(frame), width), np.float32)
        for name, (start, end) in index.items():
            if name in keep:
                matrix[:, start:end] = encoded[name].reshape(len(frame), end - start)
        return torch.from_numpy(matrix)

    def _rows(self, user_ids: np.ndarray) -> np.ndarray:
        rows = self._user_index.get_indexer(pd.Index(user_ids))
        if (rows < 0).any():
            raise KeyError(f"users without a feature row: {list(np.asarray(user_ids)[rows < 0][:5])}")
        return rows

    @torch.inference_mode()
    def _forward(self, X: torch.Tensor, batch_rows: int) -> np.ndarray:
        return np.concatenate(
            [torch.sigmoid(self.fast(X[i : i + batch_rows])).reshape(-1).numpy() for i in range(0, len(X), batch_rows)]
        )

    def score(self, user_ids: np.ndarray, batch_rows: int = 8192) -> np.ndarray:
        """(B, n_items) click probabilities of the users (ids of the ``users`` frame's index) for every catalogue item."""
        rows = self._rows(user_ids)
        n_items = len(self.item_rows)
        out = np.empty((len(rows), n_items), np.float32)
        per = max(1, batch_rows // n_items)
        for start in range(0, len(rows), per):
            block = rows[start : start + per]
            X = (self.user_rows[block][:, None, :] + self.item_rows[None, :, :]).reshape(-1, self.item_rows.shape[1])
            out[start : start + len(block)] = self._forward(X, batch_rows).reshape(len(block), n_items)
        return out

    def score_pairs(self, user_ids: np.ndarray, items: list[np.ndarray], batch_rows: int = 8192) -> list[np.ndarray]:
        """Click probabilities of each user's ``items`` (catalogue positions), one array per user."""
        rows = self._rows(user_ids)
        lengths = [len(i) for i in items]
        if not sum(lengths):
            return [np.zeros(0, np.float32) for _ in items]
        u = torch.from_numpy(np.repeat(rows, lengths))
        i = torch.from_numpy(np.concatenate([np.asarray(x, dtype=np.int64) for x in items]))
        p = self._forward(self.user_rows[u] + self.item_rows[i], batch_rows)
        return np.split(p, np.cumsum(lengths)[:-1])


def user_frame(splits: dict[str, pd.DataFrame], c: Columns) -> pd.DataFrame:
    """One row per user (their first row in train, valid, test), indexed by user id."""
    frame = pd.concat([splits["train"], splits["valid"], splits["test"]]).drop_duplicates(c.user)
    return frame.set_index(c.user, drop=False)


def users_as_of(splits: dict[str, pd.DataFrame], c: Columns, split: str, history: HistoryConfig | None) -> pd.DataFrame:
    """``user_frame`` with the ranker's history columns: each user's last positives (and negatives, with
    ``negative_column``) strictly before their first row of ``split`` (``xdeepfm.history.build_history``,
    from every split or the train split as ``history_from`` says): what the ranker would see when the
    user comes back at that time. Users without a row in ``split`` get their history after every event."""
    frame = user_frame(splits, c)
    if history is None:
        return frame
    first = splits[split].groupby(c.user)[history.time_column].min()
    rows = pd.DataFrame(
        {history.user_column: frame.index, history.time_column: first.reindex(frame.index).fillna(np.inf).to_numpy(np.float64)},
        index=frame.index,
    )
    events = pd.concat(list(splits.values()), ignore_index=True) if history.history_from == "all" else splits["train"]
    frame = frame.copy()
    for column, negatives in ((history.column, False), (history.negative_column, True)):
        if column:
            frame[column] = build_history(rows, events, history, negatives=negatives).to_numpy()
    return frame


def channel_orders(scores: np.ndarray, exclude: list[np.ndarray]) -> np.ndarray:
    """(B, n) 1-based rank of every item in each row's order (score descending, ties by position), excluded items last."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    for b, pos in enumerate(exclude):
        scores[b, pos] = -np.inf
    n = scores.shape[1]
    order = np.lexsort((np.broadcast_to(np.arange(n), scores.shape), -scores), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, n + 1)[None, :].repeat(len(scores), 0), axis=1)
    return ranks


def rrf(ranks: list[np.ndarray], k: float) -> np.ndarray:
    """Reciprocal-rank fusion ``sum_c 1 / (k + rank_c)`` of channels' (B, n) rank arrays."""
    return sum(1.0 / (k + r) for r in ranks)


def two_stage_scores(candidates: np.ndarray, candidate_score: np.ndarray, rest_score: np.ndarray) -> np.ndarray:
    """A dense (n_items,) score whose order is: the ``candidates`` (positions) by ``candidate_score``, then
    every other item by ``rest_score`` (n_items,); ties stay ties (the full sort's pessimistic tie rule applies)."""
    rest_score = np.asarray(rest_score, dtype=np.float64)
    out = rankdata(rest_score, method="min") / (len(rest_score) + 1.0)  # in (0, 1), the order of rest_score
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates):
        if len(np.unique(candidates)) != len(candidates):
            raise ValueError("candidates must be distinct")
        out[candidates] = 2.0 + rankdata(np.asarray(candidate_score, dtype=np.float64), method="min") / (len(candidates) + 1.0)
    return out


def two_stage_ranks(
    users: np.ndarray,
    data: TestSet,
    merged: list[np.ndarray],
    fusions: dict[str, dict[str, RecallChannel]],
    scorer: PairScorer,
    catalogue_ids: np.ndarray,
    cfg: TwoStageConfig,
    ks: list[int],
    batch_size: int,
    ranker_alone: bool = True,
) -> dict[str, list[np.ndarray]]:
    """The positives' full-sort ranks of every second-stage variant. For each fusion ``f`` of ``fusions``
    (a name -> the fitted channels it fuses): ``f/fusion`` (the merged candidates by their RRF alone),
    ``f/alpha=<a>`` (by ``log p + a log RRF``; the other items after them by RRF) for each alpha and
    ``f/channel=<c>`` (each fused channel alone over the catalogue); with ``ranker_alone`` also
    ``ranker`` (the ranker's probability over the whole catalogue)."""
    positions = {f: {name: ch.item_positions(catalogue_ids) for name, ch in chs.items()} for f, chs in fusions.items()}
    index = pd.Index(catalogue_ids)
    out: dict[str, list[np.ndarray]] = {"ranker": []} if ranker_alone else {}
    max_rank = max(ks)
    for start in range(0, len(users), batch_size):
        rows = np.arange(start, min(start + batch_size, len(users)))
        pos = [index.get_indexer(data.positives[i]) for i in rows]
        exc = [index.get_indexer(data.exclude[i]) for i in rows]
        exc = [e[e >= 0] for e in exc]
        cand = [index.get_indexer(merged[i]) for i in rows]
        if any((c < 0).any() for c in cand):
            raise ValueError("merged candidates outside the catalogue")
        if ranker_alone:
            prob = scorer.score(users[rows], cfg.batch_rows)
            out["ranker"] += full_sort_ranks(prob, pos, exc, max_rank)[0]
            cand_prob = [prob[b, c] for b, c in enumerate(cand)]
        else:
            cand_prob = scorer.score_pairs(users[rows], cand, cfg.batch_rows)
        log_p = [np.log(np.clip(p.astype(np.float64), 1e-7, 1.0)) for p in cand_prob]
        for f, chs in fusions.items():
            dense = {name: ch.score(users[rows])[:, positions[f][name]] for name, ch in chs.items()}
            for name, scores in dense.items():
                out.setdefault(f"{f}/channel={name}", []).extend(full_sort_ranks(scores, pos, exc, max_rank)[0])
            fused = np.log(rrf([channel_orders(scores, exc) for scores in dense.values()], cfg.rrf_k))
            variants = {"fusion": [fused[b, c] for b, c in enumerate(cand)]}
            variants.update({f"alpha={a:g}": [log_p[b] + a * fused[b, c] for b, c in enumerate(cand)] for a in cfg.alphas})
            for name, scores in variants.items():
                rows_dense = np.stack([two_stage_scores(c, sc, fused[b]) for b, (c, sc) in enumerate(zip(cand, scores))])
                out.setdefault(f"{f}/{name}", []).extend(full_sort_ranks(rows_dense, pos, exc, max_rank)[0])
    return out


def run(cfg: RecallExperiment) -> dict:
    c = cfg.columns
    splits = load_splits(cfg.data)
    items = catalogue(splits, c)
    data = test_set(splits, c, cfg.eval.exclude_valid, cfg.eval.split)
    log.info(
        "recall eval on %s: %d items, %d users with a positive (%d skipped), %d cold items",
        cfg.eval.split,
        len(items),
        len(data.users),
        data.skipped_users,
        len(data.cold_items),
    )
    pipeline = FeaturePipeline(cfg.features).fit(splits["train"]) if "two_tower" in cfg.channels else None
    runs: dict[str, list[dict]] = {}
    fitted: dict[str, RecallChannel] = {}
    ctr: dict[str, list[dict]] = {}
    for seed in cfg.eval.seeds:
        lists = {}
        for name in cfg.channels:
            if name not in TRAINED and seed != cfg.eval.seeds[0]:
                lists[name] = runs[name][0]["_lists"]  # deterministic: fitted once
                continue
            started = time.perf_counter()
            channel = make_channel(name, cfg, pipeline, seed).fit(splits["train"], items)
            fitted[name] = channel
            fit_s = time.perf_counter() - started
            metrics, lists[name] = evaluate_channel(channel, data, cfg.eval.ks, cfg.merge.n, cfg.eval.batch_size)
            metrics.update(seed=seed, fit_s=fit_s, _lists=lists[name])
            runs.setdefault(name, []).append(metrics)
            log.info("seed %d %s: %s", seed, name, {k: v for k, v in metrics.items() if k != "_lists"})
        stage = second_stage(cfg, splits, items, data, lists, fitted, seed) if cfg.ranker.run is not None else {}
        quotas = stage.pop("quotas", cfg.merge.quotas)  # the second stage's choice on valid, or merge.quotas
        merged = merge_lists(lists, cfg.channels, len(data.users), cfg.merge.n, quotas)
        merge_metrics = recall_at_n([m[0] for m in merged], data, cfg.merge.n)
        shares = pd.Series(np.concatenate([m[1] for m in merged])).value_counts(normalize=True).to_dict()
        merge_metrics.update(seed=seed, channel_share=shares, quotas=dict(quotas))
        runs.setdefault("merge", []).append(merge_metrics)
        for name, metrics in stage.pop("ctr", {}).items():
            ctr.setdefault(name, []).append({**metrics, "seed": seed})
        for name, metrics in stage.items():
            runs.setdefault(name, []).append(metrics)
    for name in runs:
        for r in runs[name]:
            r.pop("_lists", None)
    return {
        "config": to_dict(cfg),
        "items": len(items),
        "test_users": len(data.users),
        "skipped_users": data.skipped_users,
        "cold_items": len(data.cold_items),
        "runs": runs,
        "ctr": ctr,
    }


def fusion_channels(cfg: RecallExperiment, quotas: dict[str, int] | None = None) -> list[str]:
    """The channels whose orders the second stage fuses: ``ranker.fusion``, else those with a quota in
    ``quotas`` (default ``merge.quotas``), else every channel."""
    if cfg.ranker.fusion:
        return list(cfg.ranker.fusion)
    quotas = cfg.merge.quotas if quotas is None else quotas
    return [name for name, slots in quotas.items() if slots > 0] or list(cfg.channels)


def channel_lists(
    channels: dict[str, RecallChannel], names: list[str], data: TestSet, n: int, batch_size: int
) -> dict[str, list[np.ndarray]]:
    """Each fitted channel's top-``n`` list (item ids) for every user of ``data``."""
    lists: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(data.users), batch_size):
        rows = slice(start, start + batch_size)
        for name in names:
            lists[name] += [items for items, _ in channels[name].recall(data.users[rows], n, data.exclude[rows])]
    return lists


def merge_lists(
    lists: dict[str, list[np.ndarray]], names: list[str], n_users: int, n: int, quotas: dict[str, int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each user's merge of the channels' lists: (item ids, the channel of each), ``merge_candidates``."""
    return [merge_candidates({name: lists[name][u] for name in names}, n, quotas) for u in range(n_users)]


def choose(on_valid: dict[tuple[int, float], float]) -> tuple[int, float]:
    """The (quota option, alpha) with the best valid metric; ties: the earlier option, then the smaller alpha."""
    return max(on_valid, key=lambda key: (on_valid[key], -key[0], -key[1]))


def impression_ctr(
    cfg: RecallExperiment,
    splits: dict[str, pd.DataFrame],
    channels: dict[str, RecallChannel],
    scorer: PairScorer,
    catalogue_ids: np.ndarray,
    alpha: float,
    fusion: list[str],
) -> dict[str, dict]:
    """AUC and GAUC of every system's score on the labelled impressions of the evaluated split (all its rows):
    each channel's score, the RRF of the fusion channels, and the two-stage score ``log p + alpha log RRF``
    (the RRF over the user's catalogue without their excluded items, as in the full sort)."""
    c, target = cfg.columns, cfg.eval.split
    rows = splits[target]
    seen = pd.concat([splits["train"], splits["valid"]] if cfg.eval.exclude_valid and target == "test" else [splits["train"]])
    seen_by_user = seen.groupby(c.user)[c.item].agg(lambda s: np.unique(s.to_numpy()))
    index = pd.Index(catalogue_ids)
    positions = {name: ch.item_positions(catalogue_ids) for name, ch in channels.items()}
    by_user = rows.groupby(c.user, sort=True)
    users = np.array(list(by_user.groups.keys()))
    scores: dict[str, list[np.ndarray]] = {name: [] for name in [*channels, "fusion", "two_stage"]}
    labels, groups = [], []
    for start in range(0, len(users), cfg.eval.batch_size):
        batch = users[start : start + cfg.eval.batch_size]
        frames = [by_user.get_group(u) for u in batch]
        items = [index.get_indexer(f[c.item]) for f in frames]
        exc = [index.get_indexer(seen_by_user.get(u, np.zeros(0))) for u in batch]
        exc = [e[e >= 0] for e in exc]
        dense = {name: ch.score(batch)[:, positions[name]] for name, ch in channels.items()}
        fused = np.log(rrf([channel_orders(dense[n], exc) for n in fusion], cfg.ranker.rrf_k))
        probs = scorer.score_pairs(batch, items, cfg.ranker.batch_rows)
        for b, it in enumerate(items):
            for name in channels:
                scores[name].append(dense[name][b, it])
            scores["fusion"].append(fused[b, it])
            scores["two_stage"].append(np.log(np.clip(probs[b].astype(np.float64), 1e-7, 1.0)) + alpha * fused[b, it])
            labels.append(frames[b][c.label].to_numpy(np.float64))
            groups.append(np.full(len(it), b + start))
    y, g = np.concatenate(labels), np.concatenate(groups)
    return {
        name: {"auc": auc(y, np.concatenate(s)), "gauc": gauc(y, np.concatenate(s), g), "rows": len(y)}
        for name, s in scores.items()
    }


def interaction_channels(cfg: RecallExperiment, train: pd.DataFrame, items: pd.DataFrame) -> dict[str, RecallChannel]:
    """``ranker.interaction_fusion``'s channels fitted on every training interaction as a positive (label
    ignored): an estimate of whether the user meets the item at all, which the ranker's P(like | met) completes."""
    met = train.copy()
    met[cfg.columns.label] = 1.0
    out = {}
    for name in cfg.ranker.interaction_fusion:
        out[name] = (PopularityChannel(cfg.columns) if name == "popularity" else ItemCFChannel(cfg.itemcf, cfg.columns)).fit(
            met, items
        )
    return out


def second_stage(
    cfg: RecallExperiment,
    splits: dict[str, pd.DataFrame],
    items: pd.DataFrame,
    data: TestSet,
    lists: dict[str, list[np.ndarray]],
    channels: dict[str, RecallChannel],
    seed: int,
) -> dict:
    """Full-sort metrics of the ranker alone, the RRF of the merged candidates, and the two-stage system
    for one seed: the merge quotas (``ranker.quota_options``, else ``merge.quotas``) and alpha chosen on
    the valid split's users (see ``TwoStageConfig``), then the test split read once with them. ``lists``:
    the channels' top-``merge.n`` lists of the test users. Also ``quotas`` (the chosen ones) and ``ctr``
    (the CTR metrics)."""
    c, rk, ks = cfg.columns, cfg.ranker, tuple(cfg.eval.ks)
    path = rk.run.replace("{seed}", str(seed))
    started = time.perf_counter()
    scorer = PairScorer(path, None, items, rk.user_fields or cfg.two_tower.user_fields, to_dict(cfg.data))
    history = scorer.history
    scorer.set_users(users_as_of(splits, c, "valid", history))
    met = interaction_channels(cfg, splits["train"], items) if rk.interaction_fusion else {}
    ids = items[c.item].to_numpy()
    n, names = cfg.merge.n, list(cfg.channels)
    options = [dict(o) for o in rk.quota_options] or [dict(cfg.merge.quotas)]

    # 1. on valid: every quota option (its merge, its fused channels) x every alpha
    valid = test_set(splits, c, False, "valid")
    valid_lists = channel_lists(channels, names, valid, n, cfg.eval.batch_size)
    on_valid: dict[tuple[int, float], float] = {}
    valid_ranks: list[dict[str, list[np.ndarray]]] = []
    valid_merged: list[list[np.ndarray]] = []
    for i, quotas in enumerate(options):
        valid_merged.append([m[0] for m in merge_lists(valid_lists, names, len(valid.users), n, quotas)])
        fusions = {"merge": {name: channels[name] for name in fusion_channels(cfg, quotas)}}
        valid_ranks.append(two_stage_ranks(valid.users, valid, valid_merged[i], fusions, scorer, ids, rk, cfg.eval.ks,
                                           cfg.eval.batch_size, ranker_alone=False))
        on_valid.update({(i, a): metrics_from_ranks(valid_ranks[i][f"merge/alpha={a:g}"], ks)[rk.select] for a in rk.alphas})
    chosen, _ = choose(on_valid)
    quotas, valid_ranks = options[chosen], valid_ranks[chosen]
    best_by_option = [max(v for (j, _), v in on_valid.items() if j == i) for i in range(len(options))]
    if met:  # the interaction fusion's alpha: on the chosen option's candidates only
        valid_ranks.update(two_stage_ranks(valid.users, valid, valid_merged[chosen], {"met": met}, scorer, ids, rk,
                                           cfg.eval.ks, cfg.eval.batch_size, ranker_alone=False))
    log.info("seed %d: merge quotas %s chosen on valid (%s by option: %s)", seed, quotas, rk.select, dict(enumerate(best_by_option)))

    # 2. on test, with the chosen quotas (a history ranker: the users' histories as of their first test row)
    if history is not None:
        scorer.set_users(users_as_of(splits, c, cfg.eval.split, history))
    merged = [m[0] for m in merge_lists(lists, names, len(data.users), n, quotas)]
    fusions = {"merge": {name: channels[name] for name in fusion_channels(cfg, quotas)}, **({"met": met} if met else {})}
    test_ranks = two_stage_ranks(data.users, data, merged, fusions, scorer, ids, rk, cfg.eval.ks, cfg.eval.batch_size)
    base = {"seed": seed, "ranker": str(scorer.path)}
    out: dict = {"ranker": {**metrics_from_ranks(test_ranks["ranker"], ks), **base}}
    alphas = {}
    for f in fusions:
        suffix = "" if f == "merge" else f"_{f}"
        by_alpha = {a: metrics_from_ranks(valid_ranks[f"{f}/alpha={a:g}"], ks)[rk.select] for a in rk.alphas}
        alpha = alphas[f] = max(rk.alphas, key=lambda a: (by_alpha[a], -a))  # the smaller alpha on a tie
        out[f"fusion{suffix}"] = {
            **metrics_from_ranks(test_ranks[f"{f}/fusion"], ks),
            **base,
            f"valid_{rk.select}": metrics_from_ranks(valid_ranks[f"{f}/fusion"], ks)[rk.select],
        }
        out[f"two_stage{suffix}"] = {
            **metrics_from_ranks(test_ranks[f"{f}/alpha={alpha:g}"], ks),
            **base,
            "alpha": alpha,
            "quotas": quotas,
            "fusion": list(fusions[f]),
            f"valid_{rk.select}": by_alpha,
            "valid_users": len(valid.users),
            "test_by_alpha": {f"{a:g}": metrics_from_ranks(test_ranks[f"{f}/alpha={a:g}"], ks) for a in rk.alphas},
        }
        if f != "merge":
            for name in fusions[f]:
                out[f"{name}{suffix}"] = {**metrics_from_ranks(test_ranks[f"{f}/channel={name}"], ks), "seed": seed}
        log.info(
            "seed %d two-stage, fusion %s %s: alpha %g chosen on valid (%s %s); test %s",
            seed,
            f,
            list(fusions[f]),
            alpha,
            rk.select,
            by_alpha,
            {k: v for k, v in out[f"two_stage{suffix}"].items() if k.startswith(("recall@", "ndcg@"))},
        )
    out["two_stage"]["seconds"] = time.perf_counter() - started
    out["two_stage"]["valid_by_option"] = [
        {"quotas": o, f"best_valid_{rk.select}": best} for o, best in zip(options, best_by_option)
    ]
    out["ctr"] = impression_ctr(cfg, splits, channels, scorer, ids, alphas["merge"], list(fusions["merge"]))
    out["quotas"] = quotas
    return out


def summary(result: dict, ks: list[int], n: int) -> str:
    """The Markdown table: mean ± std over seeds per channel."""
    cols = (
        [f"recall@{k}" for k in ks]
        + [f"ndcg@{k}" for k in ks]
        + [f"hr@{ks[0]}", f"mrr@{ks[0]}", f"list_recall@{n}", f"cold_recall@{n}"]
    )
    head = ["channel", "seeds", *[c.replace("list_recall", "Recall").replace("cold_recall", "cold Recall") for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(cols)]
    for name, runs in result["runs"].items():
        cells = []
        for col in cols:
            values = [r[col] for r in runs if r.get(col) is not None]
            cells.append(
                "" if not values else f"{np.mean(values):.4f} ± {np.std(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"
            )
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Recall@N of each recall channel and of their merge (full catalogue).")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=None, help="directory for recall_metrics.json and recall_table.md")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_recall_experiment(args.config, args.overrides)
    result = run(cfg)
    table = summary(result, cfg.eval.ks, cfg.merge.n)
    header = (
        f"{cfg.eval.split} split: {result['items']} items, {result['test_users']} users with a positive ({result['skipped_users']} without), "
        f"{result['cold_items']} cold items; seeds {cfg.eval.seeds}"
    )
    print(header + "\n\n" + table)
    if args.out is not None:
        write_json(args.out / "recall_metrics.json", result)
        write_text(args.out / "recall_table.md", header + "\n\n" + table + "\n")
        log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
