"""The ``mmfusion`` command: one program, a subcommand per job.

    mmfusion train    --config configs/synthmosi_default.yaml --out runs/default [--set train.epochs=3]
    mmfusion evaluate --checkpoint runs/default --data datasets/synthmosi_mosi_s0.pkl --splits test
    mmfusion predict  --checkpoint runs/default --data clips.pkl --out semantics.npz
    mmfusion export   --checkpoint runs/default --out artifacts/sentiment
    mmfusion demo     (the main job)

One spelling per idea across subcommands: ``--config`` a YAML, ``--set key=value`` an override of
it (repeatable, dotted keys, checked by the typed builder), ``--out`` what the command writes (a
run directory for ``train``, a file or folder for the others), ``--checkpoint`` a trained model to
read (a run directory, a checkpoint file or an exported artifact), ``--data`` the data it reads,
``--seeds 0 1 2`` and ``--splits train valid test`` as lists. Output options are checked before any
work starts. A user mistake ends with one ``error:`` line and exit code 2.

``train.py`` and ``evaluate.py`` are thin aliases of ``mmfusion train`` / ``mmfusion evaluate``.
Both trainers take a built experiment through the same entry point,
``train(cfg, out_dir, *, resume, stop_after, overwrite)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from mmapp import catalogue, demo, ingest
from mmcore import distributed
from mmcore.checkpoint import checkpoint_kind
from mmcore.config import ConfigError, apply_overrides, build, load_yaml
from mmcore.loop import RunDir, checkpoint_file
from mmcore.runtime import USER_ERRORS, setup_logging
from mmfusion import ablate, predict, slgm_report, worlds_study
from mmfusion import evaluate as sentiment_evaluate
from mmfusion import explain as sentiment_explain
from mmfusion import export as sentiment_export
from mmfusion import train as sentiment_train
from mmfusion.checkpoint import KIND as SENTIMENT_CHECKPOINT
from mmfusion.data import synthetic, synthvideo
from mmfusion.experiment import SentimentExperiment
from mmfusion.extract import cli as extract_cli
from xdeepfm import cli as ranking_cli
from xdeepfm import compare
from xdeepfm import evaluate as ranking_evaluate
from xdeepfm import export as ranking_export
from xdeepfm import train as ranking_train
from xdeepfm.experiment import RankingExperiment

log = logging.getLogger("mmfusion")

# task -> (its experiment schema, its trainer module: train(cfg, out_dir, *, resume, stop_after, overwrite))
TASKS = {"sentiment": (SentimentExperiment, sentiment_train), "ranking": (RankingExperiment, ranking_train)}


def build_experiment(raw: dict, where: str):
    """(task, built experiment) of a config mapping; its ``task`` key picks the schema."""
    task = raw.get("task", "sentiment")
    if task not in TASKS:
        raise ConfigError(f"{where}: task: {task!r} is not one of {sorted(TASKS)}")
    schema, _ = TASKS[task]
    return task, build(schema, raw, where=where)


def load_experiment(config: Path, overrides: list[str]):
    """(task, built experiment) of a YAML with ``--set`` overrides."""
    return build_experiment(apply_overrides(load_yaml(config), overrides), str(config))


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted, repeatable), e.g. --set train.epochs=2 --set train.lr=3e-4")


# --------------------------------------------------------------------------------------------
# train / evaluate / export: dispatched on the task of the config or checkpoint
# --------------------------------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="configs/<name>.yaml (with --resume: default the run's own config)")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    parser.add_argument("--seed", type=int, help="train.seed (the same as --set train.seed=N)")
    add_set_option(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last.safetensors, with the config stored in the run")
    parser.add_argument("--overwrite", action="store_true", help="replace a run that --out already holds")
    parser.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation (resumable)")


def run_train(args: argparse.Namespace) -> int:
    if args.stop_after is not None and args.stop_after < 1:
        raise ValueError(f"--stop-after {args.stop_after}: expected an integer >= 1")
    overrides = list(args.overrides) + ([f"train.seed={args.seed}"] if args.seed is not None else [])
    if args.config is None:
        if not (args.resume and args.out):
            raise ValueError("--config is required (only --resume --out RUN reads the run's own config)")
        state = RunDir(args.out).read_state()
        if state is None:
            raise FileNotFoundError(f"{RunDir(args.out).state}: no run record to resume from; pass --config")
        task, cfg = build_experiment(apply_overrides(state["config"], overrides), f"{RunDir(args.out).state}:config")
    else:
        task, cfg = load_experiment(args.config, overrides)
    out = args.out or Path("runs") / args.config.stem
    try:
        summary = TASKS[task][1].train(cfg, out, resume=args.resume, stop_after=args.stop_after,
                                       overwrite=args.overwrite)
        show = distributed.is_rank0()  # under torchrun only rank 0 prints the summary
    finally:
        distributed.shutdown()  # under torchrun: leave the process group the trainer joined
    if show:
        print(json.dumps(summary, indent=2))
        print(f"run directory: {out}   TensorBoard: tensorboard --logdir {RunDir(out).tensorboard}")
    return 0


def _checkpoint_file(path: Path) -> Path:
    file = checkpoint_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: checkpoint not found")
    return file


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a run directory (its best checkpoint) or a checkpoint file, sentiment or ranking")
    parser.add_argument("--data", type=Path,
                        help="sentiment: the MMSA pickle to score (required); ranking: a YAML whose data/eval sections "
                             "replace the checkpoint's (default: the checkpoint's own)")
    parser.add_argument("--splits", nargs="+", default=["test"], help="splits to score (default: test)")
    parser.add_argument("--out", type=Path,
                        help="directory for metrics JSON and predictions CSV (default: beside the checkpoint)")


def run_evaluate(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.is_file():
        raise ValueError(f"{args.out}: is a file, expected a directory for the metrics")
    path = _checkpoint_file(args.checkpoint)
    if checkpoint_kind(path) == SENTIMENT_CHECKPOINT:
        if args.data is None:
            raise ValueError("--data (an MMSA pickle) is required for a sentiment checkpoint")
        metrics = {split: sentiment_evaluate.evaluate_checkpoint(path, args.data, split, args.out) for split in args.splits}
        metrics = metrics[args.splits[0]] if len(args.splits) == 1 else metrics
    else:
        metrics = ranking_evaluate.evaluate_checkpoint(path, args.data, args.out, tuple(args.splits))
    print(json.dumps(metrics, indent=2))
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a run directory (its best checkpoint) or a checkpoint file, sentiment or ranking")
    parser.add_argument("--out", required=True, type=Path, help="artifact directory to create")
    parser.add_argument("--item-field", help="ranking: the input column that identifies an item in /v1/rank "
                                             "responses (default: item_id or video_id when present)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")


def run_export(args: argparse.Namespace) -> int:
    if args.out.is_file():
        raise ValueError(f"{args.out}: is a file, expected the artifact directory to create")
    path = _checkpoint_file(args.checkpoint)
    if checkpoint_kind(path) == SENTIMENT_CHECKPOINT:
        if args.item_field:
            raise ValueError("--item-field is for ranking checkpoints; this is a sentiment checkpoint")
        sentiment_export.export_checkpoint(path, args.out, args.overwrite)
    else:
        ranking_export.export_checkpoint(path, args.out, args.item_field, args.overwrite)
    print(f"wrote {args.out}")
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    ranking_cli.add_serve_arguments(parser)
    parser.add_argument("--sentiment", type=Path,
                        help="the sentiment model of the ranker's video semantics (artifact, run directory or checkpoint): "
                             "enables POST /v1/items with a video (needs a store)")


def run_serve(args: argparse.Namespace) -> int:
    if args.sentiment is not None and not args.sentiment.exists():
        raise FileNotFoundError(f"--sentiment {args.sentiment}: not found")
    return ranking_cli.run_serve(args, ingest.make_ingestor(args.sentiment) if args.sentiment is not None else None)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

# name -> (one-line help, add its arguments, run it)
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "train": ("train a sentiment or ranking model from a YAML config", add_train_arguments, run_train),
    "evaluate": ("evaluate a checkpoint: metrics JSON and per-sample predictions", add_evaluate_arguments, run_evaluate),
    "predict": ("video semantics (M/T/A/V sentiment, fused embedding) per clip", predict.add_arguments, predict.run),
    "extract": ("your own videos (+ meta.csv) to an MMSA pickle", extract_cli.add_arguments, extract_cli.run),
    "export": ("a checkpoint as a self-contained, checksummed artifact directory", add_export_arguments, run_export),
    "serve": ("serve an exported ranker over HTTP (loopback by default)", add_serve_arguments, run_serve),
    "store": ("build the item/user store a ranker's service ranks ids from", ranking_cli.add_store_arguments,
              ranking_cli.run_store),
    "ingest": ("new product videos into the item store: extraction, semantics, upsert", ingest.add_arguments, ingest.run),
    "recommender": ("fit the recall stage of a ranker's POST /v1/recommend (popularity, ItemCF, two-tower + FAISS)",
                    ranking_cli.add_recommender_arguments, ranking_cli.run_recommender),
    "ablate": ("the sentiment ablation study (variants x seeds)", ablate.add_arguments, ablate.run),
    "worlds": ("the sentiment recipe study across SynthMOSI worlds (candidates x worlds x seeds)",
               worlds_study.add_arguments, worlds_study.run),
    "compare": ("the ranking comparison study (ours vs stock deepctr-torch)", compare.add_arguments, compare.run),
    "synth": ("generate SynthMOSI (MMSA pickle format)", synthetic.add_arguments, synthetic.run),
    "synth-video": ("generate SynthVideo: SynthMOSI clips as mp4 files (spoken narration, rendered presenter)",
                    synthvideo.add_arguments, synthvideo.run),
    "catalogue": ("generate the synthetic e-commerce catalogue", catalogue.add_arguments, catalogue.run),
    "report": ("SLGM's generated unimodal labels against known ones", slgm_report.add_arguments, slgm_report.run),
    "explain": ("per-clip explanations of a sentiment model: modality shares, attended words and segments",
                sentiment_explain.add_arguments, sentiment_explain.run),
    "demo": ("the main job: the whole product on bundled data", demo.add_arguments, demo.run),
}


def _log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
                        help="INFO (default) shows one line per epoch; DEBUG adds third-party messages and progress bars")


def build_parser(prog: str = "mmfusion") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Sentiment-aware multimodal video semantics and the "
                                     "ranking they feed: one command, a subcommand per job.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (text, add_arguments, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add_arguments(sub)
        _log_level_option(sub)
        sub.set_defaults(run=run, prog=sub.prog)
    return parser


def execute(args: argparse.Namespace) -> int:
    """Run a parsed command; a user mistake is one error line and exit code 2."""
    setup_logging(args.log_level)
    try:
        return args.run(args)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        return 2


def main(argv: list[str] | None = None) -> int:
    return execute(build_parser().parse_args(argv))


def _alias(command: str, argv: list[str] | None, deprecated_for: str | None = None) -> int:
    """``train.py`` / ``evaluate.py`` (and the deprecated ``mmfusion-*`` scripts): one subcommand, its own name in --help."""
    text, add_arguments, run = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name, description=text[0].upper() + text[1:] + ".")
    add_arguments(parser)
    _log_level_option(parser)
    parser.set_defaults(run=run, prog=parser.prog)
    args = parser.parse_args(argv)
    if deprecated_for:
        print(f"{parser.prog} is deprecated: use `{deprecated_for}` (same options)", file=sys.stderr)
    return execute(args)


def train_main(argv: list[str] | None = None) -> int:
    return _alias("train", argv)


def evaluate_main(argv: list[str] | None = None) -> int:
    return _alias("evaluate", argv)


def deprecated_train() -> int:
    return _alias("train", None, "mmfusion train")


def deprecated_evaluate() -> int:
    return _alias("evaluate", None, "mmfusion evaluate")


def deprecated_demo() -> int:
    return _alias("demo", None, "mmfusion demo")


def deprecated_synth() -> int:
    return _alias("synth", None, "mmfusion synth")


if __name__ == "__main__":
    sys.exit(main())
