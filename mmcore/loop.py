"""The training-loop vocabulary both trainers share: helpers, not a framework.

- :class:`RunDir`: the file names of a run directory, the same for both models
  (``best.safetensors``, ``last.safetensors``, ``metrics.json``, ``config.json``, ``tensorboard/``);
- :class:`EarlyStopping`: the best validation value so far and the epochs since it improved;
- :func:`epoch_seed`: the seed of epoch ``e``'s shuffle (and dropout), so a resumed run replays
  the same order;
- :func:`clip_gradients`, :func:`stop_requested` (``--stop-after N``).

The checkpoint format is :mod:`mmcore.checkpoint`; DDP wrapping and the device are
:mod:`mmcore.distributed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch


@dataclass(frozen=True)
class RunDir:
    """Where a training run writes: one directory, the same names for both trainers."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def best(self) -> Path:
        """The best checkpoint (by the validation key), what evaluation and export read."""
        return self.path / "best.safetensors"

    @property
    def last(self) -> Path:
        """The latest checkpoint, with the optimizer and loop state, what ``--resume`` reads."""
        return self.path / "last.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def predictions(self, split: str) -> Path:
        return self.path / f"predictions_{split}.csv"

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self


def improves(new: float | None, best: float | None, mode: Literal["min", "max"]) -> bool:
    """Whether ``new`` is better than ``best`` (``None`` or NaN never improves; anything beats no best)."""
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if best is None:
        return True
    return new < best if mode == "min" else new > best


@dataclass
class EarlyStopping:
    """Best validation value so far and how many epochs have passed without improvement."""

    key: str
    patience: int
    mode: Literal["min", "max"] = "max"
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def step(self, value: float | None, epoch: int) -> bool:
        """Record an epoch; True when it is the new best."""
        if improves(value, self.best, self.mode):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def epoch_seed(seed: int, epoch: int, stride: int) -> int:
    """The seed of epoch ``epoch``'s shuffle: ``seed * stride + epoch``.

    Each trainer keeps the stride its published figures were made with (sentiment 100,003 over
    1-based epochs, ranking 1,000 over 0-based epochs), so those figures reproduce bit for bit.
    """
    return seed * stride + epoch


def clip_gradients(model: torch.nn.Module, max_norm: float | None) -> None:
    """Clip the global gradient norm to ``max_norm`` (no-op for None or 0)."""
    if max_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def stop_requested(epochs_run: int, stop_after: int | None, epoch: int, last_epoch: int) -> bool:
    """``--stop-after N``: this invocation has run its N epochs and the run is not finished."""
    return stop_after is not None and epochs_run >= stop_after and epoch < last_epoch
