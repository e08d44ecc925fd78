"""How much a trained history model leans on its history: test AUC with the histories as built, and with
every history emptied (all padding: the interest vector is 0), for one run directory. With as-of-time
statistics (``history.stats``), also with every statistic at its "nothing earlier" value (the training
mean, count 0), and with both emptied.

    python bench/history_probe.py runs/ml100k_history/seed0 --timing 5

``--timing R``: seconds per training step (batch ``train.batch_size``, forward + backward + Adam) of a
fresh model of the run's config with the sequence attention as ``SequenceInterest.forward`` computes
it and as deepctr's layer does (``reference_forward``), in R interleaved rounds of 10 steps each (so
both see the same machine load); the medians, and seconds per epoch = step x batches per epoch.

    python bench/history_probe.py runs/ml100k_history/seed0
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from mmcore.config import build
from xdeepfm.checkpoint import load_ranking_checkpoint
from xdeepfm.experiment import RankingExperiment, load_frames
from xdeepfm.history import _stat_values
from xdeepfm.metrics import ranking_metrics
from xdeepfm.model import SequenceInterest, XDeepFMRanker, stack_inputs
from xdeepfm.train import predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--timing", type=int, default=0, metavar="R", help="time the attention (R rounds) instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ckpt = load_ranking_checkpoint(args.run / "best.safetensors")
    cfg = build(RankingExperiment, ckpt.config, f"{args.run}:config")
    pipeline = ckpt.features
    model = XDeepFMRanker([pipeline.fitted[f.name] for f in pipeline.spec.fields], cfg.model, seed=cfg.train.seed)
    model.load_state_dict(ckpt.model_state)
    frames = load_frames(cfg)
    if args.timing:
        return timing(cfg, pipeline, frames["train"], args.timing)
    frame = frames[args.split]
    labels, users = frame["label"].to_numpy(), frame["user_id"].to_numpy()

    def inputs(frame):
        return torch.from_numpy(stack_inputs(pipeline.transform(frame, args.split), model.columns))

    def no_history(X):
        X = X.clone()
        for column in model.sequences:
            X[:, slice(*model.feature_index[column.name])] = 0
        return X

    def score(X):
        return ranking_metrics(labels, predict(model, X), users, cfg.eval.k)

    X = inputs(frame)
    results = {"as built": score(X)}
    if model.sequences:
        results["every history empty"] = score(no_history(X))
    stats = cfg.history.stats if cfg.history is not None else []
    if stats:
        blank = frame.copy()
        for stat in stats:
            blank[f"{stat.column}_mean"] = float(_stat_values(frames["train"], cfg.history, stat).mean())
            blank[f"{stat.column}_count"] = 0.0
        results["every statistic at nothing-earlier"] = score(inputs(blank))
        if model.sequences:
            results["both"] = score(no_history(inputs(blank)))
    print(
        f"{args.run} {args.split}: "
        + "; ".join(f"{name}: auc {m['auc']:.4f} gauc {m['gauc']:.4f}" for name, m in results.items())
    )


def timing(cfg: RankingExperiment, pipeline, frame, rounds: int, steps: int = 10) -> None:
    """Median seconds per training step with the fast and the reference attention (see the module docstring)."""
    torch.set_num_threads(1)
    model = XDeepFMRanker([pipeline.fitted[f.name] for f in pipeline.spec.fields], cfg.model, seed=cfg.train.seed)
    X = torch.from_numpy(stack_inputs(pipeline.transform(frame, "train"), model.columns))
    y = torch.tensor(frame["label"].to_numpy(dtype="float32"))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    size, fast = cfg.train.batch_size, SequenceInterest.forward
    seconds: dict[str, list[float]] = {"fast": [], "reference": []}
    try:
        for _ in range(rounds):
            for name in seconds:
                SequenceInterest.forward = fast if name == "fast" else SequenceInterest.reference_forward
                started = time.perf_counter()
                for step in range(steps):
                    rows = slice(step * size, (step + 1) * size)
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(X[rows]), y[rows])
                    optimizer.zero_grad()
                    (loss + model.regularization_loss()).backward()
                    optimizer.step()
                seconds[name].append((time.perf_counter() - started) / steps)
    finally:
        SequenceInterest.forward = fast
    batches = -(-len(X) // size)
    for name, values in seconds.items():
        median = statistics.median(values)
        print(
            f"{name}: {median:.3f} s/step (rounds {', '.join(f'{v:.3f}' for v in values)}), "
            f"{median * batches:.0f} s/epoch of {batches} steps"
        )


if __name__ == "__main__":
    main()
