"""What a sentiment run writes to TensorBoard, beyond the per-step losses the loop logs.

Tags (``RUN_CARD`` is the same list as a text card in the run, tab TEXT, tag ``about/tags``):
``valid/<metric>`` and ``train_epoch/loss`` (the mean training loss of the epoch) on the epoch axis,
``train/loss*`` per optimizer step, ``lr/<group>``, ``speed/train_clips_per_s``,
``soft_mapping/weight_<modality>`` (one chart of the three in CUSTOM SCALARS, and the figure
``soft_mapping/shares`` over the epochs so far), ``attention/<modality>/clip<k>`` (images: LGT
last-layer attention, heads averaged, text positions down, attended positions across) and
``attention_map/<modality>/clip<k>`` (the same as a figure: token labels, frame axis, colour bar),
``slgm/<T|A|V>/{mean_abs_diff,sign_agreement}``, ``slgm/<T|A|V>/labels`` (histograms),
``slgm/<T|A|V>/corr_*`` when the data carries the hidden unimodal truth, and an hparams entry with
the final test metrics. Figures are drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # files only, never a window; before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from mmcore.config import to_dict  # noqa: E402
from mmcore.hf import default_model_path, load_tokenizer  # noqa: E402
from mmfusion.data.batch import MMSABatch  # noqa: E402
from mmfusion.data.mmsa import MMSADataset, MMSASplit, NormStats, collate_mmsa  # noqa: E402

RUN_CARD = """**What the tags of this sentiment run mean**

| tag | what it is |
|---|---|
| `train/loss`, `train/loss_<M,T,A,V>` | the multi-task loss and its parts, per optimizer step (x axis: step) |
| `train_epoch/loss`, `train_epoch/loss_<M,T,A,V>` | the means over the epoch (x axis: epoch, like every chart below); `train_epoch/loss_M` is the train MAE of the M head, comparable to `valid/MAE` (one chart of the two in CUSTOM SCALARS) |
| `valid/<metric>` | MMSA metrics of the M head on the valid split after each epoch; early stopping reads `valid/{early_stop_key}` |
| `lr/<group>` | learning rate per parameter group (`text_*`: the BERT-family encoder, `other_*`: the rest) |
| `speed/train_clips_per_s` | training throughput of the epoch, over all ranks |
| `soft_mapping/weight_<modality>` | mean share `‖s_m‖ / Σ‖s_m'‖` of each modality's soft-mapping summary on {clips} fixed valid clips; the figure `soft_mapping/shares` overlays the three over the epochs. A size, not a measured importance (docs/explanations.md) |
| `attention/<modality>/clip<k>`, `attention_map/<modality>/clip<k>` | last LGT layer's attention of clip k, heads averaged: text tokens down, attended frames (audio, vision) or tokens (text) across |
| `slgm/<T,A,V>/mean_abs_diff`, `sign_agreement` | SLGM's generated unimodal labels against the multimodal label: mean of abs(y_s − y_m) and share of equal signs |
| `slgm/<T,A,V>/corr_generated` | Pearson correlation of the generated labels with the data's hidden unimodal labels (SynthMOSI's `regression_labels_T/A/V`) |
| `slgm/<T,A,V>/corr_copied_M` | the same for the multimodal label copied unchanged: what a model without SLGM would train its T/A/V heads on. SLGM helps where `corr_generated` is above it |
| `slgm/<T,A,V>/labels` | histogram of the generated labels |

The unimodal labels equal the multimodal label until epoch `train.slgm_start_epoch` = {slgm_start}: SLGM needs
one pass of representations to place the class centres (eq. 18-22), so before it the T/A/V losses train against
copies of the M label and `mean_abs_diff` is 0.
"""


@dataclass
class FixedClips:
    """The validation clips whose attention and shares are logged every epoch, with their token labels."""

    batch: MMSABatch
    tokens: list[list[str]] | None = None  # per clip, the decoded text tokens (None: positions are numbered)
    shares: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # modality -> [(epoch, share)]


def fixed_batch(split: MMSASplit, norm: NormStats | None, n: int, text_source: str | None = None) -> MMSABatch | None:
    """The first ``n`` clips of a split, as one batch (the clips whose attention maps are logged)."""
    n = min(n, len(split.labels))
    if n == 0:
        return None
    dataset = MMSADataset(split, norm, text_source)
    return collate_mmsa([dataset[i] for i in range(n)])


def fixed_clips(split: MMSASplit, norm: NormStats | None, n: int, text_source: str | None = None,
                tokenizer_path: str | None = None, text: bool = True) -> FixedClips | None:
    """``fixed_batch`` plus each clip's tokens, decoded with the tokenizer at ``tokenizer_path`` (default the
    bundled MiniLM) when the model reads ``text`` and the split has token ids."""
    batch = fixed_batch(split, norm, n, text_source)
    if batch is None:
        return None
    tokens = None
    if text and split.text_bert is not None:
        tokenizer = load_tokenizer(tokenizer_path or default_model_path())
        tokens = [tokenizer.convert_ids_to_tokens([int(t) for t in split.text_bert[i, 0]]) for i in range(len(batch))]
    return FixedClips(batch=batch, tokens=tokens)


def attention_figure(weights: np.ndarray, query_labels: list[str], key_name: str, frame_stride: int = 1,
                     key_labels: list[str] | None = None, title: str = ""):
    """A heat map of ``weights`` (Lq, Lk): query tokens down (labelled), keys across (tokens, or frames of
    ``frame_stride`` each, labelled by their first frame), with a colour bar. Returns the matplotlib figure."""
    lq, lk = weights.shape
    fig, ax = plt.subplots(figsize=(min(3 + 0.18 * lk, 14), min(1.5 + 0.2 * lq, 12)), dpi=80)
    image = ax.imshow(weights, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(lq))
    ax.set_yticklabels(query_labels, fontsize=7)
    if key_labels is not None:
        ax.set_xticks(range(lk))
        ax.set_xticklabels(key_labels, fontsize=7, rotation=90)
        ax.set_xlabel(key_name)
    else:
        step = max(1, lk // 12)
        ax.set_xticks(range(0, lk, step))
        ax.set_xticklabels([str(j * frame_stride) for j in range(0, lk, step)], fontsize=7)
        ax.set_xlabel(f"{key_name} frame (each column {frame_stride} frame{'s' if frame_stride > 1 else ''})")
    ax.set_ylabel("text token (query)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="attention weight")
    fig.tight_layout()
    return fig


def shares_figure(history: dict[str, list[tuple[int, float]]]):
    """One chart: each modality's soft-mapping share over the epochs."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    for modality, points in history.items():
        epochs, values = zip(*points)
        ax.plot(epochs, values, marker="o", label=modality)
    ax.set_xlabel("epoch")
    ax.set_ylabel("share ‖s_m‖ / Σ‖s‖")
    ax.set_title("soft-mapping share per modality (fixed valid clips)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def log_run_card(writer: SummaryWriter, cfg, modalities: list[str]) -> None:
    """The text card that explains this run's tags, and the custom-scalars chart of the three shares."""
    writer.add_text("about/tags", RUN_CARD.format(early_stop_key=cfg.train.early_stop_key, clips=cfg.train.attention_clips,
                                                  slgm_start=cfg.train.slgm_start_epoch), 0)
    layout = {"soft mapping": {"share per modality": ["Multiline", [f"soft_mapping/weight_{m}" for m in modalities]]},
              "train vs valid": {"M head MAE per epoch": ["Multiline", ["train_epoch/loss_M", "valid/MAE"]]}}
    writer.add_custom_scalars(layout)


def log_epoch(writer: SummaryWriter, epoch: int, step: int, metrics: dict, optimizer, throughput: float) -> None:
    for key, value in metrics.items():
        if value is not None:
            writer.add_scalar(f"valid/{key}", value, epoch)
    for group in optimizer.param_groups:
        writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], epoch)
    writer.add_scalar("speed/train_clips_per_s", throughput, epoch)
    writer.add_scalar("train/step", step, epoch)


@torch.inference_mode()
def log_attention(writer: SummaryWriter, model, clips: FixedClips | MMSABatch | None, epoch: int) -> None:
    """LGT attention maps (images and labelled figures) and soft-mapping modality weights on the fixed validation clips."""
    if clips is None:
        return
    if isinstance(clips, MMSABatch):
        clips = FixedClips(batch=clips)
    batch = clips.batch
    was_training = model.training
    model.eval()
    out = model(batch, return_attention=True)
    model.train(was_training)
    if out.modality_weights is not None:
        weights = out.modality_weights.reshape(-1, out.modality_weights.shape[-1]).mean(0)
        for name, w in zip(model.modalities, weights.tolist()):
            writer.add_scalar(f"soft_mapping/weight_{name}", w, epoch)
            clips.shares.setdefault(name, []).append((epoch, w))
        figure = shares_figure(clips.shares)
        writer.add_figure("soft_mapping/shares", figure, epoch, close=True)
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
            writer.add_image(f"attention/{modality}/clip{k}", (image / image.max().clamp_min(1e-12)).unsqueeze(0), epoch)
            text_queries = model.lgt.guided or modality == "text"
            tokens = clips.tokens[k] if clips.tokens is not None else None
            labels = tokens[:queries] if tokens is not None and text_queries else [str(i) for i in range(queries)]
            key_labels = labels if modality == "text" else None
            figure = attention_figure(image.float().cpu().numpy(), labels, modality, stride, key_labels,
                                      title=f"{modality}: clip {batch.ids[k]}, epoch {epoch}")
            writer.add_figure(f"attention_map/{modality}/clip{k}", figure, epoch, close=True)


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
