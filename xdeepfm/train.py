"""Training loop for the ranking model: ``run(config_path, out_dir, seed, resume) -> dict``.

BCE-with-logits + the model's L2 terms, Adam or AdamW, early stopping on validation AUC
(``patience`` epochs without improvement), TensorBoard scalars under ``<out_dir>/tb``, the best
model in ``<out_dir>/best.safetensors`` and the latest in ``last.safetensors`` (for
``resume``), both atomic, plus ``metrics.json`` and ``config.json``.

Seeds: ``seed`` drives model initialisation, the per-epoch shuffle and dropout (epoch e uses
seed * 1000 + e, so a resumed run replays the same order); the data split uses the fixed
``data.split_seed`` so all seeds see the same split.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmfusion.config import build, load_yaml, to_dict
from xdeepfm.checkpoint import load_checkpoint, save_checkpoint
from xdeepfm.data import load_splits
from xdeepfm.data.ecommerce import EcommerceConfig
from xdeepfm.data.movielens import MovieLensConfig
from mmfusion.files import write_json
from xdeepfm.features import FeaturePipeline, FeatureSpec
from xdeepfm.metrics import ranking_metrics
from xdeepfm.model import ModelConfig, XDeepFMRanker, stack_inputs

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings."""

    epochs: int = 10
    batch_size: int = 1024
    eval_batch_size: int = 8192
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    device: str = "cpu"
    progress: bool = True  # tqdm bars
    # cold-start training: per categorical field, the share of training rows whose value is
    # replaced by the out-of-vocabulary bucket (0) in each batch, so the OOV embedding learns what
    # an unseen item looks like and the model learns to lean on content (text, semantics) for it
    oov_dropout: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, rate in self.oov_dropout.items():
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"train.oov_dropout.{name}={rate}: must be in [0, 1)")


@dataclass
class EvalConfig:
    """Metrics: top-K lists are each user's impressions in the split, ranked by score."""

    k: int = 10


@dataclass
class RankingConfig:
    """A full ranking run, as written in ``configs/*.yaml``."""

    features: FeatureSpec
    task: Literal["ranking"] = "ranking"
    seed: int = 0
    data: MovieLensConfig | EcommerceConfig = field(default_factory=MovieLensConfig)  # ecommerce: `kind: ecommerce`
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | Path) -> RankingConfig:
    """Read and validate a ranking YAML (errors name the file and key)."""
    return build(RankingConfig, load_yaml(path), str(path))


def set_seed(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class SplitData:
    """One split ready for the model: flat inputs, labels and the user of every row."""

    X: torch.Tensor
    y: torch.Tensor
    users: np.ndarray

    @classmethod
    def build(cls, frame: pd.DataFrame, pipeline: FeaturePipeline, columns: list, where: str) -> "SplitData":
        if "label" not in frame.columns or "user_id" not in frame.columns:
            raise ValueError(f"{where}: the frame needs 'label' and 'user_id' columns")
        encoded = pipeline.transform(frame, where)
        X = torch.from_numpy(stack_inputs(encoded, columns))
        return cls(X, torch.from_numpy(frame["label"].to_numpy(np.float32, copy=True)), frame["user_id"].to_numpy())


@torch.inference_mode()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 8192) -> np.ndarray:
    """Click probabilities for every row of X."""
    model.eval()
    out = [torch.sigmoid(model(X[i : i + batch_size])) for i in range(0, len(X), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def evaluate_split(model: nn.Module, data: SplitData, k: int, batch_size: int = 8192) -> dict[str, float | None]:
    return ranking_metrics(data.y.numpy(), predict(model, data.X, batch_size), data.users, k)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def drop_to_oov(model: XDeepFMRanker, X: torch.Tensor, rates: dict[str, float], generator: torch.Generator) -> torch.Tensor:
    """``X`` with each named categorical column set to the OOV bucket (0) in a ``rate`` share of rows."""
    if not rates:
        return X
    X = X.clone()
    for name, rate in rates.items():
        if name not in model.feature_index:
            raise KeyError(f"train.oov_dropout: no field {name!r} (fields: {list(model.feature_index)})")
        start, end = model.feature_index[name]
        if end - start != 1 or name not in {c.name for c in model.sparse}:
            raise ValueError(f"train.oov_dropout.{name}: only single categorical fields can be dropped to OOV")
        hit = torch.rand(len(X), generator=generator) < rate
        X[hit, start] = 0
    return X


def train_epoch(model: XDeepFMRanker, optimizer: torch.optim.Optimizer, data: SplitData, config: TrainConfig,
                generator: torch.Generator, desc: str = "train") -> float:
    """One pass over shuffled mini-batches; returns the mean BCE (without the L2 term)."""
    from tqdm.auto import tqdm

    model.train()
    order = torch.randperm(len(data.X), generator=generator)
    total, seen = 0.0, 0
    batches = range(0, len(order), config.batch_size)
    for start in tqdm(batches, desc=desc, leave=False, disable=not config.progress):
        idx = order[start : start + config.batch_size]
        logits = model(drop_to_oov(model, data.X[idx], config.oov_dropout, generator))
        bce = nn.functional.binary_cross_entropy_with_logits(logits, data.y[idx])
        loss = bce + model.regularization_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += bce.item() * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


def _log_scalars(writer, prefix: str, metrics: dict, step: int) -> None:
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(f"{prefix}/{name}", value, step)


def run_config(config: RankingConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Train (or resume) one run described by ``config``; returns the metrics dict."""
    if config.model.implementation == "deepctr":
        from xdeepfm.baseline import run_baseline

        return run_baseline(config, out_dir)
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed, tc = config.seed, config.train
    set_seed(seed)
    t0 = time.perf_counter()
    splits = load_splits(config.data)
    last_path, best_path = out_dir / "last.safetensors", out_dir / "best.safetensors"
    resumed = load_checkpoint(last_path) if resume and last_path.is_file() else None
    if resume and resumed is None:
        log.info("resume requested but %s does not exist; starting from scratch", last_path)
    pipeline = resumed.features if resumed else FeaturePipeline(config.features).fit(splits["train"], "train")
    fields = [pipeline.fitted[f.name] for f in pipeline.spec.fields]
    model = XDeepFMRanker(fields, config.model, seed=seed).to(tc.device)
    data = {name: SplitData.build(frame, pipeline, model.columns, name) for name, frame in splits.items()}
    prep_seconds = time.perf_counter() - t0
    optimizer = _make_optimizer(model, tc)
    state = {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resumed:
        model.load_state_dict(resumed.model_state)
        if resumed.optimizer_state is not None:
            optimizer.load_state_dict(resumed.optimizer_state)
        state = resumed.state
        log.info("resumed from %s after epoch %d", last_path, state["epoch"])
    config_dict = to_dict(config)
    write_json(out_dir / "config.json", config_dict)
    log.info("model: %d fields, %d parameters; train %d rows", model.n_fields,
             sum(p.numel() for p in model.parameters()), len(data["train"].X))

    writer = SummaryWriter(str(out_dir / "tb"))
    train_seconds = 0.0
    try:
        for epoch in range(state["epoch"], tc.epochs):
            if state["bad_epochs"] >= tc.patience:
                break
            torch.manual_seed(seed * 1000 + epoch)
            generator = torch.Generator().manual_seed(seed * 1000 + epoch)
            t_epoch = time.perf_counter()
            loss = train_epoch(model, optimizer, data["train"], tc, generator, f"epoch {epoch + 1}/{tc.epochs}")
            train_seconds += time.perf_counter() - t_epoch
            valid = evaluate_split(model, data["valid"], config.eval.k, tc.eval_batch_size)
            writer.add_scalar("train/bce", loss, epoch + 1)
            _log_scalars(writer, "valid", valid, epoch + 1)
            auc = valid["auc"] if valid["auc"] is not None else -1.0
            state["history"].append({"epoch": epoch + 1, "train_bce": loss, **{f"valid_{k}": v for k, v in valid.items()}})
            log.info("epoch %d: train bce %.4f, valid auc %.4f logloss %.4f gauc %s", epoch + 1, loss, auc,
                     valid["logloss"], valid["gauc"])
            state["epoch"] = epoch + 1
            if auc > state["best_auc"]:
                state.update(best_auc=auc, best_epoch=epoch + 1, bad_epochs=0)
                save_checkpoint(best_path, config=config_dict, features=pipeline, model=model,
                                metrics={"valid": valid, "epoch": epoch + 1}, state=state)
            else:
                state["bad_epochs"] += 1
            save_checkpoint(last_path, config=config_dict, features=pipeline, model=model,
                            metrics={"valid": valid, "epoch": epoch + 1}, state=state, optimizer=optimizer)
        if not best_path.is_file():
            raise RuntimeError(f"{out_dir}: no epoch was trained (epochs={tc.epochs}); nothing to evaluate")
        best = load_checkpoint(best_path)
        model.load_state_dict(best.model_state)
        result = {
            "task": "ranking",
            "implementation": "ours",
            "seed": seed,
            "split": config.data.split,
            "best_epoch": state["best_epoch"],
            "valid": evaluate_split(model, data["valid"], config.eval.k, tc.eval_batch_size),
            "test": evaluate_split(model, data["test"], config.eval.k, tc.eval_batch_size),
            "history": state["history"],
            "seconds": {"prepare": prep_seconds, "train": train_seconds, "total": time.perf_counter() - t0},
            "checkpoint": str(best_path),
        }
        _log_scalars(writer, "test", result["test"], state["best_epoch"])
    finally:
        writer.close()
    save_checkpoint(best_path, config=config_dict, features=pipeline, model=model,
                    metrics={k: result[k] for k in ("valid", "test", "best_epoch")}, state=state)
    write_json(out_dir / "metrics.json", result)
    log.info("test: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in result["test"].items()})
    return result


def run(config_path: str | Path, out_dir: str | Path | None = None, seed: int | None = None,
        resume: bool = False) -> dict:
    """Entry point for the top-level ``train.py`` (YAML with ``task: ranking``).

    ``out_dir`` defaults to ``runs/<config stem>/seed<seed>``; ``seed`` overrides ``config.seed``.
    """
    config = load_config(config_path)
    if seed is not None:
        config.seed = seed
    if out_dir is None:
        out_dir = Path("runs") / Path(config_path).stem / f"seed{config.seed}"
    return run_config(config, out_dir, resume)
