"""The sentiment model's training loss (the ranking model's is ``xdeepfm.losses.ranking_loss``).

``multitask_loss`` is the multi-task objective of the source paper (eq. 16-17, docs/references.md):
the L1 error of each task head (M, and the T/A/V heads against SLGM's generated labels), the
unimodal terms weighted per sample by ``tanh(|y_s - y_m|)`` as in Self-MM.
"""

from __future__ import annotations

import torch


def multitask_loss(
    output, labels: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over the predicted tasks of ``mean(w * |y_pred - y|)`` (Self-MM's L1); M is unweighted.

    ``output`` is a ``ModelOutput`` (uses ``output.preds``); tasks missing from ``weights`` get weight 1.
    """
    weights = weights or {}
    per_task: dict[str, torch.Tensor] = {}
    for task, pred in output.preds.items():
        if task not in labels:
            raise KeyError(f"multitask_loss: no label for task {task!r} (labels has {sorted(labels)})")
        target = labels[task].to(pred)
        err = (pred - target).abs()
        if task != "M" and task in weights:
            err = weights[task].to(pred) * err
        per_task[task] = err.mean()
    total = torch.stack(list(per_task.values())).sum()
    return total, per_task
