"""Training loop for the ranking model: ``run(config_path, out_dir, seed, resume) -> dict``.

BCE-with-logits + the model's L2 terms, Adam or AdamW, early stopping on validation AUC
(``patience`` epochs without improvement), TensorBoard scalars under ``<out_dir>/tb``, the best
model in ``<out_dir>/best.safetensors`` and the latest in ``last.safetensors`` (for
``resume``), both atomic, plus ``metrics.json`` and ``config.json``.

Seeds: ``seed`` drives model initialisation, the per-epoch shuffle and dropout (epoch e uses
seed * 1000 + e, so a resumed run replays the same order); the data split uses the fixed
``data.split_seed`` so all seeds see the same split.

Under ``torchrun`` (``mmfusion/distributed.py``) the model is wrapped in DistributedDataParallel
and ``train.batch_size`` is the global batch: each rank takes ``batch_size / N`` rows of every
step from a ``DistributedSampler`` over the single-process permutation, so the ranks' step-k rows
together are the single-process step-k batch. Validation and test rows are split across ranks
and gathered; rank 0 decides early stopping and alone writes checkpoints, TensorBoard and JSON.
With ``data: kind: parquet`` the splits are streamed from Parquet shards (``xdeepfm/data/shards.py``):
the features are fitted in one pass over the train shards and every row is read once per epoch
by one (rank, worker) pair; ranks that run out of rows first wait in DDP's ``Join``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import nullcontext
from typing import Iterable, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from mmfusion import distributed
from mmfusion.config import build, load_yaml, to_dict
from xdeepfm.checkpoint import load_checkpoint, save_checkpoint
from xdeepfm.data import load_splits
from xdeepfm.data.ecommerce import EcommerceConfig
from xdeepfm.data.movielens import MovieLensConfig
from xdeepfm.data.shards import ParquetConfig, ShardStream, iter_frames, list_units, shard_files
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
    # ecommerce: `kind: ecommerce`; Parquet shards: `kind: parquet`
    data: MovieLensConfig | EcommerceConfig | ParquetConfig = field(default_factory=MovieLensConfig)
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
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(X[i : i + batch_size].to(device))) for i in range(0, len(X), batch_size)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


def evaluate_split(model: nn.Module, data: SplitData, k: int, batch_size: int = 8192) -> dict[str, float | None]:
    return ranking_metrics(data.y.numpy(), predict(model, data.X, batch_size), data.users, k)


def _encode_rows(pipeline: FeaturePipeline, columns: list, frame: pd.DataFrame, rows: np.ndarray):
    """A shard batch as model inputs: (X, y, users, global row ids)."""
    data = SplitData.build(frame, pipeline, columns, "shard batch")
    return data.X, data.y, data.users, rows


def _frame_columns(spec: FeatureSpec) -> list[str]:
    return sorted({f.column for f in spec.fields} | {"label", "user_id"})


def stream(units, pipeline: FeaturePipeline, columns: list, batch_rows: int, ctx: distributed.Context,
           shuffle: bool = False, seed: int = 0) -> ShardStream:
    """This rank's share of a sharded split, encoded batch by batch (in the DataLoader workers)."""
    from functools import partial

    return ShardStream(units, batch_rows=batch_rows, rank=ctx.rank, world_size=ctx.world_size, shuffle=shuffle,
                       seed=seed, columns=_frame_columns(pipeline.spec), encode=partial(_encode_rows, pipeline, columns))


def fit_on_shards(config: RankingConfig, units: list) -> FeaturePipeline:
    """The feature pipeline fitted in one streaming pass over the train shards, on rank 0, sent to every rank."""
    payload = None
    if distributed.is_rank0():
        log.info("fitting features on %d train row groups in one pass", len(units))
        fitted = FeaturePipeline(config.features).fit_stream(iter_frames(units, _frame_columns(config.features)))
        payload = fitted.to_payload()
    return FeaturePipeline.from_payload(*distributed.broadcast_object(payload), where="fit_on_shards")


def evaluate_data(model: nn.Module, data: SplitData | ShardStream, k: int, batch_size: int,
                  ctx: distributed.Context) -> dict[str, float | None]:
    """Metrics over a whole split; under torchrun each rank scores its rows and rank 0's result is returned everywhere."""
    if isinstance(data, SplitData) and not ctx.enabled:
        return evaluate_split(model, data, k, batch_size)
    if isinstance(data, SplitData):
        rows = distributed.shard_positions(len(data.X), ctx)
        parts = [(rows, predict(model, data.X[rows], batch_size), data.y.numpy()[rows], data.users[rows])]
    else:
        parts = [(ids, predict(model, X, batch_size), y.numpy(), users) for X, y, users, ids in data]
    local = [np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(4)]
    _, scores, labels, users = distributed.gather_rows(local[0], *local)
    return distributed.broadcast_object(ranking_metrics(labels, scores, users, k) if ctx.is_rank0 else None)


def epoch_batches(data: SplitData | ShardStream, config: TrainConfig, seed: int, epoch: int, ctx: distributed.Context,
                  num_workers: int = 0):
    """Epoch ``epoch``'s training batches of this rank: ``data`` itself in one process (``train_epoch``
    shuffles it), else rows from a ``DistributedSampler`` (in-memory) or this rank's shards."""
    per_rank = distributed.check_divisible(config.batch_size, ctx, "train.batch_size")
    if isinstance(data, ShardStream):
        data.set_epoch(epoch)
        loader = DataLoader(data, batch_size=None, num_workers=num_workers)
        return ((X, y) for X, y, _, _ in loader)
    if not ctx.enabled:
        return data
    sampler = DistributedSampler(range(len(data.X)), ctx.world_size, ctx.rank, shuffle=True, seed=seed * 1000)
    sampler.set_epoch(epoch)  # torch.randperm with seed * 1000 + epoch: the single-process permutation
    order = torch.tensor(list(sampler))
    return ((data.X[idx], data.y[idx]) for idx in order.split(per_rank))


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


def _shuffled(data: SplitData, batch_size: int, generator: torch.Generator):
    order = torch.randperm(len(data.X), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield data.X[idx], data.y[idx]


def train_epoch(model: XDeepFMRanker, optimizer: torch.optim.Optimizer, data: SplitData | Iterable, config: TrainConfig,
                generator: torch.Generator, desc: str = "train", forward: nn.Module | None = None,
                uneven: bool = False) -> float:
    """One pass over mini-batches; returns the mean BCE (without the L2 term), over all ranks under torchrun.

    ``data`` is a ``SplitData`` (shuffled here with ``generator``) or an iterable of ``(X, y)``
    batches (``epoch_batches``); ``forward`` is the DDP wrapper of ``model`` when there is one,
    and ``uneven`` says the ranks may have different numbers of batches (shards): DDP's ``Join``
    then keeps the ranks that finish first answering the others' gradient all-reduces.
    """
    from tqdm.auto import tqdm

    model.train()
    net = forward or model
    if isinstance(data, SplitData):
        batches, total_batches = _shuffled(data, config.batch_size, generator), -(-len(data.X) // config.batch_size)
    else:
        batches, total_batches = data, None
    device = next(model.parameters()).device
    total, seen = 0.0, 0
    with Join([net]) if uneven else nullcontext():
        for X, y in tqdm(batches, desc=desc, total=total_batches, leave=False,
                         disable=not config.progress or not distributed.is_rank0()):
            logits = net(drop_to_oov(model, X, config.oov_dropout, generator).to(device))
            bce = nn.functional.binary_cross_entropy_with_logits(logits, y.to(device))
            loss = bce + model.regularization_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += bce.item() * len(y)
            seen += len(y)
    total, seen = distributed.sum_floats(total, seen)
    return total / max(seen, 1)


def _log_scalars(writer, prefix: str, metrics: dict, step: int) -> None:
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(f"{prefix}/{name}", value, step)


def run_config(config: RankingConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Train (or resume) one run described by ``config``; returns the metrics dict."""
    ctx = distributed.init()
    if config.model.implementation == "deepctr":
        if ctx.enabled:
            raise ValueError("model.implementation: deepctr (the stock baseline) trains in one process; run it without torchrun")
        from xdeepfm.baseline import run_baseline

        return run_baseline(config, out_dir)
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed, tc = config.seed, config.train
    set_seed(seed)
    t0 = time.perf_counter()
    sharded = isinstance(config.data, ParquetConfig)
    last_path, best_path = out_dir / "last.safetensors", out_dir / "best.safetensors"
    resumed = load_checkpoint(last_path) if resume and last_path.is_file() else None
    if resume and resumed is None:
        log.info("resume requested but %s does not exist; starting from scratch", last_path)
    if sharded:
        units = {name: list_units(shard_files(config.data.pattern(name), f"data.{name}")) for name in ("train", "valid", "test")}
        pipeline = resumed.features if resumed else fit_on_shards(config, units["train"])
    else:
        with distributed.rank0_first():  # rank 0 fills the text-vector cache, the others read it
            splits = load_splits(config.data)
            pipeline = resumed.features if resumed else FeaturePipeline(config.features).fit(splits["train"], "train")
    fields = [pipeline.fitted[f.name] for f in pipeline.spec.fields]
    model = XDeepFMRanker(fields, config.model, seed=seed).to(ctx.device if ctx.enabled else tc.device)
    if sharded:
        batch_rows = distributed.check_divisible(tc.batch_size, ctx, "train.batch_size")
        data = {"train": stream(units["train"], pipeline, model.columns, batch_rows, ctx, shuffle=True, seed=seed),
                **{name: stream(units[name], pipeline, model.columns, tc.eval_batch_size, ctx) for name in ("valid", "test")}}
    else:
        with distributed.rank0_first():
            data = {name: SplitData.build(frame, pipeline, model.columns, name) for name, frame in splits.items()}
    prep_seconds = time.perf_counter() - t0
    net = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) if ctx.enabled else model
    optimizer = _make_optimizer(model, tc)
    state = {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resumed:
        model.load_state_dict(resumed.model_state)
        if resumed.optimizer_state is not None:
            optimizer.load_state_dict(resumed.optimizer_state)
        state = resumed.state
        log.info("resumed from %s after epoch %d", last_path, state["epoch"])
    config_dict = to_dict(config)
    if ctx.is_rank0:
        write_json(out_dir / "config.json", config_dict)
    log.info("model: %d fields, %d parameters; train %d rows", model.n_fields, sum(p.numel() for p in model.parameters()),
             data["train"].total_rows if sharded else len(data["train"].X))

    writer = SummaryWriter(str(out_dir / "tb")) if ctx.is_rank0 else distributed.NullWriter()
    train_seconds = 0.0
    try:
        for epoch in range(state["epoch"], tc.epochs):
            if state["bad_epochs"] >= tc.patience:
                break
            torch.manual_seed(seed * 1000 + epoch)
            generator = torch.Generator().manual_seed(seed * 1000 + epoch)
            t_epoch = time.perf_counter()
            batches = epoch_batches(data["train"], tc, seed, epoch, ctx, config.data.num_workers if sharded else 0)
            loss = train_epoch(model, optimizer, batches, tc, generator, f"epoch {epoch + 1}/{tc.epochs}",
                               forward=net, uneven=sharded and ctx.enabled)
            train_seconds += time.perf_counter() - t_epoch
            valid = evaluate_data(model, data["valid"], config.eval.k, tc.eval_batch_size, ctx)  # rank 0's decision
            writer.add_scalar("train/bce", loss, epoch + 1)
            _log_scalars(writer, "valid", valid, epoch + 1)
            auc = valid["auc"] if valid["auc"] is not None else -1.0
            state["history"].append({"epoch": epoch + 1, "train_bce": loss, **{f"valid_{k}": v for k, v in valid.items()}})
            log.info("epoch %d: train bce %.4f, valid auc %.4f logloss %.4f gauc %s", epoch + 1, loss, auc,
                     valid["logloss"], valid["gauc"])
            state["epoch"] = epoch + 1
            improved = auc > state["best_auc"]
            if improved:
                state.update(best_auc=auc, best_epoch=epoch + 1, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            if ctx.is_rank0:
                if improved:
                    save_checkpoint(best_path, config=config_dict, features=pipeline, model=model,
                                    metrics={"valid": valid, "epoch": epoch + 1}, state=state)
                save_checkpoint(last_path, config=config_dict, features=pipeline, model=model,
                                metrics={"valid": valid, "epoch": epoch + 1}, state=state, optimizer=optimizer)
            distributed.barrier()  # every rank sees this epoch's checkpoints before going on
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
            "valid": evaluate_data(model, data["valid"], config.eval.k, tc.eval_batch_size, ctx),
            "test": evaluate_data(model, data["test"], config.eval.k, tc.eval_batch_size, ctx),
            "history": state["history"],
            "seconds": {"prepare": prep_seconds, "train": train_seconds, "total": time.perf_counter() - t0},
            "checkpoint": str(best_path),
        }
        _log_scalars(writer, "test", result["test"], state["best_epoch"])
    finally:
        writer.close()
    if ctx.is_rank0:
        save_checkpoint(best_path, config=config_dict, features=pipeline, model=model,
                        metrics={k: result[k] for k in ("valid", "test", "best_epoch")}, state=state)
        write_json(out_dir / "metrics.json", result)
    distributed.barrier()
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
