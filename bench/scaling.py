"""Training samples/s with 1 and 2 processes (torchrun, gloo) on this machine, for both trainers.

Each workload is trained by ``torchrun --nproc_per_node=P --standalone train.py --config C`` with
``OMP_NUM_THREADS=T``, for (P, T) in (1, 1), (1, 2), (2, 1): one process on one core (the
reference), one process on two cores, and two single-threaded processes. The global batch is the
config's in every case (2 processes take half each). Samples/s is what the trainers measure
over their training loops only (no validation, no start-up):

* sentiment (``configs/synthmosi_default.yaml``, MOSI-sized SynthMOSI, ``--epochs`` epochs): the
  mean over epochs of ``speed/train_clips_per_s`` in TensorBoard (clips of all ranks / rank 0's
  epoch wall time);
* ranking (``configs/ml100k_xdeepfm_notext.yaml``, ML-100K in memory, and the same data as
  Parquet shards streamed with ``data.num_workers: 0``): train rows x epochs / ``seconds.train``
  of ``metrics.json``.

Usage::

    python bench/scaling.py --out docs/performance.md      # rewrites its marked section only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from benchlib import cpu_model, git_revision, loadavg, write_section  # noqa: E402

from mmcore.config import load_yaml  # noqa: E402
from xdeepfm.data.shards import main as write_shards  # noqa: E402

SETTINGS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)


def torchrun(config: Path, out: Path, processes: int, threads: int) -> float:
    """Train ``config`` into ``out`` under torchrun; returns the wall seconds of the whole command."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone",
               str(REPO / "train.py"), "--config", str(config), "--out", str(out), "--log-level", "WARNING"]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def sentiment_rate(out: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return statistics.mean(e.value for e in events.Scalars("speed/train_clips_per_s"))


def ranking_rate(out: Path, train_rows: int) -> float:
    metrics = json.loads((out / "metrics.json").read_text())
    return train_rows * len(metrics["history"]) / metrics["seconds"]["train"]


def write_config(source: str, tmp: Path, name: str, epochs: int, data: dict | None = None) -> Path:
    raw = load_yaml(REPO / source)  # with its base: file merged in
    raw.setdefault("train", {}).update(epochs=epochs, patience=epochs + 1)
    if raw.get("task") == "ranking":
        raw["train"]["progress"] = False
    if data is not None:
        raw["data"] = data
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, help="markdown file whose <!-- scaling --> section is rewritten")
    args = parser.parse_args(argv)
    results: dict[str, dict[tuple[int, int], float]] = {}
    with tempfile.TemporaryDirectory(prefix="scaling_") as tmp_name:
        tmp = Path(tmp_name)
        sentiment = write_config("configs/synthmosi_default.yaml", tmp, "sentiment", args.epochs)
        ranking = write_config("configs/ml100k_xdeepfm_notext.yaml", tmp, "ranking", args.epochs)
        assert write_shards(["--from-config", str(ranking), "--out", str(tmp / "shards"), "--rows-per-shard", "10000"]) == 0
        manifest = json.loads((tmp / "shards" / "manifest.json").read_text())
        train_rows = manifest["splits"]["train"]["rows"]
        shards = write_config("configs/ml100k_xdeepfm_notext.yaml", tmp, "shards", args.epochs, data={
            "kind": "parquet", **{s: str(tmp / "shards" / s / "*.parquet") for s in ("train", "valid", "test")}})
        workloads = {
            "sentiment: synthmosi_default (1,284 train clips)": (sentiment, sentiment_rate),
            f"ranking: ml100k_xdeepfm_notext, in memory ({train_rows:,} train rows)": (ranking, lambda o: ranking_rate(o, train_rows)),
            f"ranking: same data as Parquet shards, streamed ({len(manifest['splits']['train']['files'])} train shards)":
                (shards, lambda o: ranking_rate(o, train_rows)),
        }
        for name, (config, rate) in workloads.items():
            results[name] = {}
            for processes, threads in SETTINGS:
                out = tmp / f"{config.stem}_{processes}x{threads}"
                wall = torchrun(config, out, processes, threads)
                results[name][(processes, threads)] = rate(out)
                print(f"{name}: {processes} process(es) x {threads} thread(s): {results[name][(processes, threads)]:.1f} "
                      f"samples/s (command {wall:.0f} s)", flush=True)

    rows = ["| workload | 1 process x 1 thread | 1 process x 2 threads | 2 processes x 1 thread | 2 processes vs 1 x 1 |",
            "|---|---|---|---|---|"]
    for name, by_setting in results.items():
        ref = by_setting[(1, 1)]
        cells = " | ".join(f"{by_setting[s]:,.0f}" for s in SETTINGS)
        rows.append(f"| {name} | {cells} | {by_setting[(2, 1)] / ref:.2f}x |")
    section = "\n".join([
        f"Training samples/s on this project's 2-core CPU machine ({cpu_model()}; the cores are shared with other "
        f"jobs: load average {loadavg()} when the run ended), {dt.date.today().isoformat()}, revision {git_revision()}, "
        f"seed 0 (the configs'), {args.epochs} epochs per run, gloo backend.",
        "",
        "```bash",
        f"python bench/scaling.py --epochs {args.epochs} --out docs/performance.md",
        "# each cell runs: OMP_NUM_THREADS=T python -m torch.distributed.run --nproc_per_node=P --standalone \\",
        "#     train.py --config <config with the epochs set> --out <tmp>",
        "```",
        "",
        *rows,
        "",
        "Samples/s counts the training loop only (sentiment: `speed/train_clips_per_s`, the clips of all ranks over "
        "rank 0's epoch time, averaged over epochs; ranking: train rows x epochs / `seconds.train`). The global batch "
        "is the config's in every column. Two processes on two cores compete with each other and with the other jobs "
        "on this machine, and each step adds a gradient all-reduce (and, for the sentiment model, the SLGM gather; "
        "for streamed shards, the extra all-reduce of DDP's `Join` that lets ranks end unevenly), so the change "
        "against one process is small here and can be a loss; the runtime is built for more cores, more machines "
        "and GPUs (README, \"Multi-process and multi-node training\"). The middle column is torch's own intra-op "
        "threading on the same two cores, for comparison.",
    ])
    print(section)
    if args.out:
        write_section(args.out, "## Multi-process training: samples/s, 1 vs 2 processes", "scaling", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
