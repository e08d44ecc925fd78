"""`compare` names its data set in the report, and evaluate.py scores the checkpoints compare writes
and those of a ranker with a behaviour history (it rebuilds the history column as the trainer did)."""

from __future__ import annotations

import json

import pytest

from mmapp.catalogue import generate_catalogue, write_catalogue
from mmapp.cli import evaluate_main
from mmcore.config import build
from tests.xdeepfm.test_compare import _config
from xdeepfm.compare import main
from xdeepfm.data.movielens import default_root
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
    raw = {
        "task": "ranking",
        "data": {"root": str(default_root()), "split": "random", "max_rows": 3000},
        "features": {"fields": [
            {"name": "user_id", "kind": "categorical"}, {"name": "item_id", "kind": "categorical"},
            {"name": "genres", "kind": "multi_valued", "max_len": 4},
            {"name": "history", "kind": "sequence", "target": "item_id", "content": ["genres"], "max_len": 5}],
            "text_cache_dir": str(tmp_path / "cache")},
        "history": {"max_len": 5},
        "model": {"embedding_dim": 4, "cin_layer_sizes": [4, 4], "dnn_hidden_units": [8], "attention_hidden_units": [4]},
        "train": {"epochs": 1, "batch_size": 256, "progress": False},
    }
    trained = train(build(RankingExperiment, raw), tmp_path / "run")
    scored = evaluate_checkpoint(tmp_path / "run", splits=["test"])
    assert scored["test"]["auc"] == pytest.approx(trained["test"]["auc"], abs=1e-6)
    assert scored["test"]["logloss"] == pytest.approx(trained["test"]["logloss"], abs=1e-6)
