"""Unfolded Fusion Function (UFF), the source paper's eq. 14-15 (docs/references.md; TFN, LMF), and the concatenation baseline.

Each unimodal vector u_m (B, in_dim) is projected to ``fusion_dim`` and extended with a constant
1: ``z_m = [W_m u_m + b_m, 1]``. The 3-fold outer product ``z_t ⊗ z_a ⊗ z_v`` (eq. 15) then holds
the unimodal, bimodal and trimodal interaction terms (Zadeh et al. 2017, TFN).

* ``FullTensorFusion`` ("uff_full"): materialises the flattened product ((f+1)^n values) and
  maps it linearly to ``out_dim``. Memory/parameters grow as (f+1)^n * out_dim: keep f small.
* ``LowRankFusion`` ("uff_lowrank"): LMF (Liu et al. ACL 2018). The weight of the full version
  is constrained to rank r, ``W = sum_r w_r A^(1)_r ⊗ A^(2)_r ⊗ A^(3)_r`` with factors
  ``A^(m)_r`` of shape (f+1, out_dim), so ``W·(z_1⊗z_2⊗z_3) = sum_r w_r prod_m (z_m A^(m)_r)``
  without ever building the product.
* ``ConcatFusion`` ("concat", ablation): ``W [z_t; z_a; z_v]`` (no interaction terms).

All take a list of n >= 1 vectors, so single-modality models use the same code.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

FusionKind = Literal["uff_lowrank", "uff_full", "concat"]


class _Projections(nn.Module):
    """Per-modality linear maps to ``fusion_dim``."""

    def __init__(self, n_modalities: int, in_dim: int, fusion_dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(in_dim, fusion_dim) for _ in range(n_modalities))

    def forward(self, vectors: list[torch.Tensor], append_one: bool) -> list[torch.Tensor]:
        if len(vectors) != len(self.proj):
            raise ValueError(f"fusion expects {len(self.proj)} modality vectors, got {len(vectors)}")
        out = [p(v) for p, v in zip(self.proj, vectors)]
        if append_one:
            out = [torch.cat([z, torch.ones_like(z[:, :1])], dim=-1) for z in out]
        return out


def outer_product(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Flattened outer product of (B, d_i) vectors → (B, prod d_i), row-major like ``einsum('bi,bj,bk->bijk')``."""
    product = vectors[0]
    for z in vectors[1:]:
        product = (product.unsqueeze(-1) * z.unsqueeze(1)).flatten(1)
    return product


class FullTensorFusion(nn.Module):
    """eq. 15 materialised: ``W flatten(z_1 ⊗ ... ⊗ z_n) + b``."""

    def __init__(self, n_modalities: int, in_dim: int, fusion_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.project = _Projections(n_modalities=n_modalities, in_dim=in_dim, fusion_dim=fusion_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear((fusion_dim + 1) ** n_modalities, out_dim)

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return self.out(self.dropout(outer_product(self.project(vectors, append_one=True))))


class LowRankFusion(nn.Module):
    """eq. 15 with a rank-r weight (LMF): ``sum_r w_r prod_m (z_m A^(m)_r) + b``."""

    def __init__(self, n_modalities: int, in_dim: int, fusion_dim: int, out_dim: int, rank: int, dropout: float = 0.0):
        super().__init__()
        self.project = _Projections(n_modalities=n_modalities, in_dim=in_dim, fusion_dim=fusion_dim)
        self.dropout = nn.Dropout(dropout)
        self.factors = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(rank, fusion_dim + 1, out_dim))) for _ in range(n_modalities)
        )
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / math.sqrt(rank)))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        product = None
        for z, factor in zip(self.project(vectors, append_one=True), self.factors):
            term = torch.einsum("bf,rfo->bro", self.dropout(z), factor)
            product = term if product is None else product * term
        return torch.einsum("r,bro->bo", self.rank_weights, product) + self.bias


class ConcatFusion(nn.Module):
    """Ablation: ``W [z_1; ...; z_n] + b`` (no outer product)."""

    def __init__(self, n_modalities: int, in_dim: int, fusion_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.project = _Projections(n_modalities=n_modalities, in_dim=in_dim, fusion_dim=fusion_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(n_modalities * fusion_dim, out_dim)

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return self.out(self.dropout(torch.cat(self.project(vectors, append_one=False), dim=-1)))


def build_fusion(
    *, kind: FusionKind, n_modalities: int, in_dim: int, fusion_dim: int, out_dim: int, rank: int, dropout: float
) -> nn.Module:
    """The fusion of the pooled unimodal vectors ``model.fusion`` names (keywords only)."""
    if kind == "uff_full":
        return FullTensorFusion(n_modalities=n_modalities, in_dim=in_dim, fusion_dim=fusion_dim, out_dim=out_dim, dropout=dropout)
    if kind == "uff_lowrank":
        return LowRankFusion(n_modalities=n_modalities, in_dim=in_dim, fusion_dim=fusion_dim, out_dim=out_dim, rank=rank, dropout=dropout)
    if kind == "concat":
        return ConcatFusion(n_modalities=n_modalities, in_dim=in_dim, fusion_dim=fusion_dim, out_dim=out_dim, dropout=dropout)
    raise ValueError(f"fusion={kind!r}: expected 'uff_lowrank', 'uff_full' or 'concat'")
