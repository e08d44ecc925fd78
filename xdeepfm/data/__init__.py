"""Datasets for the ranking model: MovieLens-100K (``movielens``), the synthetic e-commerce catalogue
(``ecommerce``), any interaction log described by a config (``interactions``, docs/data.md) and
Parquet shards of any of them (``parquet``). ``load_splits`` picks the reader from the type of the
``data`` config; every reader splits with ``xdeepfm.data.splits``. A malformed file is refused with a :class:`DataFileError` (a ``ValueError``)
naming the file, the line and the field."""

from __future__ import annotations

import pandas as pd

from xdeepfm.data import parquet
from xdeepfm.data.ecommerce import EcommerceConfig, load_ecommerce_splits
from xdeepfm.data.interactions import InteractionsConfig, load_interaction_splits
from xdeepfm.data.movielens import DataFileError, MovieLensConfig, load_movielens_splits
from xdeepfm.data.parquet import ParquetConfig

# the ``data:`` section of a ranking YAML
DataConfig = MovieLensConfig | EcommerceConfig | InteractionsConfig | ParquetConfig
__all__ = ["DataConfig", "DataFileError", "EcommerceConfig", "InteractionsConfig", "MovieLensConfig", "ParquetConfig",
           "load_splits"]


def load_splits(data: DataConfig) -> dict[str, pd.DataFrame]:
    """Train/valid/test frames of the configured data set: MovieLens-100K, or the synthetic
    e-commerce catalogue when the ``data`` section says ``kind: ecommerce``, a generic interaction
    log (``kind: interactions``), or Parquet shards
    read whole into memory (``kind: parquet``; the trainer streams them instead)."""
    if isinstance(data, EcommerceConfig):
        return load_ecommerce_splits(data)
    if isinstance(data, InteractionsConfig):
        return load_interaction_splits(data)
    if isinstance(data, ParquetConfig):
        return {name: pd.concat([frame for _, frame in parquet.iter_frames(
            parquet.list_units(parquet.shard_files(data.pattern(name), f"data.{name}")))], ignore_index=True)
            for name in parquet.SPLITS}
    return load_movielens_splits(data)
