"""Soft Mapping (SM), the source paper's eq. 8-13 (docs/references.md), and the weighted-average replacement used by the ablation.

For one modality's LGT output ``M`` (B, L, d) with mask (B, L):

* eq. 8:  ``NewMatrix = W_m M`` — a linear map of every position to ``hidden_dim`` (> d);
* eq. 9:  ``p_i = softmax_j(v_i^T NewMatrix_j)`` for K learned query vectors ``v_i`` (padded
  positions masked out of the softmax);
* eq. 10: ``m_i = sum_j p_ij M_j`` — the K soft-attention summaries, in the original width d;
* eq. 11: ``s = W_s Stack(m_1..m_K)`` — the K summaries concatenated (K*d) and projected back
  to d (always a learned projection, also for K = 1);
* eq. 12: ``M' = LayerNorm(M + s)`` — the residual is applied to the *sequence*: ``s`` is
  broadcast over every position. The modality's pooled representation (the unimodal vector used
  by the T/A/V heads, SLGM and UFF) is the masked mean of ``M'`` over its real positions.

Across modalities (eq. 13) the vectors ``s_t, s_a, s_v`` are summed element-wise and normalised:
``h = LayerNorm(s_t + s_a + s_v)``; the prediction ``W_p h`` is made by the M head. For logging,
the per-modality weight is the share of ``||s_m||`` in ``sum_m ||s_m||`` (per sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, L, d) over the positions where ``mask`` (B, L) is True → (B, d)."""
    keep = mask.unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Maximum of ``x`` (B, L, d) over the positions where ``mask`` (B, L) is True → (B, d) (0 if none)."""
    filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    return torch.where(mask.any(dim=1, keepdim=True), filled, torch.zeros_like(filled))


@dataclass
class AggregateOutput:
    """What SM (or its ablation) hands on: the fused vector, the pooled unimodal vectors, weights."""

    fused: torch.Tensor  # (B, d): LayerNorm(s_t + s_a + s_v), or the weighted average
    pooled: dict[str, torch.Tensor]  # modality -> (B, d)
    weights: torch.Tensor  # (B, n_modalities) for SM, (n_modalities,) for the weighted average
    attention: dict[str, torch.Tensor] | None = None  # SM only, when asked: modality -> slot attention p (B, K, L)


class SoftMapping(nn.Module):
    """Eq. 8-12 for one modality: returns ``s`` (B, d), ``M'`` (B, L, d) and the slot attention (B, K, L)."""

    def __init__(self, d_model: int, hidden_dim: int, n_slots: int, dropout: float = 0.0):
        super().__init__()
        self.expand = nn.Linear(d_model, hidden_dim)  # W_m (eq. 8)
        self.queries = nn.Parameter(torch.randn(n_slots, hidden_dim) / math.sqrt(hidden_dim))  # v_i^p (eq. 9)
        self.stack = nn.Linear(n_slots * d_model, d_model)  # Stacking (eq. 11)
        self.norm = nn.LayerNorm(d_model)  # eq. 12
        self.dropout = nn.Dropout(dropout)

    def forward(self, m: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = mask.bool().clone()
        mask[:, 0] |= ~mask.any(1)  # an empty clip attends to its first position, never to nothing
        scores = torch.einsum("blh,kh->bkl", self.expand(m), self.queries)
        p = scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(-1)  # (B, K, L)
        slots = p @ m  # (B, K, d): m_i = sum_j p_ij M_j
        s = self.stack(self.dropout(slots.flatten(1)))  # (B, d)
        sequence = self.norm(m + s.unsqueeze(1))
        return s, sequence, p


class SoftMappingFusion(nn.Module):
    """SM over every modality, then ``h = LayerNorm(sum_m s_m)`` (eq. 13)."""

    def __init__(self, modalities: list[str], d_model: int, hidden_dim: int, n_slots: int, dropout: float = 0.0):
        super().__init__()
        self.modalities = list(modalities)
        self.maps = nn.ModuleDict({m: SoftMapping(d_model=d_model, hidden_dim=hidden_dim, n_slots=n_slots, dropout=dropout)
                                   for m in self.modalities})
        self.norm = nn.LayerNorm(d_model)

    def forward(self, streams: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                need_weights: bool = False) -> AggregateOutput:
        """``need_weights`` also returns each modality's slot attention p (eq. 9); the outputs are the same."""
        s_all, pooled, attention = [], {}, {}
        for m in self.modalities:
            s, sequence, p = self.maps[m](streams[m], masks[m])
            s_all.append(s)
            pooled[m] = masked_mean(sequence, masks[m])
            attention[m] = p.detach()
        s_stack = torch.stack(s_all, 1)  # (B, n, d)
        norms = s_stack.detach().norm(dim=-1)
        weights = norms / norms.sum(1, keepdim=True).clamp(min=1e-12)
        return AggregateOutput(fused=self.norm(s_stack.sum(1)), pooled=pooled, weights=weights,
                               attention=attention if need_weights else None)


class WeightedAverage(nn.Module):
    """The "no SM" ablation: each modality pooled by its masked mean, fused by learned softmax weights."""

    def __init__(self, modalities: list[str]):
        super().__init__()
        self.modalities = list(modalities)
        self.logits = nn.Parameter(torch.zeros(len(self.modalities)))

    def forward(self, streams: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                need_weights: bool = False) -> AggregateOutput:
        """``need_weights`` is accepted for SM's interface; the masked mean weights positions uniformly (no attention)."""
        pooled = {m: masked_mean(streams[m], masks[m]) for m in self.modalities}
        weights = self.logits.softmax(0)
        fused = torch.einsum("n,bnd->bd", weights, torch.stack([pooled[m] for m in self.modalities], 1))
        return AggregateOutput(fused=fused, pooled=pooled, weights=weights)
