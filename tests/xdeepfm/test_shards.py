"""Parquet shards: every row exactly once over ranks x DataLoader workers, the one-pass feature fit, the writer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader

from mmcore.config import build
from xdeepfm.data import load_splits
from xdeepfm.data.movielens import default_root
from xdeepfm.data.parquet import ParquetConfig, ShardStream, iter_frames, list_units, shard_files
from xdeepfm.data.shards import main as shards_main
from xdeepfm.data.shards import write_shards
from xdeepfm.features import FeaturePipeline, FeatureSpec, FittedField


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "row": np.arange(n),
        "user_id": rng.integers(0, 40, n),
        "genres": ["|".join(rng.choice(["a", "b", "c", "d", "e"], rng.integers(0, 3))) for _ in range(n)],
        "age": rng.normal(35.0, 9.0, n) * 1e3,
        "label": rng.integers(0, 2, n).astype(np.float32),
    })


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """1,003 rows in 8 shards (7 of 130 rows, one of 93) cut into row groups of 50: 23 row groups of unequal size."""
    directory = tmp_path_factory.mktemp("shards")
    source = frame(1003)
    write_shards(source, directory, rows_per_shard=130, row_group_rows=50)
    return directory, source


def rows_read(units, rank: int, world: int, workers: int, epoch: int) -> list[int]:
    """What one rank's DataLoader (``workers`` processes) yields in ``epoch``: the `row` column of every batch."""
    dataset = ShardStream(units, batch_rows=16, rank=rank, world_size=world, shuffle=True, seed=7)
    dataset.set_epoch(epoch)
    seen = []
    for chunk, ids in DataLoader(dataset, batch_size=None, num_workers=workers):
        assert np.array_equal(chunk["row"].to_numpy(), ids)  # the global row id is the row's position in the split
        seen.extend(ids.tolist())
    return seen


def test_each_row_exactly_once_across_two_ranks_and_two_workers(sharded):
    directory, source = sharded
    units = list_units(shard_files(str(directory / "*.parquet"), "data.train"))
    assert len(units) == 23 and sum(u.rows for u in units) == len(source)
    orders = []
    for epoch in (0, 1):
        per_rank = [rows_read(units, rank, world=2, workers=2, epoch=epoch) for rank in (0, 1)]
        everything = per_rank[0] + per_rank[1]
        assert len(everything) == len(source)  # nothing read twice ...
        assert sorted(everything) == list(range(len(source)))  # ... and nothing left out
        assert set(per_rank[0]).isdisjoint(per_rank[1]) and min(map(len, per_rank)) > 300  # both ranks get a real share
        orders.append(everything)
    assert orders[0] != orders[1]  # reshuffled per epoch
    # the same epoch twice gives the same order (a resumed run replays it)
    assert rows_read(units, 0, 2, 2, epoch=1) == rows_read(units, 0, 2, 2, epoch=1)


def test_unshuffled_stream_keeps_file_order(sharded):
    directory, source = sharded
    units = list_units(shard_files(str(directory / "*.parquet"), "data.valid"))
    ids = np.concatenate([ids for _, ids in ShardStream(units, batch_rows=64)])
    assert np.array_equal(ids, np.arange(len(source)))


def test_streaming_fit_matches_fit_in_memory(sharded):
    directory, source = sharded
    spec = build(FeatureSpec, {"fields": [{"name": "user_id", "kind": "categorical"},
                                          {"name": "genres", "kind": "multi_valued", "max_len": 2},
                                          {"name": "age", "kind": "numeric"}]})
    units = list_units(shard_files(str(directory / "*.parquet"), "data.train"))
    streamed = FeaturePipeline(spec).fit_stream(iter_frames(units)).fitted
    whole = FeaturePipeline(spec).fit(source).fitted
    for name in ("user_id", "genres"):
        assert streamed[name].vocabulary == whole[name].vocabulary
    assert streamed["age"].mean == pytest.approx(whole["age"].mean, rel=1e-12)
    assert streamed["age"].std == pytest.approx(whole["age"].std, rel=1e-12)
    assert streamed["age"].std == pytest.approx(float(source["age"].std(ddof=0)), rel=1e-12)
    # one chunk is exactly fit(): same floats, bit for bit
    one = FeaturePipeline(spec).fit_stream([("train", source)]).fitted["age"]
    assert (one.mean, one.std) == (whole["age"].mean, whole["age"].std)
    assert isinstance(one, FittedField)
    with pytest.raises(ValueError, match="zero chunks"):
        FeaturePipeline(spec).fit_stream([])
    bad = source.copy()
    bad.loc[5, "age"] = np.nan
    with pytest.raises(ValueError, match=r"shard-2: column 'age' \(numeric\): row 5"):
        FeaturePipeline(spec).fit_stream([("shard-1", source), ("shard-2", bad)])


def test_bad_inputs_are_named(tmp_path, sharded):
    with pytest.raises(FileNotFoundError, match=r"data.train: no Parquet shards match"):
        shard_files(str(tmp_path / "nothing" / "*.parquet"), "data.train")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="broken.parquet: not a readable Parquet file"):
        list_units([tmp_path / "broken.parquet"])
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        ShardStream([], batch_rows=4, rank=2, world_size=2)


def test_writer_command_line_round_trip(tmp_path):
    config = tmp_path / "ml.yaml"
    config.write_text(f"task: ranking\ndata: {{root: {default_root()}, max_rows: 900}}\n"
                      "features: {fields: [{name: user_id, kind: categorical}]}\n")
    out = tmp_path / "shards"
    assert shards_main(["--from-config", str(config), "--out", str(out), "--rows-per-shard", "200"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == {"train": 720, "valid": 90, "test": 90}
    assert manifest["splits"]["train"]["files"] == [f"part-{i:05d}.parquet" for i in range(4)]
    data = build(ParquetConfig, {"kind": "parquet", **{s: str(out / s / "*.parquet") for s in ("train", "valid", "test")}})
    from xdeepfm.data.movielens import MovieLensConfig

    original = load_splits(MovieLensConfig(root=str(default_root()), max_rows=900))
    for name, frame_ in load_splits(data).items():
        pd.testing.assert_frame_equal(frame_, original[name])
