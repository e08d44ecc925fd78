"""The ranker's forward pass: ms per call at 1, 100 and 1000 rows, 1 and 2 threads, per implementation,
against its FLOPs and one core's measured float32 ceiling.

1. **Model.** An exported ranking artifact (``--artifact``, default ``runs/demo/artifacts/ranker``:
   what ``mmfusion demo`` writes), loaded with ``xdeepfm.export.load_artifact``.
2. **Inputs.** ``--rows`` rows in the model's flat input layout: categorical codes drawn uniformly
   over each vocabulary (OOV included), multi-valued rows partly padded, numeric z-scores ~ N(0, 1),
   text and vector columns ~ N(0, 1/d) (the forward pass is dense: its time does not depend on the values).
3. **Implementations** (each on the same X; every one's probabilities are compared with the model's):
   - ``model``: ``XDeepFMRanker`` (deepctr ``Linear``, ``CIN``, ``DNN``) in eval mode: the engine before;
   - ``fast``: ``xdeepfm.inference.FastRanker`` with its defaults (what ``ScoringEngine`` runs);
   - ``fast, m^2 first layer``: without the first CIN layer's symmetry;
   - ``fast, chunk N`` / ``fast, unchunked``: other row chunks;
   - ``model, jit`` / ``fast, jit``: ``torch.jit.freeze(torch.jit.trace(...))`` (deprecated in torch 2.x);
   - ``model, compile`` / ``fast, compile``: ``torch.compile(dynamic=True)`` (inductor, C++ through gcc),
     its first call at each row count timed separately as warm-up (``--no-compile`` skips them).
4. **Timing.** Under ``torch.inference_mode``, per cell (implementation x rows x threads): 3 untimed
   calls, then calls until ``--seconds`` have passed (at least 5); ``--rounds`` rounds alternate
   every cell; the figure is the median ms per call over all rounds' calls, wall clock, and for 1
   thread also the calling thread's CPU time (``time.thread_time``: with one intra-op thread every
   kernel runs on it), which other jobs on a shared machine move less.
5. **FLOPs** per row, counted analytically by ``xdeepfm.inference.forward_flops`` (no embedding
   lookups: linear, projections, CIN layer by layer, DNN; a multiply-add is 2), for the model's
   formulation (m^2 first-layer channels) and for ``FastRanker``'s (m(m+1)/2).
6. **Ceiling.** One core's achieved float32 GFLOP/s: the best single call of ``torch.mm`` (MKL) at
   1 thread on 2048 x 2048 matrices and on the shape of the demo's second CIN layer, (64 x 352) @
   (352 x 1600), measured at the start and at the end; the highest of the four is the ceiling.
   Fraction of the ceiling = FLOPs executed / time / (threads x that ceiling).

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/xdeepfm_forward.py --out docs/performance.md
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

# torch.compile's warm-up is measured cold: a fresh inductor cache for this run, set before torch is imported
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="xdeepfm_forward_inductor_")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, cpu_model, git_revision, loadavg, setup, write_section  # noqa: E402

from xdeepfm.export import load_artifact  # noqa: E402
from xdeepfm.inference import DEFAULT_CHUNK_ROWS, FastRanker, forward_flops  # noqa: E402
from xdeepfm.model import XDeepFMRanker  # noqa: E402

log = logging.getLogger("bench.xdeepfm_forward")

HEADING = "## xDeepFM ranker: the forward pass against the FLOP ceiling"
DEFAULT_ARTIFACT = "runs/demo/artifacts/ranker"


# --------------------------------------------------------------------------------------------
# Inputs and implementations
# --------------------------------------------------------------------------------------------


def make_inputs(model: XDeepFMRanker, n: int, seed: int = 0) -> torch.Tensor:
    """n rows of the flat input matrix (see the module docstring, 2.)."""
    rng = np.random.default_rng(seed)
    width = max(end for _, end in model.feature_index.values())
    X = np.zeros((n, width), np.float32)
    for c in model.sparse:
        X[:, model.feature_index[c.name][0]] = rng.integers(0, c.vocabulary_size, n)
    for c in model.varlen:
        start, end = model.feature_index[c.name]
        codes = rng.integers(1, c.vocabulary_size, (n, end - start))
        codes[np.arange(end - start)[None, :] >= rng.integers(0, end - start + 1, n)[:, None]] = 0
        X[:, start:end] = codes
    for c in model.numeric + model.vectors:
        start, end = model.feature_index[c.name]
        X[:, start:end] = rng.normal(size=(n, end - start)) / np.sqrt(end - start)
    return torch.from_numpy(X)


class _Unchunked(torch.nn.Module):
    """``FastRanker._forward`` as a module's forward (what jit traces; the bench chunks around it)."""

    def __init__(self, fast: FastRanker) -> None:
        super().__init__()
        self.fast = fast

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.fast._forward(X)


def chunked(fn: Callable, rows: int) -> Callable:
    return lambda X: fn(X) if len(X) <= rows else torch.cat([fn(x) for x in X.split(rows)])


def implementations(model: XDeepFMRanker, example: torch.Tensor, compile_: bool) -> dict[str, tuple[Callable, bool]]:
    """name -> (forward callable, whether it runs the first CIN layer over pairs i <= j)."""
    fast = FastRanker.from_model(model)
    out = {
        "model": (model, False),
        "fast": (fast, True),
        "fast, m^2 first layer": (FastRanker.from_model(model, symmetric_first_layer=False), False),
        "fast, chunk 64": (FastRanker.from_model(model, chunk_rows=64), True),
        "fast, chunk 256": (FastRanker.from_model(model, chunk_rows=256), True),
        "fast, unchunked": (FastRanker.from_model(model, chunk_rows=1 << 30), True),
    }
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the deprecation and tracer warnings of torch.jit
        started = time.perf_counter()
        out["model, jit"] = (torch.jit.freeze(torch.jit.trace(model, example, check_trace=False)), False)
        traced = torch.jit.freeze(torch.jit.trace(_Unchunked(fast).eval(), example[:DEFAULT_CHUNK_ROWS], check_trace=False))
        out["fast, jit"] = (chunked(traced, DEFAULT_CHUNK_ROWS), True)
        log.info("jit trace + freeze of both: %.1f s", time.perf_counter() - started)
    if compile_:
        out["model, compile"] = (torch.compile(model, dynamic=True), False)
        out["fast, compile"] = (torch.compile(fast, dynamic=True), True)
    return out


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def gemm_gflops(m: int, k: int, n: int, seconds: float = 0.5) -> float:
    """Best GFLOP/s of ``torch.mm`` (m x k) @ (k x n) in float32 over calls for ``seconds``."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        torch.mm(a, b)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def ceiling() -> dict[str, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"square": gemm_gflops(2048, 2048, 2048, 1.0), "cin_shaped": gemm_gflops(64, 352, 1600)}
    finally:
        torch.set_num_threads(threads)


def time_calls(fn: Callable, X: torch.Tensor, seconds: float) -> tuple[list[float], list[float]]:
    """Wall and calling-thread CPU ms per call: 3 untimed calls, then calls for ``seconds`` (at least 5)."""
    with torch.inference_mode():
        for _ in range(3):
            fn(X)
        wall, cpu, end = [], [], time.perf_counter() + seconds
        while len(wall) < 5 or time.perf_counter() < end:
            start, start_cpu = time.perf_counter(), time.thread_time()
            fn(X)
            cpu.append((time.thread_time() - start_cpu) * 1e3)
            wall.append((time.perf_counter() - start) * 1e3)
    return wall, cpu


def warm_up_compiled(impls: dict, inputs: dict[int, torch.Tensor], threads: list[int]) -> dict[str, list[float]]:
    """Seconds of the first call of each compiled implementation at each row count (compilation included)."""
    out = {}
    for name, (fn, _) in impls.items():
        if not name.endswith("compile"):
            continue
        out[name] = []
        for n, X in inputs.items():
            for t in threads:
                torch.set_num_threads(t)
                start = time.perf_counter()
                with torch.inference_mode():
                    fn(X)
                out[name].append(time.perf_counter() - start)
                log.info("%s: first call at %d rows, %d thread(s): %.1f s", name, n, t, out[name][-1])
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _cell(r: dict, name: str, n: int, t: int) -> dict:
    return r["cells"][f"{name}|{n}|{t}"]


def render(r: dict) -> str:
    m, model = r["machine"], r["model"]
    ceil = r["ceiling_gflops"]
    flops, fast_flops = r["flops"]["model"], r["flops"]["fast"]
    lines = [
        f"Regenerate with `{r['command']}` (from the repository root, `HF_HUB_OFFLINE=1`).",
        "",
        f"- Date: {r['date']}; git revision: {r['git']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs); torch {m['torch']}, Python {m['python']}; "
        f"threads: {', '.join(map(str, r['threads']))} (`torch.set_num_threads` per cell). Load average at start: "
        f"**{m['load_before']}**, at the end: {m['load_after']} (compare figures of the same run).",
        f"- Model: `{r['artifact']}` ({model['fields']} fields of D = {model['D']}: {model['sparse']} categorical, "
        f"{model['varlen']} multi-valued, {model['vector_fields']} projected text/vector; {model['numeric']} numeric; "
        f"CIN {model['cin']} split_half={model['split_half']}, DNN {model['dnn']}; input width {model['width']}).",
        f"- Timing: median ms per forward call under `torch.inference_mode` over {r['rounds']} alternating rounds of "
        f">= {r['seconds']} s per cell (3 untimed calls first). Inputs: random codes and dense values in the model's "
        "layout (the pass is dense: values do not change its time). Fraction = FLOPs executed / time / (threads x one "
        "core's ceiling).",
        f"- One core's float32 ceiling: **{ceil:.1f} GFLOP/s**, the best of: `torch.mm` at 1 thread, best call, on "
        f"2048 x 2048 matrices {r['ceiling']['start']['square']:.1f} (start) / {r['ceiling']['end']['square']:.1f} (end), "
        f"and on the second CIN layer's shape (64 x 352) @ (352 x 1600) {r['ceiling']['start']['cin_shaped']:.1f} / "
        f"{r['ceiling']['end']['cin_shaped']:.1f}.",
        "",
        "**FLOPs per row** (`xdeepfm.inference.forward_flops`; no embedding lookups; a multiply-add is 2):",
        "",
        "| part | model (m^2 first-layer channels) | fast (pairs i <= j) |",
        "| --- | ---: | ---: |",
    ]
    for part in flops:
        lines.append(f"| {part} | {flops[part]:,} | {fast_flops[part]:,} |")
    total, fast_total = sum(flops.values()), sum(fast_flops.values())
    lines += [f"| **total** | **{total:,}** | **{fast_total:,}** |", "",
              f"At the ceiling, 100 rows take {100 * total / ceil / 1e6:.2f} ms in the model's formulation and "
              f"{100 * fast_total / ceil / 1e6:.2f} ms in FastRanker's, on one core.", ""]
    head = " | ".join(f"{n} row{'s' if n > 1 else ''}, {t} thr" for t in r["threads"] for n in r["rows"])
    lines += ["**ms per forward call, median** (fraction of the ceiling):", "",
              f"| implementation | {head} | max abs diff of probabilities vs model |",
              "| --- | " + " | ".join("---:" for _ in r["threads"] for _ in r["rows"]) + " | ---: |"]
    for name in r["implementations"]:
        cells = []
        for t in r["threads"]:
            for n in r["rows"]:
                c = _cell(r, name, n, t)
                ms = f"**{c['median_ms']:.3f}**" if name in ("model", "fast") else f"{c['median_ms']:.3f}"
                cells.append(f"{ms} ({c['fraction']:.0%})")
        lines.append(f"| {name} | {' | '.join(cells)} | {r['diff'][name]:.1e} |")
    if 1 in r["threads"]:
        head = " | ".join(f"{n} row{'s' if n > 1 else ''}" for n in r["rows"])
        lines += ["", "**At 1 thread, CPU ms per call, median** (the calling thread's CPU time: what a pass costs a core "
                  "it has to itself, less moved by other jobs than wall time; fraction of the ceiling):", "",
                  f"| implementation | {head} |", "| --- | " + " | ".join("---:" for _ in r["rows"]) + " |"]
        for name in r["implementations"]:
            cells = [f"{_cell(r, name, n, 1)['cpu_median_ms']:.3f} ({_cell(r, name, n, 1)['cpu_fraction']:.0%})" for n in r["rows"]]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", "**Result (this run):**", ""]
    for t in r["threads"]:
        ratios = ", ".join(f"{n} row{'s' if n > 1 else ''}: {_cell(r, 'model', n, t)['median_ms'] / _cell(r, 'fast', n, t)['median_ms']:.2f}x"
                           for n in r["rows"])
        lines.append(f"- `fast` against `model` at {t} thread{'s' if t > 1 else ''}: {ratios} (model ms / fast ms, wall).")
    if 1 in r["threads"]:
        ratios = ", ".join(f"{n} row{'s' if n > 1 else ''}: {_cell(r, 'model', n, 1)['cpu_median_ms'] / _cell(r, 'fast', n, 1)['cpu_median_ms']:.2f}x"
                           for n in r["rows"])
        lines.append(f"- The same at 1 thread in CPU time: {ratios}.")
    if 1 in r["threads"] and 2 in r["threads"]:
        t1 = {n: _cell(r, "fast", n, 1)["median_ms"] for n in r["rows"]}
        t2 = {n: _cell(r, "fast", n, 2)["median_ms"] for n in r["rows"]}
        lines.append("- `fast`, 2 threads against 1: " + ", ".join(f"{n} row{'s' if n > 1 else ''}: {t1[n] / t2[n]:.2f}x"
                                                              for n in r["rows"])
                     + " (1-thread ms / 2-thread ms; above 1 means 2 threads are faster for one call alone). A service "
                     "running one process per core has one core per process: `ScoringEngine(threads=1)`.")
        busiest = max(float(m["load_before"].split(" / ")[0]), float(m["load_after"].split(" / ")[0]))
        if busiest > 1.0:
            lines.append(f"- The machine was busy during this run (1-minute load average up to {busiest:.2f} on "
                         f"{m['cores']} cores): a 2-thread call waits for its slower thread whenever another job holds "
                         "the other core, so the 2-thread cells measure that contention as much as the pass.")
    if r["compile_warmup_s"]:
        for name, secs in r["compile_warmup_s"].items():
            lines.append(f"- `{name}` warm-up: first calls {', '.join(f'{s:.1f}' for s in secs)} s (one per row count "
                         f"and thread setting, in the order rows {r['rows']} x threads {r['threads']}; compiled offline "
                         "with gcc into an empty inductor cache), paid again by every new process without that cache.")
    same = [name for name in ("fast", "fast, chunk 256", "fast, unchunked") if name in r["implementations"]]
    small = [n for n in r["rows"] if n <= DEFAULT_CHUNK_ROWS]
    if len(same) > 1 and small and 1 in r["threads"]:
        spread = ", ".join(f"{n} row{'s' if n > 1 else ''}: {min(_cell(r, x, n, 1)['median_ms'] for x in same):.3f}-"
                           f"{max(_cell(r, x, n, 1)['median_ms'] for x in same):.3f} ms" for n in small)
        lines.append(f"- Noise: {', '.join(f'`{x}`' for x in same)} run the same code at up to {DEFAULT_CHUNK_ROWS} rows; "
                     f"their spread at 1 thread ({spread}) is this run's run-to-run noise.")
    lines.append(f"- `ScoringEngine` runs `fast` (`FastRanker`, chunks of {DEFAULT_CHUNK_ROWS} rows) in eager mode.")
    return "\n".join(lines) + "\n"


def render_table(r: dict) -> str:
    out = [f"ceiling {r['ceiling_gflops']:.1f} GFLOP/s per core; FLOPs/row model {sum(r['flops']['model'].values()):,}, "
           f"fast {sum(r['flops']['fast'].values()):,}"]
    out.append(f"{'implementation':<24}" + "".join(f"{f'{n}r/{t}t':>16}" for t in r["threads"] for n in r["rows"]))
    for name in r["implementations"]:
        out.append(f"{name:<24}" + "".join(f"{_cell(r, name, n, t)['median_ms']:>9.3f} ({_cell(r, name, n, t)['fraction']:>3.0%})"
                                           for t in r["threads"] for n in r["rows"]))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", default=DEFAULT_ARTIFACT, help="exported ranking artifact (default: the demo's)")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 100, 1000], help="rows per forward call")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread settings")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over every cell")
    p.add_argument("--seconds", type=float, default=0.25, help="timed seconds per cell and round")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile implementations")
    p.add_argument("--out", default=None, help="markdown file whose xdeepfm_forward section is rewritten")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    setup(1, quiet=("torch._inductor", "torch._dynamo"))

    artifact = Path(args.artifact)
    if not (artifact / "manifest.json").exists():
        p.error(f"--artifact {artifact}: no exported ranking artifact there (run `mmfusion demo`, or `xdeepfm export`)")
    load_before = loadavg()
    model = load_artifact(artifact).model
    inputs = {n: make_inputs(model, n, seed=n) for n in args.rows}
    impls = implementations(model, inputs[max(args.rows)], args.compile)
    flops = {"model": forward_flops(model, symmetric_first_layer=False), "fast": forward_flops(model)}
    start_ceiling = ceiling()
    log.info("ceiling at start: %s GFLOP/s", {k: round(v, 1) for k, v in start_ceiling.items()})
    warmup = warm_up_compiled(impls, inputs, args.threads)

    X = inputs[max(args.rows)]
    with torch.inference_mode():
        reference = torch.sigmoid(model(X))
        diff = {name: float((torch.sigmoid(fn(X)) - reference).abs().max()) for name, (fn, _) in impls.items()}
    times: dict[str, list[float]] = {}
    cpu_times: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for t in args.threads:
            torch.set_num_threads(t)
            for n in args.rows:
                for name, (fn, _) in impls.items():
                    wall, cpu = time_calls(fn, inputs[n], args.seconds)
                    times.setdefault(f"{name}|{n}|{t}", []).extend(wall)
                    cpu_times.setdefault(f"{name}|{n}|{t}", []).extend(cpu)
        log.info("round %d of %d done", r + 1, args.rounds)
    torch.set_num_threads(1)
    end_ceiling = ceiling()
    peak = max(*start_ceiling.values(), *end_ceiling.values())
    cells = {}
    for key, values in times.items():
        name, n, t = key.split("|")
        per_row = sum((flops["fast"] if impls[name][1] else flops["model"]).values())
        median, cpu = statistics.median(values), statistics.median(cpu_times[key])
        cells[key] = {"median_ms": median, "calls": len(values), "p10_ms": float(np.percentile(values, 10)),
                      "p90_ms": float(np.percentile(values, 90)), "cpu_median_ms": cpu,
                      "fraction": per_row * int(n) / (median / 1e3) / (int(t) * peak * 1e9),
                      "cpu_fraction": per_row * int(n) / (cpu / 1e3) / (peak * 1e9)}

    c = model.config
    shown = ["python", "bench/xdeepfm_forward.py", *(argv if argv is not None else sys.argv[1:])]
    results = {
        "command": shlex.join(shown),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git_revision(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "load_before": load_before, "load_after": loadavg()},
        "artifact": os.path.relpath(artifact.resolve(), REPO) if artifact.resolve().is_relative_to(REPO) else str(artifact),
        "model": {"fields": model.n_fields, "D": c.embedding_dim, "sparse": len(model.sparse), "varlen": len(model.varlen),
                  "vector_fields": len(model.vectors) * c.fields_per_vector, "numeric": len(model.numeric),
                  "cin": list(c.cin_layer_sizes), "split_half": c.cin_split_half, "dnn": list(c.dnn_hidden_units),
                  "width": X.shape[1]},
        "rows": args.rows, "threads": args.threads, "rounds": args.rounds, "seconds": args.seconds,
        "implementations": list(impls), "flops": flops,
        "ceiling": {"start": start_ceiling, "end": end_ceiling}, "ceiling_gflops": peak,
        "compile_warmup_s": warmup, "diff": diff, "cells": cells,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.out:
        write_section(Path(args.out), HEADING, "xdeepfm_forward", render(results))
        log.info("wrote the xdeepfm_forward section of %s", args.out)
    print(render_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
