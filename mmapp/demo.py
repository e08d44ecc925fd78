"""The main job: the whole product from video files to a ranked place served over HTTP.

    .venv/bin/mmfusion demo [--out runs/demo] [--users 2] [--top-k 5]

1. **Sentiment data.** SynthVideo (``mmfusion.data.synthvideo``, preset ``video_small``: 600
   SynthMOSI clips as mp4 files with spoken narration and a rendered presenter) is generated into
   ``datasets/`` when missing and turned into an MMSA pickle by ``mmfusion.extract`` (prosody audio
   and face-region visual features, MiniLM text features; the labels from meta.csv).
2. **Sentiment model.** ``configs/synthvideo_default.yaml`` is trained on those extracted features
   and evaluated on test.
3. **Video semantics.** The synthetic e-commerce catalogue (``mmapp.catalogue``: product videos,
   users, impressions, clicks that depend on each video's hidden sentiment) is generated with its
   product videos as mp4 files; ``--new-videos`` of them are held out entirely (they "arrive after
   training"). The catalogue's videos are extracted like the training clips and the trained model
   writes every video's semantics (M/T/A/V sentiment and the fused embedding).
4. **Ranking model.** xDeepFM with the semantics and MiniLM title vectors
   (``configs/ecommerce_xdeepfm.yaml``; split ``cold_video``) is trained and evaluated on test.
5. **Serving.** Both models are exported; the item/user store is built from the ranker's data;
   the service (``mmfusion serve --store --sentiment``, two processes) starts on a free loopback
   port; the new videos are ingested over HTTP (``POST /v1/items`` with the mp4 file), and each
   one's semantics is printed next to its hidden truth; then users' candidates (new videos and
   known ones) are ranked by id (``POST /v1/rank`` with ``candidate_ids``); the service stops.

Everything is local: the data is generated from seeds, the text encoder is the bundled MiniLM,
the narration is spoken by espeak-ng (``apt-get install espeak-ng``).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmapp.catalogue import ITEM_COLUMNS, catalogue_from_clips, hold_out_videos, write_catalogue
from mmapp.ingest import video_explainer
from mmcore.config import build
from mmcore.files import write_bytes
from mmcore.loop import RunDir
from mmcore.runtime import setup_logging
from mmfusion.data.mmsa import describe, load_mmsa
from mmfusion.data.synthetic import GeneratorParams, multimodal_target, write_pickle
from mmfusion.data.synthvideo import RENDER, VIDEO_PRESETS, render_clip, speakers
from mmfusion.data.synthvideo import generate as generate_videos
from mmfusion.evaluate import evaluate_checkpoint
from mmfusion.experiment import load_experiment as load_sentiment_experiment
from mmfusion.export import export_checkpoint as export_sentiment
from mmfusion.extract.pipeline import ExtractConfig, extract, format_report
from mmfusion.metrics import format_metrics
from mmfusion.predict import predict_semantics, write_semantics
from mmfusion.pretrained import SentimentModel
from mmfusion.train import train as train_sentiment_model
from xdeepfm.catalog import build_store, default_store_path
from xdeepfm.data import load_splits
from xdeepfm.data.ecommerce import load_ecommerce_splits
from xdeepfm.experiment import load_experiment as load_ranking_experiment
from xdeepfm.export import export_checkpoint as export_ranker
from xdeepfm.recall_eval import load_recall_experiment
from xdeepfm.recommend import Recommender, build_recommender, default_recommender_path
from xdeepfm.server import RankingServer
from xdeepfm.serving import ScoringEngine
from xdeepfm.train import train as train_ranking_model

log = logging.getLogger("mmapp.demo")

# How the demo's videos are turned into features: the options configs/synthvideo_default.yaml's data was extracted with
EXTRACT = {"fps": 12.0, "audio": {"preset": "prosody"}, "visual": {"backbone": "face"}}


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


def extract_folder(videos: Path, meta: Path, out: Path, workers: int) -> None:
    """``mmfusion extract`` over a folder (labels from meta.csv, MiniLM text features); every file must extract."""
    cfg = build(ExtractConfig, EXTRACT, where="demo extraction")
    started = time.perf_counter()
    result = extract(videos, meta, cfg, labels=True, workers=workers, cache_dir=out.with_name(out.name + ".cache"),
                     text_features=True)
    failed = [r for r in result.reports if r.status == "failed"]
    if failed:
        raise RuntimeError(f"extraction of {videos} failed:\n{format_report(result.reports)}")
    write_pickle(result.data, out)
    n = sum(len(result.data[s]["id"]) for s in ("train", "valid", "test"))
    print(f"extracted {n} videos of {videos} into {out} in {time.perf_counter() - started:.0f} s "
          f"(audio {cfg.audio.preset}, {cfg.audio.out_dim} columns; vision {cfg.visual.backbone}, {cfg.visual.dim} columns)")


def _reusable(folder: Path, preset: str, pickle_path: Path, cfg: ExtractConfig) -> bool:
    """True when ``folder`` holds every clip of ``preset`` and ``pickle_path`` was extracted from it with ``cfg``."""
    truth = folder / "truth.csv"
    if not (truth.is_file() and (folder / "meta.csv").is_file() and pickle_path.is_file()):
        return False
    if len(pd.read_csv(truth, usecols=["id"])) != VIDEO_PRESETS[preset].n:
        return False
    recorded = (load_mmsa(pickle_path).extraction or {}).get("config")
    return recorded == dataclasses.asdict(cfg)


def sentiment_data(config_path: Path, folder: Path, preset: str, seed: int, workers: int) -> Path:
    """Stage 1: SynthVideo mp4 files (generated when missing) -> the extracted MMSA pickle the config reads."""
    pickle_path = Path(load_sentiment_experiment(config_path).data.path)
    cfg = build(ExtractConfig, EXTRACT, where="demo extraction")
    if _reusable(folder, preset, pickle_path, cfg):
        print(f"reusing the {preset} clips in {folder} and their features {pickle_path}")
        return pickle_path
    result = generate_videos(preset, seed, folder, workers=workers, overwrite=True)
    print(f"rendered {len(result.clips)} clips ({preset}, seed {seed}) into {folder} in {result.seconds:.0f} s "
          f"({len(result.clips) / result.seconds:.2f} clips/s, {workers} workers)")
    extract_folder(folder / "videos", folder / "meta.csv", pickle_path, workers)
    return pickle_path


def train_sentiment(config_path: Path, run_dir: Path, overrides: dict) -> None:
    """Stage 2: train on the extracted features -> test metrics."""
    cfg = load_sentiment_experiment(config_path, [f"{k}={v}" for k, v in overrides.items()])
    print(describe(load_mmsa(cfg.data.path)), flush=True)
    train_sentiment_model(cfg, run_dir, overwrite=True)  # the demo is rerunnable: it replaces its own runs
    best = RunDir(run_dir).best
    metrics = evaluate_checkpoint(best, cfg.data.path, "test", run_dir)
    print(f"test metrics ({cfg.data.path}, best checkpoint {best}):\n{format_metrics(metrics)}")


def clip_table(folder: Path) -> pd.DataFrame:
    """The SynthVideo clips with their narration: truth.csv joined with meta.csv."""
    truth = pd.read_csv(folder / "truth.csv", dtype={"id": str})
    meta = pd.read_csv(folder / "meta.csv", dtype={"id": str}, keep_default_na=False)
    return truth.merge(meta[["id", "video", "text"]], on="id", validate="one_to_one")


def make_catalogue(folder: Path, clips: pd.DataFrame, n_users: int, impressions_per_user: int, n_new: int) -> pd.DataFrame:
    """Stage 3a: the catalogue whose product videos are the SynthVideo clips, minus ``n_new`` clips of
    the sentiment test split held out of everything (they arrive at serving time); the remaining
    test-split clips are the ranker's cold videos (``cold_videos.txt``). Returns the held-out videos."""
    catalogue = catalogue_from_clips(clips, seed=0, n_users=n_users, impressions_per_user=impressions_per_user)
    test_ids = clips.loc[clips["split"] == "test", "id"].to_numpy()
    if len(test_ids) <= n_new:
        raise ValueError(f"{n_new} new videos asked for, but the sentiment test split has only {len(test_ids)} clips")
    held = set(np.random.default_rng(0).choice(test_ids, size=n_new, replace=False).tolist())
    kept, new, new_impressions = hold_out_videos(catalogue, held)
    write_catalogue(kept, folder)
    cold = sorted(set(test_ids) - held)
    write_bytes(folder / "cold_videos.txt", ("\n".join(cold) + "\n").encode())
    new = new.merge(clips[["id", "text", "video"]].rename(columns={"id": "video_id", "text": "narration"}), on="video_id")
    write_bytes(folder / "new_videos.csv", new.to_csv(index=False).encode())
    write_bytes(folder / "new_impressions.csv", new_impressions.to_csv(index=False).encode())
    print(f"wrote {folder}: {len(kept.videos)} product videos (the SynthVideo clips; {len(cold)} of them the ranker's "
          f"cold test videos, {len(new)} held out for ingestion), {len(kept.users)} users, {len(kept.impressions)} "
          f"impressions, click rate {kept.impressions['click'].mean():.3f}")
    return new


def catalogue_semantics(checkpoint: Path, extracted: Path, known: set[str], out: Path) -> None:
    """Stage 3b: semantics of every catalogue video (the held-out ones are not in the file)."""
    semantics = predict_semantics(checkpoint, extracted)
    keep = np.isin(semantics["ids"], list(known))
    semantics = {k: v[keep] if k in ("ids", "split", "sentiment", "embedding") else v for k, v in semantics.items()}
    write_semantics(semantics, out)
    print(f"wrote {out}: semantics of {int(keep.sum())} catalogue videos")


def catalogue_explanations(sentiment_artifact: Path, extracted: Path, known: set[str]) -> dict[str, dict]:
    """Stage 5: why the sentiment model read each catalogue video as it did (``mmapp.ingest.VideoExplainer``:
    modality shares, every word's weight, the attention over time), kept in the store beside the item."""
    sentiment = SentimentModel.from_pretrained(sentiment_artifact, device="cpu")
    explained = sentiment.explain_file(extracted, explainer=video_explainer(sentiment))
    return {e["id"]: e for e in explained if e["id"] in known}


def train_ranker(config_path: Path, catalogue: Path, semantics: Path, run_dir: Path, overrides: dict):
    """Stage 4: the ranking config, pointed at this catalogue and these semantics, trained and tested."""
    config = load_ranking_experiment(config_path, [f"{k}={v}" for k, v in overrides.items()])
    config.data.path = str(catalogue)
    for spec in config.features.fields:
        if spec.kind == "vector" and spec.path and Path(spec.path).name == "semantics.npz":
            spec.path = str(semantics)
    config.data.cold_videos = "cold_videos.txt"  # the sentiment model's test clips: out-of-sample semantics
    result = train_ranking_model(config, run_dir, overwrite=True)
    test = result["test"]
    print("test metrics (cold videos only): " + "  ".join(
        f"{k}={v:.4f}" for k, v in test.items() if isinstance(v, float)))
    return config


def render_pair(new: pd.DataFrame, clips: pd.DataFrame, folder: Path, world_seed: int = 0) -> pd.DataFrame:
    """Two product videos that differ only in delivery: the first new video's narration, presenter and
    columns, spoken and shown as positively (s_a = s_v = +3) and as negatively (-3) as the renderer allows."""
    base = new.iloc[0]
    clip = clips.set_index("id").loc[base["video_id"]]
    cast = speakers(world_seed, RENDER.n_speakers)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for tag, value in (("pos", 3.0), ("neg", -3.0)):
        video_id = f"{base['video_id']}_{tag}"
        render_clip(folder / f"{video_id}.mp4", base["narration"], value, value, seed=7, speaker=cast[int(clip["speaker"])])
        rows.append({**base.to_dict(), "video_id": video_id, "s_a": value, "s_v": value, "video": f"{video_id}.mp4",
                     "true_sentiment": float(multimodal_target(np.array([clip["s_t"]]), np.array([value]),
                                                               np.array([value]), GeneratorParams())[0])})
    return pd.DataFrame(rows)


def new_videos_folder(new: pd.DataFrame, pair: pd.DataFrame, clips: Path, folder: Path) -> pd.DataFrame:
    """The videos that arrive after training in one folder with an ``items.csv`` for ``mmfusion ingest``:
    the held-out clips (copied) and the pair; returns their rows (held-out first)."""
    for name in new["video"]:
        shutil.copyfile(clips / name, folder / name)
    arrivals = pd.concat([new, pair], ignore_index=True)
    items = arrivals[["video", *ITEM_COLUMNS]].assign(transcript=arrivals["narration"])
    write_bytes(folder / "items.csv", items.to_csv(index=False).encode())
    return arrivals


def ingest_over_http(server: RankingServer, new: pd.DataFrame, folder: Path) -> None:
    """Stage 5a: POST each new video file with its columns; print its semantics next to the hidden truth."""
    items = [{"columns": {c: row[c].item() if hasattr(row[c], "item") else row[c] for c in ITEM_COLUMNS},
              "video": base64.b64encode((folder / row["video"]).read_bytes()).decode(),
              "transcript": row["narration"]} for _, row in new.iterrows()]
    started = time.perf_counter()
    reply = server.put_items(items)
    seconds = time.perf_counter() - started
    print(f"ingested {len(items)} new videos through POST /v1/items in {seconds:.1f} s "
          f"({60 * len(items) / seconds:.0f} videos/min); the store now holds {reply['n_items']} items")
    print(f"  {'video':<18} {'title':<28} {'M':>6} {'T':>6} {'A':>6} {'V':>6}   {'true s*':>7} {'s_t':>6} {'s_a':>6} {'s_v':>6}")
    truth = new.set_index("video_id")
    for item in reply["items"]:
        s, t = item["semantics"]["sentiment"], truth.loc[item["id"]]
        print(f"  {item['id']:<18} {t['title'][:28]:<28} " + " ".join(f"{s.get(k, float('nan')):>6.2f}" for k in "MTAV")
              + f"   {t['true_sentiment']:>7.2f} {t['s_t']:>6.2f} {t['s_a']:>6.2f} {t['s_v']:>6.2f}")


def rank_by_id_over_http(server: RankingServer, data, new: pd.DataFrame, pair: pd.DataFrame, catalogue: Path,
                         n_users: int, top_k: int) -> list[str]:
    """Stage 5b: for sentiment-sensitive users (review readers), their cold test videos plus the new
    ones, ranked by id; then the positive/negative pair alone."""
    test = load_ecommerce_splits(data)["test"].drop_duplicates(["user_id", "video_id"])
    users = pd.read_csv(catalogue / "users.csv").set_index("user_id")
    videos = pd.concat([pd.read_csv(catalogue / "videos.csv"), new, pair], ignore_index=True).set_index("video_id")
    fresh = set(new["video_id"]) | set(pair["video_id"])
    readers = users[users["user_segment"] == "review_reader"].index
    counts = test[test["user_id"].isin(readers)].groupby("user_id").size().sort_values(ascending=False, kind="stable")
    for user_id in counts.index[:n_users]:
        known = test.loc[test["user_id"] == user_id, "video_id"].head(10).tolist()
        candidates = known + new["video_id"].tolist()
        t0 = time.perf_counter()
        reply = server.rank_ids(user_id, candidates, top_k=top_k)
        ms = (time.perf_counter() - t0) * 1000
        u = users.loc[user_id]
        print(f"\nuser {user_id} ({u['user_segment']}, likes {u['user_fav_category']}): top {len(reply['items'])} of "
              f"{reply['n_candidates']} candidates by id ({len(new)} of them just ingested), {ms:.0f} ms")
        print(f"  {'#':>2}  {'video':<18} {'title':<28} {'category':<12} {'price':<8} {'score':>6}  {'true s*':>7}  new")
        for rank, item in enumerate(reply["items"], 1):
            v = videos.loc[item["id"]]
            print(f"  {rank:>2}  {item['id']:<18} {v['title'][:28]:<28} {v['category']:<12} {v['price_band']:<8} "
                  f"{item['score']:>6.3f}  {v['true_sentiment']:>7.2f}  {'yes' if item['id'] in fresh else ''}")
        pair_reply = server.rank_ids(user_id, pair["video_id"].tolist())
        order = " > ".join(f"{i['id']} ({i['score']:.3f})" for i in pair_reply["items"])
        print(f"  the same product video delivered positively and negatively: {order}")
    print("\n(true s*, s_t, s_a, s_v are the generator's hidden truth, shown for the demo; the service never sees them)")
    return list(counts.index[:n_users])


def fit_recommender(config_path: Path, data, splits: dict[str, pd.DataFrame], engine: ScoringEngine,
                    ranker: Path) -> Recommender:
    """Stage 5: the recall channels of /v1/recommend, fitted on the ranker's training impressions (``splits``)."""
    config = load_recall_experiment(config_path)
    config.data = data  # the ranker's split of this catalogue
    out = default_recommender_path(ranker)
    recommender = build_recommender(config, engine.artifact.pipeline, splits, out)
    print(f"recommender {out}: channels {', '.join(recommender.channels)}; {recommender.merge.n} candidates "
          f"(quotas {recommender.merge.quotas})")
    return recommender


def recommend_over_http(server: RankingServer, users: list[str], fresh: set[str], catalogue: Path, k: int) -> None:
    """Stage 5c: POST /v1/recommend for the same users: recall over the whole catalogue, then the ranker."""
    videos = pd.read_csv(catalogue / "videos.csv").set_index("video_id")
    for user_id in users:
        t0 = time.perf_counter()
        reply = server.recommend(user_id, k=k)
        ms = (time.perf_counter() - t0) * 1000
        print(f"\nrecommended for {user_id} (POST /v1/recommend): top {len(reply['items'])} of {reply['n_candidates']} recalled "
              f"({reply['n_seen']} seen items left out), {ms:.0f} ms")
        for rank, item in enumerate(reply["items"], 1):
            title = videos.loc[item["id"], "title"] if item["id"] in videos.index else "(ingested at serving time)"
            print(f"  {rank:>2}  {item['id']:<18} {title[:28]:<28} {item['score']:>6.3f}  via {item['channel']:<10}"
                  f" {'new' if item['id'] in fresh else ''}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sentiment-config", type=Path, default=Path("configs/synthvideo_default.yaml"),
                        help="the sentiment model's YAML (default configs/synthvideo_default.yaml); its data.path is "
                             "where the extracted pickle goes")
    parser.add_argument("--ranking-config", type=Path, default=Path("configs/ecommerce_xdeepfm.yaml"),
                        help="the ranker's YAML (default configs/ecommerce_xdeepfm.yaml)")
    parser.add_argument("--videos", type=Path, default=Path("datasets/synthvideo_small"),
                        help="where the SynthVideo clips go (generated when missing)")
    parser.add_argument("--preset", choices=sorted(VIDEO_PRESETS), default="video_small",
                        help="SynthVideo preset of the sentiment data and the catalogue's videos (default video_small)")
    parser.add_argument("--catalogue", type=Path, default=Path("datasets/ecommerce_video"),
                        help="where the e-commerce catalogue goes (its product videos are the SynthVideo files)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="the demo's runs and artifacts (default runs/demo)")
    parser.add_argument("--recall-config", type=Path, default=Path("configs/recall_ecommerce_video.yaml"),
                        help="the recall channels of /v1/recommend (default configs/recall_ecommerce_video.yaml)")
    parser.add_argument("--users", type=int, default=2, help="users whose candidates are ranked by id over HTTP")
    parser.add_argument("--top-k", type=int, default=5, help="items printed per user")
    parser.add_argument("--new-videos", type=int, default=6,
                        help="test-split videos held out of all training and ingested at serving time (default 6)")
    parser.add_argument("--n-users", type=int, default=2000, help="catalogue size (users)")
    parser.add_argument("--impressions-per-user", type=int, default=100, help="impressions per user in the catalogue")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering and extracting videos (default 2)")
    parser.add_argument("--server-processes", type=int, default=2, help="processes of the ranking service (default 2)")
    parser.add_argument("--sentiment-epochs", type=int, help="override train.epochs of the sentiment config")
    parser.add_argument("--ranking-epochs", type=int, help="override train.epochs of the ranking config")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmfusion-demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    return run(args)


def run(args: argparse.Namespace) -> int:
    """The five stages; every run directory under ``--out`` is replaced (the demo is rerunnable)."""
    stages = Stages()
    out = args.out

    stages.begin("sentiment data: SynthVideo mp4 files -> mmfusion extract")
    extracted = sentiment_data(args.sentiment_config, args.videos, args.preset, 0, args.workers)

    stages.begin("sentiment model: train on the extracted features -> test")
    overrides = {"train.epochs": args.sentiment_epochs} if args.sentiment_epochs else {}
    train_sentiment(args.sentiment_config, out / "sentiment", overrides)

    stages.begin("video semantics: the catalogue's product videos -> sentiment model")
    clips = clip_table(args.videos)
    new = make_catalogue(args.catalogue, clips, args.n_users, args.impressions_per_user, args.new_videos)
    known = set(pd.read_csv(args.catalogue / "videos.csv", usecols=["video_id"])["video_id"])
    semantics_path = out / "semantics.npz"
    catalogue_semantics(RunDir(out / "sentiment").best, extracted, known, semantics_path)

    stages.begin("ranking model: xDeepFM + semantics + title vectors -> train -> test")
    overrides = {"train.epochs": args.ranking_epochs} if args.ranking_epochs else {}
    ranking = train_ranker(args.ranking_config, args.catalogue, semantics_path, out / "ranking", overrides)

    stages.begin("serving: export, item store, recommender, ingest new videos over HTTP, rank by id, recommend")
    artifacts = out / "artifacts"
    export_sentiment(RunDir(out / "sentiment").best, artifacts / "sentiment", overwrite=True)
    ranker = export_ranker(RunDir(out / "ranking").best, artifacts / "ranker", overwrite=True)
    engine = ScoringEngine.load(ranker)
    splits = load_splits(ranking.data)
    frame = pd.concat(list(splits.values()), ignore_index=True)
    explanations = catalogue_explanations(artifacts / "sentiment", extracted, known)
    store = build_store(engine, frame, default_store_path(ranker), overwrite=True, explanations=explanations)
    print(f"item/user store {store.path}: {store.count('item')} items, {store.count('user')} users, "
          f"{len(explanations)} video explanations")
    fit_recommender(args.recall_config, ranking.data, splits, engine, ranker)
    arrivals = new_videos_folder(new, render_pair(new, clips, out / "new_videos"), args.videos / "videos", out / "new_videos")
    (out / "serve.log").unlink(missing_ok=True)  # RankingServer appends: this run's requests only
    args_serve = ["--store", str(store.path), "--sentiment", str(artifacts / "sentiment"), "--processes",
                  str(args.server_processes), "--recommender", str(default_recommender_path(ranker))]
    with RankingServer(ranker, args=args_serve, log_path=out / "serve.log", module="mmapp") as server:
        processes = f"{args.server_processes} processes" if args.server_processes > 1 else "1 process"
        print(f"ranking service up at {server.url}, {processes} (access log {out / 'serve.log'})")
        ingest_over_http(server, arrivals, out / "new_videos")
        users = rank_by_id_over_http(server, ranking.data, new, arrivals.iloc[len(new):], args.catalogue, args.users,
                                     args.top_k)
        recommend_over_http(server, users, set(arrivals["video_id"]), args.catalogue, args.top_k)

    print(f"\n== done\n{stages.summary()}")
    print(f"   TensorBoard logs: {RunDir(out / 'sentiment').tensorboard}, {RunDir(out / 'ranking').tensorboard}   "
          f"(.venv/bin/tensorboard --logdir {out})")
    print(f"   artifacts:        {artifacts} (store {store.path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
