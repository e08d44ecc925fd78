"""The assembled multimodal sentiment model (the source paper's sections II-III, docs/references.md)
and its typed configuration.

Data flow for one ``MMSABatch``::

    text ids/feats ─► TextEncoder ─┐
    audio (B,La,Da) ─► SequenceEncoder ─┤─► LGT (eq. 1-7) ─► SoftMapping (eq. 8-13) ─► h_sm (B,d)
    vision (B,Lv,Dv) ─► SequenceEncoder ─┘                     │ pooled u_t,u_a,u_v (B,d)
                                                               ├─► UFF (eq. 14-15) ─► h_uff (B,d)
    F_M = [h_sm ; h_uff] (B, 2d) ─► head M;   unimodal e_t/e_a/e_v ─► heads T/A/V (eq. 16-17)

The T/A/V heads and SLGM read u_t/u_a/u_v by default (``unimodal_features="lgt"``);
``"encoder"`` gives them each modality's encoder output pooled over its real positions instead,
before the LGT mixes text into the audio and vision streams. Which stage feeds them is decided in
one place, :meth:`MultimodalSentimentModel.unimodal_tap` (``UNIMODAL_STAGE`` names each choice's
stage). Every sub-module is built with named arguments.

Temporal-evidence options of the audio/vision input path (all off by default, issue 18):
``input_norm="instance"`` standardises each clip's frames by its own mean and std (eq.
``x' = (x - mean_clip) / (std_clip + eps)``, over its real frames) on top of the train-set statistics,
and ``input_norm="both"`` appends those per-clip channels beside the train-set-normalised ones (a level
that is the whole cue survives, a per-speaker offset is removed in the new channels);
``input_deltas`` appends first differences ``x_t - x_{t-1}`` as extra channels (0 at the first
frame); ``modality_dropout`` drops a whole audio or vision modality of a training clip with that
probability (zeroed frames and an all-False mask, as a missing modality reads; never at eval);
``conv_dilations`` with more than one dilation makes the conv encoders multi-scale (parallel
dilated convolutions per layer, averaged: ``mmfusion.sequence_encoder``).

Ablation switches: ``use_lgt`` (text-guided cross-attention vs plain self-attention),
``use_soft_mapping`` (SM vs a learned softmax-weighted average of the pooled streams), ``fusion``
(low-rank UFF, full UFF, concatenation), ``use_slgm`` (the T/A/V heads), ``modalities``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from mmfusion.data.batch import MODALITIES, MMSABatch
from mmfusion.fusion import build_fusion
from mmfusion.heads import MultiTaskHeads
from mmfusion.lgt import LGT
from mmfusion.sequence_encoder import SequenceEncoder, temporal_pool
from mmfusion.soft_mapping import SoftMappingFusion, WeightedAverage, masked_max, masked_mean
from mmfusion.text_encoder import TextEncoder

logger = logging.getLogger(__name__)

TASK_OF = {"text": "T", "audio": "A", "vision": "V"}
# where in the forward pass each ``unimodal_features`` choice reads the unimodal vectors
UNIMODAL_STAGE = {"encoder": "encoded", "subnet": "encoded", "lgt_pooled": "lgt", "lgt": "soft_mapping"}
EncoderKind = Literal["conv", "lstm", "transformer"]


@dataclass
class TextEncoderConfig:
    """Text branch: a local BERT-family checkpoint (``source="bert"``) or precomputed features."""

    source: Literal["bert", "features"] = "bert"
    model_path: str | None = None  # None → the bundled all-MiniLM-L6-v2
    finetune: Literal["all", "none", "top"] = "all"
    top_layers: int = 2  # trainable top encoder layers when finetune="top"
    feature_dim: int | None = None  # width of batch.text_feats when source="features" (set from the data)

    def __post_init__(self) -> None:
        if self.top_layers < 1:
            raise ValueError(f"text.top_layers={self.top_layers}: must be >= 1")
        if self.feature_dim is not None and self.feature_dim < 1:
            raise ValueError(f"text.feature_dim={self.feature_dim}: must be >= 1")


@dataclass
class SentimentModelConfig:
    """Every architectural choice of ``MultimodalSentimentModel``; defaults train fast on CPU."""

    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 1  # LGT depth
    ffn_dim: int = 128
    dropout: float = 0.1
    audio_encoder: EncoderKind = "conv"
    vision_encoder: EncoderKind = "conv"
    encoder_layers: int = 1  # layers of each audio/vision encoder
    conv_kernel: int = 5
    # conv encoders: dilations of the parallel convolutions of each layer; [1] = one scale (as before),
    # e.g. [1, 4, 16] for a multi-scale encoder that sees short segments and clip-long changes
    conv_dilations: list[int] = field(default_factory=lambda: [1])
    frame_stride: int = 1  # average-pool audio/vision encoder outputs over windows of this many frames
    use_lgt: bool = True  # False → plain self-attention per modality (no text-guided queries)
    use_soft_mapping: bool = True  # False → learned softmax-weighted average of the pooled streams
    sm_slots: int = 4  # K query vectors of the soft mapping (eq. 9)
    sm_hidden: int | None = None  # width of W_m M (eq. 8); None → 2 * d_model
    fusion: Literal["uff_lowrank", "uff_full", "concat"] = "uff_lowrank"
    fusion_dim: int = 16  # per-modality width before the outer product
    fusion_rank: int = 4  # rank of the low-rank UFF
    use_slgm: bool = True  # False → only the M task (no T/A/V heads)
    # what the T/A/V heads and SLGM see: "lgt" = the modality's stream after the LGT and soft
    # mapping (text-guided for audio and vision); "lgt_pooled" = the LGT stream averaged over its
    # positions, before soft mapping; "encoder" = each modality's own encoded sequence, pooled
    # before the LGT (modality-pure); "subnet" = each modality's own subnet, as in Self-MM: its
    # encoded sequence pooled by mean and max (the max keeps a short expressive segment), then
    # Linear+ReLU; the subnet vectors also join the fused representation F_M
    unimodal_features: Literal["lgt", "lgt_pooled", "encoder", "subnet"] = "lgt"
    # SLGM's relative distance alpha (mmfusion.slgm): "axis" = the sample's position along the line
    # through the two class centres; "ratio" = the paper's (d_n - d_p) / d_p (eq. 21-22), which is
    # not monotone along that line (docs/results_synthmosi.md compares them)
    slgm_distance: Literal["ratio", "axis"] = "axis"
    modalities: list[str] = field(default_factory=lambda: ["text", "audio", "vision"])
    head_hidden: int = 64
    # temporal evidence in the audio/vision input path (off by default: the model as before)
    # "instance": per-clip standardisation over real frames; "both": those channels beside the raw ones
    input_norm: Literal["none", "instance", "both"] = "none"
    input_deltas: bool = False  # append first differences x_t - x_{t-1} as extra channels
    modality_dropout: float = 0.0  # P(drop audio), P(drop vision) per training clip; 0 = off
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    audio_dim: int | None = None  # set from the data (batch.audio.shape[-1]) before building
    vision_dim: int | None = None  # set from the data (batch.vision.shape[-1]) before building

    def __post_init__(self) -> None:
        positive = ("d_model", "n_heads", "n_layers", "ffn_dim", "encoder_layers", "frame_stride", "sm_slots", "fusion_dim", "fusion_rank", "head_hidden")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}={value!r}: must be a positive integer")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout}: must be in [0, 1)")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"model.modality_dropout={self.modality_dropout}: must be a probability in [0, 1)")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"model.conv_kernel={self.conv_kernel}: must be a positive odd integer")
        if not self.conv_dilations or any(not isinstance(r, int) or r < 1 for r in self.conv_dilations):
            raise ValueError(f"model.conv_dilations={self.conv_dilations!r}: expected a non-empty list of positive integers")
        if self.sm_hidden is not None and self.sm_hidden < 1:
            raise ValueError(f"model.sm_hidden={self.sm_hidden}: must be >= 1")
        if not self.modalities:
            raise ValueError("model.modalities is empty: expected a non-empty subset of ['text', 'audio', 'vision']")
        for i, m in enumerate(self.modalities):
            if m not in MODALITIES:
                raise ValueError(f"model.modalities[{i}]={m!r}: expected one of {list(MODALITIES)}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"model.modalities={self.modalities}: contains duplicates")
        if self.fusion == "uff_full":
            size = (self.fusion_dim + 1) ** len(self.modalities) * self.d_model
            if size > 50_000_000:
                raise ValueError(
                    f"model.fusion='uff_full' with fusion_dim={self.fusion_dim} needs {size:,} output weights; "
                    "lower fusion_dim or use fusion='uff_lowrank'"
                )
        for name in ("audio_dim", "vision_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"model.{name}={value}: must be >= 1")

    @property
    def ordered_modalities(self) -> list[str]:
        """The configured modalities in canonical order (text, audio, vision)."""
        return [m for m in MODALITIES if m in self.modalities]


@dataclass
class ModelOutput:
    preds: dict[str, torch.Tensor]  # "M" always; "T"/"A"/"V" when use_slgm: (B,)
    features: dict[str, torch.Tensor]  # "M": (B, 2*d_model [+ d_model per subnet]); "T"/"A"/"V": unimodal (B, d_model)
    attention: dict[str, torch.Tensor] | None = None  # modality -> last LGT layer weights (B, heads, Lq, Lk)
    modality_weights: torch.Tensor | None = None  # (B, n_mod) soft mapping shares, or (n_mod,) weighted average
    # with return_attention and soft mapping: modality -> SM slot attention over that stream's positions (B, K, L)
    slot_attention: dict[str, torch.Tensor] | None = None


def instance_normalise(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per clip and channel ``(x - mean) / (std + eps)`` over the real frames (mask True); padding and
    clips without real frames stay 0. Removes per-speaker (per-clip) offsets and scales."""
    keep = mask.unsqueeze(-1).to(x.dtype)
    count = keep.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * keep).sum(1, keepdim=True) / count
    std = (((x - mean) * keep) ** 2).sum(1, keepdim=True).div(count).sqrt()
    return (x - mean) / (std + eps) * keep


def first_differences(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``d_t = x_t - x_{t-1}`` on real frames with a real predecessor, 0 at each clip's first frame
    and on padding: a level becomes 0, a trend a constant, a burst two spikes."""
    keep = mask.to(x.dtype)
    both = (keep[:, 1:] * keep[:, :-1]).unsqueeze(-1)
    diff = (x[:, 1:] - x[:, :-1]) * both
    return torch.cat([torch.zeros_like(x[:, :1]), diff], dim=1)


class MultimodalSentimentModel(nn.Module):
    """LGT + soft mapping + UFF + multi-task heads over an ``MMSABatch``."""

    def __init__(self, cfg: SentimentModelConfig):
        super().__init__()
        self.cfg = cfg
        self.modalities = cfg.ordered_modalities
        d = cfg.d_model
        self.text_encoder: TextEncoder | None = None
        if "text" in self.modalities:
            t = cfg.text
            self.text_encoder = TextEncoder(source=t.source, d_model=d, model_path=t.model_path, finetune=t.finetune,
                                            top_layers=t.top_layers, feature_dim=t.feature_dim)
        self.encoders = nn.ModuleDict()
        for m, in_dim, kind in (("audio", cfg.audio_dim, cfg.audio_encoder), ("vision", cfg.vision_dim, cfg.vision_encoder)):
            if m not in self.modalities:
                continue
            if in_dim is None:
                raise ValueError(f"model.{m}_dim is None: set it from the data (batch.{m}.shape[-1]) before building the model")
            in_dim *= (2 if cfg.input_norm == "both" else 1) * (2 if cfg.input_deltas else 1)
            self.encoders[m] = SequenceEncoder(in_dim=in_dim, d_model=d, kind=kind, n_layers=cfg.encoder_layers,
                                               kernel_size=cfg.conv_kernel, n_heads=cfg.n_heads, ffn_dim=cfg.ffn_dim,
                                               dropout=cfg.dropout, dilations=tuple(cfg.conv_dilations))
        guided = cfg.use_lgt and "text" in self.modalities
        if cfg.use_lgt and not guided:
            logger.info("use_lgt=True without the text modality: LGT falls back to self-attention per modality")
        self.lgt = LGT(modalities=self.modalities, d_model=d, n_heads=cfg.n_heads, ffn_dim=cfg.ffn_dim,
                       dropout=cfg.dropout, n_layers=cfg.n_layers, guided=guided)
        if cfg.use_soft_mapping:
            self.aggregate: nn.Module = SoftMappingFusion(modalities=self.modalities, d_model=d,
                                                          hidden_dim=cfg.sm_hidden or 2 * d, n_slots=cfg.sm_slots,
                                                          dropout=cfg.dropout)
        else:
            self.aggregate = WeightedAverage(modalities=self.modalities)
        self.fusion = build_fusion(kind=cfg.fusion, n_modalities=len(self.modalities), in_dim=d,
                                   fusion_dim=cfg.fusion_dim, out_dim=d, rank=cfg.fusion_rank, dropout=cfg.dropout)
        self.subnets = nn.ModuleDict()
        if cfg.unimodal_features == "subnet":
            self.subnets.update({m: nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Dropout(cfg.dropout))
                                 for m in self.modalities})
        fused_dim = 2 * d + d * len(self.subnets)
        self.feature_dims = {"M": fused_dim, **{TASK_OF[m]: d for m in self.modalities}}
        head_tasks = self.feature_dims if cfg.use_slgm else {"M": fused_dim}
        self.heads = MultiTaskHeads(in_dims=dict(head_tasks), hidden_dim=cfg.head_hidden, dropout=cfg.dropout)

    @property
    def text_vocab_size(self) -> int | None:
        """The vocabulary size of the loaded BERT-family encoder (what token ids must stay below), or None."""
        pretrained = self.text_encoder.pretrained if self.text_encoder is not None else None
        return pretrained.config.vocab_size if pretrained is not None else None

    @property
    def tasks(self) -> list[str]:
        """Tasks with a prediction head ("M" first)."""
        return self.heads.tasks

    def forward(self, batch: MMSABatch, return_attention: bool = False) -> ModelOutput:
        streams: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        if self.text_encoder is not None:
            streams["text"], masks["text"] = self.text_encoder(batch)
        for m, encoder in self.encoders.items():
            x, mask = self.prepare_input(getattr(batch, m).float(), getattr(batch, f"{m}_mask").bool())
            streams[m], masks[m] = temporal_pool(encoder(x, mask), mask, self.cfg.frame_stride)
        unimodal = self.unimodal_tap("encoded", streams, masks)  # before the LGT mixes text in
        streams, masks, attention = self.lgt(streams, masks, need_weights=return_attention)
        unimodal = unimodal or self.unimodal_tap("lgt", streams, masks)
        agg = self.aggregate(streams, masks, need_weights=return_attention)
        unimodal = unimodal or self.unimodal_tap("soft_mapping", streams, masks, agg)
        fused_uff = self.fusion([agg.pooled[m] for m in self.modalities])
        features = {"M": torch.cat([agg.fused, fused_uff, *(unimodal[m] for m in self.subnets)], dim=-1)}
        features.update({TASK_OF[m]: unimodal[m] for m in self.modalities})
        preds = self.heads(features)
        return ModelOutput(
            preds=preds,
            features=features,
            attention=attention if return_attention else None,
            modality_weights=agg.weights.detach(),
            slot_attention=agg.attention,
        )

    def prepare_input(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An audio/vision sequence (B, L, D) and its mask before the encoder: modality dropout (training
        only), per-clip normalisation and first differences, as configured; unchanged when all are off."""
        cfg = self.cfg
        if self.training and cfg.modality_dropout > 0:
            keep = torch.rand(x.shape[0], device=x.device) >= cfg.modality_dropout  # (B,): False = dropped
            x, mask = x * keep[:, None, None].to(x.dtype), mask & keep[:, None]
        if cfg.input_norm == "instance":
            x = instance_normalise(x, mask)
        elif cfg.input_norm == "both":
            x = torch.cat([x, instance_normalise(x, mask)], dim=-1)  # (B, L, 2D)
        if cfg.input_deltas:
            x = torch.cat([x, first_differences(x, mask)], dim=-1)
        return x, mask

    def unimodal_tap(self, stage: str, streams: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                     agg=None) -> dict[str, torch.Tensor] | None:
        """The unimodal vectors (B, d) per modality that the T/A/V heads and SLGM read, when ``stage``
        (``"encoded"``, ``"lgt"`` or ``"soft_mapping"``) is where ``model.unimodal_features`` taps them;
        None at the other stages. The one place that choice is decided."""
        tap = self.cfg.unimodal_features
        if UNIMODAL_STAGE[tap] != stage:
            return None
        if tap == "lgt":
            return agg.pooled  # u_t / u_a / u_v of the soft mapping
        if tap == "subnet":  # Self-MM's subnets: mean + max pooled, then Linear + ReLU
            return {m: subnet(torch.cat([masked_mean(streams[m], masks[m]), masked_max(streams[m], masks[m])], -1))
                    for m, subnet in self.subnets.items()}
        return {m: masked_mean(streams[m], masks[m]) for m in self.modalities}  # "encoder", "lgt_pooled"

    def param_groups(self, lr_text: float, lr_other: float, weight_decay: float) -> list[dict]:
        """AdamW groups: pretrained text encoder vs the rest, each split into decayed weights and
        undecayed biases/LayerNorm/1-D parameters. Frozen parameters and empty groups are left out."""
        text_ids = set()
        if self.text_encoder is not None and self.text_encoder.pretrained is not None:
            text_ids = {id(p) for p in self.text_encoder.pretrained.parameters()}
        buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {(t, dec): [] for t in (True, False) for dec in (True, False)}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim >= 2
            buckets[(id(p) in text_ids, decay)].append(p)
        groups = []
        for (is_text, decay), params in buckets.items():
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": lr_text if is_text else lr_other,
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{'text' if is_text else 'other'}_{'decay' if decay else 'no_decay'}",
                    }
                )
        return groups
