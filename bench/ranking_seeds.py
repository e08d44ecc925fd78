"""Mean ± std (sample std, n - 1) of the test metrics of ranking runs, one line per group of seeds.

    python bench/ranking_seeds.py runs/ml100k_history runs/ml100k_temporal

Each argument is a directory holding ``seed*/metrics.json`` (what ``train.py --out DIR/seedN`` writes).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def summarize(directory: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(directory.glob("seed*/metrics.json"))]
    if not runs:
        return f"{directory}: no seed*/metrics.json"

    def stat(key: str) -> str:
        values = [r["test"][key] for r in runs]
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{key} {statistics.mean(values):.4f} ± {spread:.4f}"

    per_seed = ", ".join(f"seed {r['seed']}: {r['test']['auc']:.4f} (epoch {r['best_epoch']})" for r in runs)
    return f"{directory}: {len(runs)} seeds; test {stat('auc')}, {stat('gauc')}, {stat('logloss')}; auc per seed: {per_seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    for directory in parser.parse_args().directories:
        print(summarize(directory))


if __name__ == "__main__":
    main()
