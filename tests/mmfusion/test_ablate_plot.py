"""The ablation study's PNG (mmfusion.ablate.plot_results) and its link in the markdown."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image

from mmfusion import ablate


def _runs(mae: float, acc: float) -> list[dict]:
    return [{"test": {**{k: 0.5 for k in ablate.TABLE_KEYS}, "MAE": mae + d, "Non0_acc_2": acc - d}} for d in (0.0, 0.02)]


def test_plot_results_writes_a_png_beside_the_markdown(tmp_path):
    results = {"full": _runs(0.70, 0.80), "no_lgt": _runs(0.75, 0.78), "text_only": _runs(0.90, 0.70)}
    doc = tmp_path / "docs" / "results_synthmosi.md"
    ablate.write_doc(doc, "python -m mmfusion.ablate ...", Path("configs/x.yaml"), [0, 1], results)
    png = ablate.plot_results(results, doc.with_suffix(".png"))
    assert png == tmp_path / "docs" / "results_synthmosi.png" and png.stat().st_size > 5_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert width >= 800 and height >= 200
    assert "![Test metrics per variant, mean ± std over seeds](results_synthmosi.png)" in doc.read_text()
    # a variant whose runs lack a metric still plots (as an empty bar)
    ablate.plot_results({"full": [{"test": {"MAE": None, "Non0_acc_2": 0.8}}]}, tmp_path / "partial.png")
    assert (tmp_path / "partial.png").stat().st_size > 0
