"""Datasets for the ranking model: MovieLens-100K (``movielens``) and the synthetic e-commerce
catalogue (``ecommerce``). ``load_splits`` picks the loader from the type of the ``data`` config."""

from __future__ import annotations

import pandas as pd

from typing import TYPE_CHECKING

from xdeepfm.data import ecommerce, movielens
from xdeepfm.data.ecommerce import EcommerceConfig
from xdeepfm.data.movielens import MovieLensConfig

if TYPE_CHECKING:  # imported lazily so that `python -m xdeepfm.data.shards` runs the module once
    from xdeepfm.data.shards import ParquetConfig


def load_splits(data: MovieLensConfig | EcommerceConfig | ParquetConfig) -> dict[str, pd.DataFrame]:
    """Train/valid/test frames of the configured data set: MovieLens-100K, or the synthetic
    e-commerce catalogue when the ``data`` section says ``kind: ecommerce``, or Parquet shards
    read whole into memory (``kind: parquet``; the trainer streams them instead)."""
    if isinstance(data, EcommerceConfig):
        return ecommerce.load_splits(data)
    if getattr(data, "kind", None) == "parquet":
        from xdeepfm.data import shards

        return {name: pd.concat([frame for _, frame in shards.iter_frames(
            shards.list_units(shards.shard_files(data.pattern(name), f"data.{name}")))], ignore_index=True)
            for name in shards.SPLITS}
    return movielens.load_splits(data)
