"""The one training loop for every mmfusion variant (full model, ablations, unimodal baselines).

``train(cfg, out_dir, *, resume, stop_after)`` runs four phases, in the order of this file:
:func:`setup` (data, normalisation, model, optimizer, SLGM, resume state), :func:`train_epoch`
(per step: forward, multi-task loss against the current labels — the multimodal label for M,
SLGM's generated labels for T/A/V — backward, gradient clipping, AdamW step; then SLGM stores
the step's detached representations and, from ``slgm_start_epoch`` on, regenerates the batch's
unimodal labels, eq. 18-22), :func:`validate_and_checkpoint` (validation metrics, early stopping
on ``early_stop_key``, ``best.safetensors`` and ``last.safetensors``, both atomic) and
:func:`finish` (the best checkpoint on test, ``metrics.json``). The loop vocabulary (run
directory, early stopping, epoch seeds, checkpoint format) is ``mmcore.loop`` /
``mmcore.checkpoint``, shared with the ranking trainer.

Determinism: the shuffling order of epoch ``e`` comes from a generator seeded with
``epoch_seed(seed, e, 100_003)`` and the global torch RNG state is saved with every resume
checkpoint, so a run interrupted after any epoch and resumed reaches the same weights as an
uninterrupted one.

Under ``torchrun`` (see ``mmcore/distributed.py``) the model is wrapped in
DistributedDataParallel and ``data.batch_size`` stays the *global* batch: each of the N ranks
takes ``batch_size / N`` clips per step from a ``DistributedSampler`` whose epoch-``e``
permutation is the single-process one, so step k of all ranks together covers the same clips as
step k of one process. SLGM gathers every rank's (index, features) before its update, so its
maps stay global and identical on all ranks. Validation and test are split across ranks and
gathered; rank 0 decides early stopping and alone writes checkpoints, TensorBoard and
``metrics.json``. A resume checkpoint also holds every rank's RNG state.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from mmcore import distributed
from mmcore.checkpoint import CheckpointError
from mmcore.config import to_dict
from mmcore.files import write_json, write_text
from mmcore.loop import EarlyStopping, RunDir, claim_run_dir, clip_gradients, epoch_seed, mark_run, stop_requested
from mmfusion import tensorboard as tb
from mmfusion.checkpoint import load_sentiment_checkpoint, save_sentiment_checkpoint
from mmfusion.data.mmsa import (
    MMSAData,
    MMSADataset,
    MMSASplit,
    NormStats,
    collate_mmsa,
    load_mmsa,
    make_loader,
    text_vocab_size,
)
from mmfusion.data.synthetic import generate, write_pickle
from mmfusion.evaluate import Predictions, predict, predictions_csv
from mmfusion.experiment import SentimentDataConfig, SentimentExperiment, build_model_config
from mmfusion.losses import multitask_loss
from mmfusion.metrics import format_metrics, metric_mode, mmsa_metrics, pearson
from mmfusion.model import MultimodalSentimentModel
from mmfusion.slgm import SLGM, gather_batch

log = logging.getLogger(__name__)

SHUFFLE_STRIDE = 100_003  # epoch e of seed s shuffles with seed s * 100_003 + e (epochs count from 1)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rates at optimizer step ``step`` (1-based) of ``total``:
    ``step / warmup`` during the warm-up, then ``0.5 (1 + cos(pi (step - warmup) / (total - warmup)))``."""
    if step <= warmup:
        return step / max(warmup, 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_lr(state: "TrainingRun") -> None:
    """Set every param group's lr for the coming step from its ``base_lr`` (``train.lr_schedule``)."""
    train_cfg = state.cfg.train
    if train_cfg.lr_schedule == "none":
        return
    per_epoch = -(-len(state.train_split.labels) // state.cfg.data.batch_size)  # global steps per epoch
    total, warmup, step = per_epoch * train_cfg.epochs, round(train_cfg.warmup_epochs * per_epoch), state.step + 1
    if train_cfg.lr_schedule == "cosine":
        factor = lr_factor(step, total, warmup)
    else:  # plateau: the warm-up, then the scale the validation plateaus have set (plateau_step)
        factor = min(step / max(warmup, 1), 1.0) * state.lr_scale
    for group in state.optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor  # a pre-schedule checkpoint has no base_lr


def plateau_step(state: "TrainingRun", improved: bool) -> None:
    """``lr_schedule: plateau``: after ``plateau_patience`` epochs in a row without a new best, lower
    the learning rates by ``plateau_factor`` (and again after as many more)."""
    train_cfg = state.cfg.train
    bad = state.stopper.bad_epochs
    if train_cfg.lr_schedule == "plateau" and not improved and bad % train_cfg.plateau_patience == 0:
        state.lr_scale *= train_cfg.plateau_factor
        log.info("valid %s flat for %d epochs: learning rates x %g (now x %g of the base)", state.stopper.key, bad,
                 train_cfg.plateau_factor, state.lr_scale)


def data_dims(data: MMSAData) -> dict[str, int | None]:
    return {"audio_dim": data.audio_dim, "vision_dim": data.vision_dim, "text_dim": data.text_dim}


def prepare_data(cfg: SentimentDataConfig, vocab_size: int | None = None) -> MMSAData:
    """Load the MMSA pickle, generating it first with SynthMOSI when configured and missing; token ids
    are checked against ``vocab_size`` (the text encoder's vocabulary) when given."""
    path = Path(cfg.path)
    if not path.exists() and cfg.synthetic is not None:
        spec = cfg.synthetic
        log.info("generating SynthMOSI (%s, world %s, seed %d) into %s", spec.size, spec.world, spec.seed, path)
        write_pickle(generate(spec.size, spec.seed, aligned=spec.aligned, text_features=spec.text_features,
                              world=spec.world), path)
    return load_mmsa(path, nonfinite=cfg.nonfinite, vocab_size=vocab_size)


def _text_vocab_size(cfg: SentimentExperiment) -> int | None:
    """The vocabulary token ids must stay below when the model reads them (a BERT text branch)."""
    text = cfg.model.text
    return text_vocab_size(text.model_path) if text.source == "bert" and "text" in cfg.model.modalities else None


def _slgm_truth_correlations(slgm: SLGM, truth: dict[str, np.ndarray] | None) -> dict[str, float | None]:
    """Correlation of generated (and of copied multimodal) labels with hidden unimodal truth."""
    if truth is None:
        return {}
    labels = {task: slgm.label_map(task).numpy() for task in slgm.tasks}
    result = {}
    for task in slgm.unimodal_tasks:
        result[f"{task}/corr_generated"] = pearson(labels[task].astype(np.float64), truth[task].astype(np.float64))
        result[f"{task}/corr_copied_M"] = pearson(labels["M"].astype(np.float64), truth[task].astype(np.float64))
    return result


class LoaderOrderSampler(DistributedSampler):
    """A ``DistributedSampler`` whose epoch permutation is the one the single-process loader draws.

    The single-process loop iterates ``make_loader(shuffle=True, seed=s)`` through ``tqdm``; the
    permutation comes from a generator seeded with ``s`` after the loader has drawn worker seeds
    from it (one per iterator opened: tqdm.auto opens one more). This sampler draws its order
    through the same ``DataLoader`` + ``tqdm`` path (``seed + epoch``, like ``DistributedSampler``)
    and gives rank r the positions r, r + N, r + 2N, ... With a per-rank batch of
    ``batch_size / N``, the ranks' step-k batches together are exactly the single-process step-k
    batch (tests/mmapp/test_distributed.py checks it against the real loop).
    """

    def __iter__(self):
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        loader = DataLoader(range(n), batch_size=n, shuffle=True, generator=generator)
        order = torch.cat(list(tqdm(loader, disable=True))).tolist()
        order += order[: self.total_size - n]  # pad to a multiple of the ranks, as DistributedSampler does
        return iter(order[self.rank : self.total_size : self.num_replicas])


def _train_loader(split: MMSASplit, norm: NormStats | None, cfg: SentimentExperiment, epoch: int,
                  ctx: distributed.Context) -> DataLoader:
    """Epoch ``epoch``'s shuffled batches: all clips in one process, this rank's share under torchrun."""
    text_source = cfg.model.text.source
    if not ctx.enabled:
        return make_loader(split, norm, cfg.data.batch_size, shuffle=True,
                           seed=epoch_seed(cfg.train.seed, epoch, SHUFFLE_STRIDE), text_source=text_source)
    sampler = LoaderOrderSampler(MMSADataset(split, norm, text_source), ctx.world_size, ctx.rank, shuffle=True,
                                 seed=epoch_seed(cfg.train.seed, 0, SHUFFLE_STRIDE))
    sampler.set_epoch(epoch)  # reshuffled every epoch, in the single-process order
    per_rank = distributed.check_divisible(cfg.data.batch_size, ctx, "data.batch_size")
    return DataLoader(sampler.dataset, batch_size=per_rank, sampler=sampler, collate_fn=collate_mmsa)


def _take(split: MMSASplit, rows: np.ndarray) -> MMSASplit:
    """The clips ``rows`` of ``split``, as a split of their own."""
    pick = lambda a: None if a is None else a[rows]  # noqa: E731
    unimodal = {k: v[rows] for k, v in split.unimodal_labels.items()} if split.unimodal_labels else split.unimodal_labels
    arrays = {f.name: pick(getattr(split, f.name)) for f in dataclasses.fields(split) if f.name not in ("name", "unimodal_labels")}
    return dataclasses.replace(split, **arrays, unimodal_labels=unimodal)


def predict_split(model: MultimodalSentimentModel, split: MMSASplit, norm: NormStats | None, batch_size: int,
                  ctx: distributed.Context) -> Predictions:
    """``predict`` over ``split``; under torchrun each rank scores its share and all get the whole split back in order."""
    if not ctx.enabled:
        return predict(model, split, norm, batch_size)
    rows = distributed.shard_positions(len(split), ctx)
    part = predict(model, _take(split, rows), norm, batch_size)
    tasks = list(part.outputs)
    positions, label, *outputs = distributed.gather_rows(rows, rows, part.label, *(part.outputs[t] for t in tasks))
    return Predictions(ids=[str(i) for i in split.ids[positions]], label=label, outputs=dict(zip(tasks, outputs)))


@dataclass
class TrainingRun:
    """What :func:`setup` builds and the other phases share."""

    cfg: SentimentExperiment
    ctx: distributed.Context
    run: RunDir
    data: MMSAData
    norm: NormStats | None
    model: MultimodalSentimentModel
    net: torch.nn.Module  # the model, or its DDP wrapper under torchrun
    optimizer: torch.optim.Optimizer
    slgm: SLGM | None
    stopper: EarlyStopping
    writer: SummaryWriter | distributed.NullWriter
    meta: dict  # what every checkpoint of this run records: config, data widths, normalisation
    attention_batch: object = None  # the fixed validation clips whose attention maps go to TensorBoard
    start_epoch: int = 1
    step: int = 0
    lr_scale: float = 1.0  # lr_schedule plateau: the product of the reductions so far

    @property
    def train_split(self) -> MMSASplit:
        return self.data.splits["train"]


def setup(cfg: SentimentExperiment, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> TrainingRun:
    """Phase 1: the run directory, data and statistics, the model on its device, optimizer, SLGM,
    and the resume state."""
    ctx = distributed.init(cfg.train.device)
    run = claim_run_dir(out_dir, to_dict(cfg), resume=resume, overwrite=overwrite)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    with distributed.rank0_first():  # rank 0 generates a missing SynthMOSI file, the others read it
        data = prepare_data(cfg.data, vocab_size=_text_vocab_size(cfg))
    train_split = data.splits["train"]
    norm = NormStats.fit(train_split, include_text=cfg.model.text.source == "features") if cfg.data.normalize else None
    dims = data_dims(data)
    model = MultimodalSentimentModel(build_model_config(cfg.model, dims)).to(ctx.device)
    optimizer = torch.optim.AdamW(model.param_groups(cfg.train.lr_text, cfg.train.lr, cfg.train.weight_decay))
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]  # what train.lr_schedule scales
    slgm = None
    if model.cfg.use_slgm:
        slgm = SLGM(len(train_split.labels), model.feature_dims, torch.as_tensor(train_split.labels, dtype=torch.float32),
                    distance=model.cfg.slgm_distance).to(ctx.device)
    key = cfg.train.early_stop_key
    state = TrainingRun(
        cfg=cfg, ctx=ctx, run=run, data=data, norm=norm, model=model, net=distributed.wrap_ddp(model, ctx),
        optimizer=optimizer, slgm=slgm, stopper=EarlyStopping(key, cfg.train.patience, metric_mode(key)),
        writer=distributed.NullWriter(),
        meta={"config": to_dict(cfg), "data_dims": dims, "norm": norm.to_dict() if norm else None,
              "extraction": data.extraction},
        attention_batch=tb.fixed_clips(data.splits["valid"], norm, cfg.train.attention_clips, cfg.model.text.source,
                                       cfg.model.text.model_path, text="text" in model.modalities),
    )
    if resume:
        _restore(state)
    if ctx.is_rank0:
        state.writer = SummaryWriter(str(run.tensorboard), purge_step=state.step if resume else None)
        if not resume:
            tb.log_run_card(state.writer, cfg, model.modalities)
    log.info("training %s on %s (%d train clips, %s); TensorBoard: %s", run.path, cfg.data.path,
             len(train_split.labels), ctx.device, run.tensorboard)
    return state


def _restore(state: TrainingRun) -> None:
    """Continue from ``last.safetensors``: weights, optimizer, SLGM maps, early stopping and RNG."""
    path = state.run.last
    checkpoint = load_sentiment_checkpoint(path)
    optimizer_state = checkpoint.optimizer_state()
    if optimizer_state is None or "early_stopping" not in checkpoint.meta:
        raise CheckpointError(f"{path}: not a resume checkpoint (no optimizer and loop state); --resume reads the "
                              "last.safetensors a run writes after every epoch")
    try:
        state.model.load_state_dict(checkpoint.group("model"))
        state.optimizer.load_state_dict(optimizer_state)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: does not fit the model this config builds (was the model changed since the run "
                              f"started?): {first}") from None
    if state.slgm is not None:
        state.slgm.load_state_dict(checkpoint.group("slgm"))
    state.stopper = EarlyStopping(**checkpoint.meta["early_stopping"])
    rng, ctx = checkpoint.group("rng"), state.ctx
    same_world = ctx.enabled and "ranks" in rng and len(rng["ranks"]) == ctx.world_size
    torch.set_rng_state(rng["ranks"][ctx.rank].clone() if same_world else rng["cpu"])  # a row of its own storage
    state.start_epoch, state.step = checkpoint.meta["epoch"] + 1, checkpoint.meta["step"]
    state.lr_scale = checkpoint.meta.get("lr_scale", 1.0)  # a checkpoint from before lr_schedule plateau: 1
    log.info("resuming %s after epoch %d", state.run.path, checkpoint.meta["epoch"])


def train_epoch(state: TrainingRun, epoch: int) -> float:
    """Phase 2: one pass over the shuffled train split; returns the throughput (clips/s over all ranks)."""
    cfg, ctx, model, slgm = state.cfg, state.ctx, state.model, state.slgm
    model.train()
    loader = _train_loader(state.train_split, state.norm, cfg, epoch, ctx)
    started, seen = time.perf_counter(), 0
    epoch_loss: dict[str, float] = {}  # loss and per-task sums over this rank's batches, for the epoch-axis charts
    for batch in tqdm(loader, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, dynamic_ncols=True,
                      disable=not ctx.is_rank0):
        batch = batch.to(ctx.device)
        output = state.net(batch)
        if slgm is not None:
            labels, weights = slgm.labels(batch.index), slgm.loss_weights(batch.index)
        else:
            labels, weights = {"M": batch.label}, {"M": torch.ones_like(batch.label)}
        loss, per_task = multitask_loss(output, labels, weights)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, cfg.train.grad_clip)
        schedule_lr(state)
        state.optimizer.step()
        if slgm is not None:
            index, features = gather_batch(batch.index, output.features) if ctx.enabled else (batch.index, output.features)
            slgm.update_features(index, features)
            if epoch >= cfg.train.slgm_start_epoch:
                slgm.update_labels(index, epoch)
        state.step += 1
        seen += len(batch)
        state.writer.add_scalar("train/loss", loss.item(), state.step)  # rank 0's share of the global batch
        for task, value in per_task.items():
            state.writer.add_scalar(f"train/loss_{task}", value.item(), state.step)
        for name, value in (("loss", loss), *((f"loss_{t}", v) for t, v in per_task.items())):
            epoch_loss[name] = epoch_loss.get(name, 0.0) + value.item() * len(batch)
    for name, total in epoch_loss.items():
        state.writer.add_scalar(f"train_epoch/{name}", total / max(seen, 1), epoch)  # rank 0's clips
    (seen_all,) = distributed.sum_floats(seen)
    return seen_all / (time.perf_counter() - started)


def validate_and_checkpoint(state: TrainingRun, epoch: int, throughput: float) -> None:
    """Phase 3: validation metrics, early stopping (rank 0 decides), TensorBoard, best and last checkpoints."""
    cfg, ctx, model, slgm = state.cfg, state.ctx, state.model, state.slgm
    valid = predict_split(model, state.data.splits["valid"], state.norm, cfg.data.eval_batch_size, ctx)
    metrics = distributed.broadcast_object(mmsa_metrics(valid.outputs["M"], valid.label))
    improved = state.stopper.step(metrics[state.stopper.key], epoch)
    plateau_step(state, improved)
    rng_ranks = distributed.gather_objects(torch.get_rng_state()) if ctx.enabled else None
    if ctx.is_rank0:
        log.info("epoch %d  %.1f clips/s  valid %s%s", epoch, throughput, format_metrics(metrics), "  *best*" if improved else "")
        tb.log_epoch(state.writer, epoch, state.step, metrics, state.optimizer, throughput)
        tb.log_attention(state.writer, model, state.attention_batch, epoch)
        if slgm is not None:
            tb.log_slgm(state.writer, slgm, epoch, _slgm_truth_correlations(slgm, state.train_split.unimodal_labels))
        if improved:
            save_sentiment_checkpoint(state.run.best, {**state.meta, "epoch": epoch, "valid_metrics": metrics},
                                      model.state_dict())
        groups = {"rng": {"cpu": torch.get_rng_state(), **({"ranks": torch.stack(rng_ranks)} if rng_ranks else {})}}
        if slgm is not None:
            groups["slgm"] = slgm.state_dict()
        loop_state = {"early_stopping": dataclasses.asdict(state.stopper), "step": state.step, "lr_scale": state.lr_scale}
        save_sentiment_checkpoint(state.run.last, {**state.meta, "epoch": epoch, **loop_state}, model.state_dict(), groups,
                                  optimizer=state.optimizer)
    distributed.barrier()  # every rank sees this epoch's checkpoints before going on


def finish(state: TrainingRun) -> dict:
    """Phase 4: the best checkpoint on test; predictions, ``metrics.json`` and the hparams entry."""
    cfg, ctx, model = state.cfg, state.ctx, state.model
    if not state.run.best.is_file():
        raise ValueError(f"{state.run.path}: no epoch was trained (train.epochs={cfg.train.epochs}); nothing to evaluate")
    best = load_sentiment_checkpoint(state.run.best)
    model.load_state_dict(best.group("model"))
    test = predict_split(model, state.data.splits["test"], state.norm, cfg.data.eval_batch_size, ctx)
    if ctx.is_rank0:
        write_text(state.run.predictions("test"), predictions_csv(test))
    summary = {
        "best_epoch": state.stopper.best_epoch,
        "valid": best.meta["valid_metrics"],
        "test": mmsa_metrics(test.outputs["M"], test.label),
    }
    if state.slgm is not None:
        summary["slgm"] = _slgm_truth_correlations(state.slgm, state.train_split.unimodal_labels)
    log.info("best epoch %d  test %s", state.stopper.best_epoch, format_metrics(summary["test"]))
    tb.log_hparams(state.writer, cfg, summary["test"])
    state.writer.close()
    if ctx.is_rank0:
        write_json(state.run.metrics, summary)
    distributed.barrier()
    return summary


def train(cfg: SentimentExperiment, out_dir: str | Path, *, resume: bool = False, stop_after: int | None = None,
          overwrite: bool = False) -> dict:
    """Train, early-stop, evaluate the best checkpoint on test; returns the summary written to metrics.json.

    ``stop_after`` ends this invocation after that many epochs (leaving ``last.safetensors``), for
    time-sliced jobs; ``resume`` continues from ``last.safetensors`` in ``out_dir`` (with the same
    config); ``overwrite`` replaces a run already in ``out_dir`` (refused otherwise).
    """
    state = setup(cfg, out_dir, resume=resume, overwrite=overwrite)
    try:
        epochs_run = 0
        for epoch in range(state.start_epoch, cfg.train.epochs + 1):
            if state.stopper.should_stop:
                break
            throughput = train_epoch(state, epoch)
            epochs_run += 1
            validate_and_checkpoint(state, epoch, throughput)
            if stop_requested(epochs_run, stop_after, epoch, cfg.train.epochs):
                state.writer.close()
                mark_run(state.run, "stopped")
                log.info("stopped after %d epoch(s) as asked; continue with --resume", epochs_run)
                return {"stopped_after_epoch": epoch}
        summary = finish(state)
    except BaseException:
        mark_run(state.run, "interrupted")
        raise
    mark_run(state.run, "finished")
    return summary
