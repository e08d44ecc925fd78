"""The ranking trainer: ``train(cfg, out_dir, *, resume, stop_after) -> dict`` (the sentiment trainer's signature).

``train`` runs four phases, in the order of this file: :func:`setup` (data, the fitted feature
pipeline, the model on its device, the optimizer, the resume state), :func:`run_epoch` (the
epoch's seeds and batches, then :func:`train_epoch`: per step the OOV dropout, forward,
``xdeepfm.losses.ranking_loss`` (BCE-with-logits + the model's L2 terms), backward, gradient
clipping, Adam/AdamW step), :func:`validate_and_checkpoint` (validation metrics, early stopping
on validation AUC after ``train.patience`` epochs without improvement, TensorBoard,
``best.safetensors`` and ``last.safetensors``, both atomic) and :func:`finish` (the best
checkpoint on valid and test, ``metrics.json``). ``model.implementation: deepctr`` trains the
stock baseline instead (``xdeepfm.baseline``). The loop vocabulary (run directory, early
stopping, epoch seeds, checkpoint format, device, DDP) is ``mmcore.loop`` / ``mmcore.checkpoint``
/ ``mmcore.distributed``, shared with the sentiment trainer.

Seeds: ``train.seed`` drives model initialisation, the per-epoch shuffle, the OOV dropout and
dropout (epoch e, counted from 0, uses ``epoch_seed(seed, e, 1000)`` = seed * 1000 + e, so a
resumed run replays the same order); the data split uses the fixed ``data.split_seed`` so all
seeds see the same split. ``stop_after`` ends an invocation after that many epochs, leaving
``last.safetensors``; ``resume`` continues from it and reaches the uninterrupted run's result.

Under ``torchrun`` (``mmcore/distributed.py``) the model is wrapped in DistributedDataParallel
and ``train.batch_size`` is the global batch: each rank takes ``batch_size / N`` rows of every
step from a ``DistributedSampler`` over the single-process permutation, so the ranks' step-k rows
together are the single-process step-k batch. Validation and test rows are split across ranks
and gathered; rank 0 decides early stopping and alone writes checkpoints, TensorBoard and JSON.
With ``data: kind: parquet`` the splits are streamed from Parquet shards (``xdeepfm/data/parquet.py``):
the features are fitted in one pass over the train shards and every row is read once per epoch
by one (rank, worker) pair; ranks that run out of rows first wait in DDP's ``Join``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.utils.data import DataLoader, DistributedSampler

from mmcore import distributed
from mmcore.checkpoint import CheckpointError
from mmcore.config import to_dict
from mmcore.files import write_json
from mmcore.loop import (
    EarlyStopping,
    RunDir,
    claim_run_dir,
    clip_gradients,
    epoch_seed,
    format_metrics,
    mark_run,
    stop_requested,
)
from xdeepfm.baseline import train_baseline
from xdeepfm.checkpoint import RankingCheckpoint, load_ranking_checkpoint, save_ranking_checkpoint
from xdeepfm.data.parquet import SPLITS, ParquetConfig, ShardStream, iter_frames, list_units, shard_files
from xdeepfm.experiment import RankingExperiment, RankingTrainConfig, load_frames
from xdeepfm.features import FeaturePipeline, FeatureSpec
from xdeepfm.losses import ranking_loss
from xdeepfm.metrics import ranking_metrics
from xdeepfm.model import XDeepFMRanker, stack_inputs

log = logging.getLogger(__name__)

SHUFFLE_STRIDE = 1000  # epoch e of seed s shuffles with seed s * 1000 + e (epochs count from 0)


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
    return ShardStream(units, batch_rows=batch_rows, rank=ctx.rank, world_size=ctx.world_size, shuffle=shuffle,
                       seed=seed, columns=_frame_columns(pipeline.spec), encode=partial(_encode_rows, pipeline, columns))


def fit_on_shards(cfg: RankingExperiment, units: list) -> FeaturePipeline:
    """The feature pipeline fitted in one streaming pass over the train shards, on rank 0, sent to every rank."""
    payload = None
    if distributed.is_rank0():
        log.info("fitting features on %d train row groups in one pass", len(units))
        fitted = FeaturePipeline(cfg.features).fit_stream(iter_frames(units, _frame_columns(cfg.features)))
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


def epoch_batches(data: SplitData | ShardStream, config: RankingTrainConfig, epoch: int, ctx: distributed.Context,
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
    sampler = DistributedSampler(range(len(data.X)), ctx.world_size, ctx.rank, shuffle=True,
                                 seed=epoch_seed(config.seed, 0, SHUFFLE_STRIDE))
    sampler.set_epoch(epoch)  # torch.randperm with seed * 1000 + epoch: the single-process permutation
    order = torch.tensor(list(sampler))
    return ((data.X[idx], data.y[idx]) for idx in order.split(per_rank))


def make_optimizer(model: nn.Module, config: RankingTrainConfig) -> torch.optim.Optimizer:
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


def train_epoch(model: XDeepFMRanker, optimizer: torch.optim.Optimizer, data: SplitData | Iterable,
                config: RankingTrainConfig, generator: torch.Generator, desc: str = "train",
                forward: nn.Module | None = None, uneven: bool = False) -> float:
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
            loss, bce = ranking_loss(logits, y.to(device), model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model, config.grad_clip)
            optimizer.step()
            total += bce.item() * len(y)
            seen += len(y)
    total, seen = distributed.sum_floats(total, seen)
    return total / max(seen, 1)


def _log_scalars(writer, prefix: str, metrics: dict, step: int) -> None:
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(f"{prefix}/{name}", value, step)


RUN_CARD = """**What the tags of this ranking run mean** (x axis: epoch, counted from 1, for every chart)

| tag | what it is |
|---|---|
| `train/bce` | mean binary cross-entropy of the epoch's training batches (without the L2 term), over all ranks |
| `valid/<metric>` | after the epoch, on the valid split: `auc`, `logloss` (the same loss as `train/bce`, so the two overlay), `gauc` (per-user AUC weighted by impressions), `ndcg@{k}`, `hr@{k}`, `precision@{k}` over each user's list; early stopping reads `valid/auc` |
| `test/<metric>` | the best checkpoint on the test split, at its epoch |
| `lr/group<i>` | the optimizer's learning rate per parameter group ({optimizer}) |
| `speed/train_rows_per_s` | training rows per second of the epoch (all ranks), forward + backward + step |

HPARAMS holds the configuration (`model.*`, `train.*`) with the final valid and test metrics.
"""


def _flatten(prefix: str, value, out: dict) -> None:
    """Config values as the flat ``{dotted.key: scalar}`` add_hparams takes (lists joined with commas)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, item, out)
    elif isinstance(value, (int, float, str, bool)):
        out[prefix] = value
    elif isinstance(value, (list, tuple)):
        out[prefix] = ",".join(map(str, value))
    elif value is None:
        out[prefix] = "none"


# --------------------------------------------------------------------------- the four phases


@dataclass
class TrainingRun:
    """What :func:`setup` builds and the other phases share."""

    cfg: RankingExperiment
    ctx: distributed.Context
    run: RunDir
    pipeline: FeaturePipeline
    model: XDeepFMRanker
    net: nn.Module  # the model, or its DDP wrapper under torchrun
    optimizer: torch.optim.Optimizer
    data: dict[str, SplitData | ShardStream]
    stopper: EarlyStopping
    writer: Any  # a SummaryWriter on rank 0, a NullWriter elsewhere
    config_dict: dict  # the experiment as every checkpoint and config.json record it
    started: float  # perf_counter() when setup began
    prepare_seconds: float = 0.0
    train_seconds: float = 0.0  # this invocation's training loops only
    epoch: int = 0  # epochs done so far: the 0-based index of the next one
    history: list[dict] = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        return isinstance(self.cfg.data, ParquetConfig)

    def loop_state(self) -> dict:
        """What ``--resume`` needs besides the weights and the optimizer."""
        return {"epoch": self.epoch, "early_stopping": dataclasses.asdict(self.stopper), "history": self.history}

    def save(self, path: Path, metrics: dict, optimizer: bool = False) -> None:
        save_ranking_checkpoint(path, config=self.config_dict, features=self.pipeline, model=self.model,
                                metrics=metrics, state=self.loop_state(), optimizer=self.optimizer if optimizer else None)


def _fit_features(cfg: RankingExperiment, resumed: RankingCheckpoint | None) -> tuple[FeaturePipeline, dict]:
    """The fitted pipeline (the resume checkpoint's, when there is one) and the raw splits: frames in
    memory, or the row groups of the Parquet shards."""
    if isinstance(cfg.data, ParquetConfig):
        if cfg.history is not None:
            raise ValueError("history: the Parquet shards are streamed; write the history column into the shards "
                             "(xdeepfm.history.add_history) and drop the history section")
        units = {name: list_units(shard_files(cfg.data.pattern(name), f"data.{name}")) for name in SPLITS}
        return (resumed.features if resumed else fit_on_shards(cfg, units["train"])), units
    with distributed.rank0_first():  # rank 0 fills the text-vector cache, the others read it
        splits = load_frames(cfg)
        pipeline = resumed.features if resumed else FeaturePipeline(cfg.features).fit(splits["train"], "train")
    return pipeline, splits


def _model_inputs(cfg: RankingExperiment, ctx: distributed.Context, pipeline: FeaturePipeline, columns: list,
                  raw: dict) -> dict[str, SplitData | ShardStream]:
    """Every split as model inputs: in memory, or streams over this rank's share of the shards."""
    tc = cfg.train
    if isinstance(cfg.data, ParquetConfig):
        batch_rows = distributed.check_divisible(tc.batch_size, ctx, "train.batch_size")
        return {"train": stream(raw["train"], pipeline, columns, batch_rows, ctx, shuffle=True, seed=tc.seed),
                **{name: stream(raw[name], pipeline, columns, tc.eval_batch_size, ctx) for name in ("valid", "test")}}
    with distributed.rank0_first():
        return {name: SplitData.build(frame, pipeline, columns, name) for name, frame in raw.items()}


def setup(cfg: RankingExperiment, out_dir: str | Path, ctx: distributed.Context, *, resume: bool = False,
          overwrite: bool = False) -> TrainingRun:
    """Phase 1: the run directory, data and features, the model on its device, the optimizer, and the
    resume state."""
    from torch.utils.tensorboard import SummaryWriter

    started = time.perf_counter()
    run = claim_run_dir(out_dir, to_dict(cfg), resume=resume, overwrite=overwrite)
    set_seed(cfg.train.seed)
    resumed = load_ranking_checkpoint(run.last) if resume else None
    if resumed:
        _check_resumable(run.last, resumed, cfg)
    pipeline, raw = _fit_features(cfg, resumed)
    model = XDeepFMRanker([pipeline.fitted[f.name] for f in pipeline.spec.fields], cfg.model, seed=cfg.train.seed)
    model = model.to(ctx.device)
    data = _model_inputs(cfg, ctx, pipeline, model.columns, raw)
    state = TrainingRun(cfg=cfg, ctx=ctx, run=run, pipeline=pipeline, model=model, net=distributed.wrap_ddp(model, ctx),
                        optimizer=make_optimizer(model, cfg.train), data=data,
                        stopper=EarlyStopping("auc", cfg.train.patience, "max"), writer=distributed.NullWriter(),
                        config_dict=to_dict(cfg), started=started)
    state.prepare_seconds = time.perf_counter() - started
    if resumed:
        _restore(state, resumed)
    if ctx.is_rank0:
        write_json(run.config, state.config_dict)
        state.writer = SummaryWriter(str(run.tensorboard), purge_step=state.epoch + 1 if resumed else None)
        if not resumed:
            state.writer.add_text("about/tags", RUN_CARD.format(k=cfg.eval.k, optimizer=cfg.train.optimizer), 0)
            state.writer.add_custom_scalars({"train vs valid": {"loss per epoch": ["Multiline", ["train/bce", "valid/logloss"]]}})
    log.info("model: %d fields, %d parameters on %s; train %d rows", model.n_fields,
             sum(p.numel() for p in model.parameters()), ctx.device,
             data["train"].total_rows if state.sharded else len(data["train"].X))
    return state


LOOP_STATE = ("epoch", "early_stopping", "history")
DOES_NOT_FIT = "does not fit the model this config builds (was the model changed since the run started?)"


def _check_resumable(path: Path, resumed: RankingCheckpoint, cfg: RankingExperiment) -> None:
    """Refuse, naming the file, a checkpoint without the optimizer and loop state (a best checkpoint
    where last belongs) and one trained with other feature fields than the config's."""
    if resumed.optimizer_state is None or any(key not in resumed.state for key in LOOP_STATE):
        raise CheckpointError(f"{path}: not a resume checkpoint (no optimizer and loop state); --resume reads the "
                              "last.safetensors a run writes after every epoch")
    theirs, ours = to_dict(resumed.features.spec)["fields"], to_dict(cfg.features)["fields"]
    if theirs != ours:
        changed = sorted({f["name"] for f in theirs if f not in ours} | {f["name"] for f in ours if f not in theirs})
        raise CheckpointError(f"{path}: {DOES_NOT_FIT}: the feature fields {changed} differ from the checkpoint's")


def _restore(state: TrainingRun, resumed: RankingCheckpoint) -> None:
    """Continue from ``last.safetensors``: weights, optimizer, early stopping, epoch and history."""
    try:
        state.model.load_state_dict(resumed.model_state)
        state.optimizer.load_state_dict(resumed.optimizer_state)
    except (RuntimeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise CheckpointError(f"{state.run.last}: {DOES_NOT_FIT}: {' '.join(lines[:2])}") from None
    loop = resumed.state
    state.epoch, state.history = loop["epoch"], loop["history"]
    state.stopper = EarlyStopping(**loop["early_stopping"])
    log.info("resumed from %s after epoch %d", state.run.last, state.epoch)


def epoch_lr_factor(config: RankingTrainConfig, epoch: int) -> float:
    """The multiplier of the base learning rate for epoch ``epoch`` (0-based): 1 without a schedule;
    ``lr_schedule: cosine``: ``0.5 (1 + cos(pi epoch / epochs))`` (torch's CosineAnnealingLR, per epoch)."""
    if config.lr_schedule == "none":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))


def run_epoch(state: TrainingRun, epoch: int) -> float:
    """Phase 2: epoch ``epoch`` (0-based): its seeds, its batches, one pass; returns the mean train BCE."""
    cfg, tc = state.cfg, state.cfg.train
    seed = epoch_seed(tc.seed, epoch, SHUFFLE_STRIDE)
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(seed)  # the in-memory shuffle and the OOV dropout
    started = time.perf_counter()
    workers = cfg.data.num_workers if state.sharded else 0
    batches = epoch_batches(state.data["train"], tc, epoch, state.ctx, workers)
    for group in state.optimizer.param_groups:  # base_lr: the configured lr, kept in the group (and its checkpoint)
        group["lr"] = group.setdefault("base_lr", group["lr"]) * epoch_lr_factor(tc, epoch)
    loss = train_epoch(state.model, state.optimizer, batches, tc, generator, f"epoch {epoch + 1}/{tc.epochs}",
                       forward=state.net, uneven=state.sharded and state.ctx.enabled)
    seconds = time.perf_counter() - started
    state.train_seconds += seconds
    rows = state.data["train"].total_rows if state.sharded else len(state.data["train"].X)
    state.writer.add_scalar("speed/train_rows_per_s", rows / max(seconds, 1e-9), epoch + 1)
    for i, group in enumerate(state.optimizer.param_groups):
        state.writer.add_scalar(f"lr/group{i}", group["lr"], epoch + 1)
    return loss


def validate_and_checkpoint(state: TrainingRun, epoch: int, loss: float) -> None:
    """Phase 3: validation metrics (rank 0's, on every rank), TensorBoard, early stopping, best and last checkpoints."""
    cfg = state.cfg
    valid = evaluate_data(state.model, state.data["valid"], cfg.eval.k, cfg.train.eval_batch_size, state.ctx)
    state.writer.add_scalar("train/bce", loss, epoch + 1)
    _log_scalars(state.writer, "valid", valid, epoch + 1)
    state.history.append({"epoch": epoch + 1, "train_bce": loss, **{f"valid_{k}": v for k, v in valid.items()}})
    state.epoch = epoch + 1
    improved = state.stopper.step(valid["auc"], epoch + 1)  # an undefined AUC (None) never improves
    log.info("epoch %d  train bce %.4f  valid %s%s", epoch + 1, loss, format_metrics(valid), "  *best*" if improved else "")
    if state.ctx.is_rank0:
        metrics = {"valid": valid, "epoch": epoch + 1}
        if improved:
            state.save(state.run.best, metrics)
        state.save(state.run.last, metrics, optimizer=True)
    distributed.barrier()  # every rank sees this epoch's checkpoints before going on


def finish(state: TrainingRun) -> dict:
    """Phase 4: the best checkpoint on valid and test; ``metrics.json``, and the best checkpoint with its test metrics."""
    cfg, ctx, run = state.cfg, state.ctx, state.run
    if not run.best.is_file():
        raise ValueError(f"{run.path}: no epoch was trained (train.epochs={cfg.train.epochs}); nothing to evaluate")
    state.model.load_state_dict(load_ranking_checkpoint(run.best).model_state)
    k, batch_size = cfg.eval.k, cfg.train.eval_batch_size
    result = {
        "task": "ranking",
        "implementation": "ours",
        "seed": cfg.train.seed,
        "split": cfg.data.split,
        "best_epoch": state.stopper.best_epoch,
        "valid": evaluate_data(state.model, state.data["valid"], k, batch_size, ctx),
        "test": evaluate_data(state.model, state.data["test"], k, batch_size, ctx),
        "history": state.history,
        "seconds": {"prepare": state.prepare_seconds, "train": state.train_seconds,
                    "total": time.perf_counter() - state.started},
        "checkpoint": str(run.best),
    }
    _log_scalars(state.writer, "test", result["test"], state.stopper.best_epoch)
    hparams: dict = {}
    _flatten("", {"model": state.config_dict.get("model", {}), "train": state.config_dict.get("train", {})}, hparams)
    scores = {f"hparam/{split}_{k}": v for split in ("valid", "test") for k, v in result[split].items()
              if isinstance(v, (int, float)) and math.isfinite(v)}
    state.writer.add_hparams(hparams, scores, run_name="hparams")
    state.writer.close()
    if ctx.is_rank0:
        state.save(run.best, {key: result[key] for key in ("valid", "test", "best_epoch")})
        write_json(run.metrics, result)
    distributed.barrier()
    log.info("best epoch %d  test %s", result["best_epoch"], format_metrics(result["test"]))
    return result


def train(cfg: RankingExperiment, out_dir: str | Path, *, resume: bool = False, stop_after: int | None = None,
          overwrite: bool = False) -> dict:
    """Train, early-stop, evaluate the best checkpoint; returns the result written to ``metrics.json``.

    ``stop_after`` ends this invocation after that many epochs (leaving ``last.safetensors``) and
    returns ``{"stopped_after_epoch": E}``; ``resume`` continues from ``last.safetensors`` in
    ``out_dir`` (with the same config); ``overwrite`` replaces a run already in ``out_dir`` (refused
    otherwise). ``train.device`` is checked here (``auto``: CUDA when available, else the CPU).
    """
    ctx = distributed.init(cfg.train.device)
    if cfg.model.implementation == "deepctr":
        if ctx.enabled:
            raise ValueError("model.implementation: deepctr (the stock baseline) trains in one process; run it without torchrun")
        if resume or stop_after is not None:
            raise ValueError("model.implementation: deepctr (the stock baseline) trains in one go; "
                             "--resume and --stop-after are for the 'ours' trainer")
        if cfg.train.lr_schedule != "none":
            raise ValueError(f"train.lr_schedule: {cfg.train.lr_schedule!r} is for the 'ours' trainer; the stock "
                             "deepctr-torch baseline trains at a constant lr (set lr_schedule: none)")
        return train_baseline(cfg, out_dir, ctx.device, overwrite=overwrite)
    state = setup(cfg, out_dir, ctx, resume=resume, overwrite=overwrite)
    try:
        epochs_run = 0
        for epoch in range(state.epoch, cfg.train.epochs):
            if state.stopper.should_stop:
                break
            loss = run_epoch(state, epoch)
            epochs_run += 1
            validate_and_checkpoint(state, epoch, loss)
            if stop_requested(epochs_run, stop_after, epoch + 1, cfg.train.epochs):
                mark_run(state.run, "stopped")
                log.info("stopped after %d epoch(s) as asked; continue with --resume", epochs_run)
                return {"stopped_after_epoch": epoch + 1}
        result = finish(state)
    except BaseException:
        mark_run(state.run, "interrupted")
        raise
    finally:
        state.writer.close()
    mark_run(state.run, "finished")
    return result
