"""Evaluate a ranking checkpoint: ``run(checkpoint, config=None, out=None) -> dict``.

The checkpoint carries its run config and fitted feature pipeline, so by default it is
evaluated on the same data and split it was trained with. Passing ``config`` (a ranking YAML)
replaces the ``data`` and ``eval`` sections (e.g. to score a random-split model on the
cold-item split); the fitted features and model always come from the checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from mmfusion.config import build, load_yaml
from xdeepfm.checkpoint import load_checkpoint
from xdeepfm.data import load_splits
from mmfusion.files import write_bytes
from xdeepfm.metrics import ranking_metrics
from xdeepfm.model import XDeepFMRanker, stack_inputs
from xdeepfm.train import RankingConfig, predict

log = logging.getLogger(__name__)


def run(checkpoint: str | Path, config: str | Path | None = None, out: str | Path | None = None,
        splits: tuple[str, ...] = ("valid", "test")) -> dict:
    """Metrics per split, e.g. ``{"test": {"auc": ..., "gauc": ..., "ndcg@10": ...}, ...}``.

    ``out``: a ``.json`` file path, or a directory that receives ``eval_metrics.json``.
    """
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    mapping = dict(ckpt.config)
    if config is not None:
        override = load_yaml(config)
        for section in ("data", "eval"):
            if section in override:
                mapping[section] = override[section]
    run_config = build(RankingConfig, mapping, f"{checkpoint}:config")
    pipeline = ckpt.features
    frames = load_splits(run_config.data)
    unknown = sorted(set(splits) - set(frames))
    if unknown:
        raise ValueError(f"splits {unknown}: expected some of {sorted(frames)}")

    if run_config.model.implementation == "deepctr":
        from xdeepfm.baseline import build_stock_model

        model = build_stock_model(pipeline, run_config.model, run_config.seed)
        model.load_state_dict(ckpt.model_state)

        def scores(frame, name):
            return model.predict(pipeline.transform(frame, name), batch_size=run_config.train.eval_batch_size).reshape(-1)
    else:
        fields = [pipeline.fitted[f.name] for f in pipeline.spec.fields]
        model = XDeepFMRanker(fields, run_config.model, seed=run_config.seed)
        model.load_state_dict(ckpt.model_state)

        def scores(frame, name):
            X = torch.from_numpy(stack_inputs(pipeline.transform(frame, name), model.columns))
            return predict(model, X, run_config.train.eval_batch_size)

    result: dict = {"checkpoint": str(checkpoint), "implementation": run_config.model.implementation,
                    "split": run_config.data.split}
    for name in splits:
        frame = frames[name]
        result[name] = ranking_metrics(frame["label"].to_numpy(np.float32), scores(frame, name),
                                       frame["user_id"].to_numpy(), run_config.eval.k)
        log.info("%s %s: %s", checkpoint.name, name, result[name])
    if out is not None:
        out = Path(out)
        path = out if out.suffix == ".json" else out / "eval_metrics.json"
        write_bytes(path, json.dumps(result, indent=2).encode())
    return result
