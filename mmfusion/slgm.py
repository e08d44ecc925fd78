"""Self-supervised unimodal Label Generation Module (SLGM), the source paper's eq. 18-22 and Self-MM (docs/references.md).

For every training sample the module keeps (as buffers, so they checkpoint and resume) its latest
fused ("M") and unimodal ("T", "A", "V") representations and its current label per task. The M
label is the dataset label and never changes; every unimodal label starts equal to it.

Per task, from the stored representations and that task's current labels:

* centres (eq. 19-20): ``C_p`` = mean representation of samples with label > 0, ``C_n`` of < 0
  (a zero vector when a class is empty);
* distances: ``d_p = ||F - C_p||_2``, ``d_n = ||F - C_n||_2`` and
  ``alpha = (d_n - d_p) / (d_p + eps)`` (eq. 21-22, ``distance="ratio"``, the paper's). Option
  ``distance="axis"``: ``alpha = 2 (F - (C_p + C_n)/2) . (C_p - C_n) / ||C_p - C_n||^2``, the signed
  position along the line through the two centres (+1 at C_p, -1 at C_n). The ratio is not
  monotone along that line (it peaks at C_p and falls again beyond it, so a sample more positive
  than the positive centre looks less positive); the axis position is linear in it. The model's
  default (``SentimentModelConfig.slgm_distance``) is ``"axis"``: on SynthMOSI its audio and vision labels
  track the hidden unimodal truth better than the copied multimodal label, the ratio's do not
  (``docs/results_synthmosi.md``);
* new unimodal label (the average of the ratio and difference relations of eq. 18):
  ``y_s = y_m + (alpha_s - alpha_m)(y_m + alpha_m) / (2 alpha_m)``, clipped to [-3, 3]
  (``alpha_m`` with ``|alpha_m| < eps`` is replaced by ``±eps`` to avoid dividing by zero);
* momentum across epochs: ``y_s <- (n-1)/(n+1) y_s_old + 2/(n+1) y_s_new`` at epoch n (n >= 1;
  n = 1 takes the new label as is). Self-MM starts updating labels at epoch 2, once one epoch has
  filled the feature maps.

Typical training step: forward → ``multitask_loss(out, slgm.labels(idx), slgm.loss_weights(idx))``
→ backward → ``slgm.update_features(idx, out.features)`` → ``slgm.update_labels(idx, epoch)``.

Under DistributedDataParallel each rank sees only its share of the batch, but the maps and the
class centres must be global: ``gather_batch`` collects every rank's (indices, features) first,
and every rank applies the same update to its copy, so all copies stay identical and equal to
what one process updating with the whole batch holds.
"""

from __future__ import annotations

import torch
from torch import nn

from mmcore.distributed import all_gather_cat

UNIMODAL_TASKS = ("T", "A", "V")
DISTANCES = ("ratio", "axis")  # the relative distances alpha can be (module docstring)


def class_centres(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C_p, C_n) of eq. 19-20: mean of ``features`` (N, D) over labels > 0 and < 0 (zeros for an empty class)."""
    pos, neg = (labels > 0).to(features.dtype), (labels < 0).to(features.dtype)
    c_pos = (pos.unsqueeze(1) * features).sum(0) / pos.sum().clamp(min=1.0)
    c_neg = (neg.unsqueeze(1) * features).sum(0) / neg.sum().clamp(min=1.0)
    return c_pos, c_neg


def alphas_from_centres(features: torch.Tensor, c_pos: torch.Tensor, c_neg: torch.Tensor, distance: str = "ratio",
                        eps: float = 1e-8) -> torch.Tensor:
    """``alpha`` (N,) of ``features`` (N, D) relative to the two centres: ``(d_n - d_p) / (d_p + eps)``
    (eq. 21-22), or with ``distance="axis"`` the position along the centre line (module docstring)."""
    if distance == "axis":
        axis = c_pos - c_neg
        return 2.0 * ((features - 0.5 * (c_pos + c_neg)) @ axis) / (axis @ axis + eps)
    d_p = (features - c_pos).norm(dim=-1)
    d_n = (features - c_neg).norm(dim=-1)
    return (d_n - d_p) / (d_p + eps)


class SLGM(nn.Module):
    """Feature and label maps over the N training samples, keyed by the sample's row index."""

    def __init__(
        self, n_samples: int, feature_dims: dict[str, int], train_labels: torch.Tensor, eps: float = 1e-8, clip: float = 3.0,
        distance: str = "ratio",
    ):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"SLGM distance={distance!r}: expected 'ratio' or 'axis'")
        self.distance = distance
        if "M" not in feature_dims:
            raise ValueError(f"SLGM feature_dims must include the multimodal task 'M', got {sorted(feature_dims)}")
        unknown = sorted(set(feature_dims) - {"M", *UNIMODAL_TASKS})
        if unknown:
            raise ValueError(f"SLGM feature_dims: unknown task {unknown[0]!r} (expected 'M', 'T', 'A', 'V')")
        train_labels = torch.as_tensor(train_labels, dtype=torch.float32).reshape(-1)
        if train_labels.shape[0] != n_samples:
            raise ValueError(f"SLGM: train_labels has {train_labels.shape[0]} values, expected n_samples={n_samples}")
        self.tasks = ["M", *[t for t in UNIMODAL_TASKS if t in feature_dims]]
        self.eps = eps
        self.clip = clip
        for task in self.tasks:
            self.register_buffer(f"features_{task}", torch.zeros(n_samples, feature_dims[task]))
            self.register_buffer(f"labels_{task}", train_labels.clone())

    @property
    def unimodal_tasks(self) -> list[str]:
        return [t for t in self.tasks if t != "M"]

    def feature_map(self, task: str) -> torch.Tensor:
        return getattr(self, f"features_{task}")

    def label_map(self, task: str) -> torch.Tensor:
        return getattr(self, f"labels_{task}")

    @torch.no_grad()
    def update_features(self, index: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        """Store the (detached) representations of the samples ``index`` for every SLGM task."""
        index = index.to(self.labels_M.device)
        for task in self.tasks:
            if task not in features:
                raise KeyError(f"SLGM.update_features: features has no task {task!r} (got {sorted(features)})")
            value = features[task].detach()
            expected = (index.shape[0], self.feature_map(task).shape[1])
            if tuple(value.shape) != expected:
                raise ValueError(f"SLGM.update_features: features[{task!r}] has shape {tuple(value.shape)}, expected {expected}")
            self.feature_map(task)[index] = value.to(self.feature_map(task))

    @torch.no_grad()
    def centres(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per task (positive centre, negative centre), each (D,), from that task's current labels (eq. 19-20)."""
        return {task: class_centres(self.feature_map(task), self.label_map(task)) for task in self.tasks}

    @torch.no_grad()
    def alphas(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``alpha`` per task for the samples ``index`` → (B,) each: ``(d_n - d_p) / (d_p + eps)``, or
        with ``distance="axis"`` the position along the centre line (see the module docstring)."""
        index = index.to(self.labels_M.device)
        return {task: alphas_from_centres(self.feature_map(task)[index], c_pos, c_neg, self.distance, self.eps)
                for task, (c_pos, c_neg) in self.centres().items()}

    @torch.no_grad()
    def update_labels(self, index: torch.Tensor, epoch: int) -> None:
        """Regenerate the unimodal labels of ``index`` from the stored features, with momentum at epoch ``epoch`` (>= 1)."""
        if epoch < 1:
            raise ValueError(f"SLGM.update_labels: epoch={epoch}, expected >= 1 (first epoch is 1)")
        index = index.to(self.labels_M.device)
        alphas = self.alphas(index)
        y_m = self.labels_M[index]
        a_m = alphas["M"]
        sign = torch.where(a_m < 0, -1.0, 1.0).to(a_m)
        a_m_safe = torch.where(a_m.abs() < self.eps, sign * self.eps, a_m)
        n = float(epoch)
        for task in self.unimodal_tasks:
            new = y_m + (alphas[task] - a_m) * (y_m + a_m) / (2.0 * a_m_safe)
            new = new.clamp(-self.clip, self.clip)
            old = self.label_map(task)[index]
            self.label_map(task)[index] = (n - 1.0) / (n + 1.0) * old + 2.0 / (n + 1.0) * new

    def labels(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Current label per task for the samples ``index`` → {task: (B,)}."""
        index = index.to(self.labels_M.device)
        return {task: self.label_map(task)[index].clone() for task in self.tasks}

    def loss_weights(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample loss weight: 1 for M, ``tanh(|y_s - y_m|)`` for the unimodal tasks."""
        index = index.to(self.labels_M.device)
        y_m = self.labels_M[index]
        weights = {"M": torch.ones_like(y_m)}
        for task in self.unimodal_tasks:
            weights[task] = torch.tanh((self.label_map(task)[index] - y_m).abs())
        return weights

    @torch.no_grad()
    def label_stats(self) -> dict[str, float]:
        """Per unimodal task: mean |y_s - y_m| and the share of samples whose sign agrees with y_m."""
        y_m = self.labels_M
        stats = {}
        for task in self.unimodal_tasks:
            y_s = self.label_map(task)
            stats[f"{task}/mean_abs_diff"] = float((y_s - y_m).abs().mean())
            stats[f"{task}/sign_agreement"] = float((torch.sign(y_s) == torch.sign(y_m)).float().mean())
        return stats


def gather_batch(index: torch.Tensor, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every rank's batch indices and (detached) features, concatenated in rank order (DDP; see the module docstring)."""
    tasks = sorted(features)
    widths = [features[t].shape[1] for t in tasks]
    stacked = all_gather_cat(torch.cat([features[t].detach().float() for t in tasks], dim=1))
    return all_gather_cat(index), dict(zip(tasks, stacked.split(widths, dim=1)))
