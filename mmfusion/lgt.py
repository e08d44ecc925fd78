"""Linguistic-guided Transformer (LGT), the source paper's eq. 1-7 (docs/references.md).

Per layer, text is the primary modality:

* text:   ``F_l = MHA(Q_l, K_l, V_l)`` (self-attention, eq. 1-3);
* audio:  ``F_a = MHA(Q_l, K_a, V_a)`` and vision ``F_v = MHA(Q_l, K_v, V_v)`` (eq. 6-7): the
  query is the text stream entering the layer; keys/values are that modality's encoded
  sequence (its own length, padded frames masked) at every layer, so every layer's attention
  map is text positions × audio (vision) frames.

Every sub-layer is ``LayerNorm(x + Sublayer(x))`` (eq. 5) followed by the ReLU feed-forward
``FFN(x) = ReLU(x W1 + b1) W2 + b2`` (eq. 4) under the same residual LayerNorm. For text, ``x``
is the text stream. For a guided branch, ``x`` is that branch's own stream, which starts as the
text stream (so in layer 1 the residual is the query, as in a Transformer decoder) and then
accumulates one text-guided update per layer. Hence audio/vision outputs have the text length
Lt and the text mask.

``guided=False`` (the "no LGT" ablation, or a model without text) replaces all of this with plain
self-attention per modality: each stream keeps its own length and mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """``Concat(head_1..head_h) W^O`` with ``head_i = softmax(Q W^Q (K W^K)^T / sqrt(d_k)) V W^V`` (eq. 1-3)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, L, d_k)

    def forward(
        self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (B, Lq, d), key_value (B, Lk, d), key_mask (B, Lk) True = real → (B, Lq, d), weights (B, h, Lq, Lk)."""
        b, lq, d = query.shape
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key_value)), self._heads(self.v_proj(key_value))
        key_mask = key_mask.bool().clone()
        key_mask[:, 0] |= ~key_mask.any(1)  # a clip with no real key attends to its first (padded) key, not to nothing
        allowed = key_mask[:, None, None, :]
        p_drop = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            out = F.dropout(weights, p_drop, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p_drop)
        out = out.transpose(1, 2).reshape(b, lq, d)
        return self.out_proj(out), weights


class AttentionBlock(nn.Module):
    """``x' = LN(x + MHA(q, kv))``, ``out = LN(x' + FFN(x'))`` (eq. 4-5); ``x`` is ``residual`` (default: the query)."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.attn = MultiHeadAttention(d_model=d_model, n_heads=n_heads, dropout=dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor,
        key_mask: torch.Tensor,
        residual: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(query, key_value, key_mask, need_weights)
        x = self.norm1((query if residual is None else residual) + self.dropout(attended))
        return self.norm2(x + self.dropout(self.ffn(x))), weights


class LGTLayer(nn.Module):
    """One LGT layer over the streams of ``modalities``.

    Blocks are named ``self_<modality>`` (self-attention) or ``cross_<modality>`` (text-guided
    cross-attention), so the ablation shows in the parameter names.
    """

    def __init__(self, modalities: list[str], d_model: int, n_heads: int, ffn_dim: int, dropout: float, guided: bool):
        super().__init__()
        if guided and "text" not in modalities:
            raise ValueError(f"LGT guided=True needs the text modality, got modalities={modalities}")
        self.modalities = list(modalities)
        self.guided = guided
        self.blocks = nn.ModuleDict(
            {self.block_name(m): AttentionBlock(d_model=d_model, n_heads=n_heads, ffn_dim=ffn_dim, dropout=dropout)
             for m in self.modalities}
        )

    def block_name(self, modality: str) -> str:
        return f"cross_{modality}" if self.guided and modality != "text" else f"self_{modality}"

    def forward(
        self,
        streams: dict[str, torch.Tensor],
        sources: dict[str, torch.Tensor],
        source_masks: dict[str, torch.Tensor],
        need_weights: bool = False,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``streams``: each branch's current state; ``sources``/``source_masks``: the encoded
        sequences (keys/values of the guided branches). Returns new streams and attention weights."""
        out, weights = {}, {}
        for m in self.modalities:
            block = self.blocks[self.block_name(m)]
            if self.guided and m != "text":
                out[m], w = block(streams["text"], sources[m], source_masks[m], streams[m], need_weights)
            elif self.guided:
                out[m], w = block(streams["text"], streams["text"], source_masks["text"], None, need_weights)
            else:
                out[m], w = block(streams[m], streams[m], source_masks[m], None, need_weights)
            if w is not None:
                weights[m] = w
        return out, weights


class LGT(nn.Module):
    """A stack of ``n_layers`` LGT layers; returns the streams, their masks and the last layer's attention."""

    def __init__(
        self, modalities: list[str], d_model: int, n_heads: int, ffn_dim: int, dropout: float, n_layers: int, guided: bool
    ):
        super().__init__()
        self.guided = guided
        self.layers = nn.ModuleList(
            LGTLayer(modalities=modalities, d_model=d_model, n_heads=n_heads, ffn_dim=ffn_dim, dropout=dropout, guided=guided)
            for _ in range(n_layers)
        )

    def forward(
        self, sequences: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], need_weights: bool = False
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``sequences``: encoded modality → (B, L_m, d); returns (streams, stream masks, last-layer attention).

        Guided: every stream has the text length and mask; the audio/vision branches start as the text stream.
        """
        if self.guided:
            streams = {m: sequences["text"] for m in sequences}
            out_masks = {m: masks["text"] for m in sequences}
        else:
            streams, out_masks = dict(sequences), dict(masks)
        weights: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            streams, weights = layer(streams, sequences, masks, need_weights and i == len(self.layers) - 1)
        return streams, out_masks, weights
