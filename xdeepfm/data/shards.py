"""Write a ranking config's data as partitioned Parquet shards, for data larger than memory.

One folder per split, ``part-NNNNN.parquet`` files of ``--rows-per-shard`` rows, each cut into row
groups of ``--row-group-rows``, plus ``manifest.json`` (the source config, its data section, the
rows and files per split)::

    python -m xdeepfm.data.shards --from-config configs/ml100k_xdeepfm.yaml --out datasets/ml100k_shards \\
        --rows-per-shard 20000 --row-group-rows 5000

Train on them with a ``data`` section of ``kind: parquet`` (``configs/ml100k_xdeepfm_shards.yaml``);
:mod:`xdeepfm.data.parquet` reads and streams them (``ShardStream``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from mmcore.config import ConfigError, to_dict
from mmcore.files import atomic_write, write_json
from xdeepfm.data import load_splits
from xdeepfm.data.parquet import SPLITS, ParquetConfig
from xdeepfm.experiment import load_experiment

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def write_shards(frame: pd.DataFrame, directory: Path, rows_per_shard: int, row_group_rows: int | None = None) -> list[Path]:
    """``frame`` as ``directory/part-NNNNN.parquet`` files of ``rows_per_shard`` rows, each written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    try:
        config = load_experiment(args.from_config)
        if isinstance(config.data, ParquetConfig):
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
