"""The main job: the whole product on bundled data, from clips to a ranked list served over HTTP.

    .venv/bin/mmfusion demo [--out runs/demo] [--users 3] [--top-k 5]

1. **Sentiment model.** SynthMOSI (MOSI size, seed 0) is generated into ``datasets/`` when
   missing; the model of ``configs/synthmosi_default.yaml`` is trained and evaluated on test.
2. **Video semantics.** The synthetic e-commerce catalogue (3,000 product videos that are clips of
   the same SynthMOSI world, 2,000 users, their impressions and clicks) is generated into
   ``datasets/ecommerce`` when missing; the trained model writes every video's semantics
   (M/T/A/V sentiment and the fused embedding).
3. **Ranking model.** xDeepFM with the semantics and MiniLM title vectors
   (``configs/ecommerce_xdeepfm.yaml``; split ``cold_video``: the test videos are new) is trained
   and evaluated on test.
4. **Serving.** Both models are exported as artifacts; the ranking service starts on a free
   loopback port; a few users' candidate lists of new videos are ranked through ``POST /v1/rank``
   and printed; the service is stopped.

Everything is local: the data is generated from seeds, the text encoder is the bundled MiniLM.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmapp.catalogue import generate_catalogue, write_catalogue
from mmcore.loop import RunDir
from mmcore.runtime import setup_logging
from mmfusion.data.mmsa import describe
from mmfusion.evaluate import evaluate_checkpoint
from mmfusion.experiment import load_experiment as load_sentiment_experiment
from mmfusion.export import export_checkpoint as export_sentiment
from mmfusion.metrics import format_metrics
from mmfusion.predict import predict_semantics, write_semantics
from mmfusion.train import prepare_data
from mmfusion.train import train as train_sentiment_model
from xdeepfm.data.ecommerce import load_ecommerce_splits
from xdeepfm.experiment import load_experiment as load_ranking_experiment
from xdeepfm.export import export_checkpoint as export_ranker
from xdeepfm.server import RankingServer
from xdeepfm.train import train as train_ranking_model

log = logging.getLogger("mmapp.demo")

USER_COLUMNS = ("user_id", "user_segment", "user_fav_category", "user_age")
ITEM_COLUMNS = ("video_id", "category", "product", "brand", "price_band", "price", "title")


class Stages:
    """Prints a numbered heading per stage and keeps its wall time."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.times: list[tuple[str, float]] = []
        self._name, self._t0 = "", 0.0

    def begin(self, name: str) -> None:
        self._close()
        self._name, self._t0 = name, time.perf_counter()
        print(f"\n== [{len(self.times) + 1}] {name}", flush=True)

    def _close(self) -> None:
        if self._name:
            self.times.append((self._name, time.perf_counter() - self._t0))
            self._name = ""

    def summary(self) -> str:
        self._close()
        total = (time.perf_counter() - self.started) / 60
        return "   " + ", ".join(f"{name.split(':')[0]} {secs / 60:.1f} min" for name, secs in self.times) + \
            f"; total {total:.1f} min"


def train_sentiment(config_path: Path, run_dir: Path) -> tuple[object, dict]:
    """Stage 1: SynthMOSI (generated if missing) -> trained checkpoint -> test metrics."""
    cfg = load_sentiment_experiment(config_path)
    data = prepare_data(cfg.data)
    print(describe(data), flush=True)
    train_sentiment_model(cfg, run_dir, overwrite=True)  # the demo is rerunnable: it replaces its own runs
    best = RunDir(run_dir).best
    metrics = evaluate_checkpoint(best, cfg.data.path, "test", run_dir)
    print(f"test metrics ({cfg.data.path}, best checkpoint {best}):\n{format_metrics(metrics)}")
    return cfg, metrics


def make_catalogue(folder: Path, world_seed: int, preset: str, sizes: dict[str, int]) -> None:
    """Stage 2a: the e-commerce catalogue in the SynthMOSI world of the sentiment data (reused if there)."""
    meta_path = folder / "catalogue.json"
    if meta_path.is_file() and (folder / "videos.pkl").is_file() and (folder / "impressions.csv").is_file():
        meta = json.loads(meta_path.read_text())
        args = meta.get("args", meta)
        same = all(args.get(k) == v for k, v in sizes.items())
        if same and args.get("world_seed") == world_seed and args.get("preset") == preset and args.get("text_features"):
            print(f"reusing the catalogue in {folder}")
            return
    catalogue = generate_catalogue(0, **sizes, world_seed=world_seed, preset=preset, text_features=True)
    write_catalogue(catalogue, folder)
    print(f"wrote {folder}: {len(catalogue.videos)} videos, {len(catalogue.users)} users, "
          f"{len(catalogue.impressions)} impressions, click rate {catalogue.meta['click_rate']:.3f}")


def train_ranker(config_path: Path, catalogue: Path, semantics: Path, run_dir: Path):
    """Stage 3: the ranking config, pointed at this catalogue and these semantics, trained and
    tested; returns the config (its ``data`` section says which impressions are the test split)."""
    config = load_ranking_experiment(config_path)
    config.data.path = str(catalogue)
    for spec in config.features.fields:
        if spec.kind == "vector" and spec.path and Path(spec.path).name == "semantics.npz":
            spec.path = str(semantics)
    result = train_ranking_model(config, run_dir, overwrite=True)
    test = result["test"]
    print("test metrics (new videos only): " + "  ".join(
        f"{k}={v:.4f}" for k, v in test.items() if isinstance(v, float)))
    return config


def _plain(value):
    """A numpy scalar as the Python value JSON needs; anything else as it is."""
    return value.item() if hasattr(value, "item") else value


def candidate_lists(data, n_users: int, max_candidates: int, seed: int = 0) -> list[tuple[dict, pd.DataFrame]]:
    """A few users with their test impressions from the ranker's own split (``data``: its config's
    data section; with ``cold_video`` these are videos it never saw in training)."""
    test = load_ecommerce_splits(data)["test"]
    test = test.drop_duplicates(["user_id", "video_id"])  # a video shown twice is one candidate
    counts = test.groupby("user_id").size()
    eligible = counts[counts >= min(8, int(counts.max()))].index.to_numpy()  # users with the longest lists
    chosen = np.random.default_rng(seed).choice(eligible, size=min(n_users, len(eligible)), replace=False)
    videos = pd.read_csv(Path(data.path) / "videos.csv", usecols=["video_id", "true_sentiment"])
    lists = []
    for user_id in chosen:
        rows = test[test["user_id"] == user_id].head(max_candidates).merge(videos, on="video_id", how="left")
        lists.append(({c: _plain(rows.iloc[0][c]) for c in USER_COLUMNS}, rows))
    return lists


def rank_over_http(artifact: Path, lists: list[tuple[dict, pd.DataFrame]], top_k: int, log_path: Path) -> None:
    """Stage 4b: start the service, rank every list through POST /v1/rank, print, stop the service."""
    with RankingServer(artifact, log_path=log_path) as server:
        print(f"ranking service up at {server.url} (access log {log_path})")
        for user, rows in lists:
            candidates = [{c: _plain(v) for c, v in zip(ITEM_COLUMNS, values)}
                          for values in rows[list(ITEM_COLUMNS)].itertuples(index=False)]
            t0 = time.perf_counter()
            reply = server.rank(user, candidates, top_k=top_k)
            ms = (time.perf_counter() - t0) * 1000
            print(f"\nuser {user['user_id']} ({user['user_segment']}, likes {user['user_fav_category']}): "
                  f"top {len(reply['items'])} of {reply['n_candidates']} new videos, {ms:.0f} ms")
            print(f"  {'#':>2}  {'video':<12} {'title':<30} {'category':<12} {'price':<8} {'score':>6}  "
                  f"{'true s*':>7} {'clicked':>7}")
            for rank, item in enumerate(reply["items"], 1):
                row = rows.iloc[item["index"]]
                print(f"  {rank:>2}  {row['video_id']:<12} {row['title'][:30]:<30} {row['category']:<12} "
                      f"{row['price_band']:<8} {item['score']:>6.3f}  {row['true_sentiment']:>7.2f} {int(row['click']):>7}")
        print("\n(true s* and clicked are the catalogue's hidden truth, shown for the demo; the service never sees them)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sentiment-config", type=Path, default=Path("configs/synthmosi_default.yaml"),
                        help="the sentiment model's YAML (default configs/synthmosi_default.yaml)")
    parser.add_argument("--ranking-config", type=Path, default=Path("configs/ecommerce_xdeepfm.yaml"),
                        help="the ranker's YAML (default configs/ecommerce_xdeepfm.yaml)")
    parser.add_argument("--catalogue", type=Path, default=Path("datasets/ecommerce"),
                        help="where the e-commerce catalogue is (generated when missing)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="the demo's runs and artifacts (default runs/demo)")
    parser.add_argument("--users", type=int, default=3, help="users whose candidate lists are ranked over HTTP")
    parser.add_argument("--candidates", type=int, default=20, help="candidates per user (at most)")
    parser.add_argument("--top-k", type=int, default=5, help="items printed per user")
    parser.add_argument("--n-videos", type=int, default=3000, help="catalogue size (videos)")
    parser.add_argument("--n-users", type=int, default=2000, help="catalogue size (users)")
    parser.add_argument("--impressions-per-user", type=int, default=150, help="impressions per user in the catalogue")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmfusion-demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    return run(args)


def run(args: argparse.Namespace) -> int:
    """The four stages; every run directory under ``--out`` is replaced (the demo is rerunnable)."""
    stages = Stages()
    out = args.out

    stages.begin("sentiment model: SynthMOSI -> train -> test")
    cfg, _ = train_sentiment(args.sentiment_config, out / "sentiment")

    stages.begin("video semantics: e-commerce catalogue -> sentiment model")
    synthetic = cfg.data.synthetic
    sizes = {"n_videos": args.n_videos, "n_users": args.n_users, "impressions_per_user": args.impressions_per_user}
    make_catalogue(args.catalogue, synthetic.seed, synthetic.size, sizes)
    semantics_path = out / "semantics.npz"
    semantics = predict_semantics(RunDir(out / "sentiment").best, args.catalogue / "videos.pkl")
    write_semantics(semantics, semantics_path)
    print(f"wrote {semantics_path}: semantics of {len(semantics['ids'])} videos")

    stages.begin("ranking model: xDeepFM + semantics + title vectors -> train -> test")
    ranking = train_ranker(args.ranking_config, args.catalogue, semantics_path, out / "ranking")

    stages.begin("serving: export both models, rank over HTTP")
    artifacts = out / "artifacts"
    export_sentiment(RunDir(out / "sentiment").best, artifacts / "sentiment", overwrite=True)
    export_ranker(RunDir(out / "ranking").best, artifacts / "ranker", overwrite=True)
    print(f"artifacts: {artifacts / 'sentiment'} (mmfusion predict --checkpoint DIR --data CLIPS.pkl --out FILE), "
          f"{artifacts / 'ranker'} (mmfusion serve --artifact DIR)")
    lists = candidate_lists(ranking.data, args.users, args.candidates)
    rank_over_http(artifacts / "ranker", lists, args.top_k, out / "serve.log")

    print(f"\n== done\n{stages.summary()}")
    print(f"   TensorBoard logs: {RunDir(out / 'sentiment').tensorboard}, {RunDir(out / 'ranking').tensorboard}   "
          f"(.venv/bin/tensorboard --logdir {out})")
    print(f"   artifacts:        {artifacts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
