"""The ranking experiment schema: what ``configs/*.yaml`` with ``task: ranking`` holds.

``load_experiment(path, overrides)`` reads the YAML (with its ``base:`` file), applies
``--set key=value`` overrides and builds a :class:`RankingExperiment`, refusing an unknown key or
a wrong type with its name. The trainer (``xdeepfm.train``), the baseline, evaluation and the
comparison take the built object; none of them defines configuration of its own. The same
vocabulary as the sentiment experiment (``mmfusion.experiment``): ``train.seed``,
``train.device``, ``train.grad_clip``, ``train.patience``.

Values that make no sense (a learning rate <= 0, ``batch_size: 0``, ``epochs: 0``, ``patience: 0``
which would stop before the first epoch, ``eval.k: 0``, negative sizes, ...) are refused when the
config is built, under their full key: ``configs/x.yaml.train.lr=-0.1: must be > 0.0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from mmcore.config import apply_overrides, build, check_range, load_yaml
from xdeepfm.data import DataConfig, load_splits
from xdeepfm.data.movielens import MovieLensConfig
from xdeepfm.features import FeatureSpec
from xdeepfm.history import HistoryConfig, add_history
from xdeepfm.model import RankerConfig


@dataclass
class RankingTrainConfig:
    """Optimisation settings of the ranking trainer."""

    epochs: int = 10
    batch_size: int = 1024  # the global batch (split over the processes under torchrun)
    eval_batch_size: int = 8192
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    # "cosine": the learning rate of epoch e (0-based) is lr * 0.5 (1 + cos(pi e / epochs)), torch's
    # CosineAnnealingLR stepped once per epoch (the first epoch at lr, the last near 0); "none": lr throughout
    lr_schedule: Literal["none", "cosine"] = "none"
    patience: int = 2  # epochs without a better validation AUC before stopping
    seed: int = 0  # model initialisation, per-epoch shuffle and dropout (the data split has its own seed)
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N; checked when training starts
    progress: bool = True  # tqdm bars
    # cold-start training: per categorical field, the share of training rows whose value is
    # replaced by the out-of-vocabulary bucket (0) in each batch, so the OOV embedding learns what
    # an unseen item looks like and the model learns to lean on content (text, semantics) for it
    oov_dropout: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, low=1)
        check_range("batch_size", self.batch_size, low=1)
        check_range("eval_batch_size", self.eval_batch_size, low=1)
        check_range("lr", self.lr, low=0.0, low_open=True)
        check_range("weight_decay", self.weight_decay, low=0.0)
        check_range("grad_clip", self.grad_clip, low=0.0)  # 0 or null: no clipping
        check_range("patience", self.patience, low=1)  # 0 would stop before the first epoch
        for name, rate in self.oov_dropout.items():
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"train.oov_dropout.{name}={rate}: must be in [0, 1)")


@dataclass
class EvalConfig:
    """Metrics: top-K lists are each user's impressions in the split, ranked by score."""

    k: int = 10

    def __post_init__(self) -> None:
        check_range("k", self.k, low=1)


@dataclass
class RankingExperiment:
    """A whole ranking experiment: data, features, model, training and evaluation."""

    features: FeatureSpec
    task: Literal["ranking"] = "ranking"
    # MovieLens-100K by default; the e-commerce catalogue: `kind: ecommerce`; any interaction log:
    # `kind: interactions` (docs/data.md); Parquet shards: `kind: parquet`
    data: DataConfig = field(default_factory=MovieLensConfig)
    model: RankerConfig = field(default_factory=RankerConfig)
    train: RankingTrainConfig = field(default_factory=RankingTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # behaviour histories added as a column to every split (xdeepfm.history); a ``sequence`` field reads it
    history: HistoryConfig | None = None

    def __post_init__(self) -> None:
        self.data.check()  # here, not in the data classes' __post_init__: the key then names the section
        columns = {f.column for f in self.features.fields}
        for key in ("column", "negative_column"):
            column = getattr(self.history, key) if self.history is not None else None
            if column is not None and column not in columns:
                raise ValueError(f"history.{key} {column!r} is read by no feature field "
                                 f"(add e.g. {{name: {column}, kind: sequence, target: item_id}})")


def load_frames(cfg: RankingExperiment) -> dict[str, pd.DataFrame]:
    """The experiment's train/valid/test frames: ``load_splits(cfg.data)``, plus the history column
    when the config has a ``history`` section."""
    splits = load_splits(cfg.data)
    return splits if cfg.history is None else add_history(splits, cfg.history)


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RankingExperiment:
    """Read a ranking YAML, apply ``--set`` overrides, build and check it (errors name the file and key)."""
    return build(RankingExperiment, apply_overrides(load_yaml(path), list(overrides)), where=str(path))
