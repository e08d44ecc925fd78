"""Extraction throughput: seconds of video processed per wall-clock second, on this CPU.

Clips are generated first (``mmfusion.extract.synthclip``: H.264 + AAC mp4 files of moving
coloured frames and a tone, ``--clips`` of ``--clip-seconds`` at ``--size`` and ``--source-fps``),
outside any timing. Then, for ``--rounds`` rounds, alternating so that all see the same machine
load, three measurements over all clips with a pool of ``--workers`` processes:

* **decode only** (the reference): ``decode_clip`` per file in the pool -- PyAV demux and decode
  of every video frame and the audio, sampling at ``--fps``, resampling to 16 kHz -- no features;
* **stats**: the whole ``mmfusion.extract.extract`` run (decode, covarep74 audio, the 34 frame
  statistics, tokenizer, assembly) with ``--visual stats``;
* **resnet18 (random weights)**: the same with a ResNet-18 backbone on 224 x 224 crops, random
  weights (its compute cost only: the features mean nothing).

Extraction runs have no per-file cache (every file is decoded every round). Throughput =
total seconds of video / wall seconds of the run; the ratio is against decode only, same round.

Usage::

    python bench/extract_speed.py --workers 2 --rounds 3 --out docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from benchlib import cpu_model, git_revision, loadavg, setup, write_section  # noqa: E402

from mmfusion.extract.decode import decode_clip  # noqa: E402
from mmfusion.extract.pipeline import ExtractConfig, _init_worker, extract  # noqa: E402
from mmfusion.extract.synthclip import write_clip  # noqa: E402
from mmfusion.extract.visual import VisualConfig  # noqa: E402

MODES = {
    "decode only": None,
    "stats": VisualConfig(backbone="stats"),
    "resnet18 (random weights)": VisualConfig(backbone="resnet18", weights="random"),
}


def make_clips(folder: Path, n: int, seconds: float, size: tuple[int, int], fps: int) -> Path:
    rows = ["video,id,text"]
    for i in range(n):
        write_clip(folder / f"clip{i}.mp4", seconds, fps=fps, size=size, tone_hz=150.0 + 20 * i, hue=i / n,
                   cut_at=seconds / 2)
        rows.append(f"clip{i}.mp4,clip{i},benchmark clip number {i}")
    (folder / "meta.csv").write_text("\n".join(rows) + "\n")
    return folder / "meta.csv"


def decode_only(paths: list[str], fps: float, workers: int) -> None:
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(1,)) as pool:
        for clip in pool.map(decode_clip, paths, [fps] * len(paths), [64] * len(paths)):
            assert len(clip.frames) > 0


def run_mode(mode: str, folder: Path, meta: Path, fps: float, workers: int) -> float:
    """Wall seconds of one pass over every clip."""
    start = time.perf_counter()
    if MODES[mode] is None:
        decode_only(sorted(str(p) for p in folder.glob("*.mp4")), fps, workers)
    else:
        result = extract(folder, meta, ExtractConfig(fps=fps, visual=MODES[mode]), workers=workers)
        assert not result.failed, result.failed
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--size", default="640x360", help="source frame size WxH")
    p.add_argument("--source-fps", type=int, default=30)
    p.add_argument("--fps", type=float, default=5.0, help="extraction frame rate (the CLI default)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="rewrite this doc's extract_speed section")
    args = p.parse_args(argv)
    setup(threads=1, level=logging.WARNING)
    width, height = (int(v) for v in args.size.lower().split("x"))
    video_seconds = args.clips * args.clip_seconds
    load_start = loadavg()
    times: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        meta = make_clips(Path(tmp), args.clips, args.clip_seconds, (width, height), args.source_fps)
        for r in range(args.rounds):
            for mode in MODES:
                times[mode].append(run_mode(mode, Path(tmp), meta, args.fps, args.workers))
                print(f"round {r + 1}: {mode:<26} {video_seconds / times[mode][-1]:7.1f} s of video / s", flush=True)

    ref = statistics.median(times["decode only"])
    lines = [
        f"Regenerate with `{shlex.join(['python', 'bench/extract_speed.py', *(argv if argv is not None else sys.argv[1:])])}` "
        "(from the repository root, `HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1`).",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; git revision: {git_revision()}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores; {args.workers} worker processes with 1 torch thread and "
        f"1 FFmpeg decoding thread each; torch {torch.__version__}; Python {sys.version.split()[0]}",
        f"- Load average (1/5/15 min) at start: **{load_start}**; at the end: {loadavg()}. The machine is shared "
        "with other jobs: compare rows of the same run.",
        f"- Input: {args.clips} generated H.264 + AAC clips of {args.clip_seconds:g} s, {width}x{height} at "
        f"{args.source_fps} fps (moving coloured frames with one cut, a tone), {video_seconds:g} s of video in all; "
        f"frames sampled at {args.fps:g} fps; audio covarep74 (74-d, 100 rows/s). Every run decodes every file "
        "(no per-file cache); an extraction run's wall time includes its process pool start and the tokenizer, "
        "not the pickle write (done by the CLI after `extract()`).",
        f"- {args.rounds} rounds, alternating the three; median and per-round figures.",
        "",
        "| run | s of video per wall s, median | per round | wall s, median | vs decode only |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for mode, values in times.items():
        med = statistics.median(values)
        per_round = ", ".join(f"{video_seconds / v:.1f}" for v in values)
        ratio = "(reference)" if mode == "decode only" else f"{ref / med:.2f}x"
        lines.append(f"| {mode} | **{video_seconds / med:.1f}** | {per_round} | {med:.2f} | {ratio} |")
    section = "\n".join(lines)
    print(section)
    if args.out:
        write_section(args.out, "## Video feature extraction throughput (mmfusion.extract)", "extract_speed", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
