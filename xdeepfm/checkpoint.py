"""Checkpoints as single safetensors files (no pickle), written atomically (temp + rename).

Layout of ``best.safetensors`` / ``last.safetensors``:

- tensors ``model.<state_dict key>``: the model weights;
- tensors ``features.<field>.vectors``: vector-field tables of the fitted feature pipeline;
- tensors ``optim.<param index>.<state key>`` (``last`` only): optimizer state (Adam/AdamW);
- metadata (strings): ``format`` = ``xdeepfm-checkpoint-v1``, and JSON under ``config``,
  ``features`` (the fitted pipeline: spec, vocabularies, statistics), ``metrics``, ``state``
  (epoch, best score, history; for resuming) and ``optim_param_groups``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmfusion.files import write_bytes
from xdeepfm.features import FeaturePipeline

FORMAT = "xdeepfm-checkpoint-v1"


@dataclass
class Checkpoint:
    """What a checkpoint file holds, decoded."""

    config: dict[str, Any]
    features: FeaturePipeline
    model_state: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    state: dict[str, Any]
    optimizer_state: dict[str, Any] | None


def save_checkpoint(path: str | Path, *, config: dict, features: FeaturePipeline, model: torch.nn.Module,
                    metrics: dict, state: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
    from safetensors.torch import save

    feature_meta, feature_arrays = features.to_payload()
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tensors.update({f"features.{k}": torch.from_numpy(v) for k, v in feature_arrays.items()})
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config),
        "features": json.dumps(feature_meta),
        "metrics": json.dumps(metrics),
        "state": json.dumps(state),
    }
    if optimizer is not None:
        optim = optimizer.state_dict()
        for index, values in optim["state"].items():
            for key, value in values.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
        metadata["optim_param_groups"] = json.dumps(optim["param_groups"])
    write_bytes(Path(path), save(tensors, metadata=metadata))


def load_checkpoint(path: str | Path) -> Checkpoint:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not an xdeepfm checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    arrays = {k[len("features."):]: v.numpy() for k, v in tensors.items() if k.startswith("features.")}
    features = FeaturePipeline.from_payload(json.loads(metadata["features"]), arrays, f"{path}:features")
    optimizer_state = None
    if "optim_param_groups" in metadata:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer_state = {"state": state, "param_groups": json.loads(metadata["optim_param_groups"])}
    return Checkpoint(json.loads(metadata["config"]), features, model_state, json.loads(metadata["metrics"]),
                      json.loads(metadata["state"]), optimizer_state)
