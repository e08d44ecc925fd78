"""The recall index at catalogue scale: build time, query latency and recall@k of the approximate
FAISS indexes (IVF, HNSW) against the exact one, on random unit vectors of the item-tower width.

For each catalogue size, ``xdeepfm.index.VectorIndex`` is built with ``kind`` flat, ivf and hnsw
(the configs below); ``--queries`` random unit queries are answered one at a time (as a request
would be: batch 1) and timed; recall@k of an approximate index is |approx top-k ∩ exact top-k| / k,
averaged over the queries. Isotropic random vectors have no cluster structure, the hard case for
IVF and HNSW; ``--clusters C`` draws them around C centres instead, closer to trained item vectors. Memory is the resident set size growth over the build.

Usage::

    python bench/recall_index.py --out docs/performance.md          # rewrites its marked section only
    python bench/recall_index.py --sizes 10000 --queries 50         # quick look, prints the table
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from benchlib import cpu_model, git_revision, loadavg, write_section  # noqa: E402

from xdeepfm.index import IndexConfig, VectorIndex  # noqa: E402

# (label, config): the approximate settings measured against the exact index
SETTINGS = (
    ("flat (exact)", {"kind": "flat"}),
    ("ivf nlist=1024 nprobe=32", {"kind": "ivf", "nlist": 1024, "nprobe": 32}),
    ("ivf nlist=1024 nprobe=128", {"kind": "ivf", "nlist": 1024, "nprobe": 128}),
    ("ivf nlist=1024 nprobe=512", {"kind": "ivf", "nlist": 1024, "nprobe": 512}),
    ("hnsw M=32 efSearch=256", {"kind": "hnsw", "hnsw_m": 32, "ef_construction": 80, "ef_search": 256}),
    ("hnsw M=32 efSearch=512", {"kind": "hnsw", "hnsw_m": 32, "ef_construction": 80, "ef_search": 512}),
    ("hnsw M=32 efSearch=1024", {"kind": "hnsw", "hnsw_m": 32, "ef_construction": 80, "ef_search": 1024}),
)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def unit(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray | None = None) -> np.ndarray:
    """Random unit vectors; with ``centres``, normalize(c + e) for a random centre c and e ~ N(0, I / dim)."""
    x = rng.standard_normal((n, dim), dtype=np.float32)
    if centres is not None:
        x = centres[rng.integers(0, len(centres), n)] + x / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(size: int, dim: int, n_queries: int, k: int, threads: int, seed: int, clusters: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    centres = unit(rng, clusters, dim) if clusters else None
    vectors = unit(rng, size, dim, centres)
    queries = unit(rng, n_queries, dim, centres)
    ids = np.arange(size, dtype=np.int64)
    rows, exact, built = [], None, {}
    for label, overrides in SETTINGS:
        if overrides["kind"] == "hnsw" and ("hnsw", overrides["hnsw_m"]) in built:
            index = built[("hnsw", overrides["hnsw_m"])]  # same graph, only efSearch differs
            index.config.ef_search = overrides["ef_search"]
            index._index.hnsw.efSearch = overrides["ef_search"]
            build_s, mem = None, None
        elif overrides["kind"] == "ivf" and ("ivf", overrides["nlist"]) in built:
            index = built[("ivf", overrides["nlist"])]
            index.config.nprobe = overrides["nprobe"]
            index._index.nprobe = overrides["nprobe"]
            build_s, mem = None, None
        else:
            before = rss_mb()
            started = time.perf_counter()
            index = VectorIndex(dim, IndexConfig(threads=threads, **overrides)).build(ids, vectors)
            build_s = time.perf_counter() - started
            mem = rss_mb() - before
            built[(overrides["kind"], overrides.get("hnsw_m", overrides.get("nlist")))] = index
        latencies, found = [], []
        for q in queries:
            started = time.perf_counter()
            (items, _), = index.search(q[None, :], k)
            latencies.append((time.perf_counter() - started) * 1000)
            found.append(items)
        if exact is None:
            exact = found
        recall = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, exact)]))
        latencies.sort()
        if index.kind == "ivf":  # nlist is capped at items / 39 on small catalogues
            label = f"ivf nlist={index._index.nlist} nprobe={index._index.nprobe}"
        rows.append({"size": size, "index": label, "build_s": build_s, "memory_mb": mem, "recall": recall,
                     "p50_ms": statistics.median(latencies), "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64, help="the item-tower width (two_tower.out_dim)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (omp_set_num_threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clusters", type=int, default=0,
                        help="0: isotropic random vectors (the hard case); C: a mixture around C random unit centres")
    parser.add_argument("--out", type=Path, default=None, help="rewrite this doc's recall_index section")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    start_load, started = loadavg(), dt.datetime.now(dt.timezone.utc)
    rows = [row for size in args.sizes for row in measure(size, args.dim, args.queries, args.k, args.threads, args.seed,
                                                                 args.clusters)]
    fmt = lambda v, f: "(same build)" if v is None else format(v, f)  # noqa: E731
    table = [f"| items | index | build s | memory MB | recall@{args.k} vs exact | p50 ms | p99 ms |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['size']:,} | {r['index']} | {fmt(r['build_s'], '.2f')} | {fmt(r['memory_mb'], '.0f')} | {r['recall']:.3f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in rows]
    command = "python bench/recall_index.py " + " ".join(argv if argv is not None else sys.argv[1:])
    import faiss

    section = "\n".join([
        f"Regenerate with `{command.strip()}` (from the repository root).",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; git revision: {git_revision()}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, faiss-cpu {faiss.__version__}; "
        f"FAISS threads {args.threads}; load average at start {start_load}, at the end {loadavg()}; peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB.",
        f"- Data: {'isotropic random' if not args.clusters else f'clustered ({args.clusters} random unit centres, normalize(c + e), e ~ N(0, I/{args.dim}))'} "
        f"unit vectors of width {args.dim} (seed {args.seed}); {args.queries} queries drawn the same way, "
        f"one per search call (batch 1), top {args.k}; recall = |approximate top-{args.k} ∩ exact top-{args.k}| / {args.k}.",
        "",
        *table,
    ])
    print(section)
    if args.out is not None:
        name = "recall_index" + (f"_clustered{args.clusters}" if args.clusters else "")
        heading = "## Recall index: FAISS exact vs approximate at catalogue scale" + (", clustered vectors" if args.clusters else "")
        write_section(args.out, heading, name, section)


if __name__ == "__main__":
    main()
