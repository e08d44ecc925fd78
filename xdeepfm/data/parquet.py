"""Ranking data larger than memory: partitioned Parquet shards, streamed.

A ``data`` section of ``kind: parquet`` names one glob per split (``configs/ml100k_xdeepfm_shards.yaml``;
the shards are written by ``python -m xdeepfm.data.shards``, see :mod:`xdeepfm.data.shards`)::

    data: {kind: parquet, train: datasets/ml100k_shards/train/*.parquet, valid: ..., test: ...}

The unit of work is one row group. ``ShardStream`` (an ``IterableDataset``) lists the units of
its files from the Parquet footers, orders them (a seeded permutation per epoch when shuffling)
and gives slot ``rank * num_workers + worker`` of ``world_size * num_workers`` the units
``slot, slot + slots, ...``: every row is read by exactly one (rank, DataLoader worker) pair per
epoch, none twice, none left out. Rows are shuffled within their row group; only one row group
per worker is in memory at a time. Each row carries its global position (row id) so predictions
gathered from several ranks can be put back in file order.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import pandas as pd
from torch.utils.data import IterableDataset, get_worker_info

from mmcore.config import check_range

SPLITS = ("train", "valid", "test")


@dataclass
class ParquetConfig:
    """Ranking data as Parquet shards: one glob per split (relative to the working directory)."""

    kind: Literal["parquet"]  # required: tells this section apart from the other data kinds
    train: str
    valid: str
    test: str
    split: str = "parquet"  # the name results give this data's split
    num_workers: int = 0  # DataLoader worker processes per rank reading (and encoding) train shards

    def check(self) -> None:
        """Refuse values that make no sense (``RankingExperiment`` calls it for its ``data`` section)."""
        check_range("data.num_workers", self.num_workers, low=0)

    def pattern(self, split: str) -> str:
        return {"train": self.train, "valid": self.valid, "test": self.test}[split]


@dataclass(frozen=True)
class Unit:
    """One row group of one shard and where its rows sit in the whole split."""

    path: str
    row_group: int
    first_row: int
    rows: int


def shard_files(pattern: str, where: str) -> list[Path]:
    """The files a glob names, sorted; an error naming the key when there are none."""
    files = sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{where}: no Parquet shards match {pattern!r} (write them with python -m xdeepfm.data.shards)")
    return files


def list_units(files: list[Path]) -> list[Unit]:
    """Every row group of ``files`` in order, read from the Parquet footers only."""
    import pyarrow.parquet as pq

    units, first = [], 0
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            units.append(Unit(str(path), group, first, rows))
            first += rows
    return units


def read_unit(unit: Unit, columns: list[str] | None = None) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.ParquetFile(unit.path).read_row_group(unit.row_group, columns=columns).to_pandas()


def iter_frames(units: list[Unit], columns: list[str] | None = None) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(where, frame)`` per row group, in order: the one streaming pass ``FeaturePipeline.fit_stream`` takes."""
    for unit in units:
        yield f"{unit.path} (row group {unit.row_group})", read_unit(unit, columns)


class ShardStream(IterableDataset):
    """Batches of rows from Parquet row groups, each row exactly once per epoch over ranks x workers.

    Yields ``encode(frame, row_ids)`` for every batch of up to ``batch_rows`` rows (by default
    the pair itself). ``set_epoch`` changes the shuffle, like ``DistributedSampler.set_epoch``.
    """

    def __init__(self, units: list[Unit], *, batch_rows: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = False, seed: int = 0, columns: list[str] | None = None,
                 encode: Callable[[pd.DataFrame, np.ndarray], Any] | None = None) -> None:
        if batch_rows < 1:
            raise ValueError(f"ShardStream: batch_rows={batch_rows}, expected >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardStream: rank {rank} is outside world_size {world_size}")
        self.units, self.batch_rows, self.rank, self.world_size = units, batch_rows, rank, world_size
        self.shuffle, self.seed, self.columns, self.encode = shuffle, seed, columns, encode
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def total_rows(self) -> int:
        return sum(u.rows for u in self.units)

    def assigned(self, worker: int = 0, num_workers: int = 1) -> list[Unit]:
        """The row groups of (this rank, ``worker``) this epoch."""
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units)) if self.shuffle
                 else np.arange(len(self.units)))
        slot, slots = self.rank * num_workers + worker, self.world_size * num_workers
        return [self.units[i] for i in order[slot::slots]]

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for unit in self.assigned(worker, num_workers):
            frame = read_unit(unit, self.columns)
            if len(frame) != unit.rows:
                raise ValueError(f"{unit.path}: row group {unit.row_group} has {len(frame)} rows, its footer says {unit.rows}")
            rows = unit.first_row + np.arange(unit.rows)
            if self.shuffle:
                perm = np.random.default_rng([self.seed, self.epoch, unit.first_row]).permutation(unit.rows)
                frame, rows = frame.iloc[perm], rows[perm]
            for start in range(0, unit.rows, self.batch_rows):
                chunk = frame.iloc[start : start + self.batch_rows].reset_index(drop=True)
                ids = rows[start : start + self.batch_rows]
                yield self.encode(chunk, ids) if self.encode is not None else (chunk, ids)
