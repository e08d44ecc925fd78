"""The batch every mmfusion model consumes: padded per batch, with boolean masks (True = real)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

MODALITIES = ("text", "audio", "vision")
TASKS = ("M", "T", "A", "V")


@dataclass
class MMSABatch:
    """One padded batch of clips.

    Text comes either as token ids (``text_ids``/``text_segment``, from ``text_bert``) or as
    precomputed features (``text_feats``); exactly one of the two is set. Sequence tensors are
    padded to the longest clip of the batch; masks are ``True`` on real positions.
    """

    index: torch.Tensor  # (B,) long: row of each clip within its split (SLGM keys on it)
    ids: list[str]
    text_mask: torch.Tensor  # (B, Lt) bool
    audio: torch.Tensor  # (B, La, Da) float
    audio_mask: torch.Tensor  # (B, La) bool
    vision: torch.Tensor  # (B, Lv, Dv) float
    vision_mask: torch.Tensor  # (B, Lv) bool
    label: torch.Tensor  # (B,) float in [-3, 3]: the multimodal label
    text_ids: torch.Tensor | None = None  # (B, Lt) long
    text_segment: torch.Tensor | None = None  # (B, Lt) long
    text_feats: torch.Tensor | None = None  # (B, Lt, Dt) float
    unimodal_labels: dict[str, torch.Tensor] | None = None  # {"T"|"A"|"V": (B,)} when the data has them

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str) -> "MMSABatch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(device, non_blocking=True)
            elif isinstance(value, dict):
                moved[f.name] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        return replace(self, **moved)
