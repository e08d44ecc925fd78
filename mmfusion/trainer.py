"""The one training loop for every mmfusion variant (full model, ablations, unimodal baselines).

Per step: forward, multi-task loss against the current labels (the multimodal label for M, the
SLGM-generated labels for T/A/V), backward, AdamW step; then SLGM stores the step's detached
representations and, from ``slgm_start_epoch`` on, regenerates the unimodal labels of the batch
(eq. 18-22). After each epoch: validation metrics, early stopping on ``early_stop_key``, the best
checkpoint (``model.pt``) and a resume checkpoint (``last.pt``), both written atomically.

Determinism: the shuffling order of epoch ``e`` comes from a generator seeded with
``(seed, e)`` and the global torch RNG state is saved with every resume checkpoint, so a run
interrupted after any epoch and resumed reaches the same weights as an uninterrupted one.

Under ``torchrun`` (see ``mmfusion/distributed.py``) the model is wrapped in
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from mmfusion import distributed
from mmfusion.checkpoint import load_checkpoint, save_checkpoint
from mmfusion.files import write_json, write_text
from mmfusion.config import ConfigError, to_dict
from mmfusion.data.mmsa import MMSAData, MMSADataset, MMSASplit, NormStats, collate_mmsa, load_mmsa, make_loader
from mmfusion.evaluate import Predictions, predict, predictions_csv
from mmfusion.metrics import format_metrics, is_better, mmsa_metrics, pearson
from mmfusion.model import ModelConfig, MultimodalSentimentModel
from mmfusion.slgm import SLGM, gather_batch, multitask_loss
from mmfusion import tensorboard as tb

log = logging.getLogger(__name__)


@dataclass
class SyntheticData:
    """Generate the data file with SynthMOSI when it does not exist yet."""

    size: Literal["tiny", "mosi", "mosei"] = "mosi"
    seed: int = 0
    aligned: bool = False
    text_features: bool = False  # also write `text` (MiniLM hidden states) for `text.source: features`


@dataclass
class DataConfig:
    path: str
    synthetic: SyntheticData | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    normalize: bool = True  # standardise audio/vision (and text features) with train statistics
    nonfinite: Literal["error", "zero"] = "error"  # real MOSI audio holds -inf: "zero" replaces it


@dataclass
class TrainConfig:
    epochs: int = 20
    lr: float = 1e-3  # everything but the text encoder
    lr_text: float = 5e-5  # the BERT-family text encoder when fine-tuned
    weight_decay: float = 1e-4
    grad_clip: float | None = 1.0
    early_stop_key: str = "MAE"  # any key of the MMSA metric set, on the valid split
    patience: int = 6
    seed: int = 0
    slgm_start_epoch: int = 2  # unimodal labels stay = multimodal label during the first epoch
    attention_clips: int = 4  # validation clips whose LGT attention maps go to TensorBoard
    threads: int | None = None  # torch intra-op threads; None leaves torch's default


@dataclass
class SentimentConfig:
    """A whole sentiment experiment: what ``configs/*.yaml`` with ``task: sentiment`` holds."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: Literal["sentiment"] = "sentiment"

    def __post_init__(self) -> None:
        from mmfusion.metrics import METRIC_KEYS

        if self.train.early_stop_key not in METRIC_KEYS:
            raise ConfigError(f"train.early_stop_key: {self.train.early_stop_key!r} is not one of {list(METRIC_KEYS)}")


def data_dims(data: MMSAData) -> dict[str, int | None]:
    return {"audio_dim": data.audio_dim, "vision_dim": data.vision_dim, "text_dim": data.text_dim}


def build_model_config(model: ModelConfig, dims: dict[str, int | None]) -> ModelConfig:
    """The model config completed with the feature widths of the data."""
    text = model.text
    if text.source == "features":
        if dims.get("text_dim") is None:
            raise ConfigError("model.text.source is 'features' but the data has no `text` features")
        text = dataclasses.replace(text, feature_dim=dims["text_dim"])
    return dataclasses.replace(model, audio_dim=dims["audio_dim"], vision_dim=dims["vision_dim"], text=text)


def prepare_data(cfg: DataConfig) -> MMSAData:
    """Load the MMSA pickle, generating it first with SynthMOSI when configured and missing."""
    path = Path(cfg.path)
    if not path.exists() and cfg.synthetic is not None:
        from mmfusion.data.synthetic import generate, write_pickle

        log.info("generating SynthMOSI (%s, seed %d) into %s", cfg.synthetic.size, cfg.synthetic.seed, path)
        spec = cfg.synthetic
        write_pickle(generate(spec.size, spec.seed, aligned=spec.aligned, text_features=spec.text_features), path)
    return load_mmsa(path, nonfinite=cfg.nonfinite)


@dataclass
class EarlyStopping:
    """Best validation value so far and how many epochs have passed without improvement."""

    key: str
    patience: int
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def step(self, value: float | None, epoch: int) -> bool:
        """Record an epoch; True when it is the new best."""
        if is_better(self.key, value, self.best):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


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
    batch (tests/test_distributed.py checks it against the real loop).
    """

    def __iter__(self):
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        loader = DataLoader(range(n), batch_size=n, shuffle=True, generator=generator)
        order = torch.cat(list(tqdm(loader, disable=True))).tolist()
        order += order[: self.total_size - n]  # pad to a multiple of the ranks, as DistributedSampler does
        return iter(order[self.rank : self.total_size : self.num_replicas])


def _train_loader(split: MMSASplit, norm: NormStats | None, cfg: SentimentConfig, epoch: int,
                  ctx: distributed.Context) -> DataLoader:
    """Epoch ``epoch``'s shuffled batches: all clips in one process, this rank's share under torchrun."""
    seed, text_source = cfg.train.seed * 100_003, cfg.model.text.source
    if not ctx.enabled:
        return make_loader(split, norm, cfg.data.batch_size, shuffle=True, seed=seed + epoch, text_source=text_source)
    sampler = LoaderOrderSampler(MMSADataset(split, norm, text_source), ctx.world_size, ctx.rank, shuffle=True, seed=seed)
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


def train(
    cfg: SentimentConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
) -> dict:
    """Train, early-stop, evaluate the best checkpoint on test; returns the summary written to metrics.json.

    ``stop_after`` ends this invocation after that many epochs (leaving ``last.pt``), for time-sliced
    jobs; ``resume`` continues from ``last.pt`` in ``out_dir``.
    """
    ctx = distributed.init()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)

    with distributed.rank0_first():  # rank 0 generates a missing SynthMOSI file, the others read it
        data = prepare_data(cfg.data)
    train_split, valid_split = data.splits["train"], data.splits["valid"]
    text_source = cfg.model.text.source
    norm = NormStats.fit(train_split, include_text=text_source == "features") if cfg.data.normalize else None
    dims = data_dims(data)
    model = MultimodalSentimentModel(build_model_config(cfg.model, dims))
    model.to(ctx.device)
    optimizer = torch.optim.AdamW(model.param_groups(cfg.train.lr_text, cfg.train.lr, cfg.train.weight_decay))
    slgm = (
        SLGM(len(train_split.labels), model.feature_dims, torch.as_tensor(train_split.labels, dtype=torch.float32),
             distance=model.cfg.slgm_distance)
        if model.cfg.use_slgm
        else None
    )
    if slgm is not None:
        slgm.to(ctx.device)
    net = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) if ctx.enabled else model
    stopper = EarlyStopping(cfg.train.early_stop_key, cfg.train.patience)
    start_epoch, step = 1, 0
    if resume:
        state = load_checkpoint(out / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if slgm is not None:
            slgm.load_state_dict(state["slgm"])
        stopper = EarlyStopping(**state["early_stopping"])
        ranks_rng = state.get("rng_ranks")
        same_world = ctx.enabled and ranks_rng is not None and len(ranks_rng) == ctx.world_size
        torch.set_rng_state(ranks_rng[ctx.rank].clone() if same_world else state["rng"])  # a row of its own storage
        start_epoch, step = state["epoch"] + 1, state["step"]
        log.info("resuming %s after epoch %d", out, state["epoch"])

    base_state = {"config": to_dict(cfg), "data_dims": dims, "norm": norm.to_dict() if norm else None}
    writer = SummaryWriter(str(out / "tensorboard"), purge_step=step if resume else None) if ctx.is_rank0 else distributed.NullWriter()
    attention_batch = tb.fixed_batch(valid_split, norm, cfg.train.attention_clips, text_source)
    log.info("training %s on %s (%d train clips); TensorBoard: %s", out, cfg.data.path, len(train_split.labels), out / "tensorboard")

    epochs_run = 0
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        if stopper.should_stop:
            break
        model.train()
        loader = _train_loader(train_split, norm, cfg, epoch, ctx)
        started, seen = time.perf_counter(), 0
        for batch in tqdm(loader, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, dynamic_ncols=True,
                          disable=not ctx.is_rank0):
            if ctx.enabled:
                batch = batch.to(ctx.device)
            output = net(batch)
            if slgm is not None:
                labels, weights = slgm.labels(batch.index), slgm.loss_weights(batch.index)
            else:
                labels, weights = {"M": batch.label}, {"M": torch.ones_like(batch.label)}
            loss, per_task = multitask_loss(output, labels, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            if slgm is not None:
                index, features = gather_batch(batch.index, output.features) if ctx.enabled else (batch.index, output.features)
                slgm.update_features(index, features)
                if epoch >= cfg.train.slgm_start_epoch:
                    slgm.update_labels(index, epoch)
            step += 1
            seen += len(batch)
            if ctx.is_rank0:  # rank 0's share of the global batch
                writer.add_scalar("train/loss", loss.item(), step)
                for task, value in per_task.items():
                    writer.add_scalar(f"train/loss_{task}", value.item(), step)
        (seen_all,) = distributed.sum_floats(seen)
        throughput = seen_all / (time.perf_counter() - started)
        epochs_run += 1

        valid = predict_split(model, valid_split, norm, cfg.data.eval_batch_size, ctx)
        metrics = distributed.broadcast_object(mmsa_metrics(valid.outputs["M"], valid.label))  # rank 0 decides
        improved = stopper.step(metrics[stopper.key], epoch)
        rng_ranks = distributed.gather_objects(torch.get_rng_state()) if ctx.enabled else None
        if ctx.is_rank0:
            log.info("epoch %d  %.1f clips/s  valid %s%s", epoch, throughput, format_metrics(metrics), "  *best*" if improved else "")
            tb.log_epoch(writer, epoch, step, metrics, optimizer, throughput)
            tb.log_attention(writer, model, attention_batch, epoch)
            if slgm is not None:
                tb.log_slgm(writer, slgm, epoch, _slgm_truth_correlations(slgm, train_split.unimodal_labels))

            if improved:
                save_checkpoint({**base_state, "model": model.state_dict(), "epoch": epoch, "valid_metrics": metrics}, out / "model.pt")
            save_checkpoint(
                {
                    **base_state,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "slgm": slgm.state_dict() if slgm is not None else None,
                    "early_stopping": dataclasses.asdict(stopper),
                    "rng": torch.get_rng_state(),
                    **({"rng_ranks": torch.stack(rng_ranks)} if rng_ranks is not None else {}),
                    "epoch": epoch,
                    "step": step,
                },
                out / "last.pt",
            )
        distributed.barrier()  # every rank sees this epoch's checkpoints before going on
        if stop_after is not None and epochs_run >= stop_after and epoch < cfg.train.epochs:
            writer.close()
            log.info("stopped after %d epoch(s) as asked; continue with --resume", epochs_run)
            return {"stopped_after_epoch": epoch}

    best = load_checkpoint(out / "model.pt")
    model.load_state_dict(best["model"])
    test = predict_split(model, data.splits["test"], norm, cfg.data.eval_batch_size, ctx)
    if ctx.is_rank0:
        write_text(out / "predictions_test.csv", predictions_csv(test))
    summary = {
        "best_epoch": stopper.best_epoch,
        "valid": best["valid_metrics"],
        "test": mmsa_metrics(test.outputs["M"], test.label),
    }
    if slgm is not None:
        summary["slgm"] = _slgm_truth_correlations(slgm, train_split.unimodal_labels)
    log.info("best epoch %d  test %s", stopper.best_epoch, format_metrics(summary["test"]))
    tb.log_hparams(writer, cfg, summary["test"])
    writer.close()
    if ctx.is_rank0:
        write_json(out / "metrics.json", summary)
    distributed.barrier()
    return summary

