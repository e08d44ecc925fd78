"""Ranking data larger than memory: partitioned Parquet shards, streamed.

Write any configured data set to shards (one folder per split, ``part-NNNNN.parquet`` files of
``--rows-per-shard`` rows, each cut into row groups of ``--row-group-rows``)::

    python -m xdeepfm.data.shards --from-config configs/ml100k_xdeepfm.yaml --out datasets/ml100k_shards \\
        --rows-per-shard 20000 --row-group-rows 5000

and train on them with a ``data`` section of ``kind: parquet`` (``configs/ml100k_xdeepfm_shards.yaml``)::

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

import argparse
import glob
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import pandas as pd
from torch.utils.data import IterableDataset, get_worker_info

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"


@dataclass
class ParquetConfig:
    """Ranking data as Parquet shards: one glob per split (relative to the working directory)."""

    kind: Literal["parquet"]  # required: tells this section apart from the other data kinds
    train: str
    valid: str
    test: str
    split: str = "parquet"  # the name results give this data's split
    num_workers: int = 0  # DataLoader worker processes per rank reading (and encoding) train shards

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers}: must be >= 0")

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


# --------------------------------------------------------------------------- writing shards


def write_shards(frame: pd.DataFrame, directory: Path, rows_per_shard: int, row_group_rows: int | None = None) -> list[Path]:
    """``frame`` as ``directory/part-NNNNN.parquet`` files of ``rows_per_shard`` rows, each written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmfusion.files import atomic_write

    if rows_per_shard < 1 or (row_group_rows is not None and row_group_rows < 1):
        raise ValueError(f"rows_per_shard={rows_per_shard}, row_group_rows={row_group_rows}: both must be >= 1")
    paths = []
    for i, start in enumerate(range(0, max(len(frame), 1), rows_per_shard)):
        table = pa.Table.from_pandas(frame.iloc[start : start + rows_per_shard], preserve_index=False)
        path = directory / f"part-{i:05d}.parquet"
        atomic_write(path, lambda tmp, t=table: pq.write_table(t, tmp, row_group_size=row_group_rows or rows_per_shard))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m xdeepfm.data.shards --from-config C --out DIR --rows-per-shard N``."""
    parser = argparse.ArgumentParser(prog="python -m xdeepfm.data.shards", description=(
        "Write the train/valid/test splits of a ranking config's data to Parquet shards."))
    parser.add_argument("--from-config", required=True, type=Path, help="a ranking YAML (its data section is read)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (train/, valid/, test/, manifest.json)")
    parser.add_argument("--rows-per-shard", required=True, type=int)
    parser.add_argument("--row-group-rows", type=int, help="rows per row group (default: one row group per shard)")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from mmfusion.config import ConfigError, to_dict
    from mmfusion.files import write_json
    from xdeepfm.data import load_splits
    from xdeepfm.train import load_config

    try:
        config = load_config(args.from_config)
        if getattr(config.data, "kind", None) == "parquet":
            raise ConfigError(f"{args.from_config}: data is already kind: parquet")
        splits = load_splits(config.data)
        manifest: dict[str, Any] = {"source_config": str(args.from_config), "data": to_dict(config.data), "splits": {}}
        for name in SPLITS:
            paths = write_shards(splits[name], args.out / name, args.rows_per_shard, args.row_group_rows)
            manifest["splits"][name] = {"rows": len(splits[name]), "files": [p.name for p in paths]}
            log.info("%s: %d rows in %d shards under %s", name, len(splits[name]), len(paths), args.out / name)
        write_json(args.out / MANIFEST, manifest)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(json.dumps({name: manifest["splits"][name]["rows"] for name in SPLITS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
