"""Evaluate a ranking checkpoint: ``evaluate_checkpoint(checkpoint, data_config_path=None, out_dir=None) -> dict``.

``checkpoint`` is a checkpoint file or a run directory (then its ``best.safetensors``). The
checkpoint carries its experiment and fitted feature pipeline, so by default it is evaluated on
the same data and split it was trained with. Passing ``data_config_path`` (a ranking YAML)
replaces the ``data`` and ``eval`` sections (e.g. to score a random-split model on the
cold-item split); the fitted features and model always come from the checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from mmcore.checkpoint import CheckpointError
from mmcore.config import build, load_yaml
from mmcore.distributed import select_device
from mmcore.files import write_bytes
from mmcore.loop import checkpoint_file
from xdeepfm.baseline import build_stock_model
from xdeepfm.checkpoint import load_ranking_checkpoint
from xdeepfm.experiment import RankingExperiment, load_frames
from xdeepfm.metrics import ranking_metrics
from xdeepfm.model import XDeepFMRanker, stack_inputs
from xdeepfm.train import predict

log = logging.getLogger(__name__)


def _load_weights(model: torch.nn.Module, state: dict, checkpoint: Path) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise CheckpointError(f"{checkpoint}: the weights do not fit the model its config builds: {' '.join(lines[:2])}") from None


def evaluate_checkpoint(checkpoint: str | Path, data_config_path: str | Path | None = None,
                        out_dir: str | Path | None = None, splits: tuple[str, ...] = ("valid", "test")) -> dict:
    """Metrics per split, e.g. ``{"test": {"auc": ..., "gauc": ..., "ndcg@10": ...}, ...}``.

    ``checkpoint``: a ranking checkpoint file, or a run directory (its ``best.safetensors``).
    ``out_dir``: a directory that receives ``eval_metrics.json`` (or a path ending in ``.json``: that file).
    """
    checkpoint = checkpoint_file(checkpoint)
    ckpt = load_ranking_checkpoint(checkpoint)
    mapping = dict(ckpt.config)
    if data_config_path is not None:
        override = load_yaml(data_config_path)
        for section in ("data", "eval"):
            if section in override:
                mapping[section] = override[section]
    cfg = build(RankingExperiment, mapping, f"{checkpoint}:config")
    pipeline = ckpt.features
    frames = load_frames(cfg)  # with the behaviour-history column when the run has a history section
    unknown = sorted(set(splits) - set(frames))
    if unknown:
        raise ValueError(f"splits {unknown}: expected some of {sorted(frames)}")

    if cfg.model.implementation == "deepctr":
        model = build_stock_model(pipeline, cfg.model, cfg.train.seed)
        _load_weights(model, ckpt.model_state, checkpoint)

        def scores(frame, name):
            return model.predict(pipeline.transform(frame, name), batch_size=cfg.train.eval_batch_size).reshape(-1)
    else:
        fields = [pipeline.fitted[f.name] for f in pipeline.spec.fields]
        model = XDeepFMRanker(fields, cfg.model, seed=cfg.train.seed)
        _load_weights(model, ckpt.model_state, checkpoint)
        model.to(select_device(cfg.train.device))  # the run's device (auto: CUDA when available); batches follow it

        def scores(frame, name):
            X = torch.from_numpy(stack_inputs(pipeline.transform(frame, name), model.columns))
            return predict(model, X, cfg.train.eval_batch_size)

    result: dict = {"checkpoint": str(checkpoint), "implementation": cfg.model.implementation,
                    "split": cfg.data.split}
    for name in splits:
        frame = frames[name]
        result[name] = ranking_metrics(frame["label"].to_numpy(np.float32), scores(frame, name),
                                       frame["user_id"].to_numpy(), cfg.eval.k)
        log.info("%s %s: %s", checkpoint.name, name, result[name])
    if out_dir is not None:
        out = Path(out_dir)
        path = out if out.suffix == ".json" else out / "eval_metrics.json"
        write_bytes(path, json.dumps(result, indent=2).encode())
    return result
