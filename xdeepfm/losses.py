"""The ranking model's training loss (the sentiment model's is ``mmfusion.losses.multitask_loss``).

``ranking_loss`` is binary cross-entropy on the click logits plus the model's own L2 terms
(``XDeepFMRanker.regularization_loss``: linear weights, embeddings and text/vector projections,
DNN and CIN weights, each with its ``model.l2_*`` factor), as in xDeepFM, Lian et al. KDD 2018
(docs/references.md).
"""

from __future__ import annotations

import torch
from torch import nn


def ranking_loss(logits: torch.Tensor, labels: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, bce)``: the objective to minimise and its BCE part alone (what the trainer reports).

    ``model`` is the ranker itself (not its DDP wrapper): it supplies ``regularization_loss()``.
    """
    bce = nn.functional.binary_cross_entropy_with_logits(logits, labels)
    return bce + model.regularization_loss(), bce
