"""`compare` names its data set in the report, and evaluate.py scores the checkpoints compare writes."""

from __future__ import annotations

import json

import pytest

from mmapp.catalogue import generate_catalogue, write_catalogue
from mmapp.cli import evaluate_main
from tests.xdeepfm.test_compare import _config
from xdeepfm.compare import main


def test_evaluate_accepts_compare_runs(tmp_path, capsys):
    data_dir = tmp_path / "ec"
    write_catalogue(generate_catalogue(2, n_videos=30, n_users=40, impressions_per_user=10, preset="tiny"), data_dir)
    config = _config(tmp_path / "none.yaml", data_dir, None)
    out = tmp_path / "runs"
    assert main(["--configs", str(config), "--seeds", "0", "--out", str(out)]) == 0
    report = (out / "results.md").read_text()
    assert f"Data (none): kind ecommerce, path `{data_dir}` (seed=2" in report and "split random, split_seed 1." in report
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(out / "none" / "seed0")]) == 0  # the run directory compare wrote
    scored = json.loads(capsys.readouterr().out)
    assert scored["test"] == pytest.approx(json.loads((out / "none" / "seed0" / "metrics.json").read_text())["test"])
