"""Command lines behind ``train.py`` and ``evaluate.py``: read a YAML config, dispatch on its ``task``.

``task: sentiment`` (the default) runs the mmfusion trainer; ``task: ranking`` the xDeepFM ranker.
Both trainers take a built experiment through the same entry point,
``train(cfg, out_dir, *, resume, stop_after)``; ``--set key=value`` (repeatable, dotted keys)
overrides any key of the YAML and is checked by the same typed builder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mmcore import distributed
from mmcore.checkpoint import CheckpointError, checkpoint_kind
from mmcore.config import ConfigError, apply_overrides, build, load_yaml
from mmcore.loop import RunDir
from mmcore.runtime import setup_logging
from mmfusion import evaluate as sentiment_evaluate
from mmfusion import train as sentiment_train
from mmfusion.checkpoint import KIND as SENTIMENT_CHECKPOINT
from mmfusion.experiment import SentimentExperiment
from xdeepfm import evaluate as ranking_evaluate
from xdeepfm import train as ranking_train
from xdeepfm.experiment import RankingExperiment

# task -> (its experiment schema, its trainer module: train(cfg, out_dir, *, resume, stop_after))
TASKS = {"sentiment": (SentimentExperiment, sentiment_train), "ranking": (RankingExperiment, ranking_train)}
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, ValueError, KeyError)


def _default_out(config: Path) -> Path:
    return Path("runs") / config.stem


def load_experiment(config: Path, overrides: list[str]):
    """(task, built experiment) of a YAML with ``--set`` overrides; the task picks the schema."""
    raw = apply_overrides(load_yaml(config), overrides)
    task = raw.get("task", "sentiment")
    if task not in TASKS:
        raise ConfigError(f"{config}: task: {task!r} is not one of {sorted(TASKS)}")
    schema, _ = TASKS[task]
    return task, build(schema, raw, where=str(config))


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted, repeatable), e.g. --set train.epochs=2 --set train.lr=3e-4")


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description="Train a model from a YAML config.")
    parser.add_argument("--config", required=True, type=Path, help="configs/<name>.yaml")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    parser.add_argument("--seed", type=int, help="override train.seed (the same as --set train.seed=N)")
    add_set_option(parser)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.safetensors")
    parser.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation (resumable)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    out = args.out or _default_out(args.config)
    overrides = list(args.overrides) + ([f"train.seed={args.seed}"] if args.seed is not None else [])
    try:
        task, cfg = load_experiment(args.config, overrides)
        _, trainer = TASKS[task]
        summary = trainer.train(cfg, out, resume=args.resume, stop_after=args.stop_after)
        show = distributed.is_rank0()  # under torchrun only rank 0 prints the summary
    except USER_ERRORS as exc:
        logging.getLogger("train").error("%s", exc)
        return 2
    finally:
        distributed.shutdown()  # under torchrun: leave the process group the trainer joined
    if show:
        print(json.dumps(summary, indent=2))
        print(f"run directory: {out}   TensorBoard: tensorboard --logdir {RunDir(out).tensorboard}")
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evaluate.py", description="Evaluate a checkpoint on a data file.")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a run directory, or its best.safetensors (sentiment or ranking)")
    parser.add_argument("--data", type=Path,
                        help="sentiment: the MMSA pickle to score (required); ranking: a YAML whose data/eval sections "
                             "replace the checkpoint's (default: the checkpoint's own)")
    parser.add_argument("--split", default="test", help="sentiment: which split to score")
    parser.add_argument("--out", type=Path, help="where metrics JSON and predictions CSV go (default: beside the checkpoint)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        path = RunDir(args.checkpoint).best if args.checkpoint.is_dir() else args.checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        if checkpoint_kind(path) == SENTIMENT_CHECKPOINT:
            if args.data is None:
                parser.error("--data (an MMSA pickle) is required for a sentiment checkpoint")
            metrics = sentiment_evaluate.evaluate_checkpoint(path, args.data, args.split, args.out)
        else:
            metrics = ranking_evaluate.evaluate_checkpoint(path, args.data, args.out)
    except USER_ERRORS as exc:
        logging.getLogger("evaluate").error("%s", exc)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
