"""The comparison's PNGs (xdeepfm.compare.plot_table) and their links in the markdown."""

from __future__ import annotations

import json

from xdeepfm import compare


def _write_runs(out, split, variant, aucs):
    for seed, auc in enumerate(aucs):
        run = out / split / variant / f"seed{seed}"
        run.mkdir(parents=True)
        test = {m: auc for m in compare.METRICS}
        run.joinpath("metrics.json").write_text(json.dumps({"test": test, "best_epoch": 2, "seed": seed,
                                                            "seconds": {"train": 1.0}}))


def test_movielens_doc_gets_its_png(tmp_path):
    out = tmp_path / "runs"
    for split in ("random", "cold_item"):
        for variant, base in zip(compare.VARIANTS, (0.70, 0.74, 0.72)):
            _write_runs(out, split, variant, [base, base + 0.01])
    doc = tmp_path / "docs" / "results_ranking.md"
    doc.parent.mkdir()
    compare.write_doc(doc, out, ["random", "cold_item"], [0, 1], "python -m xdeepfm.compare ...")
    png = tmp_path / "docs" / "results_ranking.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    assert "![Test metrics per split and model](results_ranking.png)" in doc.read_text()


def test_plot_table_with_one_run_and_a_missing_metric(tmp_path):
    tables = {"e-commerce": {"none": [{"test": {"auc": 0.7, "gauc": None, "ndcg@10": 0.5}}], "uni": []}}
    path = compare.plot_table(tables, tmp_path / "x_ecommerce.png", "E-commerce catalogue")
    assert path.stat().st_size > 0
    assert compare.ecommerce_png(tmp_path / "results_ranking.md").name == "results_ranking_ecommerce.png"
