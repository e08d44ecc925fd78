"""Stock ``deepctr_torch.models.xDeepFM`` on the same splits and non-text features.

The same fitted ``FeaturePipeline`` (categorical, multi-valued and numeric fields; text and
vector fields are dropped) feeds deepctr's own ``compile``/``fit``/``predict``; we fit one epoch
at a time so early stopping on validation AUC (``train.patience``) matches our loop, and
evaluate with ``xdeepfm.metrics``. deepctr's ``fit`` prints to stdout; that output is sent to
the log instead. Sizes and L2 come from the same ``RankerConfig``; early stopping, the run
directory and the checkpoint are the ranking trainer's (``mmcore.loop``, ``xdeepfm.checkpoint``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mmcore.config import to_dict
from mmcore.files import write_json
from mmcore.loop import EarlyStopping, RunDir, epoch_seed, format_metrics
from xdeepfm._deepctr import xDeepFM
from xdeepfm.checkpoint import save_ranking_checkpoint
from xdeepfm.data import load_splits
from xdeepfm.experiment import RankingExperiment, RankingTrainConfig
from xdeepfm.features import FeaturePipeline
from xdeepfm.metrics import ranking_metrics
from xdeepfm.model import RankerConfig, feature_columns

log = logging.getLogger(__name__)

NON_TEXT_KINDS = ("categorical", "multi_valued", "numeric")


def build_stock_model(pipeline: FeaturePipeline, config: RankerConfig, seed: int, device: str = "cpu") -> xDeepFM:
    """deepctr's xDeepFM over the pipeline's non-text fields, on ``device``."""
    fields = [pipeline.fitted[f.name] for f in pipeline.spec.fields]
    columns = feature_columns(fields, config.embedding_dim, NON_TEXT_KINDS)
    return xDeepFM(columns, columns, dnn_hidden_units=tuple(config.dnn_hidden_units),
                   cin_layer_size=tuple(config.cin_layer_sizes), cin_split_half=config.cin_split_half,
                   cin_activation=config.cin_activation, l2_reg_linear=config.l2_linear,
                   l2_reg_embedding=config.l2_embedding, l2_reg_dnn=config.l2_dnn, l2_reg_cin=config.l2_cin,
                   init_std=config.init_std, seed=seed, dnn_dropout=config.dnn_dropout,
                   dnn_activation=config.dnn_activation, dnn_use_bn=config.dnn_use_bn, task="binary", device=device)


@contextlib.contextmanager
def _stdout_to_log():
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        if line.strip():
            log.debug("deepctr: %s", line)


def fit_epochs(model: xDeepFM, x: dict, y: np.ndarray, tc: RankingTrainConfig,
               validate: Callable[[], dict]) -> tuple[EarlyStopping, list[dict], float]:
    """deepctr's ``fit`` one epoch at a time with the ranking trainer's seeds and early stopping on
    validation AUC; leaves the best epoch's weights in ``model``. Returns (early stopping, history,
    training seconds)."""
    stopper, best_state, history, seconds = EarlyStopping("auc", tc.patience, "max"), None, [], 0.0
    for epoch in range(tc.epochs):
        np.random.seed(epoch_seed(tc.seed, epoch, 1000))  # deepctr shuffles with np.random
        torch.manual_seed(epoch_seed(tc.seed, epoch, 1000))
        started = time.perf_counter()
        with _stdout_to_log():
            fit = model.fit(x, y, batch_size=tc.batch_size, epochs=1, verbose=0, shuffle=True)
        seconds += time.perf_counter() - started
        valid = validate()
        history.append({"epoch": epoch + 1, "train_bce": float(fit.history["loss"][-1]),
                        **{f"valid_{k}": v for k, v in valid.items()}})
        log.info("stock xDeepFM epoch %d  valid %s", epoch + 1, format_metrics(valid))
        if stopper.step(valid["auc"], epoch + 1):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif stopper.should_stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return stopper, history, seconds


def train_baseline(cfg: RankingExperiment, out_dir: str | Path, device: torch.device | str = "cpu",
                   overwrite: bool = False) -> dict:
    """Fit/evaluate stock xDeepFM for a ``RankingExperiment``; writes best.safetensors, config.json, metrics.json."""
    run = RunDir(out_dir).start(to_dict(cfg), overwrite=overwrite)
    t0 = time.perf_counter()
    seed, tc = cfg.train.seed, cfg.train
    np.random.seed(seed)
    torch.manual_seed(seed)
    splits = load_splits(cfg.data)
    spec = type(cfg.features)(fields=cfg.features.of_kind(*NON_TEXT_KINDS), text_cache_dir=cfg.features.text_cache_dir)
    pipeline = FeaturePipeline(spec).fit(splits["train"], "train")
    x = {name: pipeline.transform(frame, name) for name, frame in splits.items()}
    y = {name: frame["label"].to_numpy(np.float32, copy=True) for name, frame in splits.items()}
    users = {name: frame["user_id"].to_numpy() for name, frame in splits.items()}
    model = build_stock_model(pipeline, cfg.model, seed, str(device))
    optim_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    with _stdout_to_log():
        model.compile(optim_cls(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay), "binary_crossentropy")
    prep_seconds = time.perf_counter() - t0

    def evaluate(split: str) -> dict:
        prob = model.predict(x[split], batch_size=tc.eval_batch_size).reshape(-1)
        return ranking_metrics(y[split], prob, users[split], cfg.eval.k)

    stopper, history, train_seconds = fit_epochs(model, x["train"], y["train"], tc, lambda: evaluate("valid"))
    if stopper.best is None:
        raise ValueError(f"{run.path}: no epoch gave a validation AUC (train.epochs={tc.epochs}); nothing to evaluate")
    result = {
        "task": "ranking",
        "implementation": "deepctr",
        "seed": seed,
        "split": cfg.data.split,
        "best_epoch": stopper.best_epoch,
        "valid": evaluate("valid"),
        "test": evaluate("test"),
        "history": history,
        "seconds": {"prepare": prep_seconds, "train": train_seconds, "total": time.perf_counter() - t0},
        "checkpoint": str(run.best),
    }
    config_dict = to_dict(cfg)
    loop_state = {"epoch": len(history), "early_stopping": dataclasses.asdict(stopper), "history": history}
    save_ranking_checkpoint(run.best, config=config_dict, features=pipeline, model=model,
                            metrics={k: result[k] for k in ("valid", "test", "best_epoch")}, state=loop_state)
    write_json(run.config, config_dict)
    write_json(run.metrics, result)
    run.mark("finished")
    return result
