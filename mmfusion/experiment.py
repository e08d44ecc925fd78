"""The sentiment experiment schema: what ``configs/*.yaml`` with ``task: sentiment`` holds.

``load_experiment(path, overrides)`` reads the YAML (with its ``base:`` file), applies
``--set key=value`` overrides and builds a :class:`SentimentExperiment`, refusing an unknown key or
a wrong type with its name. The trainer (``mmfusion.train``), evaluation and export take the built
object; none of them defines configuration of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mmcore.config import ConfigError, apply_overrides, build, check_range, load_yaml
from mmfusion.data.worlds import WORLDS
from mmfusion.metrics import METRIC_KEYS
from mmfusion.model import SentimentModelConfig


@dataclass
class SyntheticData:
    """Generate the data file with SynthMOSI when it does not exist yet."""

    size: Literal["tiny", "mosi", "mosei"] = "mosi"
    seed: int = 0
    world: str = "default"  # where the audio/vision evidence shows: mmfusion.data.worlds.WORLDS
    aligned: bool = False
    text_features: bool = False  # also write `text` (MiniLM hidden states) for `text.source: features`

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ConfigError(f"data.synthetic.world: {self.world!r} is not one of {list(WORLDS)}")


@dataclass
class SentimentDataConfig:
    path: str
    synthetic: SyntheticData | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    normalize: bool = True  # standardise audio/vision (and text features) with train statistics
    nonfinite: Literal["error", "zero"] = "error"  # real MOSI audio holds -inf: "zero" replaces it

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, low=1)
        check_range("eval_batch_size", self.eval_batch_size, low=1)


@dataclass
class SentimentTrainConfig:
    epochs: int = 20
    lr: float = 1e-3  # everything but the text encoder
    lr_text: float = 5e-5  # the BERT-family text encoder when fine-tuned
    weight_decay: float = 1e-4
    # "cosine": linear warm-up over warmup_epochs, then cosine decay to 0 at the last step
    # (mmfusion.train.lr_factor); "plateau": the same warm-up, then the rates times plateau_factor
    # after every plateau_patience epochs in a row without a new best early_stop_key;
    # "none": constant learning rates (as before)
    lr_schedule: Literal["none", "cosine", "plateau"] = "none"
    warmup_epochs: float = 1.0  # only with lr_schedule: cosine or plateau
    plateau_patience: int = 2  # only with lr_schedule: plateau
    plateau_factor: float = 0.5  # only with lr_schedule: plateau
    grad_clip: float | None = 1.0
    early_stop_key: str = "MAE"  # any key of the MMSA metric set, on the valid split
    patience: int = 6
    seed: int = 0
    slgm_start_epoch: int = 2  # unimodal labels stay = multimodal label during the first epoch
    attention_clips: int = 4  # validation clips whose LGT attention maps go to TensorBoard
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, low=1)
        check_range("lr", self.lr, low=0.0, low_open=True)
        check_range("lr_text", self.lr_text, low=0.0)
        check_range("weight_decay", self.weight_decay, low=0.0)
        check_range("warmup_epochs", self.warmup_epochs, low=0.0)
        check_range("plateau_patience", self.plateau_patience, low=1)
        check_range("plateau_factor", self.plateau_factor, low=0.0, low_open=True)
        if self.plateau_factor >= 1.0:
            raise ConfigError(f"plateau_factor={self.plateau_factor}: must be < 1 (it lowers the learning rates)")
        check_range("grad_clip", self.grad_clip, low=0.0, low_open=True)
        check_range("patience", self.patience, low=1)
        check_range("slgm_start_epoch", self.slgm_start_epoch, low=1)
        check_range("attention_clips", self.attention_clips, low=0)
        check_range("threads", self.threads, low=1)


@dataclass
class SentimentExperiment:
    """A whole sentiment experiment: data, model and training."""

    data: SentimentDataConfig
    model: SentimentModelConfig = field(default_factory=SentimentModelConfig)
    train: SentimentTrainConfig = field(default_factory=SentimentTrainConfig)
    task: Literal["sentiment"] = "sentiment"

    def __post_init__(self) -> None:
        if self.train.early_stop_key not in METRIC_KEYS:
            raise ConfigError(f"train.early_stop_key: {self.train.early_stop_key!r} is not one of {list(METRIC_KEYS)}")


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SentimentExperiment:
    """Read a sentiment YAML, apply ``--set`` overrides, build and check it (errors name the key)."""
    return build(SentimentExperiment, apply_overrides(load_yaml(path), overrides), where=str(path))


def build_model_config(model: SentimentModelConfig, dims: dict[str, int | None]) -> SentimentModelConfig:
    """The model config completed with the feature widths of the data."""
    text = model.text
    if text.source == "features":
        if dims.get("text_dim") is None:
            raise ConfigError("model.text.source is 'features' but the data has no `text` features")
        text = dataclasses.replace(text, feature_dim=dims["text_dim"])
    return dataclasses.replace(model, audio_dim=dims["audio_dim"], vision_dim=dims["vision_dim"], text=text)
