"""Datasets for the ranking model: MovieLens-100K (``movielens``) and the synthetic e-commerce
catalogue (``ecommerce``). ``load_splits`` picks the loader from the type of the ``data`` config."""

from __future__ import annotations

import pandas as pd

from xdeepfm.data import ecommerce, movielens
from xdeepfm.data.ecommerce import EcommerceConfig
from xdeepfm.data.movielens import MovieLensConfig


def load_splits(data: MovieLensConfig | EcommerceConfig) -> dict[str, pd.DataFrame]:
    """Train/valid/test frames of the configured data set: MovieLens-100K, or the synthetic
    e-commerce catalogue when the ``data`` section says ``kind: ecommerce``."""
    if isinstance(data, EcommerceConfig):
        return ecommerce.load_splits(data)
    return movielens.load_splits(data)
