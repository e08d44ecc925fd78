"""How much a trained history model leans on its history: test AUC with the histories as built, and with
every history emptied (all padding: the interest vector is 0), for one run directory.

    python bench/history_probe.py runs/ml100k_history/seed0
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from mmcore.config import build
from xdeepfm.checkpoint import load_ranking_checkpoint
from xdeepfm.experiment import RankingExperiment, load_frames
from xdeepfm.metrics import ranking_metrics
from xdeepfm.model import XDeepFMRanker, stack_inputs
from xdeepfm.train import predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ckpt = load_ranking_checkpoint(args.run / "best.safetensors")
    cfg = build(RankingExperiment, ckpt.config, f"{args.run}:config")
    pipeline = ckpt.features
    model = XDeepFMRanker([pipeline.fitted[f.name] for f in pipeline.spec.fields], cfg.model, seed=cfg.train.seed)
    model.load_state_dict(ckpt.model_state)
    frame = load_frames(cfg)[args.split]
    X = torch.from_numpy(stack_inputs(pipeline.transform(frame, args.split), model.columns))
    labels, users = frame["label"].to_numpy(), frame["user_id"].to_numpy()
    full = ranking_metrics(labels, predict(model, X), users, cfg.eval.k)
    empty = X.clone()
    for column in model.sequences:
        empty[:, slice(*model.feature_index[column.name])] = 0
    emptied = ranking_metrics(labels, predict(model, empty), users, cfg.eval.k)
    print(f"{args.run} {args.split}: auc {full['auc']:.4f} with the histories, {emptied['auc']:.4f} with every history "
          f"empty; gauc {full['gauc']:.4f} / {emptied['gauc']:.4f}")


if __name__ == "__main__":
    main()
