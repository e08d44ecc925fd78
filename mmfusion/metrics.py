"""Sentiment metrics in the MMSA convention (the figures MOSI/MOSEI papers report).

- Has0_acc_2 / Has0_F1: negative (< 0) vs non-negative (>= 0), all samples.
- Non0_acc_2 / Non0_F1: negative vs positive, samples with label == 0 left out.
- Acc_5 / Acc_7: predictions and labels clipped to [-2, 2] / [-3, 3], then rounded.
- MAE; Corr: Pearson correlation. F1 is scikit-learn's weighted F1.

A metric that is undefined on the given labels (Non0 when every label is 0, Corr when
predictions or labels are constant) is ``None``, never a NaN posing as a number.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from sklearn.metrics import f1_score

from mmcore.loop import format_metrics, improves  # noqa: F401 - format_metrics is this module's too

log = logging.getLogger(__name__)

METRIC_KEYS = ("Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Acc_5", "Acc_7", "MAE", "Corr")
LOWER_IS_BETTER = frozenset({"MAE"})


def _as_vector(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{name}: non-finite value {array[bad]} at sample {bad}")
    return array


def _binary(pred: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    acc = float(np.mean(pred == label))
    f1 = float(f1_score(label, pred, average="weighted", zero_division=0))
    return acc, f1


def _class_accuracy(pred: np.ndarray, label: np.ndarray, bound: float) -> float:
    return float(np.mean(np.round(np.clip(pred, -bound, bound)) == np.round(np.clip(label, -bound, bound))))


def pearson(pred: np.ndarray, label: np.ndarray) -> float | None:
    """Pearson correlation, ``None`` when either side is constant (correlation undefined)."""
    dp, dl = pred - pred.mean(), label - label.mean()
    denom = np.sqrt(np.sum(dp * dp) * np.sum(dl * dl))
    if denom == 0.0:
        return None
    return float(np.sum(dp * dl) / denom)


def mmsa_metrics(pred, label) -> dict[str, float | None]:
    """The full MMSA regression metric set for predictions and labels in [-3, 3]."""
    pred = _as_vector("pred", pred)
    label = _as_vector("label", label)
    if pred.shape != label.shape:
        raise ValueError(f"pred has {pred.size} values but label has {label.size}")
    if pred.size == 0:
        raise ValueError("cannot compute metrics on zero samples")

    has0_acc, has0_f1 = _binary(pred >= 0, label >= 0)
    nonzero = label != 0
    if nonzero.any():
        non0_acc, non0_f1 = _binary(pred[nonzero] > 0, label[nonzero] > 0)
    else:
        log.warning("every label is 0: Non0_acc_2 and Non0_F1 are undefined")
        non0_acc = non0_f1 = None
    corr = pearson(pred, label)
    if corr is None:
        log.warning("constant predictions or labels: Corr is undefined")
    return {
        "Has0_acc_2": has0_acc,
        "Has0_F1": has0_f1,
        "Non0_acc_2": non0_acc,
        "Non0_F1": non0_f1,
        "Acc_5": _class_accuracy(pred, label, 2.0),
        "Acc_7": _class_accuracy(pred, label, 3.0),
        "MAE": float(np.mean(np.abs(pred - label))),
        "Corr": corr,
    }


def metric_mode(key: str) -> Literal["min", "max"]:
    """Whether a lower (MAE, losses) or a higher value of metric ``key`` is better."""
    return "min" if key in LOWER_IS_BETTER or key.endswith("loss") else "max"


def is_better(key: str, new: float | None, best: float | None) -> bool:
    """Whether ``new`` improves on ``best`` for metric ``key`` (``None`` never improves)."""
    return improves(new, best, metric_mode(key))


