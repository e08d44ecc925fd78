"""`compare` names its data set in the report, and evaluate.py scores the checkpoints compare writes
and those of a ranker with a behaviour history (it rebuilds the history column as the trainer did)."""

from __future__ import annotations

import json

import pytest

from mmapp.catalogue import generate_catalogue, write_catalogue
from mmapp.cli import evaluate_main
from mmcore.config import build
from tests.xdeepfm.test_compare import _config
from tests.xdeepfm.test_history import tiny_history_experiment
from xdeepfm.compare import main
from xdeepfm.evaluate import evaluate_checkpoint
from xdeepfm.experiment import RankingExperiment
from xdeepfm.train import train


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


def test_evaluate_scores_a_history_run_like_its_trainer(tmp_path):
    raw = tiny_history_experiment(tmp_path)
    trained = train(build(RankingExperiment, raw), tmp_path / "run")
    scored = evaluate_checkpoint(tmp_path / "run", splits=["test"])
    assert scored["test"]["auc"] == pytest.approx(trained["test"]["auc"], abs=1e-6)
    assert scored["test"]["logloss"] == pytest.approx(trained["test"]["logloss"], abs=1e-6)
