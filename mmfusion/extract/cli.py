"""The extraction command line (``python -m mmfusion.extract``, ``mmfusion extract``): a folder of videos + meta.csv -> an MMSA pickle."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mmcore.runtime import setup_logging
from mmfusion.extract.audio import MAX_AUDIO_DIM, PRESETS, AudioConfig
from mmfusion.extract.pipeline import (
    ExtractConfig,
    MetaError,
    default_workers,
    extract,
    format_report,
    limit_problem,
    write_pickle,
)
from mmfusion.extract.visual import BACKBONES, FEATURE_SETS, VisualConfig, load_backbone, resolve

log = logging.getLogger("mmfusion.extract")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Parser(argparse.ArgumentParser):
    """Option errors as one line (``prog: error: argument --fps: ...``) and exit code 2, no usage dump."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _limited(name: str, kind: type):
    """An argparse ``type`` that parses ``kind`` and checks ``pipeline.LIMITS[name]``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        problem = limit_problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value

    return parse


def _audio_dim(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_AUDIO_DIM:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {MAX_AUDIO_DIM}], got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The extraction options (``python -m mmfusion.extract`` and ``mmfusion extract``)."""
    p.add_argument("--videos", required=True, type=Path, help="folder of video files")
    p.add_argument("--meta", required=True, type=Path,
                   help="CSV with columns video (file name in --videos), id, text; optional transcript, label, split")
    p.add_argument("--out", required=True, type=Path, help="output pickle, e.g. feats.pkl")
    p.add_argument("--labels", action="store_true", help="read the 'label' column (in [-3, 3]) as regression_labels")
    p.add_argument("--split", default="test", help="split of clips whose meta row has no split (default: test)")
    p.add_argument("--fps", type=_limited("fps", float), default=5.0,
                   help="video frames sampled per second, in (0, 1000] (default 5)")
    p.add_argument("--audio-preset", choices=PRESETS, default="covarep74",
                   help="acoustic features: covarep74 (74 columns, MOSEI-like; default), mfcc or fbank (--audio-dim "
                        "columns), prosody (16 pitch / energy / tempo / pause columns)")
    p.add_argument("--audio-dim", type=_audio_dim, default=74,
                   help=f"audio width for the mfcc / fbank presets, in [1, {MAX_AUDIO_DIM}]")
    p.add_argument("--visual", choices=("auto", *FEATURE_SETS, *BACKBONES), default="auto",
                   help="visual features: stats (34 frame statistics), face (17 face-geometry columns for rendered "
                        "faces), a torchvision backbone (auto: resnet18 when its weights are cached, else stats)")
    p.add_argument("--vision-weights", default="cache",
                   help="backbone weights: a state-dict file, 'cache' (torchvision cache) or 'random' (cost only)")
    p.add_argument("--max-audio-len", type=_limited("max_audio_len", int), default=500,
                   help="audio rows kept (longer: average-pooled)")
    p.add_argument("--max-vision-len", type=_limited("max_vision_len", int), default=375,
                   help="vision rows kept (longer: average-pooled)")
    p.add_argument("--text-model", type=Path, help="BERT-family tokenizer/model directory (default: bundled MiniLM)")
    p.add_argument("--text-len", type=_limited("text_len", int), default=50,
                   help="tokens per clip, in [2, 512] (default 50, as MMSA)")
    p.add_argument("--text-features", action="store_true",
                   help="also write 'text' (encoder hidden states) for models with model.text.source: features")
    p.add_argument("--workers", type=_limited("workers", int), default=default_workers(),
                   help="decoding processes, in [1, 256] (default: cores, max 4)")
    p.add_argument("--cache-dir", type=Path, help="per-file feature cache (default: <out>.cache)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the per-file cache")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m mmfusion.extract",
                description="Turn a folder of videos into an MMSA pickle (text_bert, audio, vision).")
    add_arguments(p)
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # --help (0), or a bad option: one line on stderr, exit code 2
        return exc.code if isinstance(exc.code, int) else 2
    setup_logging(args.log_level)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Extract, report per file, write the pickle; 0 all ok, 1 some files failed, 2 nothing usable."""
    try:
        visual = resolve(VisualConfig(backbone=args.visual, weights=args.vision_weights))
        if visual.needs_weights:
            load_backbone(visual.backbone, visual.weights)  # a bad weights file fails here, once, not per clip
        cfg = ExtractConfig(fps=args.fps, audio=AudioConfig(preset=args.audio_preset, dim=args.audio_dim),
                            visual=visual, max_audio_len=args.max_audio_len, max_vision_len=args.max_vision_len)
        log.info("visual features: %s (%d columns%s); audio: %s (%d columns)", visual.backbone, visual.dim,
                 f", weights {visual.weights}" if visual.needs_weights else "", cfg.audio.preset, cfg.audio.out_dim)
        cache = None if args.no_cache else (args.cache_dir or args.out.with_name(args.out.name + ".cache"))
        result = extract(args.videos, args.meta, cfg, labels=args.labels, default_split=args.split,
                         workers=args.workers, cache_dir=cache, text_model=args.text_model,
                         text_len=args.text_len, text_features=args.text_features)
    except (MetaError, OSError, ValueError) as exc:
        log.error("%s", " ".join(str(exc).split()))  # one line, whatever the message holds
        return 2
    print(format_report(result.reports))
    n = sum(len(result.data[s]["id"]) for s in ("train", "valid", "test"))
    if n == 0:
        print(f"no clip could be extracted: {args.out} not written", file=sys.stderr)
        return 2
    try:
        write_pickle(result.data, args.out)
    except OSError as exc:
        log.error("%s: cannot write the pickle (%s)", args.out, exc.strerror or exc)
        return 2
    sizes = ", ".join(f"{s} {len(result.data[s]['id'])}" for s in ("train", "valid", "test"))
    print(f"wrote {args.out}: {n} clips ({sizes}); audio {cfg.audio.out_dim}-d {cfg.audio.preset}, "
          f"vision {visual.dim}-d {visual.backbone}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
