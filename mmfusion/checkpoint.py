"""Checkpoints: written atomically (temp file, then rename), read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers and strings: the experiment config, the model
weights, the data normalisation statistics and the metrics; a *resume* checkpoint adds the
optimizer, the SLGM label maps, the RNG state and the early-stopping bookkeeping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmfusion.files import atomic_write


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename over it."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path}: not a readable mmfusion checkpoint ({exc})") from None
    missing = {"config", "model"} - set(state)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {sorted(missing)}")
    return state
