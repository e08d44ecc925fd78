"""What ``"explain": true`` costs on ``POST /v1/rank``: latency with and without the ranking explanations.

1. **Artifact and store.** The main job's ranker and store (``--demo runs/demo``: ``artifacts/ranker`` and
   ``artifacts/ranker.store.sqlite``; run ``mmfusion demo`` first), the store copied to a temp file.
2. **Requests.** ``--bodies`` rank-by-id requests (``bench/serving_store.py``'s ``build_bodies``: a user of the
   store and ``--candidates`` item ids drawn, seeded), sent as they are (no explanation) and with
   ``"explain": true`` for each ``--top-k`` (the number of items explained). All bodies are written first.
3. **In process.** ``xdeepfm.explain.attribute`` on the engine's model for ``top_k`` rows (median ms over the
   bodies), and the largest completeness error ``|baseline + sum phi - logit|`` met.
4. **Load.** The service (``xdeepfm serve --store``, one process, one torch thread), ``wrk`` (``-t1``, one
   connection, loopback, ``--duration`` s) per row. Reported: requests/s, p50/p99 (wrk's), non-2xx.

Usage (needs ``wrk``)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/explain_latency.py --out docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime as dt
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

from benchlib import REPO, cpu_model, git_revision, loadavg, setup, write_section  # noqa: E402
from serving_store import build_bodies, write_script, wrk_rates  # noqa: E402

from xdeepfm.app import explanation_groups  # noqa: E402
from xdeepfm.catalog import rank_by_id  # noqa: E402
from xdeepfm.explain import attribute  # noqa: E402
from xdeepfm.server import RankingServer  # noqa: E402
from xdeepfm.serving import ScoringEngine  # noqa: E402
from xdeepfm.store import SQLiteStore  # noqa: E402

log = logging.getLogger("bench.explain_latency")
HEADING = "## Ranking explanations: the cost of `\"explain\": true`"


def in_process(engine: ScoringEngine, store: SQLiteStore, bodies: list[dict], top_k: int) -> dict:
    """Median ms of ranking alone and of attributing its ``top_k`` rows, and the largest completeness error."""
    groups = explanation_groups(engine)
    rank_ms, explain_ms, error, method = [], [], 0.0, ""
    for body in bodies:
        started = time.perf_counter()
        ranked = rank_by_id(engine, store, body["user_id"], body["candidate_ids"], top_k)
        rank_ms.append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        result = attribute(engine.model, ranked.inputs, groups)
        explain_ms.append(1000 * (time.perf_counter() - started))
        error, method = max(error, result.completeness_error()), result.method
    return {"rank_ms": statistics.median(rank_ms), "explain_ms": statistics.median(explain_ms),
            "completeness_error": error, "method": method, "groups": len(groups)}


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"Regenerate with `{r['command']}` (from the repository root, `HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1`; needs `wrk` "
        "and the main job's `runs/demo`).",
        "",
        f"- Date: {r['date']}; git revision: {r['git']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['wrk']}; load average at start "
        f"{r['load_start']}, at the end {r['load_end']}. wrk (1 thread) runs on the same cores as the server (loopback); "
        "figures are from this one run.",
        f"- Ranker: `{r['ranker']}` ({r['n_items']} items, {r['n_users']} users in its store), {r['groups']} field groups "
        f"(one per field; Shapley values over them, {r['method']}; the linear part exact); {r['bodies']} "
        f"request bodies of {r['candidates']} candidate ids each (ranking by id); the service: one process, one torch thread; "
        f"{r['duration']:.0f} s of wrk (1 connection) per row.",
        "",
        "In process (one thread, median over the bodies): ranking alone "
        f"{r['in_process']['rank_ms']:.2f} ms; attributing its top {r['in_process_top_k']} rows "
        f"**{r['in_process']['explain_ms']:.1f} ms**; largest completeness error |baseline + sum phi - logit| "
        f"{r['in_process']['completeness_error']:.1e}.",
        "",
        "| explain | items returned (and explained) | requests/s | p50 ms | p99 ms | non-200 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["load"]:
        w = row["wrk"]
        lines.append(f"| {'yes' if row['explain'] else 'no'} | {row['top_k']} | {w['rps']:.1f} | {w['p50_us'] / 1000:.1f} | "
                     f"{w['p99_us'] / 1000:.1f} | {w['bad'] + w['errors']} |")
    lines += ["", "An explained request costs about the Shapley pass of its returned items (it grows with `top_k`, "
                  "not with the candidates); a request without `explain` pays nothing for the feature. "
                  "`Limits.max_explained` (default 50) bounds it per request."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=REPO / "runs/demo", help="the main job's output (default runs/demo)")
    p.add_argument("--bodies", type=int, default=50, help="request bodies (default 50)")
    p.add_argument("--candidates", type=int, default=100, help="candidate ids per request (default 100)")
    p.add_argument("--top-k", type=int, nargs="+", default=[1, 10], help="items returned and explained (default 1 10)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per row (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="markdown file whose section to rewrite (e.g. docs/performance.md)")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        p.error("wrk is not on PATH (Debian: apt-get install wrk)")
    setup(1, quiet=("xdeepfm.access", "uvicorn.access"))
    ranker = args.demo / "artifacts/ranker"
    store_file = args.demo / "artifacts/ranker.store.sqlite"
    for path in (ranker, store_file):
        if not path.exists():
            p.error(f"{path}: not found (run `mmfusion demo` first, or pass --demo)")
    load_start = loadavg()
    with tempfile.TemporaryDirectory(prefix="explain_bench_") as tmp:
        folder = Path(tmp)
        store = SQLiteStore(store_file).backup(folder / "store.sqlite")
        engine = ScoringEngine.load(ranker, threads=1)
        by_id, _ = build_bodies(store, engine, args.bodies, args.candidates, args.seed)
        local = in_process(engine, store, by_id, max(args.top_k))
        log.info("in process: rank %.2f ms, explain %.1f ms (%s)", local["rank_ms"], local["explain_ms"], local["method"])
        rows = [(False, max(args.top_k))] + [(True, k) for k in args.top_k]
        scripts = {}
        for explain, k in rows:
            bodies = [{**b, "top_k": k, **({"explain": True} if explain else {})} for b in by_id]
            scripts[explain, k] = write_script(folder, f"rank_{int(explain)}_{k}", bodies)
        load = []
        with RankingServer(ranker, args=["--store", str(folder / "store.sqlite"), "--processes", "1"],
                           startup_timeout=180) as server:
            for explain, k in rows:
                log.info("wrk: explain=%s top_k=%d", explain, k)
                load.append({"explain": explain, "top_k": k, "wrk": wrk_rates(server.url, scripts[explain, k], 1, args.duration)})
        result = {
            "command": shlex.join(["python", "bench/explain_latency.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": dt.date.today().isoformat(), "git": git_revision(), "load_start": load_start, "load_end": loadavg(),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0].strip()},
            "ranker": str(ranker.relative_to(REPO) if ranker.is_relative_to(REPO) else ranker),
            "n_items": store.count("item"), "n_users": store.count("user"), "bodies": args.bodies,
            "candidates": args.candidates, "duration": args.duration, "in_process": local,
            "in_process_top_k": max(args.top_k), "groups": local["groups"], "method": local["method"], "load": load,
        }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1, default=float))
    if args.out:
        write_section(args.out, HEADING, "explain_latency", render(result))
        log.info("wrote the explain_latency section of %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
