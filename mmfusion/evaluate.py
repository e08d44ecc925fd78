"""Prediction and evaluation: batched inference over a split, MMSA metrics, per-sample CSV.

``evaluate_checkpoint`` is what ``evaluate.py --checkpoint ... --data ...`` runs: it rebuilds the
model from the config stored in the checkpoint (a run directory or its ``best.safetensors``),
applies the training normalisation statistics to the new data, and writes
``metrics_<split>.json`` and ``predictions_<split>.csv``. The model runs on the device its
weights are on (``load_model(..., device=...)``; CUDA when available by default).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcore import distributed
from mmcore.config import build
from mmcore.files import write_json, write_text
from mmcore.loop import checkpoint_file
from mmfusion.checkpoint import load_sentiment_checkpoint
from mmfusion.data.mmsa import MMSAData, MMSASplit, NormStats, load_mmsa, make_loader
from mmfusion.experiment import SentimentExperiment, build_model_config
from mmfusion.metrics import format_metrics, mmsa_metrics
from mmfusion.model import MultimodalSentimentModel

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Per-sample outputs of one split: ids, the multimodal label, and one array per task."""

    ids: list[str]
    label: np.ndarray
    outputs: dict[str, np.ndarray]  # "M" always; "T", "A", "V" for multi-task models


@torch.inference_mode()
def predict(
    model: MultimodalSentimentModel,
    split: MMSASplit,
    norm: NormStats | None,
    batch_size: int = 128,
) -> Predictions:
    """Run ``model`` over ``split`` in eval mode, in order."""
    was_training = model.training
    model.eval()
    ids: list[str] = []
    labels, outputs = [], {}
    device = next(model.parameters()).device
    for batch in make_loader(split, norm, batch_size=batch_size, shuffle=False, text_source=model.cfg.text.source):
        out = model(batch.to(device))
        ids.extend(batch.ids)
        labels.append(batch.label)
        for task, value in out.preds.items():
            outputs.setdefault(task, []).append(value.cpu())
    model.train(was_training)
    return Predictions(
        ids=ids,
        label=torch.cat(labels).numpy(),
        outputs={task: torch.cat(values).float().numpy() for task, values in outputs.items()},
    )


def predictions_csv(pred: Predictions) -> str:
    """CSV text with columns id, label, M[, T, A, V]."""
    tasks = list(pred.outputs)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "label", *tasks])
    columns = [pred.label, *(pred.outputs[t] for t in tasks)]
    for i, clip_id in enumerate(pred.ids):
        writer.writerow([clip_id, *(f"{float(c[i]):.6f}" for c in columns)])
    return buffer.getvalue()


def load_model(checkpoint: str | Path, device: str = "auto") -> tuple[MultimodalSentimentModel, NormStats | None, dict]:
    """Rebuild the model of a checkpoint with its weights on ``device`` (``auto``: CUDA when available);
    returns (model in eval mode, norm stats, the checkpoint's metadata)."""
    path = checkpoint_file(checkpoint)
    state = load_sentiment_checkpoint(path)
    cfg = build(SentimentExperiment, state.meta["config"], where=f"{path}:config")
    model = MultimodalSentimentModel(build_model_config(cfg.model, state.meta["data_dims"]))
    model.load_state_dict(state.group("model"))
    model.to(distributed.select_device(device)).eval()
    norm = NormStats.from_dict(state.meta["norm"]) if state.meta.get("norm") else None
    return model, norm, state.meta


def check_data_matches(data: MMSAData, state: dict, text_source: str, data_path: str | Path) -> None:
    """The pickle's feature widths (and text features, when the model reads them) match the checkpoint."""
    expected = state["data_dims"]
    for name, value in (("audio_dim", data.audio_dim), ("vision_dim", data.vision_dim)):
        if expected.get(name) != value:
            raise ValueError(f"{data_path}: {name} is {value} but the checkpoint was trained with {expected.get(name)}")
    if text_source == "features":
        if data.text_dim is None:
            raise ValueError(f"{data_path}: key 'text' is missing; the checkpoint's model reads precomputed text "
                             "features (model.text.source: features)")
        if expected.get("text_dim") is not None and expected["text_dim"] != data.text_dim:
            raise ValueError(f"{data_path}: text_dim is {data.text_dim} but the checkpoint was trained with {expected['text_dim']}")


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_path: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    batch_size: int = 128,
) -> dict[str, float | None]:
    """Evaluate a checkpoint on one split of an MMSA pickle; write metrics JSON and predictions CSV."""
    model, norm, state = load_model(checkpoint)
    data = load_mmsa(data_path, vocab_size=model.text_vocab_size)
    if split not in data.splits:
        raise KeyError(f"{data_path}: no split {split!r} (has {sorted(data.splits)})")
    check_data_matches(data, state, model.cfg.text.source, data_path)
    pred = predict(model, data.splits[split], norm, batch_size=batch_size)
    metrics = mmsa_metrics(pred.outputs["M"], pred.label)
    log.info("%s %s: %s", data_path, split, format_metrics(metrics))
    out = Path(out_dir) if out_dir is not None else checkpoint_file(checkpoint).parent
    write_json(out / f"metrics_{split}.json",
               {"checkpoint": str(checkpoint), "data": str(data_path), "split": split, "metrics": metrics})
    write_text(out / f"predictions_{split}.csv", predictions_csv(pred))
    return metrics
