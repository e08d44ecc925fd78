"""Multi-task heads, the source paper's eq. 16-17 (hard parameter sharing; docs/references.md).

All tasks share the trunk (text/audio/vision encoders, LGT, soft mapping); each task then has
its own head ``y_s = W2 ReLU(W1 F_s + b1) + b2``. The M head reads the fused representation,
the T/A/V heads the unimodal representations. T/A/V exist for training only (SLGM labels).
"""

from __future__ import annotations

import torch
from torch import nn


class TaskHead(nn.Module):
    """``y = W2 ReLU(W1 F + b1) + b2`` (eq. 16-17) → (B,)."""

    def __init__(self, in_dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


class MultiTaskHeads(nn.Module):
    """One ``TaskHead`` per task ("M", "T", "A", "V"); ``forward`` maps features → predictions."""

    def __init__(self, in_dims: dict[str, int], hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.heads = nn.ModuleDict({task: TaskHead(in_dim=dim, hidden_dim=hidden_dim, dropout=dropout)
                                     for task, dim in in_dims.items()})

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {task: head(features[task]) for task, head in self.heads.items()}
