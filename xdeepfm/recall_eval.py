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

Usage::

    python -m xdeepfm.recall_eval --config configs/recall_ml100k.yaml --out runs/recall/ml100k_temporal
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

from mmcore.config import apply_overrides, build, check_range, load_yaml, to_dict
from mmcore.files import write_json, write_text
from xdeepfm.data import DataConfig, load_splits
from xdeepfm.data.movielens import MovieLensConfig
from xdeepfm.features import FeaturePipeline, FeatureSpec
from xdeepfm.metrics import full_sort_topk, metrics_from_ranks, ranks_in_lists
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

    def __post_init__(self) -> None:
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown:
            raise ValueError(f"channels: {unknown} unknown (expected some of {list(CHANNELS)})")
        outside = sorted(set(self.merge.quotas) - set(self.channels))
        if outside:
            raise ValueError(f"merge.quotas names {outside}, which are not in channels {self.channels}")
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
    empty = np.zeros(0, dtype=test[c.item].dtype)
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


def evaluate_channel(channel: RecallChannel, data: TestSet, ks: list[int], n: int, batch_size: int) -> tuple[dict, list[np.ndarray]]:
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
    return {f"list_recall@{n}": overall[f"recall@{n}"], f"cold_recall@{n}": cold[f"recall@{n}"], "cold_users": cold["users"],
            "cold_positives": int(sum(len(p) for p in cold_pos))}


def run(cfg: RecallExperiment) -> dict:
    c = cfg.columns
    splits = load_splits(cfg.data)
    items = catalogue(splits, c)
    data = test_set(splits, c, cfg.eval.exclude_valid, cfg.eval.split)
    log.info("recall eval on %s: %d items, %d users with a positive (%d skipped), %d cold items", cfg.eval.split, len(items), len(data.users),
             data.skipped_users, len(data.cold_items))
    pipeline = FeaturePipeline(cfg.features).fit(splits["train"]) if "two_tower" in cfg.channels else None
    runs: dict[str, list[dict]] = {}
    for seed in cfg.eval.seeds:
        lists = {}
        for name in cfg.channels:
            if name not in TRAINED and seed != cfg.eval.seeds[0]:
                lists[name] = runs[name][0]["_lists"]  # deterministic: fitted once
                continue
            started = time.perf_counter()
            channel = make_channel(name, cfg, pipeline, seed).fit(splits["train"], items)
            fit_s = time.perf_counter() - started
            metrics, lists[name] = evaluate_channel(channel, data, cfg.eval.ks, cfg.merge.n, cfg.eval.batch_size)
            metrics.update(seed=seed, fit_s=fit_s, _lists=lists[name])
            runs.setdefault(name, []).append(metrics)
            log.info("seed %d %s: %s", seed, name, {k: v for k, v in metrics.items() if k != "_lists"})
        merged = [merge_candidates({name: lists[name][u] for name in cfg.channels}, cfg.merge.n, cfg.merge.quotas)
                  for u in range(len(data.users))]
        merge_metrics = recall_at_n([m[0] for m in merged], data, cfg.merge.n)
        shares = pd.Series(np.concatenate([m[1] for m in merged])).value_counts(normalize=True).to_dict()
        merge_metrics.update(seed=seed, channel_share=shares)
        runs.setdefault("merge", []).append(merge_metrics)
    for name in runs:
        for r in runs[name]:
            r.pop("_lists", None)
    return {"config": to_dict(cfg), "items": len(items), "test_users": len(data.users), "skipped_users": data.skipped_users,
            "cold_items": len(data.cold_items), "runs": runs}


def summary(result: dict, ks: list[int], n: int) -> str:
    """The Markdown table: mean ± std over seeds per channel."""
    cols = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + [f"hr@{ks[0]}", f"mrr@{ks[0]}", f"list_recall@{n}", f"cold_recall@{n}"]
    head = ["channel", "seeds", *[c.replace("list_recall", "Recall").replace("cold_recall", "cold Recall") for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(cols)]
    for name, runs in result["runs"].items():
        cells = []
        for col in cols:
            values = [r[col] for r in runs if r.get(col) is not None]
            cells.append("" if not values else f"{np.mean(values):.4f} ± {np.std(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}")
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
        import torch

        torch.set_num_threads(args.threads)
    cfg = load_recall_experiment(args.config, args.overrides)
    result = run(cfg)
    table = summary(result, cfg.eval.ks, cfg.merge.n)
    header = (f"{cfg.eval.split} split: {result['items']} items, {result['test_users']} users with a positive ({result['skipped_users']} without), "
              f"{result['cold_items']} cold items; seeds {cfg.eval.seeds}")
    print(header + "\n\n" + table)
    if args.out is not None:
        write_json(args.out / "recall_metrics.json", result)
        write_text(args.out / "recall_table.md", header + "\n\n" + table + "\n")
        log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
