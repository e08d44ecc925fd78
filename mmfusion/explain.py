"""Per-clip explanations of the sentiment model, read off one forward pass.

For each clip, :func:`explain_split` runs the model once (eval mode, ``return_attention=True``,
which changes no output) and reports

- ``outputs``: the head outputs M and, for multi-task models, T / A / V (the numbers ``predict``
  gives);
- ``shares``: the soft-mapping share of each modality, ``||s_m|| / sum_m' ||s_m'||`` (eq. 13, the
  per-sample weights the model logs; ``ModelOutput.modality_weights``). The "no SM" ablation has one
  learned weight per modality for every clip (``shares_kind: "weighted_average"``);
- per modality, where the model read:

  * ``stream weight`` w (over the positions of that modality's LGT stream): the soft-mapping slot
    attention p (eq. 9) averaged over the K slots, i.e. how much each position feeds ``s_m``; for
    the "no SM" ablation the masked mean, uniform over the real positions. With the text-guided
    LGT every stream has the text positions (the audio stream at word i is word i's query of the
    audio), so w over the audio / vision stream says which **words** the model used to read the
    audio / vision;
  * ``key weight`` r = w^T A (over the keys of the last LGT layer: pooled audio / vision frames,
    or text tokens for the text stream), A the attention of that layer averaged over heads. r is
    the attention mass that reaches ``s_m`` from each frame: it sums to 1 over the clip's real
    frames, and its high runs are the **time segments** reported (pooled position j covers frames
    ``[j * frame_stride, (j + 1) * frame_stride)``; seconds when a frame rate is given).

Words are decoded with the model's tokenizer, WordPiece continuation pieces (``##``) merged into
their word with the pieces' weights summed; special tokens ([CLS], [SEP], [PAD]) are left out of
the list (their weight is not redistributed, so listed weights sum to at most 1). Weights are
attention, which says where the model read, not why it decided; ``docs/explanations.md`` measures
on SynthMOSI how often the attention peak falls inside the segment that carries the generator's
audio / vision cue.

    python -m mmfusion.explain --checkpoint RUN --data PKL --split test \\
        [--out explanations.jsonl] [--report docs/explanations.md]

``--report`` needs a SynthMOSI pickle generated with ``--segments`` (the ``synth_segment_*`` keys).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pickle
import platform
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from mmcore.artifact import MANIFEST
from mmcore.distributed import select_device
from mmcore.files import write_text
from mmcore.hf import default_model_path, load_tokenizer
from mmcore.runtime import command_main
from mmfusion.data.batch import MMSABatch
from mmfusion.data.mmsa import SPLITS, MMSASplit, NormStats, load_mmsa, make_loader
from mmfusion.evaluate import check_data_matches, load_model
from mmfusion.export import load_model_artifact
from mmfusion.model import MultimodalSentimentModel

log = logging.getLogger(__name__)

STREAM_MODALITIES = ("audio", "vision")
SEGMENT_KEYS = {"audio": "synth_segment_audio", "vision": "synth_segment_vision"}
NOTES_MARKER = "<!-- notes -->"


@dataclass
class AttentionFlow:
    """One batch's attention read-out for one modality (tensors on the CPU, float32)."""

    stream_weight: torch.Tensor  # (B, Lq): w over the modality's LGT stream positions, sums to 1 over real ones
    stream_mask: torch.Tensor  # (B, Lq) bool
    stream_is_text: bool  # True when the stream positions are text tokens (guided LGT, or the text stream)
    key_weight: torch.Tensor | None  # (B, Lk): r = w^T A, sums to 1 over real keys; None without attention
    key_mask: torch.Tensor  # (B, Lk) bool
    frame_stride: int  # frames per key position (1 for text keys)


@dataclass
class BatchReadout:
    outputs: dict[str, torch.Tensor]  # task -> (B,)
    shares: torch.Tensor  # (B, n_modalities)
    shares_kind: str  # "soft_mapping" or "weighted_average"
    flows: dict[str, AttentionFlow]
    decisive: torch.Tensor | None = None  # (B, n_modalities): |M(x) - M(x, modality m uninformative)|


def occluded(batch: MMSABatch, modality: str) -> MMSABatch:
    """``batch`` with one modality's input made uninformative at its real positions: audio / vision
    frames and text features at 0 (the training mean after the normalisation), text token ids at the
    padding id 0 (attention mask kept); the masks, and so the lengths, unchanged."""
    if modality == "text":
        if batch.text_feats is not None:
            return dataclasses.replace(batch, text_feats=torch.zeros_like(batch.text_feats))
        return dataclasses.replace(batch, text_ids=torch.zeros_like(batch.text_ids))
    return dataclasses.replace(batch, **{modality: torch.zeros_like(getattr(batch, modality))})


def decisive_shares(decisive: torch.Tensor) -> torch.Tensor:
    """Each modality's share of the change in M when it alone is made uninformative (occlusion,
    Zeiler & Fergus 2014): d_m / sum_m' d_m', uniform when nothing moves M. Unlike the soft-mapping
    share, a modality whose input already carries nothing gets d_m = 0 (docs/explanations.md)."""
    total = decisive.sum(1, keepdim=True)
    uniform = torch.full_like(decisive, 1.0 / decisive.shape[1])
    return torch.where(total > 0, decisive / total.clamp(min=1e-12), uniform)


def _pooled_mask(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """The mask of ``temporal_pool``'s windows: a window is real when it holds a real frame."""
    if stride == 1:
        return mask
    b, length = mask.shape
    windows = -(-length // stride)
    padded = torch.nn.functional.pad(mask, (0, windows * stride - length))
    return padded.view(b, windows, stride).any(-1)


@torch.inference_mode()
def read_batch(model: MultimodalSentimentModel, batch: MMSABatch) -> BatchReadout:
    """One forward pass of ``model`` (put in eval mode, and back) over ``batch``: outputs, shares, attention flow."""
    was_training = model.training
    model.eval()
    try:
        out = model(batch, return_attention=True)
    finally:
        model.train(was_training)
    guided, stride = model.lgt.guided, model.cfg.frame_stride
    masks = {"text": batch.text_mask.bool()}
    for m in STREAM_MODALITIES:
        masks[m] = _pooled_mask(getattr(batch, f"{m}_mask").bool(), stride)
    flows = {}
    for m in model.modalities:
        stream_mask = masks["text"] if guided else masks[m]
        if out.slot_attention is not None:
            w = out.slot_attention[m].float().mean(1)  # (B, Lq): mean over the K slots
        else:  # the weighted-average ablation pools by the masked mean
            w = stream_mask.float() / stream_mask.float().sum(1, keepdim=True).clamp(min=1.0)
        attention = (out.attention or {}).get(m)
        key_weight = None
        if attention is not None:
            key_weight = torch.einsum("bq,bhqk->bk", w, attention.float()) / attention.shape[1]
        flows[m] = AttentionFlow(stream_weight=w.cpu(), stream_mask=stream_mask.cpu(), stream_is_text=guided or m == "text",
                                 key_weight=None if key_weight is None else key_weight.cpu(), key_mask=masks[m].cpu(),
                                 frame_stride=1 if m == "text" else stride)
    weights = out.modality_weights.float()
    kind = "soft_mapping" if weights.ndim == 2 else "weighted_average"
    if weights.ndim == 1:
        weights = weights.expand(len(batch), -1)
    was_training = model.training
    model.eval()
    try:  # one more pass per modality: how far M moves when that modality says nothing
        decisive = torch.stack([(model(occluded(batch, m)).preds["M"] - out.preds["M"]).abs().float()
                                for m in model.modalities], dim=1)
    finally:
        model.train(was_training)
    return BatchReadout(outputs={t: v.float().cpu() for t, v in out.preds.items()}, shares=weights.cpu(),
                        shares_kind=kind, flows=flows, decisive=decisive.cpu())


# ------------------------------------------------------------------------------------------ words and segments


def merge_word_pieces(tokens: list[str], weights: np.ndarray, special: set[str]) -> list[dict]:
    """Words from WordPiece tokens: ``##`` pieces join the word before them, weights summed; special
    tokens are dropped. Returns ``[{"word", "weight", "position"}]`` (position: first token index) in text order."""
    words: list[dict] = []
    for i, (token, weight) in enumerate(zip(tokens, weights)):
        if token in special:
            continue
        if token.startswith("##") and words and words[-1]["_end"] == i:
            words[-1]["word"] += token[2:]
            words[-1]["weight"] += float(weight)
            words[-1]["_end"] = i + 1
        else:
            words.append({"word": token, "weight": float(weight), "position": i, "_end": i + 1})
    for word in words:
        del word["_end"]
    return words


def top_words(tokens: list[str], weights: np.ndarray, special: set[str], k: int) -> list[dict]:
    words = merge_word_pieces(tokens, weights, special)
    return sorted(words, key=lambda w: -w["weight"])[:k]


def segments(key_weight: np.ndarray, frame_stride: int, n_frames: int, k: int, rate: float | None = None) -> list[dict]:
    """The ``k`` heaviest runs of consecutive key positions whose weight is at least uniform (1 / positions).

    ``key_weight`` (P,) over the clip's real pooled positions; each run is reported as frames
    ``[start_frame, end_frame)`` (clipped to ``n_frames``), its attention ``weight`` (the run's sum)
    and, with a frame ``rate`` (frames per second), ``start_s`` / ``end_s``.
    """
    n = len(key_weight)
    if n == 0:
        return []
    above = key_weight >= 1.0 / n - 1e-12
    runs, start = [], None
    for j in range(n + 1):
        if j < n and above[j]:
            start = j if start is None else start
        elif start is not None:
            runs.append((start, j))
            start = None
    out = []
    for a, b in sorted(runs, key=lambda r: -key_weight[r[0]:r[1]].sum())[:k]:
        item = {"start_frame": a * frame_stride, "end_frame": min(b * frame_stride, n_frames),
                "weight": float(key_weight[a:b].sum())}
        if rate:
            item["start_s"], item["end_s"] = item["start_frame"] / rate, item["end_frame"] / rate
        out.append(item)
    return out


def peak(key_weight: np.ndarray, frame_stride: int, n_frames: int, rate: float | None = None) -> dict | None:
    """The heaviest key position as frames ``[start_frame, end_frame)`` with its weight."""
    if len(key_weight) == 0:
        return None
    j = int(np.argmax(key_weight))
    item = {"start_frame": j * frame_stride, "end_frame": min((j + 1) * frame_stride, n_frames),
            "weight": float(key_weight[j])}
    if rate:
        item["start_s"], item["end_s"] = item["start_frame"] / rate, item["end_frame"] / rate
    return item


# ------------------------------------------------------------------------------------------ explanations


@dataclass
class Explainer:
    """Turns batch read-outs into per-clip explanation dicts (JSON-ready)."""

    model: MultimodalSentimentModel
    tokenizer: object | None = None  # a Hugging Face tokenizer (decodes the token ids), or None: no words
    top_words: int = 5
    top_segments: int = 3
    rates: dict[str, float] | None = None  # frames per second per modality ("audio", "vision"), when known

    def __post_init__(self) -> None:
        self.special = set(getattr(self.tokenizer, "all_special_tokens", []) or [])

    def clip(self, readout: BatchReadout, k: int, split: MMSASplit, row: int) -> dict:
        tokens = None
        if self.tokenizer is not None and split.text_bert is not None:
            tokens = self.tokenizer.convert_ids_to_tokens([int(t) for t in split.text_bert[row, 0]])
        explanation = {
            "outputs": {t: float(v[k]) for t, v in readout.outputs.items()},
            "shares": {m: float(readout.shares[k, i]) for i, m in enumerate(self.model.modalities)},
            "shares_kind": readout.shares_kind,
        }
        if readout.decisive is not None:
            shares = decisive_shares(readout.decisive[k : k + 1])[0]
            explanation["decisive"] = {m: float(shares[i]) for i, m in enumerate(self.model.modalities)}
            explanation["decisive_change"] = {m: float(readout.decisive[k, i]) for i, m in enumerate(self.model.modalities)}
        lengths = {"audio": int(split.audio_lengths[row]), "vision": int(split.vision_lengths[row])}
        for m, flow in readout.flows.items():
            entry: dict = {}
            real = flow.stream_mask[k]
            w = flow.stream_weight[k][real].numpy()
            if flow.stream_is_text and tokens is not None:
                entry["words"] = top_words(tokens[: len(w)], w, self.special, self.top_words)
            if m != "text" and flow.key_weight is not None:
                r = flow.key_weight[k][flow.key_mask[k]].numpy()
                rate = (self.rates or {}).get(m)
                entry["segments"] = segments(r, flow.frame_stride, lengths[m], self.top_segments, rate)
                entry["peak"] = peak(r, flow.frame_stride, lengths[m], rate)
                entry["frames"] = lengths[m]
            explanation[m] = entry
        return explanation


def explain_split(model: MultimodalSentimentModel, split: MMSASplit, norm: NormStats | None, explainer: Explainer,
                  batch_size: int = 64) -> list[dict]:
    """One explanation per clip of ``split``, in order: ``{"id", **Explainer.clip}``."""
    device = next(model.parameters()).device
    result = []
    for batch in make_loader(split, norm, batch_size=batch_size, shuffle=False, text_source=model.cfg.text.source):
        readout = read_batch(model, batch.to(device))
        for k, row in enumerate(batch.index.tolist()):
            result.append({"id": str(split.ids[row]), **explainer.clip(readout, k, split, row)})
    return result


def text_tokenizer(model: MultimodalSentimentModel):
    """The model's tokenizer (its BERT-family checkpoint, default the bundled MiniLM), or None for a model without text."""
    if "text" not in model.modalities:
        return None
    return load_tokenizer(model.cfg.text.model_path or default_model_path())


def load(path: str | Path, device: str = "auto") -> tuple[MultimodalSentimentModel, NormStats | None, dict]:
    """A run directory, checkpoint file or exported artifact directory -> (model in eval mode, norm, meta)."""
    if (Path(path) / MANIFEST).is_file():
        model, norm, meta = load_model_artifact(path)
        return model.to(select_device(device)).eval(), norm, meta
    return load_model(path, device=device)


# ------------------------------------------------------------------------------------------ SynthMOSI check


def segment_hits(model: MultimodalSentimentModel, split: MMSASplit, norm: NormStats | None,
                 cue: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, dict[str, np.ndarray]]:
    """Per clip and modality (``audio``/``vision`` in ``cue``: (N, 2) ``[start, end)`` frames of the cue segment):

    - ``peak_in``: the centre frame of the heaviest pooled position lies in the segment;
    - ``peak_chance``: the share of the clip's pooled positions whose centre lies in it (what a
      peak drawn uniformly among the positions would hit);
    - ``mass_in``: the attention mass r on the segment (a position's weight split evenly over its frames);
    - ``mass_chance``: segment frames / clip frames (uniform attention).
    """
    device = next(model.parameters()).device
    out = {m: {key: np.zeros(len(split)) for key in ("peak_in", "peak_chance", "mass_in", "mass_chance")} for m in cue}
    for batch in make_loader(split, norm, batch_size=batch_size, shuffle=False, text_source=model.cfg.text.source):
        readout = read_batch(model, batch.to(device))
        for m in cue:
            flow = readout.flows.get(m)
            if flow is None or flow.key_weight is None:
                raise ValueError(f"the model has no LGT attention over {m} keys; nothing to check")
            for k, row in enumerate(batch.index.tolist()):
                n_frames = int(getattr(split, f"{m}_lengths")[row])
                start, end = (int(v) for v in cue[m][row])
                r = flow.key_weight[k][flow.key_mask[k]].numpy().astype(np.float64)
                s = flow.frame_stride
                lo = np.arange(len(r)) * s
                hi = np.minimum(lo + s, n_frames)
                centre = (lo + hi - 1) / 2.0
                inside = (centre >= start) & (centre < end)
                overlap = np.clip(np.minimum(hi, end) - np.maximum(lo, start), 0, None) / np.maximum(hi - lo, 1)
                j = int(np.argmax(r))
                out[m]["peak_in"][row] = float(inside[j])
                out[m]["peak_chance"][row] = float(inside.mean())
                out[m]["mass_in"][row] = float((r * overlap).sum())
                out[m]["mass_chance"][row] = (end - start) / max(n_frames, 1)
    return out


def uninformative(split: MMSASplit, modality: str, norm: NormStats | None, how: str) -> MMSASplit:
    """``split`` with one modality's input replaced: ``"zeros"`` (raw zeros) or ``"mean"`` (the training
    mean at every real position: zero after the normalisation, a constant carrying nothing about the clip)."""
    key = "text" if modality == "text" else modality
    array = getattr(split, key)
    if array is None:
        raise ValueError(f"split {split.name!r} has no {key!r} array to replace")
    if how == "zeros":
        replaced = np.zeros_like(array)
    elif how == "mean":
        lengths = split.text_lengths if key == "text" else getattr(split, f"{key}_lengths")
        mean = np.asarray(norm.mean[key], np.float32) if norm is not None and key in norm.mean else np.zeros(array.shape[-1])
        real = np.arange(array.shape[1])[None, :] < lengths[:, None]
        replaced = (np.broadcast_to(mean, array.shape) * real[:, :, None]).astype(array.dtype)
    else:
        raise ValueError(f"how={how!r}: expected 'zeros' or 'mean'")
    return dataclasses.replace(split, **{key: replaced})


def mean_shares(model: MultimodalSentimentModel, split: MMSASplit, norm: NormStats | None,
                batch_size: int = 64, kind: str = "soft_mapping") -> dict[str, float]:
    """The share of each modality averaged over the clips of ``split``: the soft-mapping share, or
    with ``kind="decisive"`` the occlusion share (``decisive_shares``)."""
    device = next(model.parameters()).device
    readouts = [read_batch(model, batch.to(device))
                for batch in make_loader(split, norm, batch_size=batch_size, shuffle=False, text_source=model.cfg.text.source)]
    shares = [r.shares if kind == "soft_mapping" else decisive_shares(r.decisive) for r in readouts]
    mean = torch.cat(shares).mean(0)
    return {m: float(mean[i]) for i, m in enumerate(model.modalities)}


def share_ablation(model: MultimodalSentimentModel, split: MMSASplit, norm: NormStats | None,
                   batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Mean share of each modality on the clips as they are and with that modality's input made
    uninformative (``uninformative``): ``{modality: {"as is", "zeros", "mean"}}``. A faithful share drops."""
    base = mean_shares(model, split, norm, batch_size)
    out = {}
    for m in model.modalities:
        if m == "text" and model.cfg.text.source != "features":
            continue  # token ids have no uninformative value to put in their place
        out[m] = {"as is": base[m], **{how: mean_shares(model, uninformative(split, m, norm, how), norm, batch_size)[m]
                                       for how in ("zeros", "mean")}}
    return out


def read_cue_segments(path: str | Path, split: str) -> dict[str, np.ndarray]:
    """``synth_segment_audio`` / ``synth_segment_vision`` of one split of a SynthMOSI pickle made with
    ``--segments`` (a trusted file: pickle runs code on load)."""
    with open(path, "rb") as handle:
        raw = pickle.load(handle)[split]
    missing = [key for key in SEGMENT_KEYS.values() if key not in raw]
    if missing:
        raise ValueError(f"{path}: split {split!r} has no {missing}; generate it with "
                         "python -m mmfusion.data.synthetic ... --segments")
    return {m: np.asarray(raw[key], dtype=np.int64) for m, key in SEGMENT_KEYS.items()}


def _summary(hits: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    out = {key: float(values[rows].mean()) if rows.any() else float("nan") for key, values in hits.items()}
    p = hits["peak_chance"][rows]  # a chance peak hits with probability p_i, independently per clip
    sd = float(np.sqrt((p * (1 - p)).sum())) / max(len(p), 1)
    out["peak_z"] = (out["peak_in"] - out["peak_chance"]) / sd if sd > 0 else float("nan")
    return out


def report_markdown(hits: dict[str, dict[str, np.ndarray]], split: MMSASplit, command: str, meta: dict,
                    data_path: str | Path, checkpoint: str | Path, notes: str = "",
                    ablation: dict[str, dict[str, float]] | None = None) -> str:
    """The report; ``notes`` (what followed the ``<!-- notes -->`` marker of the previous report) is kept at the end."""
    cfg = meta.get("config", {})
    train_cfg, model_cfg = cfg.get("train", {}), cfg.get("model", {})
    synth = (cfg.get("data") or {}).get("synthetic") or {}
    labels = split.unimodal_labels or {}
    lines = [
        "# Explanations of the sentiment model, checked on SynthMOSI",
        "",
        "## Does the attention peak fall on the cue?",
        "",
        "SynthMOSI puts each clip's audio and vision cue (a valence shift and more arousal) inside one",
        "expressive segment covering 25-50% of the clip (`mmfusion/data/synthetic.py`, `_segment_mask`);",
        "outside it the features carry no sentiment. A pickle generated with `--segments` stores that",
        "segment per clip (`synth_segment_audio` / `synth_segment_vision`, `[start, end)` frames). For every",
        f"clip of the `{split.name}` split, `mmfusion.explain` takes the attention flow r = w^T A into the",
        "modality's soft-mapping summary (w: the slot attention over the LGT stream, A: the last LGT layer's",
        "text-to-frame attention, heads averaged; see the module docstring) and checks",
        "",
        "- **peak in segment**: the centre frame of the heaviest pooled position lies in the segment; chance:",
        "  the share of the clip's pooled positions whose centre does (a peak drawn uniformly);",
        "- **mass in segment**: the attention mass r on the segment's frames; chance: segment length / clip",
        "  length (uniform attention).",
        "",
        "Clips whose hidden unimodal sentiment is 0 (`regression_labels_A/V`: a deadpan voice, a still face)",
        "have a segment with no cue in it; the rows *cue present* leave them out.",
        "",
        "z: (peak rate - chance) / its standard deviation under chance (clips independent, each hitting",
        "with its own chance probability); |z| > 2 is unlikely by chance alone.",
        "",
        "| modality | clips | peak in segment | chance | z | mass in segment | chance |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, task in (("audio", "A"), ("vision", "V")):
        if m not in hits:
            continue
        everything = np.ones(len(split), bool)
        cue = np.abs(labels[task]) > 0 if task in labels else None
        for name, rows in (("all", everything), ("cue present", cue)):
            if rows is None:
                continue
            s = _summary(hits[m], rows)
            lines.append(f"| {m} ({name}) | {int(rows.sum())} | {s['peak_in']:.3f} | {s['peak_chance']:.3f} | "
                         f"{s['peak_z']:.1f} | {s['mass_in']:.3f} | {s['mass_chance']:.3f} |")
    if ablation:
        lines += [
            "",
            "## Is the soft-mapping share faithful?",
            "",
            "The share of modality m is `||s_m|| / sum ||s_m'||` (eq. 13's summaries). Mean share over the clips",
            "as they are, and with that modality's input replaced by raw zeros or by the training mean at every",
            "real frame (zero after the normalisation: a constant that says nothing about the clip). A share that",
            "measured how much the model uses a modality would drop in both columns.",
            "",
            "| modality | share as is | inputs zeros | change | inputs training mean | change |",
            "|---|---|---|---|---|---|",
        ]
        for m, row in ablation.items():
            lines.append(f"| {m} | {row['as is']:.3f} | {row['zeros']:.3f} | {row['zeros'] - row['as is']:+.3f} | "
                         f"{row['mean']:.3f} | {row['mean'] - row['as is']:+.3f} |")
    lines += [
        "",
        f"- command: `{command}`",
        f"- checkpoint: `{checkpoint}` (best epoch {meta.get('epoch', 'n/a')}; model seed {train_cfg.get('seed', 'n/a')}, "
        f"frame_stride {model_cfg.get('frame_stride', 'n/a')}, use_lgt {model_cfg.get('use_lgt', True)}, "
        f"use_soft_mapping {model_cfg.get('use_soft_mapping', True)})",
        f"- data: `{data_path}`, split `{split.name}` ({len(split)} clips; SynthMOSI size {synth.get('size', 'n/a')}, "
        f"seed {synth.get('seed', 'n/a')} in the training config)",
        f"- machine: {platform.machine()} / {platform.processor() or platform.platform()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), Python {platform.python_version()}",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        NOTES_MARKER,
    ]
    return "\n".join(lines) + notes


# ------------------------------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a run directory (its best checkpoint), a checkpoint file, or an exported artifact directory")
    parser.add_argument("--data", required=True, type=Path, help="MMSA pickle of the clips")
    parser.add_argument("--split", default="test", choices=list(SPLITS), help="split to explain (default test)")
    parser.add_argument("--out", type=Path, help="write one explanation per clip to this .jsonl file")
    parser.add_argument("--report", type=Path,
                        help="write the SynthMOSI check (attention peak in the cue segment vs chance) to this markdown file")
    parser.add_argument("--top-words", type=int, default=5, help="words listed per modality (default 5)")
    parser.add_argument("--top-segments", type=int, default=3, help="time segments listed per modality (default 3)")
    parser.add_argument("--audio-rate", type=float, help="audio frames per second, to report seconds (extracted audio: 100)")
    parser.add_argument("--vision-rate", type=float, help="vision frames per second, to report seconds (the --fps of extraction)")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per forward pass (default 64)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.set_defaults(prog=parser.prog)


def command_words(args: argparse.Namespace) -> list[str]:
    """The options of this invocation, as the report records them."""
    words = ["--checkpoint", str(args.checkpoint), "--data", str(args.data), "--split", args.split]
    for flag, value in (("--out", args.out), ("--report", args.report), ("--audio-rate", args.audio_rate),
                        ("--vision-rate", args.vision_rate), ("--threads", args.threads)):
        if value is not None:
            words += [flag, str(value)]
    return words


def run(args: argparse.Namespace) -> int:
    for path, suffix in ((args.out, ".jsonl"), (args.report, ".md")):
        if path is not None and (path.suffix.lower() != suffix or path.is_dir()):
            raise ValueError(f"{path}: expected a {suffix} file")
    if args.out is None and args.report is None:
        raise ValueError("nothing to write: give --out FILE.jsonl and/or --report FILE.md")
    if args.threads:
        torch.set_num_threads(args.threads)
    cue = read_cue_segments(args.data, args.split) if args.report else None  # before any inference
    model, norm, meta = load(args.checkpoint)
    data = load_mmsa(args.data, vocab_size=model.text_vocab_size)
    check_data_matches(data, meta, model.cfg.text.source, args.data)
    split = data.splits[args.split]
    if args.out is not None:
        rates = {m: r for m, r in (("audio", args.audio_rate), ("vision", args.vision_rate)) if r}
        explainer = Explainer(model, text_tokenizer(model), args.top_words, args.top_segments, rates)
        explanations = explain_split(model, split, norm, explainer, args.batch_size)
        write_text(args.out, "".join(json.dumps({"split": args.split, **e}) + "\n" for e in explanations))
        log.info("wrote %s: %d explanations", args.out, len(explanations))
    if args.report is not None:
        hits = segment_hits(model, split, norm, {m: cue[m] for m in STREAM_MODALITIES if m in model.modalities},
                            args.batch_size)
        command = f"{args.prog} {shlex.join(command_words(args))}"
        old = args.report.read_text() if args.report.is_file() else ""
        notes = old.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in old else "\n"
        ablation = share_ablation(model, split, norm, args.batch_size)
        write_text(args.report, report_markdown(hits, split, command, meta, args.data, args.checkpoint, notes, ablation))
        log.info("wrote %s", args.report)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m mmfusion.explain", "Explain the sentiment model's outputs per clip (shares, words, segments).",
                        add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
