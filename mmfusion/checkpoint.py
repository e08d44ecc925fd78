"""Sentiment training checkpoints in the shared format (``mmcore.checkpoint``: safetensors + JSON, checksummed).

``best.safetensors`` holds the tensors ``model.*`` and the metadata ``config`` (the experiment),
``data_dims``, ``norm`` (train-split statistics), ``epoch`` and ``valid_metrics``;
``last.safetensors`` adds ``optim.*`` (AdamW), ``slgm.*`` (SLGM's feature and label maps),
``rng.cpu`` (and ``rng.ranks`` under torchrun), and the loop state ``early_stopping`` and ``step``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmcore.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint, with_prefix

KIND = "mmfusion-checkpoint-v2"
REQUIRED = ("config", "data_dims", "norm", "epoch")


def save_sentiment_checkpoint(path: str | Path, meta: dict[str, Any], weights: dict[str, torch.Tensor],
                              groups: dict[str, dict[str, torch.Tensor]] | None = None,
                              optimizer: torch.optim.Optimizer | None = None) -> None:
    """The model's ``weights`` (its state dict), further tensor ``groups`` (``slgm``, ``rng``) and ``meta``, atomically."""
    tensors = with_prefix("model", weights)
    for name, group in (groups or {}).items():
        tensors.update(with_prefix(name, group))
    save_checkpoint(path, KIND, tensors, meta, optimizer)


def load_sentiment_checkpoint(path: str | Path) -> Checkpoint:
    """A verified sentiment checkpoint; the error names the file and the missing metadata."""
    checkpoint = load_checkpoint(path, KIND)
    missing = [key for key in REQUIRED if key not in checkpoint.meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {missing}")
    return checkpoint
