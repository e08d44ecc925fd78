"""What a sentiment run writes to TensorBoard, beyond the per-step losses the loop logs.

Tags: ``valid/<metric>``, ``lr/<group>``, ``speed/train_clips_per_s``, ``soft_mapping/weight_<modality>``,
``attention/<modality>/clip<k>`` (images: LGT last-layer attention, heads averaged, text positions
down, attended positions across), ``slgm/<T|A|V>/{mean_abs_diff,sign_agreement}``,
``slgm/<T|A|V>/labels`` (histograms), ``slgm/<T|A|V>/corr_*`` when the data carries the hidden
unimodal truth, and an hparams entry with the final test metrics.
"""

from __future__ import annotations

import torch
from torch.utils.tensorboard import SummaryWriter

from mmcore.config import to_dict
from mmfusion.data.batch import MMSABatch
from mmfusion.data.mmsa import MMSADataset, MMSASplit, NormStats, collate_mmsa


def fixed_batch(split: MMSASplit, norm: NormStats | None, n: int, text_source: str | None = None) -> MMSABatch | None:
    """The first ``n`` clips of a split, as one batch (the clips whose attention maps are logged)."""
    n = min(n, len(split.labels))
    if n == 0:
        return None
    dataset = MMSADataset(split, norm, text_source)
    return collate_mmsa([dataset[i] for i in range(n)])


def log_epoch(writer: SummaryWriter, epoch: int, step: int, metrics: dict, optimizer, throughput: float) -> None:
    for key, value in metrics.items():
        if value is not None:
            writer.add_scalar(f"valid/{key}", value, epoch)
    for group in optimizer.param_groups:
        writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], epoch)
    writer.add_scalar("speed/train_clips_per_s", throughput, epoch)
    writer.add_scalar("train/step", step, epoch)


@torch.inference_mode()
def log_attention(writer: SummaryWriter, model, batch: MMSABatch | None, epoch: int) -> None:
    """LGT attention maps and soft-mapping modality weights on the fixed validation clips."""
    if batch is None:
        return
    was_training = model.training
    model.eval()
    out = model(batch, return_attention=True)
    model.train(was_training)
    if out.modality_weights is not None:
        weights = out.modality_weights.reshape(-1, out.modality_weights.shape[-1]).mean(0)
        for name, w in zip(model.modalities, weights.tolist()):
            writer.add_scalar(f"soft_mapping/weight_{name}", w, epoch)
    for modality, attn in (out.attention or {}).items():
        # LGT queries come from text; without it (or without text) each modality attends to itself
        query_mask = batch.text_mask if model.lgt.guided else getattr(batch, f"{modality}_mask")
        key_mask = getattr(batch, f"{modality}_mask")
        stride = 1 if modality == "text" else model.cfg.frame_stride  # audio/vision keys are pooled frames
        for k in range(attn.shape[0]):
            queries = int(query_mask[k].sum())
            if not model.lgt.guided:
                queries = -(-queries // stride)
            image = attn[k].mean(0)[:queries, : -(-int(key_mask[k].sum()) // stride)]
            image = image / image.max().clamp_min(1e-12)
            writer.add_image(f"attention/{modality}/clip{k}", image.unsqueeze(0), epoch)


def log_slgm(writer: SummaryWriter, slgm, epoch: int, truth_correlations: dict) -> None:
    for key, value in slgm.label_stats().items():
        writer.add_scalar(f"slgm/{key}", value, epoch)
    for task in slgm.unimodal_tasks:
        writer.add_histogram(f"slgm/{task}/labels", slgm.label_map(task), epoch)
    for key, value in truth_correlations.items():
        if value is not None:
            writer.add_scalar(f"slgm/{key}", value, epoch)


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, (int, float, str, bool)):
        out[prefix] = value
    elif isinstance(value, (list, tuple)):
        out[prefix] = ",".join(map(str, value))


def log_hparams(writer: SummaryWriter, cfg, test_metrics: dict) -> None:
    hparams: dict = {}
    _flatten("", {"model": to_dict(cfg.model), "train": to_dict(cfg.train)}, hparams)
    metrics = {f"hparam/test_{k}": v for k, v in test_metrics.items() if v is not None}
    writer.add_hparams(hparams, metrics, run_name="hparams")
