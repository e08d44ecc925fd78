"""The main job on bundled data: SynthMOSI -> data summary -> train -> test metrics -> TensorBoard.

    .venv/bin/mmfusion-demo [--config configs/synthmosi_default.yaml] [--out runs/demo]

Everything is local: SynthMOSI is generated from a seed, the text encoder is the bundled MiniLM.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from mmfusion.cli import setup_logging
from mmfusion.config import build, load_yaml
from mmfusion.data.mmsa import describe
from mmfusion.evaluate import evaluate_checkpoint
from mmfusion.metrics import format_metrics

log = logging.getLogger("mmfusion.demo")


def main(argv: list[str] | None = None) -> int:
    from mmfusion.trainer import SentimentConfig, prepare_data, train

    parser = argparse.ArgumentParser(prog="mmfusion-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/synthmosi_default.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    setup_logging()
    started = time.perf_counter()

    cfg = build(SentimentConfig, load_yaml(args.config), where=str(args.config))
    data = prepare_data(cfg.data)
    print(f"\n== data: {cfg.data.path}\n{describe(data)}\n", flush=True)

    run_dir = args.out / "sentiment"
    train(cfg, run_dir)
    metrics = evaluate_checkpoint(run_dir / "model.pt", cfg.data.path, "test", run_dir)

    minutes = (time.perf_counter() - started) / 60
    print(f"\n== test metrics ({cfg.data.path}, best checkpoint {run_dir / 'model.pt'}):\n{format_metrics(metrics)}")
    print(f"   per-clip predictions: {run_dir / 'predictions_test.csv'}")
    print(f"   TensorBoard logs:     {run_dir / 'tensorboard'}   (.venv/bin/tensorboard --logdir {args.out})")
    print(f"   finished in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
