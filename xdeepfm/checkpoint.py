"""Ranking training checkpoints in the shared format (``mmcore.checkpoint``: safetensors + JSON, checksummed).

Kind ``xdeepfm-checkpoint-v2``. ``best.safetensors`` / ``last.safetensors`` of a run directory hold:

- tensors ``model.<state_dict key>``: the model weights (``XDeepFMRanker``, or the stock deepctr model);
- tensors ``features.<field>.vectors``: the vector-field tables of the fitted feature pipeline;
- tensors ``optim.<param index>.<state key>`` (``last`` only): the optimizer state (Adam/AdamW);
- metadata (JSON): ``config`` (the experiment), ``features`` (the fitted pipeline: spec,
  vocabularies, statistics), ``metrics``, ``state`` (the loop state for resuming: epoch, early
  stopping, history) and, with the optimizer, ``optim_param_groups``.

:func:`load_ranking_checkpoint` verifies the digest and decodes all of it into a
:class:`RankingCheckpoint` (the pipeline rebuilt, the optimizer state reassembled); it never unpickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcore.checkpoint import CheckpointError, checkpoint_kind, load_checkpoint, save_checkpoint, with_prefix
from xdeepfm.features import FeaturePipeline

KIND = "xdeepfm-checkpoint-v2"
REQUIRED = ("config", "features", "metrics", "state")
SENTIMENT_PREFIX = "mmfusion-checkpoint"  # the sentiment model's kinds (mmfusion.checkpoint.KIND)


@dataclass
class RankingCheckpoint:
    """What a ranking checkpoint file holds, decoded."""

    config: dict[str, Any]  # the experiment, as to_dict wrote it
    features: FeaturePipeline
    model_state: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    state: dict[str, Any]
    optimizer_state: dict[str, Any] | None


def save_ranking_checkpoint(path: str | Path, *, config: dict, features: FeaturePipeline, model: torch.nn.Module,
                            metrics: dict, state: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write the model, the fitted features, the metadata (and the optimizer, for resuming) atomically."""
    feature_meta, feature_arrays = features.to_payload()
    tensors = with_prefix("model", model.state_dict())
    tensors.update(with_prefix("features", {k: torch.from_numpy(v) for k, v in feature_arrays.items()}))
    meta = {"config": config, "features": feature_meta, "metrics": metrics, "state": state}
    save_checkpoint(path, KIND, tensors, meta, optimizer)


def load_ranking_checkpoint(path: str | Path) -> RankingCheckpoint:
    """A verified ranking checkpoint, decoded; errors (``CheckpointError``) name the file, and say so
    when it is a checkpoint of the sentiment model."""
    try:
        checkpoint = load_checkpoint(path, KIND)
    except CheckpointError:
        kind = checkpoint_kind(path)  # the header was checked by load_checkpoint before it read the kind
        if kind and kind.startswith(SENTIMENT_PREFIX):
            raise CheckpointError(f"{path}: a sentiment checkpoint ({kind}), not a ranking checkpoint ({KIND}); "
                                  "the sentiment model's commands read it (python evaluate.py picks the evaluator "
                                  "from the checkpoint)") from None
        raise
    missing = [key for key in REQUIRED if key not in checkpoint.meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {missing}")
    wrong = [key for key in REQUIRED if not isinstance(checkpoint.meta[key], dict)]
    if wrong:
        raise CheckpointError(f"{path}: checkpoint metadata {wrong} must be JSON objects")
    arrays = {key: value.numpy() for key, value in checkpoint.group("features").items()}
    features = FeaturePipeline.from_payload(checkpoint.meta["features"], arrays, f"{path}:features")
    return RankingCheckpoint(checkpoint.meta["config"], features, checkpoint.group("model"), checkpoint.meta["metrics"],
                             checkpoint.meta["state"], checkpoint.optimizer_state())
