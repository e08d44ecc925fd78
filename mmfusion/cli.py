"""Command lines behind ``train.py`` and ``evaluate.py``: read a YAML config, dispatch on its ``task``.

``task: sentiment`` (the default) runs the mmfusion loop; ``task: ranking`` runs the xDeepFM ranker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mmfusion.config import ConfigError, build, load_yaml


def setup_logging(level: str = "INFO") -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub at run time
    if os.environ.get("RANK", "0") != "0":  # under torchrun the other ranks report warnings and errors only
        level = "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _default_out(config: Path) -> Path:
    return Path("runs") / config.stem


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description="Train a model from a YAML config.")
    parser.add_argument("--config", required=True, type=Path, help="configs/<name>.yaml")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    parser.add_argument("--seed", type=int, help="override train.seed")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation (resumable)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    out = args.out or _default_out(args.config)
    from mmfusion import distributed  # torchrun support for both trainers

    try:
        raw = load_yaml(args.config)
        if args.seed is not None:
            raw.setdefault("train", {})["seed"] = args.seed
        task = raw.get("task", "sentiment")
        if task == "ranking":
            from xdeepfm.train import run as run_ranking

            summary = run_ranking(args.config, out, seed=args.seed, resume=args.resume)
        elif task == "sentiment":
            from mmfusion.trainer import SentimentConfig, train

            cfg = build(SentimentConfig, raw, where=str(args.config))
            summary = train(cfg, out, resume=args.resume, stop_after=args.stop_after)
        else:
            raise ConfigError(f"{args.config}: task: {task!r} is not one of ['sentiment', 'ranking']")
        show = distributed.is_rank0()  # under torchrun only rank 0 prints the summary
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as exc:
        logging.getLogger("train").error("%s", exc)
        return 2
    finally:
        distributed.shutdown()  # under torchrun: leave the process group the trainer joined
    if show:
        print(json.dumps(summary, indent=2))
        logs = out / ("tb" if task == "ranking" else "tensorboard")  # where each trainer writes its events
        print(f"run directory: {out}   TensorBoard: tensorboard --logdir {logs}")
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evaluate.py", description="Evaluate a checkpoint on a data file.")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a sentiment run's model.pt, or a ranking run's best.safetensors")
    parser.add_argument("--data", type=Path,
                        help="sentiment: the MMSA pickle to score (required); ranking: a YAML whose data/eval sections "
                             "replace the checkpoint's (default: the checkpoint's own)")
    parser.add_argument("--split", default="test", help="sentiment: which split to score")
    parser.add_argument("--out", type=Path, help="where metrics JSON and predictions CSV go (default: beside the checkpoint)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.checkpoint.suffix == ".safetensors":
            from xdeepfm.evaluate import run as evaluate_ranking

            metrics = evaluate_ranking(args.checkpoint, config=args.data, out=args.out)
        else:
            from mmfusion.evaluate import evaluate_checkpoint

            if args.data is None:
                parser.error("--data (an MMSA pickle) is required for a sentiment checkpoint")
            metrics = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.out)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as exc:
        logging.getLogger("evaluate").error("%s", exc)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
