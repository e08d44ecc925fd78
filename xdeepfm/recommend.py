"""Recommendation: recall over the whole catalogue, then the ranker (``POST /v1/recommend``).

A :class:`Recommender` holds the recall channels of ``xdeepfm.recall`` fitted on the training
interactions (popularity, ItemCF, BPR-MF, the two-tower model over its FAISS index) and the merge of
their lists (``MergeConfig``: ``n`` candidates, per-channel quotas). For one user,
``recommend(engine, store, recommender, user_id, k)``:

1. reads the user's history (their last positive items) and the items they have already met from
   the store's event log (``SQLiteStore.history`` / ``seen``), so an event posted a moment ago
   counts;
2. asks every channel for its best items outside the seen ones (``exclude_seen``) and merges them
   into at most ``n`` candidates, each remembering the channel that proposed it;
3. ranks the candidates by id with the ranker (``xdeepfm.catalog.rank_by_id``: features from the
   store) and returns the top ``k`` with their scores and channels.

The channels answer one user at a time in serving form: popularity walks its precomputed order,
ItemCF sums the sparse similarity rows of the history (only the items they reach are sorted),
BPR takes the user's factor against every item's (a user without training interactions gets no
BPR list), and the two-tower model embeds the user and searches the index. ``add_items`` puts freshly
ingested items into the two-tower index from their content, so a new item can be recalled at once.

``Recommender.fit(config, pipeline, interactions, items)`` fits the channels named in the recall
config (``xdeepfm.recall_eval.RecallExperiment``); ``save(directory)`` writes ``recommender.json``
(channels, merge, columns, ids), ``popularity.safetensors``, ``itemcf.safetensors`` (the CSR
arrays), ``bpr.safetensors`` (the factors) and ``two_tower/`` -- no pickle -- and
``Recommender.load(directory, pipeline)`` reads them back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mmcore.config import build, check_range
from mmcore.files import write_bytes
from xdeepfm.catalog import rank_by_id
from xdeepfm.features import FeaturePipeline
from xdeepfm.recall import (
    BPRChannel,
    BPRConfig,
    Columns,
    ItemCFChannel,
    MergeConfig,
    PopularityChannel,
    RecallChannel,
    merge_candidates,
    top_n,
)
from xdeepfm.recall_eval import catalogue
from xdeepfm.serving import ScoringEngine
from xdeepfm.store import SQLiteStore
from xdeepfm.two_tower import TwoTowerChannel, last_positions

log = logging.getLogger(__name__)

SERVING_CHANNELS = ("popularity", "itemcf", "bpr", "two_tower")
META_FILE = "recommender.json"
FORMAT_VERSION = 1


def default_recommender_path(artifact: str | Path) -> Path:
    """The recommender directory beside an artifact: ``<artifact>.recall``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".recall")


@dataclass
class Recommendation:
    """The top items for one user: ids, ranker probabilities, the channel that recalled each."""

    ids: list[str]
    scores: list[float]
    channels: list[str]
    n_candidates: int
    n_seen: int
    history: list[str] = field(default_factory=list)  # newest first, as the ranker read it
    inputs: np.ndarray | None = None  # the ranker's input rows of ``ids`` (what ``xdeepfm.explain`` reads)


class Recommender:
    """Recall channels and their merge (see the module docstring)."""

    def __init__(self, channels: dict[str, RecallChannel], merge: MergeConfig, columns: Columns | None = None) -> None:
        unknown = sorted(set(channels) - set(SERVING_CHANNELS))
        if unknown:
            raise ValueError(f"channels {unknown}: a recommender serves {list(SERVING_CHANNELS)}")
        if not channels:
            raise ValueError("a recommender needs at least one recall channel")
        outside = sorted(set(merge.quotas) - set(channels))
        if outside:
            raise ValueError(f"merge.quotas names {outside}, which are not channels ({sorted(channels)})")
        self.channels, self.merge, self.columns = channels, merge, columns or Columns()
        self._synced_at: float | None = None
        self._synced_generation: int | None = None
        self._sync_lock = threading.Lock()
        self._prepare()

    def _prepare(self) -> None:
        """The serving forms: popularity's order, ItemCF's item positions."""
        pop = self.channels.get("popularity")
        if pop is not None:
            self._popular = pop.item_ids[np.argsort(-pop.counts, kind="stable")].astype(str)
            self._popular_scores = np.sort(pop.counts)[::-1]
        cf = self.channels.get("itemcf")
        if cf is not None:
            self._cf_position = {str(item): i for i, item in enumerate(cf.item_ids.tolist())}
            self._cf_ids = cf.item_ids.astype(str)

    # -- fitting and files -------------------------------------------------------------------
    @classmethod
    def fit(cls, config, pipeline: FeaturePipeline, interactions: pd.DataFrame,
            items: pd.DataFrame | None = None, seed: int = 0) -> "Recommender":
        """Fit the serving channels of ``config`` (a ``RecallExperiment``) on the training ``interactions``
        (ids compared as strings, like the store's)."""
        c = config.columns
        interactions = _string_ids(interactions, c)
        items = None if items is None else _string_ids(items, c, user=False)
        channels: dict[str, RecallChannel] = {}
        for name in config.channels:
            if name not in SERVING_CHANNELS:
                raise ValueError(f"channels: {name!r} is not a serving channel ({list(SERVING_CHANNELS)})")
            if name == "popularity":
                channel: RecallChannel = PopularityChannel(c)
            elif name == "itemcf":
                channel = ItemCFChannel(config.itemcf, c)
            elif name == "bpr":
                channel = BPRChannel(dataclasses.replace(config.bpr, seed=seed), c)
            else:
                channel = TwoTowerChannel(pipeline, dataclasses.replace(config.two_tower, seed=seed), c)
            channels[name] = channel.fit(interactions, items)
            log.info("recommender: fitted %s on %d interactions (%d items)", name, len(interactions), len(channel.item_ids))
        return cls(channels, config.merge, c)

    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "channels": list(self.channels),
                                "merge": asdict(self.merge), "columns": asdict(self.columns), "ids": {}}
        for name, channel in self.channels.items():
            meta["ids"][name] = {"items": channel.item_ids.astype(str).tolist()}
            if name == "popularity":
                write_bytes(directory / "popularity.safetensors", save({"counts": np.ascontiguousarray(channel.counts)}))
            elif name == "itemcf":
                sim = channel.similarity.tocsr()
                write_bytes(directory / "itemcf.safetensors", save({
                    "indptr": sim.indptr.astype(np.int64), "indices": sim.indices.astype(np.int64),
                    "data": sim.data.astype(np.float32)}))
                meta["itemcf"] = asdict(channel.config)
            elif name == "bpr":
                write_bytes(directory / "bpr.safetensors", save({
                    "user_vectors": np.ascontiguousarray(channel.user_vectors, np.float32),
                    "item_vectors": np.ascontiguousarray(channel.item_vectors, np.float32)}))
                meta["ids"][name]["users"] = channel.user_ids.astype(str).tolist()
                meta["bpr"] = asdict(channel.config)
            else:
                channel.save(directory / "two_tower")
        write_bytes(directory / META_FILE, json.dumps(meta).encode())
        return directory

    @classmethod
    def load(cls, directory: str | Path, pipeline: FeaturePipeline) -> "Recommender":
        from safetensors.numpy import load_file

        directory = Path(directory)
        path = directory / META_FILE
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: recommender not found (build it with `mmfusion recommender`)") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        columns = build(Columns, meta["columns"], f"{path}:columns")
        channels: dict[str, RecallChannel] = {}
        for name in meta["channels"]:
            if name == "two_tower":
                channels[name] = TwoTowerChannel.load(directory / "two_tower", pipeline)
                continue
            items = np.asarray(meta["ids"][name]["items"], dtype=object).astype(str)
            if name == "popularity":
                channel: RecallChannel = PopularityChannel(columns)
                channel.counts = load_file(str(directory / "popularity.safetensors"))["counts"]
            elif name == "bpr":
                channel = BPRChannel(build(BPRConfig, meta["bpr"], f"{path}:bpr"), columns)
                arrays = load_file(str(directory / "bpr.safetensors"))
                channel.user_vectors, channel.item_vectors = arrays["user_vectors"], arrays["item_vectors"]
                channel.user_ids = np.asarray(meta["ids"][name]["users"], dtype=object).astype(str)
                channel._user_index = pd.Index(channel.user_ids)
            else:
                channel = ItemCFChannel(columns=columns)
                arrays = load_file(str(directory / "itemcf.safetensors"))
                channel.similarity = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                                                   shape=(len(items), len(items)))
            channel.item_ids, channel._item_index = items, pd.Index(items)
            channels[name] = channel
        return cls(channels, build(MergeConfig, meta["merge"], f"{path}:merge"), columns)

    @classmethod
    def from_pretrained(cls, path: str | Path, engine: ScoringEngine) -> "Recommender":
        """The recommender of an exported ranker: ``path`` is its directory (``mmfusion recommender --out``)
        or the ranker's artifact, whose ``<artifact>.recall`` is then read; ``engine`` the loaded ranker."""
        path = Path(path)
        if not (path / META_FILE).is_file() and default_recommender_path(path).is_dir():
            path = default_recommender_path(path)
        return cls.load(path, engine.artifact.pipeline)

    def save_pretrained(self, directory: str | Path) -> Path:
        """``save`` under the name of the other models' exports."""
        return self.save(directory)

    # -- serving -------------------------------------------------------------------------------
    def _popularity(self, n: int, seen: set[str]) -> np.ndarray:
        out = []
        for item in self._popular:
            if item not in seen:
                out.append(item)
                if len(out) == n:
                    break
        return np.array(out, dtype=object)

    def _itemcf(self, history: Sequence[str], n: int, seen: set[str]) -> np.ndarray:
        rows = sorted({self._cf_position[h] for h in history if h in self._cf_position})
        if not rows:
            return np.zeros(0, dtype=object)
        summed = self.channels["itemcf"].similarity[rows].sum(axis=0).A1  # score_u = sum_{j in H_u} S_j
        reached = np.flatnonzero(summed > 0)
        order = reached[np.lexsort((reached, -summed[reached]))]  # best first, ties by catalogue position
        ids = self._cf_ids[order]
        return np.array([i for i in ids[: n + len(seen)] if i not in seen][:n], dtype=object)

    @torch.inference_mode()
    def user_vector(self, user_id: str, history: Sequence[str]) -> np.ndarray:
        """(1, d) the two-tower query of one user (``history`` newest first), as ``TwoTowerChannel.user_vectors``
        computes it, but handing the user tower only the history's item vectors: the channel's batch form
        copies the whole (n_items, d) vector table per call (256 MB at 1M items)."""
        channel = self.channels["two_tower"]
        (positions,) = channel.histories_of([user_id], {user_id: list(reversed(history))})
        tail = np.asarray(positions, dtype=np.int64)[-channel.config.history_len:]  # last_positions' rows
        rows = torch.from_numpy(last_positions(np.arange(len(tail)), channel.config.history_len))[None]
        vectors = torch.from_numpy(np.ascontiguousarray(channel.item_vectors[tail]))
        return channel.model.users(channel._user_inputs([user_id]), rows, vectors).numpy()

    def _bpr(self, user_id: str, n: int, seen: set[str]) -> np.ndarray:
        channel = self.channels["bpr"]
        row = channel._user_index.get_indexer([user_id])[0]
        if row < 0:  # no training interactions: no factor
            return np.zeros(0, dtype=object)
        scores = np.asarray(channel.score([user_id]), dtype=np.float64)  # x_ui = p_u . q_i, as the evaluation scores
        (items, _), = top_n(scores, channel.item_ids, n, [channel.item_positions(np.array(sorted(seen), dtype=object))])
        return np.asarray(items, dtype=object).astype(str)

    def _two_tower(self, user_id: str, history: Sequence[str], n: int, seen: set[str]) -> np.ndarray:
        (items, _), = self.channels["two_tower"].index.search(self.user_vector(user_id, history), n, [list(seen)])
        return np.asarray(items, dtype=object).astype(str)

    def candidates(self, user_id: str, history: Sequence[str], seen: set[str], n: int | None = None) -> tuple[list[str], list[str]]:
        """At most ``n`` (default ``merge.n``) candidate ids outside ``seen`` and the channel of each;
        ``history``: the user's positive items, newest first."""
        n = n or self.merge.n
        check_range("n", n, low=1)
        lists: dict[str, np.ndarray] = {}
        for name in self.channels:
            if name == "popularity":
                lists[name] = self._popularity(n, seen)
            elif name == "itemcf":
                lists[name] = self._itemcf(history, n, seen)
            elif name == "bpr":
                lists[name] = self._bpr(user_id, n, seen)
            else:
                lists[name] = self._two_tower(user_id, history, n, seen)
        ids, channels = merge_candidates(lists, n, self.merge.quotas)
        return [str(i) for i in ids], [str(c) for c in channels]

    def sync(self, store: SQLiteStore) -> int:
        """Add the store's items that the two-tower index lacks or that were rewritten since the last
        sync (ingested by this process or another) to the index; returns how many. The first call
        compares the whole catalogue, later ones read only the rows written since."""
        channel = self.channels.get("two_tower")
        if channel is None:
            return 0
        with self._sync_lock:
            generation = store.generation()  # every write moves it: unchanged, nothing to scan (the scan reads
            if self._synced_at is not None and generation == self._synced_generation:  # the whole item table)
                return 0
            if self._synced_at is None:
                newest = store.last_write("item")  # read first: a write after it is caught by the next sync
                have = set(channel.item_ids.astype(str).tolist())
                missing = [i for i in store.ids("item") if i not in have]
                records = list(store.get("item", missing).values()) if missing else []
                self._synced_at = newest
            else:  # rows' updated_at follow the commits (taken inside the write lock, SQLiteStore.put)
                records = store.updated_since("item", self._synced_at)
                self._synced_at = max([self._synced_at] + [r.updated_at for r in records])
            self._synced_generation = generation  # read before the scan: a write racing it moves it again
            if records:
                names = {name for r in records for name in r.vectors}  # the stored title vectors and semantics
                given = {name: np.stack([r.vectors[name] for r in records]) for name in names}
                self.add_items(pd.DataFrame([r.columns for r in records]), given)
                log.info("recommender: %d item(s) of the store put into the two-tower index", len(records))
            return len(records)

    def add_items(self, items: pd.DataFrame, given: dict[str, np.ndarray] | None = None) -> None:
        """Items ingested after fitting: into the two-tower index from their content (other channels
        cannot place an item without interactions; popularity and ItemCF learn it at the next fit);
        ``given``: their stored vectors by field name (``TwoTowerChannel.add_items``)."""
        channel = self.channels.get("two_tower")
        if channel is not None:
            channel.add_items(_string_ids(items, self.columns, user=False), given)


def build_recommender(config, pipeline: FeaturePipeline, splits: dict[str, pd.DataFrame], out: str | Path,
                      seed: int = 0) -> Recommender:
    """Fit a recommender on ``splits["train"]``, with every item of the data set as the catalogue
    (``config``: a ``RecallExperiment``), and write it to ``out``, replacing what is there."""
    recommender = Recommender.fit(config, pipeline, splits["train"], catalogue(splits, config.columns), seed=seed)
    shutil.rmtree(out, ignore_errors=True)
    recommender.save(out)
    return recommender


def _string_ids(frame: pd.DataFrame, c: Columns, user: bool = True) -> pd.DataFrame:
    frame = frame.copy()
    for column in ([c.user] if user and c.user in frame.columns else []) + [c.item]:
        frame[column] = frame[column].astype(str)
    return frame


def recommend(engine: ScoringEngine, store: SQLiteStore, recommender: Recommender, user_id: str, k: int = 10,
              exclude_seen: bool = True, context: dict[str, Any] | None = None, n_candidates: int | None = None,
              *, deadline: float | None = None) -> Recommendation:
    """Recall -> rank for ``user_id`` (module docstring): the top ``k`` with scores and channels."""
    check_range("k", k, low=1)
    recommender.sync(store)
    rule = store.layout.history
    history = store.history(user_id) if rule is not None else store.history(user_id, limit=50, positive_min=1.0)
    seen = store.seen(user_id) if exclude_seen else set()
    ids, channels = recommender.candidates(user_id, history, seen, n_candidates)
    if not ids:
        return Recommendation([], [], [], 0, len(seen), history)
    # recalled items the store does not hold are left out of the ranking (rank_by_id's unknown_ids)
    ranked = rank_by_id(engine, store, user_id, ids, top_k=k, context=context, deadline=deadline)
    channel_of = dict(zip(ids, channels))
    ranked_candidates = len(ids) - len(ranked.unknown_ids.get("candidate_ids", []))
    return Recommendation(ranked.ids, ranked.scores.tolist(), [channel_of[i] for i in ranked.ids], ranked_candidates,
                          len(seen), history, ranked.inputs)
