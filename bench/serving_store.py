"""The service with its item store: ranking by id vs full feature rows under wrk, ingestion, and
the store under concurrent ingest + rank.

1. **Artifact and store.** The main job's ranker (``--demo runs/demo``: its
   ``artifacts/ranker`` and the store beside it; run ``mmfusion demo`` first), the store copied to
   a temp file so the bench never changes the demo's.
2. **Requests.** ``--bodies`` rank requests, each a review-reader or other user of the store and
   ``--candidates`` item ids drawn (seeded) from the store; the *full-feature* form of the same
   request carries the user's and each candidate's columns (as a client without a store must).
   All bodies are written before any clock starts.
3. **In process.** ``xdeepfm.catalog.rank_by_id`` and ``ScoringEngine.rank`` on the same requests
   (median ms over ``--rounds`` passes; their scores compared).
4. **Load.** The service (``xdeepfm serve --store``, 1 torch thread per process) with
   ``--processes`` 1 and 2; per form, ``wrk`` (``-t1``, loopback, ``--duration`` s) with 1 and 4
   connections rotating over the bodies. Reported: requests/s, p50/p99 (wrk's), non-2xx.
5. **Concurrent ingest + rank.** With 2 processes: wrk ranks by id (4 connections) over
   candidates that include ``--stress-items`` items, while a writer thread upserts those items
   through ``POST /v1/items`` (each upsert sets an item's title and its vectors to the same
   version number) and a reader thread reads them straight from the store file checking that every
   item's title and vectors carry one version (no torn item). Reported: requests, non-2xx, upserts,
   reader checks, torn items.
6. **Ingestion throughput.** The service with ``--sentiment`` (``python -m mmapp serve``, one
   process): ``--videos`` SynthVideo test clips posted one per request (mp4 bytes, base64), the
   videos/min of the whole round trip (decode, features, sentiment model, title vector, upsert).

Usage (needs ``wrk``, e.g. ``apt-get install wrk``)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/serving_store.py --out docs/performance.md
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, cpu_model, git_revision, loadavg, run_wrk, setup, write_bodies_script, write_section  # noqa: E402

from xdeepfm.catalog import rank_by_id  # noqa: E402
from xdeepfm.server import RankingServer  # noqa: E402
from xdeepfm.serving import ScoringEngine  # noqa: E402
from xdeepfm.store import SQLiteStore  # noqa: E402

log = logging.getLogger("bench.serving_store")
HEADING = "## Ranking by id: the item store under load, and ingestion"



def wrk_rates(url: str, script: Path, connections: int, duration: float) -> dict:
    """``benchlib.run_wrk`` on /v1/rank with a 30 s request timeout."""
    return run_wrk(url, script, connections, duration, timeout="30s")


def build_bodies(store: SQLiteStore, engine: ScoringEngine, n: int, candidates: int, seed: int,
                 extra: list[str] = ()) -> tuple[list[dict], list[dict]]:
    """(id-form bodies, full-feature bodies) of the same requests, over the store's items that the artifact's
    vector tables also hold (an ingested item's semantics exist only in the store: a full-feature row gets zeros)."""
    rng = np.random.default_rng(seed)
    tables = [set(ids.tolist()) for ids, _ in engine.artifact.pipeline.vector_tables.values()]
    users = store.ids("user")
    items = [i for i in store.ids("item") if all(i in t for t in tables)]
    layout = store.layout
    by_id, full = [], []
    for _ in range(n):
        user = str(rng.choice(users))
        ids = [str(i) for i in rng.choice(items, size=min(candidates, len(items)) - len(extra), replace=False)] + list(extra)
        by_id.append({"user_id": user, "candidate_ids": ids, "top_k": 10})
        u = store.get("user", [user])[user]
        recs = store.get("item", ids)
        full.append({"user": {c: u.columns[c] for c in layout.user.columns},
                     "candidates": [{c: recs[i].columns[c] for c in layout.item.columns} for i in ids], "top_k": 10})
    return by_id, full


def write_script(folder: Path, name: str, bodies: list[dict]) -> Path:
    """``benchlib.write_bodies_script`` for /v1/rank."""
    return write_bodies_script(folder, name, bodies)


def in_process(engine: ScoringEngine, store: SQLiteStore, by_id: list[dict], full: list[dict], rounds: int) -> dict:
    times = {"by id": [], "full rows": []}
    diff = 0.0
    for _ in range(rounds):
        for a, b in zip(by_id, full):
            t0 = time.perf_counter()
            ranked = rank_by_id(engine, store, a["user_id"], a["candidate_ids"], top_k=10)
            t1 = time.perf_counter()
            other = engine.rank(b["user"], b["candidates"], top_k=10)
            t2 = time.perf_counter()
            times["by id"].append((t1 - t0) * 1000)
            times["full rows"].append((t2 - t1) * 1000)
            diff = max(diff, float(np.abs(ranked.scores - other.scores).max()))
    return {"median_ms": {k: statistics.median(v) for k, v in times.items()},
            "p99_ms": {k: float(np.percentile(v, 99)) for k, v in times.items()}, "max_abs_score_diff": diff}


def stress(server: RankingServer, store_path: Path, engine: ScoringEngine, script: Path, ids: list[str], duration: float,
           base: dict) -> dict:
    """wrk ranking by id while a writer upserts ``ids`` and a reader checks them in the store file."""
    stop = threading.Event()
    layout = SQLiteStore(store_path).layout
    widths = {name: dim for name, dim in layout.item.vectors}
    result = {"upserts": 0, "upsert_errors": 0, "checks": 0, "torn": 0}

    def writer() -> None:
        session, version = requests.Session(), 0
        while not stop.is_set():
            version += 1
            items = [{"columns": {**base, engine.item_field: i, "title": f"stress title version {version}"},
                      "vectors": {n: [float(version)] * d for n, d in widths.items() if n != "title"}} for i in ids]
            response = session.post(f"{server.url}/v1/items", json={"items": items}, timeout=30)
            result["upserts" if response.status_code == 200 else "upsert_errors"] += 1

    def reader() -> None:
        own = SQLiteStore(store_path)
        while not stop.is_set():
            got = own.get("item", ids)
            for rec in got.values():
                version = float(rec.columns["title"].rsplit(" ", 1)[1])
                vectors = [rec.vectors[n] for n in widths if n != "title"]
                result["torn"] += any(not np.all(v == version) for v in vectors)
                result["checks"] += 1

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    try:
        result["wrk"] = wrk_rates(server.url, script, 4, duration)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return result


def ingestion(ranker: Path, store_path: Path, sentiment: Path, clips: Path, n: int) -> dict:
    truth = pd.read_csv(clips / "truth.csv", dtype={"id": str})
    meta = pd.read_csv(clips / "meta.csv", dtype={"id": str}, keep_default_na=False).set_index("id")
    chosen = truth.loc[truth["split"] == "test", "id"].head(n).tolist()
    engine = ScoringEngine.load(ranker)
    base = next(iter(SQLiteStore(store_path).get("item", SQLiteStore(store_path).ids("item")[:1]).values())).columns
    seconds, sizes = [], []
    with RankingServer(ranker, module="mmapp", startup_timeout=300, request_timeout=300,
                       args=["--store", str(store_path), "--sentiment", str(sentiment)]) as server:
        for i, clip in enumerate(chosen):
            data = (clips / "videos" / meta.loc[clip, "video"]).read_bytes()
            sizes.append(len(data))
            item = {"columns": {**base, engine.item_field: f"ingest_bench_{i}"}, "transcript": meta.loc[clip, "text"],
                    "video": base64.b64encode(data).decode()}
            t0 = time.perf_counter()
            server.put_items([item])
            seconds.append(time.perf_counter() - t0)
    return {"videos": n, "total_s": sum(seconds), "per_video_s": statistics.median(seconds),
            "videos_per_min": 60 * n / sum(seconds), "mean_kb": statistics.mean(sizes) / 1024}


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"Regenerate with `{r['command']}` (from the repository root, `HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1`; needs `wrk` "
        "and the main job's `runs/demo`).",
        "",
        f"- Date: {r['date']}; git revision: {r['git']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['wrk']}; load average at start "
        f"{r['load_start']}, at the end {r['load_end']}. The load generator (wrk, 1 thread) runs on the same cores as the "
        "server (loopback); figures are from this one run.",
        f"- Ranker: `{r['ranker']}` ({r['n_items']} items, {r['n_users']} users in its store); {r['bodies']} request bodies "
        f"of {r['candidates']} candidates each, `top_k` 10; {r['duration']:.0f} s of wrk per row.",
        "",
        f"In process (one thread, {r['bodies'] * r.get('rounds', 1)} calls over the bodies): ranking by id "
        f"**{r['in_process']['median_ms']['by id']:.2f} ms** median, {r['in_process']['p99_ms']['by id']:.2f} ms p99; "
        f"the same request with full feature rows {r['in_process']['median_ms']['full rows']:.2f} ms median, "
        f"{r['in_process']['p99_ms']['full rows']:.2f} ms p99; largest score difference between the two "
        f"{r['in_process']['max_abs_score_diff']:.1e}.",
        "",
        "| server processes | request form | wrk connections | requests/s | p50 ms | p99 ms | non-200 |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["load"]:
        w = row["wrk"]
        lines.append(f"| {row['processes']} | {row['form']} | {row['connections']} | {w['rps']:.0f} | {w['p50_us'] / 1000:.1f} | "
                     f"{w['p99_us'] / 1000:.1f} | {w['bad'] + w['errors']} |")
    s = r["stress"]
    w = s["wrk"]
    lines += [
        "",
        f"Concurrent ingest + rank (2 processes, wrk 4 connections ranking by id over candidates that include "
        f"{r['stress_items']} items being upserted): {w['requests']:,} rank requests, p50 {w['p50_us'] / 1000:.1f} ms, "
        f"p99 {w['p99_us'] / 1000:.1f} ms, non-200 {w['bad'] + w['errors']}; {s['upserts']} upserts of "
        f"{r['stress_items']} items through `POST /v1/items` ({s['upsert_errors']} failed); the reader checked "
        f"{s['checks']:,} stored items: **{s['torn']} torn** (an item whose title and vectors carry different versions).",
    ]
    g = r.get("ingestion")
    if g:
        lines += ["", f"Ingestion over HTTP (`mmfusion serve --sentiment`, one process, one video per request, SynthVideo "
                      f"test clips of {g['mean_kb']:.0f} KB on average): {g['videos']} videos in {g['total_s']:.1f} s, "
                      f"median {g['per_video_s']:.2f} s per video, **{g['videos_per_min']:.0f} videos/min** (decode, "
                      "prosody and face features, the sentiment model, the title vector, the upsert)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=REPO / "runs/demo", help="the main job's --out (default runs/demo)")
    p.add_argument("--clips", type=Path, default=REPO / "datasets/synthvideo_small", help="SynthVideo folder for ingestion")
    p.add_argument("--bodies", type=int, default=50)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per row")
    p.add_argument("--rounds", type=int, default=10, help="in-process passes over the bodies")
    p.add_argument("--stress-items", type=int, default=10)
    p.add_argument("--videos", type=int, default=10, help="videos posted for the ingestion figure (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="markdown file whose serving_store section is rewritten")
    args = p.parse_args(argv)
    setup(1)
    if shutil.which("wrk") is None:
        p.error("wrk is not on PATH (Debian: apt-get install wrk)")
    ranker = args.demo / "artifacts/ranker"
    source = args.demo / "artifacts/ranker.store.sqlite"
    if not source.is_file():
        p.error(f"{source}: not found; run `mmfusion demo` first")
    started = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_start": loadavg()}
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        tmp = Path(tmp)
        store_path = tmp / "store.sqlite"
        SQLiteStore(source).backup(store_path)
        store, engine = SQLiteStore(store_path), ScoringEngine.load(ranker)
        by_id, full = build_bodies(store, engine, args.bodies, args.candidates, args.seed)
        result = {**started, "ranker": str(ranker.relative_to(REPO) if ranker.is_relative_to(REPO) else ranker),
                  "n_items": store.count("item"), "n_users": store.count("user"), "bodies": args.bodies,
                  "candidates": args.candidates, "duration": args.duration, "stress_items": args.stress_items,
                  "rounds": args.rounds,
                  "in_process": in_process(engine, store, by_id, full, args.rounds), "load": []}
        scripts = {"by id": write_script(tmp, "by_id", by_id), "full rows": write_script(tmp, "full", full)}
        stress_ids = [f"stress_{i}" for i in range(args.stress_items)]
        base = next(iter(store.get("item", store.ids("item")[:1]).values())).columns
        for processes in (1, 2):
            with RankingServer(ranker, startup_timeout=300,
                               args=["--store", str(store_path), "--processes", str(processes), "--ingest"]) as server:
                for form, script in scripts.items():
                    for connections in (1, 4):
                        log.info("wrk: %d process(es), %s, %d connection(s)", processes, form, connections)
                        result["load"].append({"processes": processes, "form": form, "connections": connections,
                                               "wrk": wrk_rates(server.url, script, connections, args.duration)})
                if processes == 2:
                    server.put_items([{"columns": {**base, engine.item_field: i, "title": "stress title version 0"},
                                       "vectors": {n: [0.0] * d for n, d in store.layout.item.vectors if n != "title"}}
                                      for i in stress_ids])
                    with_stress, _ = build_bodies(store, engine, args.bodies, args.candidates, args.seed + 1, stress_ids)
                    script = write_script(tmp, "stress", with_stress)
                    log.info("concurrent ingest + rank")
                    result["stress"] = stress(server, store_path, engine, script, stress_ids, args.duration, base)
        if args.videos:
            log.info("ingestion of %d videos", args.videos)
            result["ingestion"] = ingestion(ranker, store_path, args.demo / "artifacts/sentiment", args.clips, args.videos)
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0].strip()
    result.update(load_end=loadavg(), git=git_revision(), command="python bench/serving_store.py " + shlex.join(argv or sys.argv[1:]),
                  machine={"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
                           "python": platform.python_version(), "wrk": wrk_version or "wrk"})
    text = render(result)
    print(text)
    if args.out:
        write_section(args.out, HEADING, "serving_store", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
