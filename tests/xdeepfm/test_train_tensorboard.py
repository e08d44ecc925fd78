"""TensorBoard of a ranking run, read back: learning rate, throughput, hparams, the tag card, one epoch axis."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmcore.config import build
from xdeepfm.data.movielens import default_root
from xdeepfm.experiment import RankingExperiment
from xdeepfm.train import train as train_ranking


@pytest.mark.skipif(not (default_root() / "u.data").is_file(), reason="MovieLens-100K is not on this machine")
def test_ranking_run_logs_lr_throughput_hparams_and_card(tmp_path):
    fields = [{"name": "user_id", "kind": "categorical"}, {"name": "item_id", "kind": "categorical"},
              {"name": "release_year", "kind": "numeric"}]
    cfg = build(RankingExperiment, {
        "task": "ranking",
        "data": {"root": str(default_root()), "split": "random", "max_rows": 2000},
        "features": {"fields": fields, "text_cache_dir": str(tmp_path / "cache")},
        "model": {"embedding_dim": 4, "cin_layer_sizes": [4, 4], "dnn_hidden_units": [8]},
        "train": {"epochs": 2, "batch_size": 256, "progress": False, "patience": 5},
    })
    out = tmp_path / "ranking"
    train_ranking(cfg, out)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/bce", "valid/auc", "valid/logloss", "lr/group0", "speed/train_rows_per_s"):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("train/bce")] == [e.step for e in events.Scalars("valid/auc")] == [1, 2]
    assert all(e.value > 0 for e in events.Scalars("speed/train_rows_per_s"))
    assert events.Scalars("lr/group0")[0].value == pytest.approx(cfg.train.lr)
    assert any(t.startswith("about/tags") for t in events.Tags()["tensors"])
    hparams = EventAccumulator(str(out / "tensorboard" / "hparams"))
    hparams.Reload()
    assert {"hparam/test_auc", "hparam/valid_auc"} <= set(hparams.Tags()["scalars"])
