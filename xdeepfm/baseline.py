"""Stock ``deepctr_torch.models.xDeepFM`` on the same splits and non-text features.

The same fitted ``FeaturePipeline`` (categorical, multi-valued and numeric fields; text and
vector fields are dropped) feeds deepctr's own ``compile``/``fit``/``predict``; we fit one epoch
at a time so early stopping on validation AUC (``train.patience``) matches our loop, and
evaluate with ``xdeepfm.metrics``. deepctr's ``fit`` prints to stdout; that output is sent to
the log instead. Sizes and L2 come from the same ``ModelConfig``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mmfusion.config import to_dict
from mmfusion.files import write_json
from xdeepfm._deepctr import xDeepFM
from xdeepfm.checkpoint import save_checkpoint
from xdeepfm.data import load_splits
from xdeepfm.features import FeaturePipeline
from xdeepfm.metrics import ranking_metrics
from xdeepfm.model import ModelConfig, feature_columns

log = logging.getLogger(__name__)

NON_TEXT_KINDS = ("categorical", "multi_valued", "numeric")


def build_stock_model(pipeline: FeaturePipeline, config: ModelConfig, seed: int) -> xDeepFM:
    """deepctr's xDeepFM over the pipeline's non-text fields."""
    fields = [pipeline.fitted[f.name] for f in pipeline.spec.fields]
    columns = feature_columns(fields, config.embedding_dim, NON_TEXT_KINDS)
    return xDeepFM(columns, columns, dnn_hidden_units=tuple(config.dnn_hidden_units),
                   cin_layer_size=tuple(config.cin_layer_sizes), cin_split_half=config.cin_split_half,
                   cin_activation=config.cin_activation, l2_reg_linear=config.l2_linear,
                   l2_reg_embedding=config.l2_embedding, l2_reg_dnn=config.l2_dnn, l2_reg_cin=config.l2_cin,
                   init_std=config.init_std, seed=seed, dnn_dropout=config.dnn_dropout,
                   dnn_activation=config.dnn_activation, dnn_use_bn=config.dnn_use_bn, task="binary", device="cpu")


@contextlib.contextmanager
def _stdout_to_log():
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        if line.strip():
            log.debug("deepctr: %s", line)


def run_baseline(config, out_dir: str | Path) -> dict:
    """Fit/evaluate stock xDeepFM for a ``RankingConfig``; writes best.safetensors + metrics.json."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seed, tc = config.seed, config.train
    np.random.seed(seed)
    torch.manual_seed(seed)
    splits = load_splits(config.data)
    spec = type(config.features)(fields=config.features.of_kind(*NON_TEXT_KINDS),
                                 text_cache_dir=config.features.text_cache_dir)
    pipeline = FeaturePipeline(spec).fit(splits["train"], "train")
    x = {name: pipeline.transform(frame, name) for name, frame in splits.items()}
    y = {name: frame["label"].to_numpy(np.float32, copy=True) for name, frame in splits.items()}
    users = {name: frame["user_id"].to_numpy() for name, frame in splits.items()}
    model = build_stock_model(pipeline, config.model, seed)
    optim_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    with _stdout_to_log():
        model.compile(optim_cls(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay), "binary_crossentropy")
    prep_seconds = time.perf_counter() - t0

    def evaluate(split: str) -> dict:
        prob = model.predict(x[split], batch_size=tc.eval_batch_size).reshape(-1)
        return ranking_metrics(y[split], prob, users[split], config.eval.k)

    best_auc, best_epoch, best_state, bad, history = -1.0, -1, None, 0, []
    train_seconds = 0.0
    for epoch in range(tc.epochs):
        np.random.seed(seed * 1000 + epoch)  # deepctr shuffles with np.random
        torch.manual_seed(seed * 1000 + epoch)
        t_epoch = time.perf_counter()
        with _stdout_to_log():
            fit = model.fit(x["train"], y["train"], batch_size=tc.batch_size, epochs=1, verbose=0, shuffle=True)
        train_seconds += time.perf_counter() - t_epoch
        valid = evaluate("valid")
        auc = valid["auc"] if valid["auc"] is not None else -1.0
        history.append({"epoch": epoch + 1, "train_bce": float(fit.history["loss"][-1]),
                        **{f"valid_{k}": v for k, v in valid.items()}})
        log.info("stock xDeepFM epoch %d: valid auc %.4f logloss %.4f", epoch + 1, auc, valid["logloss"])
        if auc > best_auc:
            best_auc, best_epoch, bad = auc, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= tc.patience:
                break
    model.load_state_dict(best_state)
    result = {
        "task": "ranking",
        "implementation": "deepctr",
        "seed": seed,
        "split": config.data.split,
        "best_epoch": best_epoch,
        "valid": evaluate("valid"),
        "test": evaluate("test"),
        "history": history,
        "seconds": {"prepare": prep_seconds, "train": train_seconds, "total": time.perf_counter() - t0},
        "checkpoint": str(out_dir / "best.safetensors"),
    }
    config_dict = to_dict(config)
    save_checkpoint(out_dir / "best.safetensors", config=config_dict, features=pipeline, model=model,
                    metrics={k: result[k] for k in ("valid", "test", "best_epoch")},
                    state={"best_epoch": best_epoch, "history": history})
    write_json(out_dir / "config.json", config_dict)
    write_json(out_dir / "metrics.json", result)
    return result
