"""Text encoder (the method's encoders, docs/references.md): token ids or precomputed features → (B, Lt, d_model).

Two sources:

* ``BertTextEncoder``: any BERT-family checkpoint in a *local* Hugging Face directory
  (``AutoModel.from_pretrained(path)``), fine-tuned fully (``"all"``), frozen (``"none"``: run
  under ``torch.no_grad`` and kept in eval mode so dropout never changes its output), or with
  only the top ``top_layers`` encoder layers trainable (``"top"``: the frozen embeddings and lower
  layers are kept in eval mode too). Its last hidden state is projected to ``d_model``.
* ``FeatureTextEncoder``: a linear projection of precomputed text features (MMSA ``text``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from mmcore.hf import default_model_path, load_model

logger = logging.getLogger(__name__)

FinetuneMode = Literal["all", "none", "top"]


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers of a BERT-family model (``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"text encoder: finetune='top' needs a BERT-family model with encoder.layer, "
            f"got {type(model).__name__}"
        )
    return layers


class BertTextEncoder(nn.Module):
    """Local BERT-family encoder + linear projection to ``d_model``."""

    def __init__(self, model_path: str | Path, d_model: int, finetune: FinetuneMode = "all", top_layers: int = 2):
        super().__init__()
        self.model_path = str(model_path)
        self.finetune = finetune
        self.bert = load_model(model_path)
        self._frozen_modules: list[nn.Module] = []
        self._apply_finetune_mode(top_layers)
        self.proj = nn.Linear(self.bert.config.hidden_size, d_model)

    def _apply_finetune_mode(self, top_layers: int) -> None:
        pooler = getattr(self.bert, "pooler", None)
        if self.finetune == "all":
            if pooler is not None:  # unused (we take the last hidden state): keep it out of the optimiser
                pooler.requires_grad_(False)
            return
        self.bert.requires_grad_(False)
        if self.finetune == "none":
            self._frozen_modules = [self.bert]
        elif self.finetune == "top":
            layers = _encoder_layers(self.bert)
            if not 1 <= top_layers <= len(layers):
                raise ValueError(
                    f"text.top_layers={top_layers}: must be between 1 and the model's {len(layers)} layers"
                )
            for layer in layers[len(layers) - top_layers :]:
                layer.requires_grad_(True)
            embeddings = getattr(self.bert, "embeddings", None)
            self._frozen_modules = [m for m in [embeddings, *layers[: len(layers) - top_layers]] if m is not None]
        else:
            raise ValueError(f"text.finetune={self.finetune!r}: expected 'all', 'none' or 'top'")
        self.train(self.training)

    def train(self, mode: bool = True) -> "BertTextEncoder":
        """Frozen parts stay in eval mode, so dropout never perturbs them."""
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, segment: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": ids, "attention_mask": mask.long()}
        if segment is not None:
            kwargs["token_type_ids"] = segment
        if self.finetune == "none":
            with torch.no_grad():
                hidden = self.bert(**kwargs).last_hidden_state
        else:
            hidden = self.bert(**kwargs).last_hidden_state
        return self.proj(hidden)


class FeatureTextEncoder(nn.Module):
    """Precomputed text features (B, Lt, Dt) → (B, Lt, d_model)."""

    def __init__(self, feature_dim: int, d_model: int):
        super().__init__()
        self.proj = nn.Linear(feature_dim, d_model)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(feats)


class TextEncoder(nn.Module):
    """Reads the text fields of an ``MMSABatch`` and returns ``(hidden (B, Lt, d), mask (B, Lt))``.

    ``pretrained`` is the loaded BERT (or ``None``) so optimisers can give it its own learning rate.
    """

    def __init__(
        self,
        source: Literal["bert", "features"],
        d_model: int,
        model_path: str | None = None,
        finetune: FinetuneMode = "all",
        top_layers: int = 2,
        feature_dim: int | None = None,
    ):
        super().__init__()
        self.source = source
        if source == "bert":
            path = model_path if model_path is not None else default_model_path()
            self.encoder: nn.Module = BertTextEncoder(path, d_model, finetune, top_layers)
        elif source == "features":
            if feature_dim is None:
                raise ValueError("text.feature_dim is None: set it from the data (batch.text_feats.shape[-1])")
            self.encoder = FeatureTextEncoder(feature_dim, d_model)
        else:
            raise ValueError(f"text.source={source!r}: expected 'bert' or 'features'")

    @property
    def pretrained(self) -> nn.Module | None:
        """The loaded BERT-family model, or None for precomputed features.

        (A property, not a second registered submodule: registering it twice would let
        ``train()`` switch the frozen parts back to training mode.)
        """
        return self.encoder.bert if isinstance(self.encoder, BertTextEncoder) else None

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        mask = batch.text_mask.bool()
        if self.source == "bert":
            if batch.text_ids is None:
                raise ValueError("batch.text_ids is None but the model's text.source is 'bert' (needs token ids)")
            hidden = self.encoder(batch.text_ids, mask, batch.text_segment)
        else:
            if batch.text_feats is None:
                raise ValueError("batch.text_feats is None but the model's text.source is 'features'")
            hidden = self.encoder(batch.text_feats.float())
        return hidden * mask.unsqueeze(-1), mask
