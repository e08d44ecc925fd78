"""Every shipped ``configs/*.yaml`` builds with the schema of its task (and fails the test when one breaks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmapp.cli import load_experiment
from mmcore.config import ConfigError, load_yaml
from mmfusion.experiment import SentimentExperiment
from mmfusion.worlds_study import WorldsStudy, load_study
from xdeepfm.experiment import RankingExperiment
from xdeepfm.recall_eval import RecallExperiment, load_recall_experiment

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SCHEMA = {"sentiment": SentimentExperiment, "ranking": RankingExperiment}


def test_there_are_configs_of_every_task():
    tasks = {load_yaml(path).get("task", "sentiment") for path in CONFIGS}
    assert len(CONFIGS) >= 10 and tasks == {"sentiment", "ranking", "recall", "worlds_study"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_builds(path):
    if load_yaml(path).get("task") == "recall":  # the recall channels (python -m xdeepfm.recall_eval, mmfusion recommender)
        cfg = load_recall_experiment(path, ["merge.n=50"])
        assert isinstance(cfg, RecallExperiment) and cfg.merge.n == 50
        return
    if load_yaml(path).get("task") == "worlds_study":  # a study over sentiment recipes (python -m mmfusion.worlds_study)
        study, _ = load_study(path)  # builds every candidate x world x variant
        assert isinstance(study, WorldsStudy) and study.candidates
        return
    task, cfg = load_experiment(path, [])
    assert isinstance(cfg, SCHEMA[task])
    task_again, tweaked = load_experiment(path, ["train.epochs=1"])
    assert task_again == task and tweaked.train.epochs == 1


def test_unknown_task_is_refused(tmp_path):
    (tmp_path / "x.yaml").write_text("task: clustering\n")
    with pytest.raises(ConfigError, match=r"x.yaml: task: 'clustering' is not one of \['ranking', 'sentiment'\]"):
        load_experiment(tmp_path / "x.yaml", [])
