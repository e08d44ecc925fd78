"""Train/valid/test splits of an interaction frame, shared by every ranking data reader.

``split`` (a key of every ``data`` section) names one of:

- ``random``: a seeded permutation of the rows cut 80/10/10 (the rows ``split_frame`` has always
  given for a seed, so published figures stay reproducible).
- ``cold_item`` (``cold_video`` on the e-commerce data): 10% of the items (seeded choice) and all
  their rows form the test split, so no test item is seen in training; valid is 1/9 of the
  remaining rows (about 10% of all rows).
- ``cold_user``: the same with users: 10% of the users and all their rows are the test split.
- ``temporal``, per user (the default, ``leave_last: k``): each user's rows sorted by time, ties
  broken by the frame's row order (the file's order), deterministic. The last ``k`` go to test,
  the ``k`` before them to valid, the rest to train. **At least one row of every user stays in
  train**: a user with ``n <= 2k`` rows gives ``min(k, n - 1)`` rows to test and
  ``min(k, n - 1 - test)`` to valid (RecBole's leave-one-out rule, generalised to k), so a user
  with one row is wholly in train. On ML-100K (every user has >= 20 ratings) ``k = 10`` gives
  943 x 10 = 9,430 test rows.
- ``temporal`` with a global cut instead: ``time_cut: [valid_from, test_from]`` (times in the
  time column's unit) or ``time_quantiles: [0.8, 0.9]`` (quantiles of the time column): rows
  with time < valid_from are train, valid_from <= time < test_from valid, time >= test_from test.

Every part keeps the frame's row order (``random`` excepted: its rows are in permutation order,
as before). ``split_by`` applies a config's options and logs the sizes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmcore.config import ConfigError, check_range

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SPLIT_KINDS = ("random", "cold_item", "cold_user", "temporal")


@dataclass(kw_only=True)
class SplitOptions:
    """The split keys every ``data`` section shares (each config adds its own ``split`` choice)."""

    split_seed: int = 2024  # random / cold_*: the seeded permutation and choice
    leave_last: int = 10  # temporal: each user's last k rows to test, the k before them to valid
    time_cut: list[float] | None = None  # temporal, global cut: [valid_from, test_from] times
    time_quantiles: list[float] | None = None  # temporal, global cut: [q_valid, q_test] of the times

    def check_split(self) -> None:
        """Refuse split options that make no sense (called by each config's ``check``)."""
        check_range("data.leave_last", self.leave_last, low=1)
        if self.time_cut is not None and self.time_quantiles is not None:
            raise ConfigError("data.time_cut and data.time_quantiles: give at most one of them")
        for key, cut in (("time_cut", self.time_cut), ("time_quantiles", self.time_quantiles)):
            if cut is None:
                continue
            if len(cut) != 2 or not cut[0] <= cut[1]:
                raise ConfigError(f"data.{key}={cut}: expected two values [valid_from, test_from] with valid_from <= test_from")
            if key == "time_quantiles" and not 0.0 < cut[0] <= cut[1] < 1.0:
                raise ConfigError(f"data.{key}={cut}: expected quantiles in (0, 1)")
        if (self.time_cut is not None or self.time_quantiles is not None) and getattr(self, "split", None) != "temporal":
            raise ConfigError(f"data.time_cut / data.time_quantiles are for split temporal, not {getattr(self, 'split', None)!r}")


def _column(frame: pd.DataFrame, column: str, split: str) -> pd.Series:
    if column not in frame.columns:
        raise ValueError(f"{split} split: no column {column!r} (columns: {list(frame.columns)})")
    return frame[column]


def _times(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The time column as numbers (datetimes as int64 nanoseconds); NaN or text is refused."""
    values = _column(frame, column, "temporal")
    if pd.api.types.is_datetime64_any_dtype(values):
        if values.isna().any():
            raise ValueError(f"temporal split: column {column!r}: row {int(np.flatnonzero(values.isna())[0])} has no time")
        return values.astype("int64").to_numpy()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise ValueError(f"temporal split: column {column!r} is {values.dtype}; expected numbers or datetimes")
    times = values.to_numpy(np.float64)
    bad = ~np.isfinite(times)
    if bad.any():
        raise ValueError(f"temporal split: column {column!r}: row {int(np.flatnonzero(bad)[0])} is "
                         f"{values.iloc[int(np.flatnonzero(bad)[0])]!r}; expected a finite time")
    return times


def leave_last_parts(users: np.ndarray, times: np.ndarray, leave_last: int) -> dict[str, np.ndarray]:
    """Row indices of the per-user temporal split (the rule of the module docstring), each part in row order."""
    n = len(users)
    codes, _ = pd.factorize(users)
    order = np.lexsort((np.arange(n), times, codes))  # by user, then time, then row order
    counts = np.bincount(codes)
    sorted_codes = codes[order]
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # where each user's run starts in `order`
    from_end = counts[sorted_codes] - 1 - (np.arange(n) - first[sorted_codes])  # 0 = the user's last row
    n_test = np.minimum(leave_last, counts - 1)
    n_valid = np.minimum(leave_last, counts - 1 - n_test)
    part = np.zeros(n, dtype=np.int8)  # 0 train, 1 valid, 2 test; indexed by position in `order`
    part[from_end < n_test[sorted_codes]] = 2
    part[(from_end >= n_test[sorted_codes]) & (from_end < (n_test + n_valid)[sorted_codes])] = 1
    by_row = np.empty(n, dtype=np.int8)
    by_row[order] = part
    return {name: np.flatnonzero(by_row == i) for i, name in enumerate(SPLITS)}


def time_cut_parts(times: np.ndarray, valid_from: float, test_from: float) -> dict[str, np.ndarray]:
    """Row indices with time < valid_from (train), in [valid_from, test_from) (valid), >= test_from (test)."""
    return {"train": np.flatnonzero(times < valid_from),
            "valid": np.flatnonzero((times >= valid_from) & (times < test_from)),
            "test": np.flatnonzero(times >= test_from)}


def _cold_parts(frame: pd.DataFrame, column: str, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """10% of the values of ``column`` (seeded) with all their rows as test; valid 1/9 of the rest."""
    values = np.sort(_column(frame, column, split).unique())
    cold = rng.choice(values, size=max(1, int(round(0.1 * len(values)))), replace=False)
    is_cold = frame[column].isin(cold).to_numpy()
    warm = rng.permutation(np.flatnonzero(~is_cold))
    n_valid = int(round(len(warm) / 9))
    return {"train": np.sort(warm[n_valid:]), "valid": np.sort(warm[:n_valid]), "test": np.flatnonzero(is_cold)}


def split_frame(frame: pd.DataFrame, split: str, seed: int, item_column: str = "item_id", *,
                user_column: str = "user_id", time_column: str = "timestamp", leave_last: int = 10,
                time_cut: list[float] | None = None, time_quantiles: list[float] | None = None) -> dict[str, pd.DataFrame]:
    """``{"train", "valid", "test"}`` frames for ``split`` (one of ``SPLIT_KINDS``; see the module docstring)."""
    n = len(frame)
    if split == "random":
        order = np.random.default_rng(seed).permutation(n)
        a, b = int(round(0.8 * n)), int(round(0.9 * n))
        parts = {"train": order[:a], "valid": order[a:b], "test": order[b:]}
    elif split in ("cold_item", "cold_user"):
        column = item_column if split == "cold_item" else user_column
        parts = _cold_parts(frame, column, split, np.random.default_rng(seed))
    elif split == "temporal":
        times = _times(frame, time_column)
        if time_cut is not None:
            parts = time_cut_parts(times, *time_cut)
        elif time_quantiles is not None:
            parts = time_cut_parts(times, *np.quantile(times, time_quantiles)) if n else time_cut_parts(times, 0, 0)
        else:
            parts = leave_last_parts(_column(frame, user_column, split).to_numpy(), times, leave_last)
    else:
        raise ValueError(f"split {split!r}: expected one of {list(SPLIT_KINDS)}")
    return {name: frame.iloc[idx].reset_index(drop=True) for name, idx in parts.items()}


def split_by(frame: pd.DataFrame, options: SplitOptions, split: str, what: str, *, item_column: str = "item_id",
             user_column: str = "user_id", time_column: str = "timestamp") -> dict[str, pd.DataFrame]:
    """``split_frame`` with a config's split options; logs the sizes under ``what`` (the data set's name)."""
    splits = split_frame(frame, split, options.split_seed, item_column, user_column=user_column,
                         time_column=time_column, leave_last=options.leave_last, time_cut=options.time_cut,
                         time_quantiles=options.time_quantiles)
    detail = ""
    if split == "temporal":
        detail = (f" (time_cut {options.time_cut})" if options.time_cut is not None else
                  f" (time_quantiles {options.time_quantiles})" if options.time_quantiles is not None else
                  f" (leave_last {options.leave_last} per user)")
    log.info("%s %s split%s: %s", what, split, detail, {k: len(v) for k, v in splits.items()})
    return splits
