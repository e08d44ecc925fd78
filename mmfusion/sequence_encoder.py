"""Audio / vision sequence encoder (the method's encoders, docs/references.md).

Projects a feature sequence (B, L, D) to ``d_model`` and encodes it with a 1-D convolution stack,
a (bidirectional) LSTM or a Transformer encoder. Masks come from the true lengths (True = real
frame, right padding). Padding never changes the output at real positions:

* conv: padded frames are zeroed before every convolution, which is exactly what the
  convolution's own zero padding sees past the end of a shorter tensor; with several
  ``dilations`` (multi-scale) each layer averages parallel convolutions of those dilations (kernel
  k, dilation r: a receptive field of r (k - 1) + 1 frames), so one layer sees both a short
  segment and a slow change over the clip;
* LSTM: the sequence is packed by its lengths;
* Transformer: padded keys are masked out (``src_key_padding_mask``).

Padded output positions are always zero.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

EncoderKind = Literal["conv", "lstm", "transformer"]


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (length, dim) sinusoidal position table of Vaswani et al. (2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype)


class SequenceEncoder(nn.Module):
    """Feature sequence (B, L, in_dim) + mask (B, L) → (B, L, d_model), zero on padding."""

    def __init__(
        self,
        in_dim: int,
        d_model: int,
        kind: EncoderKind = "conv",
        n_layers: int = 1,
        kernel_size: int = 5,
        n_heads: int = 4,
        ffn_dim: int = 128,
        dropout: float = 0.1,
        dilations: tuple[int, ...] = (1,),
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel={kernel_size}: must be odd so the output keeps the input length")
        if not dilations or any(r < 1 for r in dilations):
            raise ValueError(f"conv_dilations={list(dilations)}: expected positive integers")
        self.kind = kind
        self.proj = nn.Linear(in_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        if kind == "conv" and tuple(dilations) == (1,):  # one scale: the encoder of before (same weights' names)
            self.convs = nn.ModuleList(
                nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2) for _ in range(n_layers)
            )
            self.norm = nn.LayerNorm(d_model)
        elif kind == "conv":  # multi-scale: per layer, parallel dilated convolutions, averaged
            self.scales = nn.ModuleList(
                nn.ModuleList(nn.Conv1d(d_model, d_model, kernel_size, padding=r * (kernel_size // 2), dilation=r)
                              for r in dilations)
                for _ in range(n_layers)
            )
            self.norm = nn.LayerNorm(d_model)
        elif kind == "lstm":
            bidirectional = d_model % 2 == 0
            self.lstm = nn.LSTM(
                d_model,
                d_model // 2 if bidirectional else d_model,
                num_layers=n_layers,
                batch_first=True,
                bidirectional=bidirectional,
                dropout=dropout if n_layers > 1 else 0.0,
            )
        elif kind == "transformer":
            layer = nn.TransformerEncoderLayer(d_model=d_model, nhead=n_heads, dim_feedforward=ffn_dim, dropout=dropout,
                                               batch_first=True)
            self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        else:
            raise ValueError(f"sequence encoder kind={kind!r}: expected 'conv', 'lstm' or 'transformer'")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        keep = mask.unsqueeze(-1).to(x.dtype)
        h = self.proj(x) * keep
        if self.kind == "conv" and hasattr(self, "convs"):
            for conv in self.convs:
                # residual conv block; re-zero padding so it cannot leak into the next layer
                h = (h + self.dropout(torch.relu(conv(h.transpose(1, 2)).transpose(1, 2)))) * keep
            h = self.norm(h)
        elif self.kind == "conv":
            for branches in self.scales:
                x_t = h.transpose(1, 2)  # (B, d, L)
                mixed = torch.stack([branch(x_t) for branch in branches]).mean(0).transpose(1, 2)  # (B, L, d)
                h = (h + self.dropout(torch.relu(mixed))) * keep
            h = self.norm(h)
        elif self.kind == "lstm":
            lengths = mask.sum(1).clamp(min=1).cpu()
            packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            h, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        else:
            h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device, h.dtype)
            key_mask = mask.clone()
            key_mask[:, 0] |= ~mask.any(1)  # an empty clip attends to its first (zero) frame, never to nothing
            h = self.transformer(self.dropout(h), src_key_padding_mask=~key_mask)
        return h * keep


def temporal_pool(h: torch.Tensor, mask: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average over non-overlapping windows of ``stride`` frames: (B, L, d) -> (B, ceil(L/stride), d).

    Only real frames enter a window's mean; a window is real when it holds at least one real frame.
    Appending padding adds only all-padding windows, so it cannot change the real windows.
    """
    if stride == 1:
        return h, mask
    batch, length, dim = h.shape
    windows = -(-length // stride)
    pad = windows * stride - length
    keep = mask.to(h.dtype)
    h = nn.functional.pad(h * keep.unsqueeze(-1), (0, 0, 0, pad)).view(batch, windows, stride, dim)
    counts = nn.functional.pad(keep, (0, pad)).view(batch, windows, stride).sum(-1)
    pooled = h.sum(2) / counts.clamp(min=1).unsqueeze(-1)
    return pooled, counts > 0
