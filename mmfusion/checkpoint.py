"""Checkpoints: written atomically (temp file, then rename), read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers and strings: the experiment config, the model
weights, the data normalisation statistics and the metrics; a *resume* checkpoint adds the
optimizer, the SLGM label maps, the RNG state and the early-stopping bookkeeping.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename over it."""
    _atomic(Path(path), lambda tmp: torch.save(state, tmp))


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


def write_json(data: Any, path: str | Path) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))
