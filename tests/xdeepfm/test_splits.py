"""The shared splits (xdeepfm.data.splits): exact rows on hand-made frames, continuity of the random
split, the temporal rules (per user leave-last-k, ties, short users, global cuts) and their configs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmcore.config import ConfigError, build
from xdeepfm.data import load_splits
from xdeepfm.data.movielens import MovieLensConfig, default_root, load_movielens_100k
from xdeepfm.data.splits import split_frame


def hand_frame() -> pd.DataFrame:
    """Three users; row ``r`` has ``row == r`` so the parts can be read off. User a: 6 rows with a
    tie at time 30 (rows 2 and 4: row order breaks it); user b: 3 rows; user c: 1 row."""
    return pd.DataFrame({
        "user_id": ["a", "b", "a", "a", "a", "c", "b", "a", "b", "a"],
        "item_id": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "timestamp": [10, 50, 30, 20, 30, 5, 40, 60, 45, 5],
        "row": range(10),
    })


def rows(splits: dict[str, pd.DataFrame]) -> dict[str, list[int]]:
    return {name: frame["row"].tolist() for name, frame in splits.items()}


def test_temporal_leave_last_gives_the_hand_computed_rows():
    # user a by time (row order on ties): 9 (5), 0 (10), 3 (20), 2 (30), 4 (30), 7 (60)
    # leave_last 2: test 4, 7; valid 3, 2; train 9, 0.
    # user b (3 rows: 6 (40), 8 (45), 1 (50)): test min(2, 3-1) = 2 -> 8, 1; valid min(2, 0) = 0; train 6.
    # user c (1 row): wholly in train.
    splits = split_frame(hand_frame(), "temporal", seed=0, leave_last=2)
    assert rows(splits) == {"train": [0, 5, 6, 9], "valid": [2, 3], "test": [1, 4, 7, 8]}


def test_temporal_leave_last_one_and_the_tie_order():
    splits = split_frame(hand_frame(), "temporal", seed=0, leave_last=1)
    # a: test 7, valid 4 (the later of the two rows at time 30 in row order); b: test 1, valid 8
    assert rows(splits) == {"train": [0, 2, 3, 5, 6, 9], "valid": [4, 8], "test": [1, 7]}
    reordered = hand_frame().iloc[[0, 1, 4, 3, 2, 5, 6, 7, 8, 9]].reset_index(drop=True)
    assert split_frame(reordered, "temporal", seed=0, leave_last=1)["valid"]["row"].tolist() == [2, 8]


def test_temporal_global_cuts():
    frame = hand_frame()
    by_cut = split_frame(frame, "temporal", seed=0, time_cut=[30, 50])
    assert rows(by_cut) == {"train": [0, 3, 5, 9], "valid": [2, 4, 6, 8], "test": [1, 7]}
    # quantiles 0.5 / 0.8 of [5, 5, 10, 20, 30, 30, 40, 45, 50, 60] (linear): 30 and 46
    by_quantile = split_frame(frame, "temporal", seed=0, time_quantiles=[0.5, 0.8])
    assert rows(by_quantile) == {"train": [0, 3, 5, 9], "valid": [2, 4, 6, 8], "test": [1, 7]}


def test_temporal_refuses_a_missing_or_non_numeric_time_column():
    with pytest.raises(ValueError, match="temporal split: no column 'timestamp'"):
        split_frame(hand_frame().drop(columns="timestamp"), "temporal", seed=0)
    with pytest.raises(ValueError, match=r"column 'timestamp' is \w+; expected numbers or datetimes"):
        split_frame(hand_frame().assign(timestamp="x"), "temporal", seed=0)
    with pytest.raises(ValueError, match="expected one of"):
        split_frame(hand_frame(), "by_moon", seed=0)


def test_cold_user_holds_out_whole_users():
    frame = pd.DataFrame({"user_id": np.repeat(np.arange(20), 5), "item_id": np.arange(100), "row": range(100)})
    splits = split_frame(frame, "cold_user", seed=3)
    test_users = set(splits["test"]["user_id"])
    assert len(test_users) == 2 and len(splits["test"]) == 10
    assert not test_users & set(splits["train"]["user_id"]) and not test_users & set(splits["valid"]["user_id"])
    assert sorted(sum(rows(splits).values(), [])) == list(range(100))


def test_random_split_is_the_historic_permutation():
    """Continuity: ``random`` is ``default_rng(seed).permutation`` cut at round(0.8 n), round(0.9 n)."""
    frame = pd.DataFrame({"row": range(37)})
    order = np.random.default_rng(5).permutation(37)
    assert rows(split_frame(frame, "random", seed=5)) == {
        "train": order[:30].tolist(), "valid": order[30:33].tolist(), "test": order[33:].tolist()}


def test_ml100k_temporal_split():
    """Every user keeps >= 1 train rating and none of their test ratings is earlier than a train one."""
    splits = load_splits(MovieLensConfig(root=str(default_root()), split="temporal"))
    assert {k: len(v) for k, v in splits.items()} == {"train": 81172, "valid": 9398, "test": 9430}
    train, test = splits["train"], splits["test"]
    assert set(test["user_id"]) <= set(train["user_id"])
    latest_train = train.groupby("user_id")["timestamp"].max()
    earliest_test = test.groupby("user_id")["timestamp"].min()
    assert (earliest_test >= latest_train.loc[earliest_test.index]).all()
    whole = load_movielens_100k(MovieLensConfig(root=str(default_root())))
    assert sum(len(v) for v in splits.values()) == len(whole)


def test_split_options_are_checked():
    assert build(MovieLensConfig, {"split": "temporal", "leave_last": 3}).leave_last == 3
    with pytest.raises(ConfigError, match=r"data.leave_last=0: must be >= 1"):
        MovieLensConfig(split="temporal", leave_last=0).check()
    with pytest.raises(ConfigError, match="time_cut / data.time_quantiles are for split temporal"):
        MovieLensConfig(time_cut=[1, 2]).check()
    with pytest.raises(ConfigError, match=r"time_quantiles=\[0.9, 0.8\]: expected two values"):
        MovieLensConfig(split="temporal", time_quantiles=[0.9, 0.8]).check()
    with pytest.raises(ConfigError, match="at most one"):
        MovieLensConfig(split="temporal", time_cut=[1, 2], time_quantiles=[0.8, 0.9]).check()
