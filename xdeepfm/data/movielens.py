"""MovieLens-100K (GroupLens) as a click-through table, and the two evaluation splits.

``load_movielens_100k(root)`` joins u.data with u.user and u.item into one row per rating:

=============  =====================================================================
user_id        u.data user id (categorical)
item_id        u.data item id (categorical)
gender         M / F
age            years (numeric) ; age_bucket: MovieLens-1M style bucket (categorical)
occupation     u.user occupation (categorical)
zip_prefix     first ``zip_prefix_len`` characters of the zip code (categorical)
genres         genre names joined with ``genre_sep`` (multi-valued), from the 19 flags
title          the title with the trailing "(1995)" year stripped (text)
release_year   year from the title, else from the release date, else the catalogue median
label          1 when rating >= ``like_threshold`` (4), else 0
=============  =====================================================================

Splits (``split_frame``), both with a fixed seed:

- ``random``: a permutation of rows cut 80/10/10 into train/valid/test.
- ``cold_item``: 10% of the items (seeded choice) and all their rows form the test split, so
  no test item is seen in training; valid is 1/9 of the remaining rows (about 10% of all rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


@dataclass
class MovieLensConfig:
    """Where ML-100K lives and how it is framed and split."""

    root: str | None = None  # None → datasets/ml-100k, else the project's shared copy (../shared/data/ml-100k)
    split: Literal["random", "cold_item"] = "random"
    split_seed: int = 2024
    like_threshold: int = 4
    zip_prefix_len: int = 2
    genre_sep: str = "|"
    max_rows: int | None = None  # keep a seeded random subset of ratings (tests, quick runs)


REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_CANDIDATES = (REPO_ROOT / "datasets" / "ml-100k", REPO_ROOT.parent / "shared" / "data" / "ml-100k")


def default_root() -> Path:
    """``datasets/ml-100k`` when present, else ``../shared/data/ml-100k`` beside the checkout."""
    for candidate in ROOT_CANDIDATES:
        if (candidate / "u.data").is_file():
            return candidate
    raise FileNotFoundError(
        f"MovieLens-100K not found in {' or '.join(map(str, ROOT_CANDIDATES))}: "
        "unpack ml-100k.zip from GroupLens into datasets/ml-100k (see datasets/README.md)"
    )


def _read(path: Path, names: list[str], sep: str, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MovieLens-100K file not found (expected the GroupLens ml-100k layout)")
    frame = pd.read_csv(path, sep=sep, header=None, names=names, engine="python" if len(sep) > 1 else "c", **kwargs)
    if frame.isna().all(axis=1).any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(frame.isna().all(axis=1))[0])} is empty")
    return frame


def load_movielens_100k(config: MovieLensConfig | None = None) -> pd.DataFrame:
    """One row per rating with user, item and label columns (see the module docstring)."""
    config = config or MovieLensConfig()
    root = Path(config.root) if config.root else default_root()
    ratings = _read(root / "u.data", ["user_id", "item_id", "rating", "timestamp"], "\t")
    if ratings[["user_id", "item_id", "rating"]].isna().any().any():
        bad = int(np.flatnonzero(ratings[["user_id", "item_id", "rating"]].isna().any(axis=1))[0])
        raise ValueError(f"{root / 'u.data'}: row {bad} has a missing user id, item id or rating")
    users = _read(root / "u.user", ["user_id", "age", "gender", "occupation", "zip"], "|", dtype={"zip": str})
    genre_names = _read(root / "u.genre", ["genre", "index"], "|").sort_values("index")["genre"].tolist()
    item_cols = ["item_id", "title_raw", "release_date", "video_release_date", "imdb_url", *genre_names]
    items = _read(root / "u.item", item_cols, "|", encoding="latin-1")

    flags = items[genre_names].to_numpy(dtype=bool)
    names = np.array(genre_names, dtype=object)
    items["genres"] = [config.genre_sep.join(names[row]) for row in flags]  # 1,682 items: fine
    title = items["title_raw"].fillna("").astype(str)
    year = pd.to_numeric(title.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce")
    date_year = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    year = year.fillna(date_year)
    if year.isna().any():
        median = float(year.median())
        log.info("ml-100k: %d items have no release year; using the median %.0f", int(year.isna().sum()), median)
        year = year.fillna(median)
    items["release_year"] = year.astype(np.float64)
    items["title"] = title.str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True).str.strip()

    users["age_bucket"] = pd.cut(users["age"], bins=[-np.inf, *AGE_BUCKETS, np.inf], right=False, labels=AGE_LABELS).astype(str)
    users["zip_prefix"] = users["zip"].fillna("").str.upper().str[: config.zip_prefix_len]
    users["age"] = users["age"].astype(np.float64)

    frame = ratings.merge(users[["user_id", "age", "age_bucket", "gender", "occupation", "zip_prefix"]], on="user_id", how="left")
    frame = frame.merge(items[["item_id", "title", "release_year", "genres"]], on="item_id", how="left")
    if frame["gender"].isna().any() or frame["title"].isna().any():
        bad = int(np.flatnonzero(frame["gender"].isna() | frame["title"].isna())[0])
        raise ValueError(f"{root / 'u.data'}: row {bad} refers to a user or item missing from u.user/u.item")
    frame["label"] = (frame["rating"] >= config.like_threshold).astype(np.float32)
    if config.max_rows is not None and config.max_rows < len(frame):
        frame = frame.sample(n=config.max_rows, random_state=config.split_seed)
    return frame.reset_index(drop=True)


def split_frame(frame: pd.DataFrame, split: str, seed: int, item_column: str = "item_id") -> dict[str, pd.DataFrame]:
    """``{"train", "valid", "test"}`` frames for the ``random`` or ``cold_item`` split
    (``cold_item`` holds out 10% of the values of ``item_column`` with all their rows)."""
    rng = np.random.default_rng(seed)
    n = len(frame)
    if split == "random":
        order = rng.permutation(n)
        a, b = int(round(0.8 * n)), int(round(0.9 * n))
        parts = {"train": order[:a], "valid": order[a:b], "test": order[b:]}
    elif split == "cold_item":
        if item_column not in frame.columns:
            raise ValueError(f"cold_item split: no column {item_column!r} (columns: {list(frame.columns)})")
        items = np.sort(frame[item_column].unique())
        cold = rng.choice(items, size=max(1, int(round(0.1 * len(items)))), replace=False)
        is_cold = frame[item_column].isin(cold).to_numpy()
        warm = rng.permutation(np.flatnonzero(~is_cold))
        n_valid = int(round(len(warm) / 9))
        parts = {"train": np.sort(warm[n_valid:]), "valid": np.sort(warm[:n_valid]), "test": np.flatnonzero(is_cold)}
    else:
        raise ValueError(f"split {split!r}: expected 'random' or 'cold_item'")
    return {name: frame.iloc[idx].reset_index(drop=True) for name, idx in parts.items()}


def load_movielens_splits(config: MovieLensConfig) -> dict[str, pd.DataFrame]:
    """Load ML-100K and split it as ``config.split`` says."""
    splits = split_frame(load_movielens_100k(config), config.split, config.split_seed)
    log.info("ml-100k %s split: %s", config.split, {k: len(v) for k, v in splits.items()})
    return splits
