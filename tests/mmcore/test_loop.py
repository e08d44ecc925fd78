"""The shared loop vocabulary: early stopping in both directions, run-directory names, epoch seeds."""

from __future__ import annotations

import math

from mmcore.loop import EarlyStopping, RunDir, epoch_seed, stop_requested


def test_early_stopping_max_and_min():
    auc = EarlyStopping("auc", patience=2, mode="max")
    assert [auc.step(v, e) for e, v in enumerate([0.70, 0.72, 0.71, None, 0.73], 1)] == [True, True, False, False, True]
    assert (auc.best, auc.best_epoch, auc.bad_epochs, auc.should_stop) == (0.73, 5, 0, False)
    mae = EarlyStopping("MAE", patience=2, mode="min")
    assert [mae.step(v, e) for e, v in enumerate([1.0, 0.9, 0.95, math.nan], 1)] == [True, True, False, False]
    assert mae.best == 0.9 and mae.should_stop  # two epochs without improvement: NaN never improves


def test_run_directory_names_are_the_same_for_both_models(tmp_path):
    run = RunDir(tmp_path / "r").create()
    assert [p.name for p in (run.best, run.last, run.metrics, run.config, run.tensorboard)] == \
        ["best.safetensors", "last.safetensors", "metrics.json", "config.json", "tensorboard"]
    assert run.predictions("test").name == "predictions_test.csv" and run.path.is_dir()


def test_epoch_seeds_and_stop_after():
    assert epoch_seed(2, 3, 1000) == 2003 and epoch_seed(0, 1, 100_003) == 1
    assert stop_requested(2, 2, epoch=2, last_epoch=5) and not stop_requested(2, 2, epoch=5, last_epoch=5)
    assert not stop_requested(1, 2, epoch=1, last_epoch=5) and not stop_requested(9, None, epoch=3, last_epoch=5)
