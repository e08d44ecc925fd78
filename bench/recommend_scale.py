"""``POST /v1/recommend`` at catalogue scale: recall + rank from the e-commerce catalogue (~600 items) to
synthetic catalogues of up to 1,000,000 items, in process and under wrk.

1. **Artifact, store, recommender.** The main job's ranker (``--demo runs/demo``: ``artifacts/ranker``
   and the store beside it), the store copied to a temp file (the demo's files are never written).
   The recommender is the demo's ``ranker.recall`` when present, else fitted here with
   ``Recommender.fit`` on ``--config`` (``configs/recall_ecommerce_video.yaml``: popularity, ItemCF,
   the two-tower model; impressions without a ``timestamp`` column are numbered in file order). A
   schema-1 store (made before the event log) is rebuilt from the same data with ``build_store`` (the
   training split's impressions as events); a schema-2 store without events gets them logged
   (``SQLiteStore.add_events``), so users have the histories and seen items that ``recommend()`` reads.
2. **Catalogues.** The catalogue as it is, then ``--items`` N items in all (cumulative: each size adds
   the difference): synthetic items whose title, product and category are a real item's (so the
   title's sentence vector is the stored one, and the text cache needs no new entry), brand and the
   other categorical columns drawn from the real values, price uniform over the real range, and the
   other stored vectors (the video semantics) Gaussian with the real vectors' per-dimension mean and
   std. They are written to the store (``SQLiteStore.put``, ``--batch`` per transaction), each batch
   followed by ``Recommender.sync`` (what the service runs before a request: the items written since
   the last sync, through the item tower into the index).
3. **Index.** Exact (``flat``) below ``--approx-from`` items; from there the index is rebuilt as
   ``--approx`` (``ivf`` or ``hnsw``; build time and resident memory measured), and recall@200 of the
   approximate index against the exact one (|approx top-200 ∩ exact top-200| / 200) is measured for
   ``--queries`` random users' two-tower query vectors (their histories from the store) over a grid
   of ``nprobe`` (IVF) or ``efSearch`` (HNSW); the smallest setting within ``--recall-gap`` of the
   exact index (1 point by default) is kept. The recommender is saved (``Recommender.save``) to a temp
   directory for the server.
4. **In process** (one thread): ``recommend()`` on ``--requests`` random users, median ms; and the same
   steps timed apart: store reads (sync, history, seen), recall (the channels and their merge; of it,
   the two-tower query + index search), rank (``rank_by_id`` of the candidates).
5. **Load.** The service (``xdeepfm serve --store COPY --recommender DIR``, 1 torch thread per
   process) with ``--processes`` 1 and 2, warmed up (wrk rounds until none has a request over 1 s: the
   first request of each process pays the first sync), then ``wrk`` (``-t1``, loopback, ``--duration`` s)
   with 1 and 4 connections rotating over ``--bodies`` pre-written ``{"user_id": <random store user>,
   "k": 10}`` bodies. Reported: requests/s, p50/p99 (wrk's), non-2xx, the server's resident memory.

Usage (needs ``wrk``; HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1)::

    .venv/bin/python bench/recommend_scale.py --out docs/performance.md
    .venv/bin/python bench/recommend_scale.py --items 10000 --duration 3     # quick look, prints the section
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, cpu_model, git_revision, loadavg, run_wrk, setup, write_bodies_script, write_section  # noqa: E402

from xdeepfm.catalog import build_store, rank_by_id  # noqa: E402
from xdeepfm.data import load_splits  # noqa: E402
from xdeepfm.history import HistoryConfig  # noqa: E402
from xdeepfm.index import IndexConfig, VectorIndex  # noqa: E402
from xdeepfm.recall_eval import catalogue, load_recall_experiment  # noqa: E402
from xdeepfm.recommend import Recommender, default_recommender_path, recommend  # noqa: E402
from xdeepfm.server import RankingServer  # noqa: E402
from xdeepfm.serving import ScoringEngine  # noqa: E402
from xdeepfm.store import Event, Record, SQLiteStore  # noqa: E402

log = logging.getLogger("bench.recommend_scale")
HEADING = "## Recommending at catalogue scale: `POST /v1/recommend` from 600 to 1,000,000 items"
SECTION = "recommend_scale"
TEMPLATE_COLUMNS = ("category", "product")  # copied with the real item's title, so the three agree
TARGET_P99_MS, TARGET_ITEMS = 20.0, 1_000_000



# --------------------------------------------------------------------------- measuring


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of one process (VmRSS), MB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/*/stat parent ids)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        tree += frontier
    return tree


def file_mb(*paths: Path) -> float:
    total = 0
    for path in paths:
        if path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        elif path.exists():
            total += path.stat().st_size
    return total / 2**20


def wrk_rates(url: str, script: Path, connections: int, duration: float) -> dict:
    """``benchlib.run_wrk`` on /v1/recommend."""
    return run_wrk(url, script, connections, duration, timeout="60s", path="/v1/recommend")


def history_of(store: SQLiteStore, user_id: str) -> list[str]:
    """The history ``recommend()`` reads for a user (newest first)."""
    if store.layout.history is not None:
        return store.history(user_id)
    return store.history(user_id, limit=50, positive_min=1.0)


# --------------------------------------------------------------------------- the recommender and the catalogue


def training_split(config: Path) -> tuple[object, dict[str, pd.DataFrame], bool]:
    """(recall config, splits, whether timestamps were added): the splits of ``config``'s data, numbered
    in file order (train, then valid, then test) where they carry no ``timestamp``."""
    cfg = load_recall_experiment(config)
    splits = load_splits(cfg.data)
    c, start, added = cfg.columns, 1.7e9, False
    for name in ("train", "valid", "test"):
        frame = splits[name]
        if c.time not in frame.columns:
            splits[name] = frame.assign(**{c.time: start + np.arange(len(frame), dtype=float)})
            added = True
        start += len(frame)
    return cfg, splits, added


def synthetic_records(engine: ScoringEngine, store: SQLiteStore, real: list[Record], start: int, count: int,
                      rng: np.random.Generator) -> list[Record]:
    """``count`` random items ``scale_<start>...`` in the store's item columns (module docstring, step 2)."""
    entity = store.layout.item
    template = rng.integers(0, len(real), count)
    columns: dict[str, list] = {}
    for c in entity.columns:
        if c == entity.key:
            continue
        values = [r.columns[c] for r in real]
        text = any(spec.kind == "text" and spec.column == c for spec, _ in engine.fields)
        if text or c in TEMPLATE_COLUMNS:
            columns[c] = [values[j] for j in template]
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None):
            numbers = np.asarray([v for v in values if v is not None], float)
            columns[c] = np.round(rng.uniform(numbers.min(), numbers.max(), count), 2).tolist()
        else:
            columns[c] = [values[j] for j in rng.integers(0, len(values), count)]
    vectors: dict[str, np.ndarray] = {}
    for name, dim in entity.vectors:
        stack = np.stack([r.vectors[name] for r in real])
        if engine.field(name)[0].kind == "text":  # the real title's vector: the title is the real one
            vectors[name] = stack[template]
        else:
            vectors[name] = (stack.mean(0) + stack.std(0) * rng.standard_normal((count, dim))).astype(np.float32)
    out = []
    for i in range(count):
        rid = f"scale_{start + i:07d}"
        row = {entity.key: rid, **{c: v[i] for c, v in columns.items()}}
        out.append(Record(rid, row, {name: v[i] for name, v in vectors.items()}))
    return out


def grow(engine: ScoringEngine, store: SQLiteStore, recommender: Recommender, real: list[Record], have: int,
         target: int, batch: int, rng: np.random.Generator) -> dict:
    """Add synthetic items until the store holds ``target`` items: the store, then the two-tower index."""
    times = {"store_s": 0.0, "tower_s": 0.0}
    added = synced = 0
    recommender.sync(store)  # the service's state: every stored item indexed
    for start in tqdm(range(have, target, batch), desc=f"items to {target:,}", unit="batch", leave=False):
        recs = synthetic_records(engine, store, real, start, min(batch, target - start), rng)
        t0 = time.perf_counter()
        store.put("item", recs)
        t1 = time.perf_counter()
        synced += recommender.sync(store)  # as the service does: the items written since, into the two-tower index
        times["store_s"] += t1 - t0
        times["tower_s"] += time.perf_counter() - t1
        added += len(recs)
    store.checkpoint()
    index = recommender.channels["two_tower"].index
    times.update(added=added, synced=synced, index_items=len(index), index_dead=index.dead)
    if synced != added or index.dead:
        log.warning("sync put %d items into the index for %d written (%d dead rows)", synced, added, index.dead)
    return times


def approximate(recommender: Recommender, store: SQLiteStore, users: list[str], args: argparse.Namespace) -> dict:
    """Rebuild the two-tower index as ``args.approx`` and keep the cheapest setting within ``args.recall_gap``
    of the exact index's top-200 (module docstring, step 3)."""
    index = recommender.channels["two_tower"].index
    k = recommender.merge.n
    queries = np.concatenate([recommender.user_vector(u, history_of(store, u)) for u in users])
    live = index.live
    exact = VectorIndex(index.dim, IndexConfig(kind="flat")).build(index.ids[live], index.vectors[live])
    t0 = time.perf_counter()
    truth = [set(ids.tolist()) for ids, _ in exact.search(queries, k)]
    exact_ms = (time.perf_counter() - t0) * 1000 / len(queries)
    del exact
    gc.collect()
    grid = args.nprobe if args.approx == "ivf" else args.ef_search
    settings = {"ivf": {"kind": "ivf", "nlist": args.nlist, "nprobe": grid[0]},
                "hnsw": {"kind": "hnsw", "hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction,
                         "ef_search": grid[0]}}[args.approx]
    index.config = dataclasses.replace(index.config, **settings)
    t0 = time.perf_counter()
    index.rebuild()
    build_s = time.perf_counter() - t0
    result = {"kind": index.kind, "build_s": build_s, "rss_after_mb": rss_mb(), "exact_ms": exact_ms,
              "k": k, "queries": len(queries), "grid": []}
    chosen = None
    for value in grid:
        if args.approx == "ivf":
            index._index.nprobe = value
            index.config = dataclasses.replace(index.config, nprobe=value)
        else:
            index.config = dataclasses.replace(index.config, ef_search=value)
        t0 = time.perf_counter()
        found = [index.search(q[None], k)[0][0] for q in queries]  # one query at a time, as a request
        ms = (time.perf_counter() - t0) * 1000 / len(queries)
        recall = float(np.mean([len(truth[i] & set(f.tolist())) / k for i, f in enumerate(found)]))
        result["grid"].append({"value": value, "recall": recall, "ms": ms})
        log.info("%s %s=%d: recall@%d %.4f vs exact, %.2f ms/query", args.approx,
                 "nprobe" if args.approx == "ivf" else "efSearch", value, k, recall, ms)
        if chosen is None and recall >= 1.0 - args.recall_gap:
            chosen = value
            break
    if chosen is None:
        chosen = grid[-1]
        log.warning("no %s setting reached recall@%d >= %.3f; keeping the last (%d)", args.approx, k,
                    1.0 - args.recall_gap, chosen)
    if args.approx == "ivf":
        index._index.nprobe = chosen
        index.config = dataclasses.replace(index.config, nprobe=chosen)
    else:
        index.config = dataclasses.replace(index.config, ef_search=chosen)
    result["chosen"] = chosen
    result["gap"] = args.recall_gap
    result["met"] = [g for g in result["grid"] if g["value"] == chosen][0]["recall"] >= 1.0 - args.recall_gap
    result["param"] = "nprobe" if args.approx == "ivf" else "efSearch"
    return result


# --------------------------------------------------------------------------- requests


def in_process(engine: ScoringEngine, store: SQLiteStore, recommender: Recommender, users: list[str]) -> dict:
    """Median ms of ``recommend()`` and of its steps timed apart (module docstring, step 4)."""
    recommender._synced_at = recommender._synced_generation = None  # as a freshly loaded recommender: the first sync
    t0 = time.perf_counter()
    recommend(engine, store, recommender, users[0], 10)  # compares the whole catalogue; the encoders' first call
    first_ms = (time.perf_counter() - t0) * 1000
    totals, parts = [], {"store reads": [], "recall": [], "two-tower query + search": [], "rank": []}
    n_candidates = []
    for user in tqdm(users, desc="in process", unit="request", leave=False):
        t0 = time.perf_counter()
        got = recommend(engine, store, recommender, user, 10)
        totals.append((time.perf_counter() - t0) * 1000)
        n_candidates.append(got.n_candidates)
    index = recommender.channels["two_tower"].index
    for user in users:
        t0 = time.perf_counter()
        recommender.sync(store)
        history = history_of(store, user)
        seen = store.seen(user)
        t1 = time.perf_counter()
        ids, channels = recommender.candidates(user, history, seen)
        t2 = time.perf_counter()
        known = store.get("item", ids)
        ranked = rank_by_id(engine, store, user, [i for i in ids if i in known], top_k=10)
        t3 = time.perf_counter()
        index.search(recommender.user_vector(user, history), recommender.merge.n, [list(seen)])
        t4 = time.perf_counter()
        assert len(ranked.ids) == min(10, len(known))
        for name, seconds in (("store reads", t1 - t0), ("recall", t2 - t1), ("rank", t3 - t2),
                              ("two-tower query + search", t4 - t3)):
            parts[name].append(seconds * 1000)
    return {"first_ms": first_ms, "total_ms": statistics.median(totals), "p99_ms": float(np.percentile(totals, 99)),
            "parts_ms": {k: statistics.median(v) for k, v in parts.items()}, "candidates": statistics.median(n_candidates)}


def write_script(folder: Path, users: list[str]) -> Path:
    return write_bodies_script(folder, "recommend", [{"user_id": u, "k": 10} for u in users], path="/v1/recommend")


def load(ranker: Path, store_path: Path, recall_dir: Path, script: Path, args: argparse.Namespace) -> list[dict]:
    rows = []
    for processes in args.processes:
        t0 = time.perf_counter()
        with RankingServer(ranker, startup_timeout=1200, request_timeout=300,
                           args=["--store", str(store_path), "--recommender", str(recall_dir), "--threads", "1",
                                 "--processes", str(processes)]) as server:
            startup_s = time.perf_counter() - t0
            warm_rounds = 0
            while warm_rounds < 20:  # every process's first sync (the whole catalogue compared) and caches, until no stall
                warm = wrk_rates(server.url, script, 2 * processes, args.warmup)
                warm_rounds += 1
                log.info("%d process(es) up in %.0f s; warm-up round %d: %d requests, p99 %.0f ms, %d non-2xx", processes,
                         startup_s, warm_rounds, warm["requests"], warm["p99_us"] / 1000, warm["bad"] + warm["errors"])
                if warm["requests"] >= 10 * processes and warm["max_us"] < 1e6:
                    break
            for connections in args.connections:
                log.info("wrk: %d process(es), %d connection(s)", processes, connections)
                w = wrk_rates(server.url, script, connections, args.duration)
                pids = process_tree(server.process.pid)
                rows.append({"processes": processes, "connections": connections, "wrk": w, "startup_s": startup_s,
                             "warm_rounds": warm_rounds,
                             "rss_mb": sum(rss_mb(p) for p in pids), "rss_each_mb": [rss_mb(p) for p in pids]})
                log.info("  %.0f req/s, p50 %.1f ms, p99 %.1f ms, non-2xx %d, server RSS %.0f MB", w["rps"],
                         w["p50_us"] / 1000, w["p99_us"] / 1000, w["bad"] + w["errors"], rows[-1]["rss_mb"])
    return rows


# --------------------------------------------------------------------------- the section


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"Regenerate with `{r['command']}` (from the repository root, `HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1`; needs `wrk` "
        "and the main job's `runs/demo`). Every figure below is from this one run.",
        "",
        f"- Date: {r['date']}; git revision: {r['git']}; bench wall time {r['wall_min']:.1f} min.",
        f"- Machine: {m['cpu']}, **{m['cores']} cores shared with other work** (other engineers' training and test "
        f"jobs ran throughout): load average (1/5/15 min) at start {r['load_start']}, at the end {r['load_end']}. "
        f"Python {m['python']}, {m['wrk']}; torch 1 thread per process, FAISS 1 OpenMP thread "
        "(`OMP_NUM_THREADS=1`); wrk (1 thread) runs on the same cores as the server (loopback). The load moved during "
        "the run (the first table gives it at the start of each size), so sizes compare only as far as the load allows.",
        f"- Ranker `{r['ranker']}`; recommender: {r['recommender']}; channels {', '.join(r['channels'])}, "
        f"merge to {r['merge_n']} candidates (quotas {r['quotas']}). Store: {r['store_note']}; it holds "
        f"{r['n_users']:,} users and {r['n_events']:,} events{r['events_note']}.",
        f"- Synthetic items: a real item's title, product and category (the stored title vector), other categorical "
        "columns drawn from the real values, price uniform over the real range, the video semantics Gaussian with "
        "the real per-dimension mean and std; written with `SQLiteStore.put` in batches of "
        f"{r['batch']:,}, each followed by `Recommender.sync` (the service's path for newly ingested items: item tower, "
        "then the FAISS index). Requests: "
        f"`{{\"user_id\": <random store user>, \"k\": 10}}` (exclude_seen default), {r['bodies']} bodies rotated; "
        f"{r['duration']:.0f} s of wrk per row, after the warm-up described above the load table.",
        "",
        "**Catalogue, index and memory**",
        "",
        "| items | load avg at start | index | store file MB | recommender dir MB | of it: two-tower inputs + vectors | "
        "of it: index (FAISS file) | write to store s | sync into two-tower index s | index build s | recall@200 vs exact "
        "| bench RSS MB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["sizes"]:
        a = s.get("approx")
        kind = "flat (exact)" if a is None else f"{a['kind']} ({', '.join(f'{k}={v}' for k, v in s['index_params'].items())})"
        recall = "1 (exact)" if a is None else f"{[g for g in a['grid'] if g['value'] == a['chosen']][0]['recall']:.4f}"
        build = "-" if a is None else f"{a['build_s']:.1f}"
        g = s.get("grow", {})
        lines.append(f"| {s['items']:,} | {s['load_avg']} | {kind} | {s['store_mb']:,.0f} | {s['recall_dir_mb']:,.0f} | "
                     f"{s['tower_file_mb']:,.0f} | {s['index_mb']:,.0f} ({s['faiss_mb']:,.0f}) | {g.get('store_s', 0):.1f} | "
                     f"{g.get('tower_s', 0):.1f} | {build} | {recall} | {s['bench_rss_mb']:,.0f} |")
    for s in r["sizes"]:
        a = s.get("approx")
        if a:
            grid = "; ".join(f"{a['param']}={g['value']}: {g['recall']:.4f} ({g['ms']:.2f} ms/query)" for g in a["grid"])
            lines += ["", f"At {s['items']:,} items (load average {s['load_avg']}) the index was rebuilt as {a['kind']} in **{a['build_s']:.1f} s** "
                          f"(the bench process's resident memory after it: {a['rss_after_mb']:,.0f} MB); recall@{a['k']} against the "
                          f"exact index over {a['queries']} users' query vectors, one query at a time: {grid} (the exact "
                          f"flat search: {a['exact_ms']:.1f} ms/query in a batch of {a['queries']}); kept "
                          f"{a['param']}={a['chosen']}."]
    lines += ["", "**In process** (one thread, ms; the first call after loading, which runs the first sync; then "
                  "the median and p99 of `recommend()` over the requests; then, on a second pass over the same users, its "
                  "steps timed apart: on that pass the ranker's item-row cache already holds the candidates' rows, so "
                  "the steps add up to less than `recommend()`, the difference being mostly the encoding of rows met "
                  "for the first time):", "",
              "| items | first call (first sync) | recommend() | p99 | store reads (sync, history, seen) | recall (3 channels "
              "+ merge) | of it: two-tower query + index search | rank (ranker on the candidates) | candidates |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in r["sizes"]:
        p = s["in_process"]
        q = p["parts_ms"]
        lines.append(f"| {s['items']:,} | {p['first_ms']:,.0f} | {p['total_ms']:.1f} | {p['p99_ms']:.1f} | {q['store reads']:.2f} | {q['recall']:.2f} | "
                     f"{q['two-tower query + search']:.2f} | {q['rank']:.2f} | {p['candidates']:.0f} |")
    lines += ["", "**Under load** (`xdeepfm serve --store --recommender`, wrk over loopback; before the rows, "
                  f"rounds of {r['warmup']:.0f} s of wrk at 2 connections per process until one has no request over 1 s: "
                  "each process's first request pays the first sync):", "",
              "| items | server processes | start s | warm-up rounds | wrk connections | requests/s | p50 ms | p99 ms | non-2xx "
              "| server RSS MB (all processes) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in r["sizes"]:
        for row in s["load"]:
            w = row["wrk"]
            lines.append(f"| {s['items']:,} | {row['processes']} | {row['startup_s']:.0f} | {row['warm_rounds']} | "
                         f"{row['connections']} | {w['rps']:.0f} | "
                         f"{w['p50_us'] / 1000:.1f} | {w['p99_us'] / 1000:.1f} | {w['bad'] + w['errors']} | "
                         f"{row['rss_mb']:,.0f} |")
    lines += ["", verdict(r)]
    return "\n".join(lines)


def verdict(r: dict) -> str:
    biggest = r["sizes"][-1]
    four = [row for row in biggest["load"] if row["connections"] == 4]
    if biggest["items"] < TARGET_ITEMS or not four:
        return (f"**Target (p99 < {TARGET_P99_MS:.0f} ms at {TARGET_ITEMS:,} items, 4 clients): not measured in this run** "
                f"(largest catalogue {biggest['items']:,} items).")
    best = min(four, key=lambda row: row["wrk"]["p99_us"])
    p99 = best["wrk"]["p99_us"] / 1000
    met = "met" if p99 < TARGET_P99_MS else "not met"
    inp = biggest["in_process"]
    parts = inp["parts_ms"]
    capacity = 1000.0 * r["machine"]["cores"] / inp["total_ms"]
    return "\n".join([
        f"**Target (p99 < {TARGET_P99_MS:.0f} ms at {biggest['items']:,} items, 4 clients, this {r['machine']['cores']}-core "
        f"machine): {met}.** Best p99 at 4 connections: {p99:.1f} ms ({best['processes']} server process(es)); recall@200 of "
        "the approximate index against the exact one: "
        + (f"{[g for g in biggest['approx']['grid'] if g['value'] == biggest['approx']['chosen']][0]['recall']:.4f} "
           f"(target: within {100 * biggest['approx']['gap']:.0f} point, {'met' if biggest['approx']['met'] else 'not met'})."
           if biggest.get("approx") else "exact index."),
        "",
        f"Where the time goes at {biggest['items']:,} items: one request costs {inp['total_ms']:.1f} ms of one core in "
        f"process (median; p99 {inp['p99_ms']:.1f} ms): rank (the ranker on {inp['candidates']:.0f} candidates) "
        f"{parts['rank']:.1f} ms, recall {parts['recall']:.1f} ms (of it the two-tower query and the index search "
        f"{parts['two-tower query + search']:.1f} ms; popularity, ItemCF and the merge the rest), store reads "
        f"{parts['store reads']:.1f} ms. The catalogue's size reaches a request only through the index search (and the "
        f"item-row cache of the ranker, which meets more distinct items); the rest does not grow with it. At that service "
        f"time {r['machine']['cores']} cores serve at most ~{capacity:.0f} requests/s, and 4 concurrent clients on "
        f"{r['machine']['cores']} cores (with wrk and the other jobs on the same cores) make each request wait for about "
        "one other per core, so p50 at 4 connections is about twice the service time and p99 adds the scheduling stalls "
        "of a shared machine. Meeting p99 < 20 ms at 4 clients needs a service time of a few ms: fewer candidates to "
        "rank (`merge.n`), a cheaper index search (the IVF setting that keeps recall within 1 point costs the time "
        "above; HNSW is the other kind, compared with it in `bench/recall_index.py`'s section), and cores not shared "
        "with other work.",
    ])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=REPO / "runs/demo", help="the main job's --out (default runs/demo)")
    p.add_argument("--config", type=Path, default=REPO / "configs/recall_ecommerce_video.yaml",
                   help="recall YAML to fit the recommender with when the demo has no ranker.recall")
    p.add_argument("--items", type=int, nargs="*", default=[10_000, 100_000, 1_000_000],
                   help="catalogue sizes after the real one (items in all)")
    p.add_argument("--batch", type=int, default=50_000, help="synthetic items per store transaction (each followed by a sync)")
    p.add_argument("--approx", choices=("ivf", "hnsw"), default="ivf", help="the approximate index at --approx-from items")
    p.add_argument("--approx-from", type=int, default=200_000, help="approximate index from this many items "
                                                                     "(IndexConfig.auto_threshold's default)")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--recall-gap", type=float, default=0.01, help="largest recall@200 loss against exact (1 point)")
    p.add_argument("--queries", type=int, default=200, help="users whose query vectors measure recall@200")
    p.add_argument("--requests", type=int, default=200, help="in-process recommend() calls per size")
    p.add_argument("--bodies", type=int, default=1000, help="pre-written request bodies (random store users)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per row")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of wrk before the measured rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="markdown file whose recommend_scale section is rewritten")
    args = p.parse_args(argv)
    setup(1, quiet=("xdeepfm.index", "xdeepfm.recommend", "xdeepfm.features"))
    if shutil.which("wrk") is None:
        p.error("wrk is not on PATH (Debian: apt-get install wrk)")
    ranker = args.demo / "artifacts/ranker"
    source = args.demo / "artifacts/ranker.store.sqlite"
    if not source.is_file():
        p.error(f"{source}: not found; run `mmfusion demo` first")
    wall = time.perf_counter()
    result: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_start": loadavg(),
                    "bodies": args.bodies, "batch": args.batch, "duration": args.duration, "warmup": args.warmup, "sizes": []}
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_recommend_") as tmp:
        tmp = Path(tmp)
        store_path, recall_dir = tmp / "store.sqlite", tmp / "recall"
        engine = ScoringEngine.load(ranker)
        cfg, splits, timestamped = training_split(args.config)
        c = cfg.columns
        demo_store = SQLiteStore(source)
        if demo_store.schema >= 2:
            store = demo_store.backup(store_path)
            result["store_note"] = "a copy of the demo's store"
        else:  # made before the event log: rebuilt from the same data, so that users have histories and seen items
            log.info("%s is a schema-%d store (no event log): building a schema-2 one from %s", source, demo_store.schema,
                     cfg.data.path)
            every = pd.concat([splits["train"], splits["valid"], splits["test"]], ignore_index=True)
            store = build_store(engine, splits["train"], store_path, items=catalogue(splits, c),
                                users=every.drop_duplicates(c.user),
                                history=HistoryConfig(user_column=c.user, item_column=c.item, time_column=c.time,
                                                      label_column=c.label))
            result["store_note"] = (f"the demo's store is schema {demo_store.schema} (made before the event log), so "
                                    f"the bench builds one from the same data with `build_store`: its items and users, "
                                    "the training split's impressions as events"
                                    + (", numbered in file order as the data has no timestamps" if timestamped else ""))
        demo_store.close()
        demo_recall = default_recommender_path(ranker)
        if demo_recall.is_dir():
            recommender = Recommender.load(demo_recall, engine.artifact.pipeline)
            result["recommender"] = f"the demo's `{demo_recall.relative_to(REPO) if demo_recall.is_relative_to(REPO) else demo_recall}`"
        else:
            log.info("no %s: fitting the recommender on %s", demo_recall, args.config)
            t0 = time.perf_counter()
            recommender = Recommender.fit(cfg, engine.artifact.pipeline, splits["train"], catalogue(splits, cfg.columns),
                                          seed=args.seed)
            result["recommender"] = (f"fitted here (the demo has no `ranker.recall`) with `Recommender.fit` on "
                                     f"`{args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}`'s "
                                     f"training split in {time.perf_counter() - t0:.0f} s")
        result["events_note"] = ""
        if store.count_events() == 0:
            train = splits["train"].sort_values(c.time, kind="stable")
            events = [Event(str(u), str(i), float(y), float(t)) for u, i, y, t in
                      train[[c.user, c.item, c.label, c.time]].itertuples(index=False)]
            for start in range(0, len(events), 50_000):
                store.add_events(events[start : start + 50_000])
            result["events_note"] = (" (the demo's store had none: the training split's impressions logged here"
                                     + (", numbered in file order: the data has no timestamps)" if timestamped else ")"))
        users = store.ids("user")
        result.update(ranker=str(ranker.relative_to(REPO) if ranker.is_relative_to(REPO) else ranker),
                      channels=list(recommender.channels), merge_n=recommender.merge.n, quotas=recommender.merge.quotas,
                      n_users=len(users), n_events=store.count_events())
        bodies = [str(u) for u in rng.choice(users, args.bodies)]
        script = write_script(tmp, bodies)
        real = list(store.get("item", store.ids("item")).values())
        sizes = [len(real)] + sorted(n for n in args.items if n > len(real))
        have = len(real)
        for i, target in enumerate(sizes):
            log.info("catalogue of %d items", target)
            size: dict = {"items": target, "load_avg": loadavg()}
            if target > have:
                size["grow"] = grow(engine, store, recommender, real, have, target, args.batch, rng)
                have = target
                log.info("  store %.0f s, sync into the two-tower index %.0f s (%d synced, index %d items, %d dead rows)",
                         size["grow"]["store_s"], size["grow"]["tower_s"], size["grow"]["synced"],
                         size["grow"]["index_items"], size["grow"]["index_dead"])
            index = recommender.channels["two_tower"].index
            if target >= args.approx_from and index.kind == "flat":
                size["approx"] = approximate(recommender, store, [str(u) for u in rng.choice(users, args.queries)], args)
            params = {"ivf": ("nlist", "nprobe"), "hnsw": ("hnsw_m", "ef_search")}.get(index.kind, ())
            size["index_params"] = {k: getattr(index.config, k) for k in params}
            if index.kind == "ivf":
                size["index_params"]["nlist"] = index._index.nlist
            size["bench_rss_mb"] = rss_mb()
            size["in_process"] = in_process(engine, store, recommender, [str(u) for u in rng.choice(users, args.requests)])
            log.info("  in process: recommend() %.1f ms median (%s)", size["in_process"]["total_ms"],
                     ", ".join(f"{k} {v:.2f}" for k, v in size["in_process"]["parts_ms"].items()))
            if recall_dir.exists():
                shutil.rmtree(recall_dir)
            t0 = time.perf_counter()
            recommender.save(recall_dir)
            size["save_s"] = time.perf_counter() - t0
            loaded = VectorIndex.load(recall_dir / "two_tower")
            if loaded.kind == "ivf" and loaded._index.nprobe != index._index.nprobe:
                raise RuntimeError(f"the saved IVF index reads back with nprobe {loaded._index.nprobe}, not {index._index.nprobe}")
            del loaded
            store.checkpoint()
            size["store_mb"] = file_mb(store_path, Path(f"{store_path}-wal"))
            size["recall_dir_mb"] = file_mb(recall_dir)
            size["index_mb"] = file_mb(*(recall_dir / "two_tower" / n for n in
                                         ("recall_index.faiss", "recall_index.npz", "recall_index.json")))
            size["faiss_mb"] = file_mb(recall_dir / "two_tower" / "recall_index.faiss")
            size["tower_file_mb"] = file_mb(recall_dir / "two_tower" / "two_tower.safetensors")
            if i == len(sizes) - 1:  # the largest: leave the memory to the servers
                del recommender, index
                gc.collect()
            size["load"] = load(ranker, store_path, recall_dir, script, args)
            result["sizes"].append(size)
            log.info("  done at %.1f min", (time.perf_counter() - wall) / 60)
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0].strip()
    result.update(load_end=loadavg(), git=git_revision(), wall_min=(time.perf_counter() - wall) / 60,
                  command="python bench/recommend_scale.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                  machine={"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
                           "python": platform.python_version(), "wrk": wrk_version or "wrk"})
    text = render(result)
    print(text)
    (Path(tempfile.gettempdir()) / "recommend_scale.json").write_text(json.dumps(result, indent=1, default=str))
    if args.out:
        write_section(args.out, HEADING, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
