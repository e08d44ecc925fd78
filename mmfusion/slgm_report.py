"""How good are SLGM's generated unimodal labels, and why: a report against known unimodal labels.

    python -m mmfusion.slgm_report --run RUN_DIR --data PICKLE [--out report.md]

Needs a training run (its ``last.pt`` holds SLGM's feature and label maps of every training clip)
and the data file it was trained on, with unimodal labels (``regression_labels_T/A/V``: SynthMOSI's
hidden truth, or CH-SIMS's annotated unimodal labels). Per modality s, on the train split:

- ``generated`` / ``copied``: Pearson correlation with the unimodal label of SLGM's final label
  and of the multimodal label copied unchanged (what SLGM must beat);
- ``corr(alpha_s)``: correlation of the relative distance ``alpha_s = (d_n - d_p) / d_p`` (eq. 21-22;
  the centre-line position for runs with ``model.slgm_distance: axis``)
  with the unimodal label (centres of the multimodal classes): how much of it the geometry of the
  modality's representation carries;
- ``separation``: ``||C_p - C_n|| / mean d_p``, how far apart the class centres are relative to
  the spread, for s and for the fused representation (eq. 18 compares alpha_s with alpha_m, so a
  modality whose classes separate much less than the fused ones pulls every label towards
  ``(y_m - alpha_m) / 2``);
- ``probe``: a ridge regression from the stored representation to the unimodal label,
  5-fold cross-validated: what the representation holds, read out with supervision;
- ``inputs``: a ridge regression fit to the *multimodal* label from per-clip statistics of the
  raw input sequence (mean, std, 10/50/90th percentiles, min, max per feature), 5-fold
  cross-validated, correlated with the unimodal label: a label-free baseline that uses only what
  SLGM is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from mmcore.files import write_text
from mmcore.loop import RunDir
from mmcore.runtime import command_main
from mmfusion.checkpoint import load_sentiment_checkpoint
from mmfusion.data.mmsa import load_mmsa
from mmfusion.metrics import pearson
from mmfusion.slgm import DISTANCES, alphas_from_centres, class_centres

log = logging.getLogger(__name__)

INPUT_OF = {"A": "audio", "V": "vision"}


def relative_distance(features: np.ndarray, labels: np.ndarray, distance: str = "ratio") -> tuple[np.ndarray, float]:
    """``alpha`` per sample (SLGM's, centres from ``labels``) and the centre separation ratio."""
    feats = torch.from_numpy(features)
    c_pos, c_neg = class_centres(feats, torch.from_numpy(labels).to(feats.dtype))
    alpha = alphas_from_centres(feats, c_pos, c_neg, distance).numpy()
    return alpha, float((c_pos - c_neg).norm() / (feats - c_pos).norm(dim=-1).mean())


def ridge_cv(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of a standardised ridge regression (alpha chosen inside each fold)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 6)))
    return cross_val_predict(model, X, y, cv=KFold(folds, shuffle=True, random_state=seed))


def sequence_statistics(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per clip and feature over its real frames: mean, std, 10/50/90th percentiles, min, max → (N, 7 D)."""
    rows = []
    for clip, n in zip(x, lengths):
        frames = clip[: max(int(n), 1)]
        q = np.percentile(frames, [10, 50, 90], axis=0)
        rows.append(np.concatenate([frames.mean(0), frames.std(0), *q, frames.min(0), frames.max(0)]))
    return np.asarray(rows)


def slgm_report(run_dir: str | Path, data_path: str | Path, distance: str | None = None) -> dict[str, dict[str, float | None]]:
    """The figures described in the module docstring, per unimodal task; ``alpha`` with the run's
    own relative distance, or with ``distance`` ("ratio" or "axis") on the same stored features."""
    run_dir = Path(run_dir)
    last = RunDir(run_dir).last
    state = load_sentiment_checkpoint(last)
    slgm = {k: v.numpy().astype(np.float64) for k, v in state.group("slgm").items()}
    if not slgm:
        raise ValueError(f"{last}: the run has no SLGM state (model.use_slgm was false)")
    train = load_mmsa(data_path).train
    if train.unimodal_labels is None:
        raise ValueError(f"{data_path}: the train split has no regression_labels_T/A/V to compare with")
    y_m = slgm["labels_M"]
    if len(y_m) != len(train) or not np.allclose(y_m, train.labels):
        raise ValueError(f"{run_dir}: its SLGM labels do not match the train split of {data_path} (another data file?)")
    if distance is None:  # the run's own relative distance
        distance = state.meta["config"].get("model", {}).get("slgm_distance", "ratio")
    elif distance not in DISTANCES:
        raise ValueError(f"slgm_report: distance={distance!r}, expected 'ratio' or 'axis'")
    alpha_m, separation_m = relative_distance(slgm["features_M"], y_m, distance)
    report = {}
    for task in ("T", "A", "V"):
        if f"labels_{task}" not in slgm:
            continue
        truth = train.unimodal_labels[task].astype(np.float64)
        features = slgm[f"features_{task}"]
        alpha_s, separation_s = relative_distance(features, y_m, distance)
        row = {
            "generated": pearson(slgm[f"labels_{task}"], truth),
            "copied": pearson(y_m, truth),
            "corr_alpha_s": pearson(alpha_s, truth),
            "corr_alpha_m": pearson(alpha_m, truth),
            "separation_s": separation_s,
            "separation_m": separation_m,
            "probe": pearson(ridge_cv(features, truth), truth),
            "inputs": None,
        }
        if task in INPUT_OF:
            modality = INPUT_OF[task]
            stats = sequence_statistics(getattr(train, modality), getattr(train, f"{modality}_lengths"))
            row["inputs"] = pearson(ridge_cv(stats, y_m), truth)
        report[task] = row
    return report


def format_report(report: dict[str, dict[str, float | None]], run_dir: Path, data_path: Path, distance: str | None = None) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    columns = ("generated", "copied", "corr_alpha_s", "corr_alpha_m", "separation_s", "separation_m", "probe", "inputs")
    alpha = f"alpha with distance={distance!r}" if distance else "alpha with the run's own distance"
    lines = [f"SLGM labels of `{run_dir}` against the unimodal labels of `{data_path}` (train split; {alpha})", "",
             "| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {task} | " + " | ".join(cell(row[c]) for c in columns) + " |" for task, row in report.items()]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="the training run directory (holds last.safetensors)")
    parser.add_argument("--data", required=True, type=Path, help="the MMSA pickle it was trained on, with unimodal labels")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--distance", choices=DISTANCES,
                        help="compute alpha with this relative distance instead of the run's own (same stored features)")


def run(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.is_dir():
        raise ValueError(f"{args.out}: is a directory, expected a markdown file")
    text = format_report(slgm_report(args.checkpoint, args.data, args.distance), args.checkpoint, args.data, args.distance)
    print(text, end="")
    if args.out:
        write_text(args.out, text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m mmfusion.slgm_report", __doc__.split("\n\n")[0], add_arguments, run, argv, "WARNING")


if __name__ == "__main__":
    sys.exit(main())
