"""Side-by-side comparison: seeds x {ours no text, ours + BERT title, stock deepctr xDeepFM} x splits.

    python -m xdeepfm.compare --config configs/ml100k_xdeepfm.yaml --seeds 0 1 2 \
        --out runs/compare --doc docs/results_ranking.md

Every run goes to ``<out>/<split>/<variant>/seed<s>``; a run whose ``metrics.json`` exists is
reused, so an interrupted comparison resumes. The table (mean +- sample std over seeds, test
split) is written to ``--doc`` after every finished run.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from xdeepfm.train import RankingConfig, load_config, run_config

log = logging.getLogger(__name__)

VARIANTS = ("ours_notext", "ours_text", "deepctr_stock")
LABELS = {"ours_notext": "ours, no text", "ours_text": "ours + BERT title", "deepctr_stock": "stock deepctr xDeepFM"}
METRICS = ("auc", "logloss", "gauc", "ndcg@10", "hr@10", "precision@10")


def variant_config(base: RankingConfig, variant: str, split: str, seed: int) -> RankingConfig:
    config = copy.deepcopy(base)
    config.seed = seed
    config.data.split = split
    if variant == "ours_notext":
        config.features.fields = config.features.of_kind("categorical", "multi_valued", "numeric")
    config.model.implementation = "deepctr" if variant == "deepctr_stock" else "ours"
    return config


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def write_doc(doc: Path, out: Path, splits: list[str], seeds: list[int], command: str) -> None:
    lines = [
        "# Ranking results: MovieLens-100K (label = rating >= 4)",
        "",
        f"Command: `{command}`",
        "",
        f"Test-split metrics, mean ± sample std over seeds {seeds} (model init/shuffle seed; the data split is fixed).",
        "Top-K lists are each user's test impressions ranked by score. Early stopping on validation AUC.",
        "",
    ]
    for split in splits:
        lines += [f"## {split} split", "", "| model | runs | " + " | ".join(METRICS) + " | best epoch | train s/run |",
                  "|---|---|" + "---|" * (len(METRICS) + 2)]
        for variant in VARIANTS:
            results = []
            for seed in seeds:
                path = out / split / variant / f"seed{seed}" / "metrics.json"
                if path.is_file():
                    results.append(json.loads(path.read_text()))
            cells = [_cell([r["test"][m] for r in results if r["test"][m] is not None]) for m in METRICS]
            epochs = _cell([float(r["best_epoch"]) for r in results]).replace(".0000", "")
            secs = f"{np.mean([r['seconds']['train'] for r in results]):.0f}" if results else "-"
            lines.append(f"| {LABELS[variant]} | {len(results)} | " + " | ".join(cells) + f" | {epochs} | {secs} |")
        lines.append("")
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ml100k_xdeepfm.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=["random", "cold_item"], choices=["random", "cold_item"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--doc", default="docs/results_ranking.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = load_config(args.config)
    base.train.progress = False
    out, doc = Path(args.out), Path(args.doc)
    command = "python -m xdeepfm.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    for split in args.splits:
        for seed in args.seeds:
            for variant in args.variants:
                run_dir = out / split / variant / f"seed{seed}"
                if (run_dir / "metrics.json").is_file():
                    log.info("reusing %s", run_dir)
                    continue
                t0 = time.perf_counter()
                result = run_config(variant_config(base, variant, split, seed), run_dir)
                log.info("%s %s seed %d: test auc %.4f (%.0f s)", split, variant, seed, result["test"]["auc"],
                         time.perf_counter() - t0)
                write_doc(doc, out, args.splits, args.seeds, command)
    write_doc(doc, out, args.splits, args.seeds, command)
    print(doc.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
