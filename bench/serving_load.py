"""Serving speed: closed-loop HTTP load on the ranking service, and the engine against deepctr-torch ``predict``.

1. **Artifact.** ``--artifact DIR`` serves an existing export; by default the bench trains
   ``configs/ml100k_xdeepfm.yaml`` (MovieLens-100K, BERT title vectors from the on-disk text cache)
   for ``--train-epochs`` epochs into a temp directory and exports it with ``xdeepfm.export``.
2. **Requests.** ``--requests`` rank requests, each one test-split user (their user columns) and
   ``--candidates`` items drawn (seeded) from the ML-100K catalogue (their item columns),
   ``top_k`` 10. All bodies are built and serialised before any clock starts.
3. **In-process scoring** (same process, same weights, same candidates, rounds alternating):
   - *engine*: ``ScoringEngine.rank(user, candidates)``: raw records in, sorted scores out (called
     directly: no HTTP, no worker threads);
   - *deepctr path*: the same records through a DataFrame, ``FeaturePipeline.transform`` and
     ``deepctr_torch``'s ``BaseModel.predict`` (its ``TensorDataset`` + ``DataLoader`` loop, called on
     the artifact's own ``XDeepFMRanker`` behind a two-attribute adapter), then ``argsort``;
   - *model only*: the encoded inputs given, ``ScoringEngine.score_matrix`` against
     ``BaseModel.predict`` -- the ``DataLoader`` overhead alone.
   Candidates/s per round; the ratio is engine / deepctr of the medians, from this one run. Both
   paths' scores are compared (max abs difference reported).
4. **Load.** ``xdeepfm serve`` as a subprocess on a free loopback port (``xdeepfm.server.RankingServer``,
   ``--server-threads`` torch threads), ``--warmup`` untimed requests, then ``--clients`` threads,
   each with its own keep-alive connection, send the next request as soon as the previous answer
   arrives (closed loop) until ``--requests`` are done or ``--time-cap`` seconds pass. A request
   counts as an error unless it returns 200 with ``top_k`` items. Reported: throughput, client-side
   latency p50/p95/p99/max, errors, and the server's own latency from its access log.

The load generator runs on the same machine as the server (loopback), so they share the cores.

Usage::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/serving_load.py --out docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, cpu_model, git_revision, loadavg, setup, write_section  # noqa: E402

from xdeepfm._deepctr import deepctr_torch  # noqa: E402 - the quiet import (no version check)
from xdeepfm.model import stack_inputs  # noqa: E402
from xdeepfm.server import RankingServer  # noqa: E402
from xdeepfm.serving import ScoringEngine  # noqa: E402

log = logging.getLogger("bench.serving_load")

CONFIG = "configs/ml100k_xdeepfm.yaml"
TOP_K = 10
HEADING = "## Ranking service: HTTP load and in-process scoring (engine vs deepctr-torch predict)"


# --------------------------------------------------------------------------------------------
# Artifact and requests
# --------------------------------------------------------------------------------------------


def train_and_export(workdir: Path, epochs: int) -> Path:
    from xdeepfm.experiment import load_experiment
    from xdeepfm.export import export_checkpoint
    from xdeepfm.train import train

    config = load_experiment(REPO / CONFIG, [f"train.epochs={epochs}", "train.progress=false"])
    if not Path(config.features.text_cache_dir).is_absolute():
        config.features.text_cache_dir = str(REPO / config.features.text_cache_dir)
    log.info("training %s for %d epoch(s) (the artifact to serve)", CONFIG, epochs)
    result = train(config, workdir / "run")
    log.info("trained: test auc %.4f", result["test"]["auc"])
    return export_checkpoint(workdir / "run" / "best.safetensors", workdir / "artifact")


def build_requests(engine: ScoringEngine, n: int, n_candidates: int, seed: int) -> list[dict]:
    """``n`` rank requests: a test user's columns + ``n_candidates`` catalogue items."""
    from xdeepfm.data import load_splits
    from xdeepfm.experiment import load_experiment

    frames = load_splits(load_experiment(REPO / CONFIG).data)
    frame = pd.concat(frames.values(), ignore_index=True)
    columns = sorted(engine.columns)
    per_user = frame.groupby("user_id")[columns].nunique().max()
    user_cols = [c for c in columns if per_user[c] == 1]
    item_cols = [c for c in columns if c not in user_cols]
    users = frames["test"].drop_duplicates("user_id")[user_cols]
    items = frame.drop_duplicates(engine.item_field or item_cols[0])[item_cols]
    rng = np.random.default_rng(seed)

    def plain(df: pd.DataFrame) -> list[dict]:
        return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in df.to_dict("records")]

    user_rows, item_rows = plain(users), plain(items)
    return [{"user": user_rows[i % len(user_rows)],
             "candidates": [item_rows[j] for j in rng.choice(len(item_rows), n_candidates, replace=False)],
             "top_k": TOP_K} for i in range(n)]


# --------------------------------------------------------------------------------------------
# In-process: engine vs deepctr predict
# --------------------------------------------------------------------------------------------


class DeepctrPredictAdapter(torch.nn.Module):
    """The artifact's ranker behind ``deepctr_torch.models.basemodel.BaseModel.predict``:
    the attributes it reads (``feature_index``, ``device``) and probabilities (B, 1) out."""

    def __init__(self, ranker: torch.nn.Module) -> None:
        super().__init__()
        self.ranker, self.feature_index, self.device = ranker, ranker.feature_index, "cpu"

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.ranker(X)).unsqueeze(1)


def deepctr_predict(adapter: DeepctrPredictAdapter, encoded: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    x = {k: v.copy() for k, v in encoded.items()}  # predict reshapes 1-d inputs in place
    return deepctr_torch.models.basemodel.BaseModel.predict(adapter, x, batch_size=batch_size).reshape(-1)


def in_process(engine: ScoringEngine, requests: list[dict], rounds: int) -> dict:
    pipeline, model = engine.artifact.pipeline, engine.model
    adapter = DeepctrPredictAdapter(model).eval()
    batch = engine.batch_size

    def engine_path(r):
        return engine.rank(r["user"], r["candidates"], r["top_k"]).order

    def deepctr_path(r):
        frame = pd.DataFrame([{**r["user"], **c} for c in r["candidates"]])
        scores = deepctr_predict(adapter, pipeline.transform(frame, "request"), batch)
        return np.argsort(-scores, kind="stable")[: r["top_k"]]

    encoded = [pipeline.transform(pd.DataFrame([{**r["user"], **c} for c in r["candidates"]]), "request") for r in requests]
    matrices = [torch.from_numpy(stack_inputs(e, model.columns)) for e in encoded]
    # the two paths agree (same weights, same rows)
    diff = max(float(np.abs(engine.score([{**r["user"], **c} for c in r["candidates"]]).scores
                            - deepctr_predict(adapter, e, batch)).max()) for r, e in zip(requests[:20], encoded[:20]))
    same_top = all(np.array_equal(engine_path(r), deepctr_path(r)) for r in requests[:20])
    n_rows = sum(len(r["candidates"]) for r in requests)
    cases = {
        "end_to_end": {"engine": lambda: [engine_path(r) for r in requests], "deepctr": lambda: [deepctr_path(r) for r in requests]},
        "model_only": {"engine": lambda: [engine.score_matrix(X) for X in matrices],
                       "deepctr": lambda: [deepctr_predict(adapter, e, batch) for e in encoded]},
    }
    for case in cases.values():  # warm-up: one untimed pass of each
        for fn in case.values():
            fn()
    timings = {name: {side: [] for side in case} for name, case in cases.items()}
    for r in range(rounds):
        for name, case in cases.items():
            for side, fn in case.items():
                t0 = time.perf_counter()
                fn()
                timings[name][side].append(n_rows / (time.perf_counter() - t0))
            log.info("round %d %s: engine %.0f, deepctr %.0f candidates/s", r + 1, name,
                     timings[name]["engine"][-1], timings[name]["deepctr"][-1])
    return {"timings": timings, "max_abs_diff": diff, "same_top_k": same_top, "rows_per_round": n_rows}


# --------------------------------------------------------------------------------------------
# HTTP load
# --------------------------------------------------------------------------------------------


def load_test(server: RankingServer, warmup: list[bytes], bodies: list[bytes], clients: int, time_cap: float) -> dict:
    """Send ``warmup`` (untimed, one client), then ``bodies`` from ``clients`` closed-loop threads."""
    import requests

    headers = {"Content-Type": "application/json"}
    with requests.Session() as session:
        for body in warmup:
            session.post(f"{server.url}/v1/rank", data=body, headers=headers, timeout=60).raise_for_status()
    lock, next_index = threading.Lock(), [0]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + time_cap

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next_index[0]
                    if i >= len(bodies) or time.perf_counter() > deadline:
                        return
                    next_index[0] += 1
                t0 = time.perf_counter()
                try:
                    response = session.post(f"{server.url}/v1/rank", data=bodies[i], headers=headers, timeout=60)
                    ok = response.status_code == 200 and len(response.json()["items"]) == TOP_K
                    kind = None if ok else f"HTTP {response.status_code}"
                except requests.RequestException as exc:
                    kind = type(exc).__name__
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    if kind:
                        errors[kind] = errors.get(kind, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"sent": len(latencies), "planned": len(bodies), "wall_s": wall, "req_per_s": len(latencies) / wall,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "errors": errors,
            "stopped_by_time_cap": len(latencies) < len(bodies)}


def server_side_ms(log_path: Path, n: int) -> dict:
    """p50/p99 of the server's own latency (access log) over the last ``n`` /v1/rank requests."""
    entries = [json.loads(line.split("xdeepfm.access: ", 1)[1]) for line in log_path.read_text().splitlines()
               if "xdeepfm.access: " in line]
    ms = np.array([e["ms"] for e in entries if e["path"] == "/v1/rank"][-n:])
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))} if len(ms) else {}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _k(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def render(r: dict) -> str:
    a, load, ip = r["args"], r["load"], r["in_process"]
    med = {name: {side: statistics.median(v) for side, v in t.items()} for name, t in ip["timings"].items()}
    errors = sum(load["errors"].values())
    lines = [
        f"Regenerate with `{r['command']}` (from the repository root, `HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1`).",
        "",
        f"- Date: {r['date']}; git revision: {r['git']}",
        f"- Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores (2-core CPU machine, shared); torch "
        f"{r['machine']['torch']}, deepctr-torch {r['machine']['deepctr']}, Python {r['machine']['python']}; server "
        f"with {a['server_threads']} torch thread(s), bench process with {r['machine']['threads']}. Load average at "
        f"start: **{r['machine']['load_before']}**, at the end: {r['machine']['load_after']} (other jobs share the "
        "machine: compare figures of the same run).",
        f"- Model: {r['artifact_note']}. Requests: one ML-100K test user + {a['candidates']} catalogue items each "
        f"(seed {a['seed']}), `top_k` {TOP_K}.",
        "",
        f"**HTTP load** (`xdeepfm serve` on loopback; {a['clients']} closed-loop clients, keep-alive; "
        f"{a['warmup']} untimed warm-up requests; cap {a['requests']} requests or {a['time_cap']:.0f} s):",
        "",
        "| requests | errors | wall s | requests/s | candidates/s | p50 ms | p95 ms | p99 ms | max ms | server p50 / p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {load['sent']:,} | **{errors}** | {load['wall_s']:.1f} | **{load['req_per_s']:.1f}** | "
        f"{_k(load['req_per_s'] * a['candidates'])} | **{load['p50']:.1f}** | {load['p95']:.1f} | **{load['p99']:.1f}** | "
        f"{load['max']:.1f} | {load['server_ms'].get('p50', float('nan')):.1f} / {load['server_ms'].get('p99', float('nan')):.1f} |",
        "",
        f"Errors by kind: {load['errors'] or 'none'}; "
        + ("the time cap stopped the run early." if load["stopped_by_time_cap"] else "every planned request was sent.")
        + " Client latency is measured in the bench's client threads (Python `requests`, on the same 2 cores as the "
          "server); server latency is the service's access-log figure (request in to response out).",
        "",
        f"**In-process scoring** ({a['rounds']} alternating rounds over {a['inproc_requests']} requests = "
        f"{ip['rows_per_round']:,} candidates per round, after one untimed pass; candidates/s, median (min-max)):",
        "",
        "| path | engine | deepctr-torch `predict` path | engine / deepctr |",
        "| --- | ---: | ---: | ---: |",
    ]
    labels = {"end_to_end": "records in, top-k out (encoding + model)", "model_only": "encoded inputs in, scores out (model only)"}
    for name, label in labels.items():
        t = ip["timings"][name]
        cell = {s: f"{_k(med[name][s])} ({_k(min(t[s]))}-{_k(max(t[s]))})" for s in t}
        lines.append(f"| {label} | {cell['engine']} | {cell['deepctr']} | **{med[name]['engine'] / med[name]['deepctr']:.1f}x** |")
    lines += [
        "",
        "- *engine*: `ScoringEngine.rank`: JSON-like records read column by column, each value looked up in a prebuilt "
        "dict, user fields encoded once and broadcast, titles from the text cache (read once, in memory) and genre "
        "strings from an in-memory memo, "
        "one forward pass under `torch.inference_mode`. *deepctr path*: the same records through `pandas.DataFrame`, "
        "`FeaturePipeline.transform` (its title vectors from the same in-memory `SentenceVectorCache` as the engine's: "
        "hashed and looked up per call) and deepctr-torch's "
        "`BaseModel.predict` (`TensorDataset` + `DataLoader`, `torch.no_grad`) on the same `XDeepFMRanker` weights.",
        "- The model-only row runs the same `XDeepFMRanker` forward pass on both sides; the difference is deepctr's "
        "per-call `TensorDataset` + `DataLoader` (one Python `__getitem__` per row, then `collate`). The records row adds "
        "the encoding: per request, the deepctr path builds a `DataFrame`, runs `FeaturePipeline.transform` (vocabulary "
        "`Index` objects built per call, every title hashed) and argsorts; the engine's encoding is dict "
        "lookups, memo gathers and the same text-cache lookups.",
        f"- Same scores: max |engine - deepctr| over 20 requests = {ip['max_abs_diff']:.1e}; identical top-{TOP_K} "
        f"lists: {'yes' if ip['same_top_k'] else 'no'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, help="serve this export (default: train and export ML-100K first)")
    p.add_argument("--train-epochs", type=int, default=1)
    p.add_argument("--requests", type=int, default=2000, help="rank requests in the load test")
    p.add_argument("--clients", type=int, default=4, help="concurrent closed-loop clients")
    p.add_argument("--candidates", type=int, default=100, help="candidates per rank request")
    p.add_argument("--time-cap", type=float, default=120.0, help="seconds; the load test stops at this time at the latest")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--inproc-requests", type=int, default=100, help="requests per in-process round")
    p.add_argument("--rounds", type=int, default=5, help="alternating in-process rounds")
    p.add_argument("--server-threads", type=int, default=1, help="torch threads of the server process")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this (in-process) bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="markdown file whose serving_load section is rewritten")
    args = p.parse_args(argv)
    for name in ("requests", "clients", "candidates", "rounds", "inproc_requests", "threads", "server_threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    setup(args.threads, quiet=("xdeepfm",))
    load_before = loadavg()

    with tempfile.TemporaryDirectory(prefix="serving_load_") as tmp:
        if args.artifact is None:
            artifact = train_and_export(Path(tmp), args.train_epochs)
            note = (f"`{CONFIG}` trained {args.train_epochs} epoch(s) by this bench, exported with `xdeepfm export` "
                    "(10 input fields incl. the 384-d MiniLM title vector)")
        else:
            artifact, note = args.artifact, f"artifact `{args.artifact}`"
        engine = ScoringEngine.load(artifact)
        requests_ = build_requests(engine, max(args.requests + args.warmup, args.inproc_requests), args.candidates, args.seed)
        log.info("in-process: %d rounds x %d requests", args.rounds, args.inproc_requests)
        ip = in_process(engine, requests_[: args.inproc_requests], args.rounds)
        bodies = [json.dumps(r).encode() for r in requests_]
        server = RankingServer(artifact, log_path=Path(tmp) / "serve.log", args=["--threads", str(args.server_threads)])
        with server:
            log.info("load: %d requests, %d clients, server %s", args.requests, args.clients, server.url)
            load = load_test(server, bodies[: args.warmup], bodies[args.warmup : args.warmup + args.requests],
                             args.clients, args.time_cap)
            load["server_ms"] = server_side_ms(server.log_path, load["sent"])

    shown = ["python", "bench/serving_load.py", *(argv if argv is not None else sys.argv[1:])]
    results = {
        "command": shlex.join(shown), "args": vars(args) | {"artifact": str(args.artifact) if args.artifact else None},
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "git": git_revision(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "deepctr": deepctr_torch.__version__, "python": platform.python_version(),
                    "load_before": load_before, "load_after": loadavg()},
        "artifact_note": note, "load": load, "in_process": ip,
    }
    text = render(results)
    if args.out:
        write_section(Path(args.out), HEADING, "serving_load", text)
        log.info("wrote the serving_load section of %s", args.out)
    print(text)
    return 0 if not load["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
