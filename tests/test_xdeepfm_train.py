"""End to end on a few thousand real ML-100K rows: train 1 epoch, checkpoint, TensorBoard, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmfusion.config import ConfigError, build
from tests.xdeepfm_factory import make_tiny_bert
from xdeepfm import evaluate
from xdeepfm.checkpoint import load_checkpoint
from xdeepfm.data.movielens import MovieLensConfig, default_root, load_movielens_100k, split_frame
from xdeepfm.train import RankingConfig, load_config, run_config

DATA = default_root()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def tiny_config(tmp_path: Path, model_path: Path | None, split: str = "random", implementation: str = "ours") -> RankingConfig:
    fields = [
        {"name": "user_id", "kind": "categorical"},
        {"name": "item_id", "kind": "categorical"},
        {"name": "gender", "kind": "categorical"},
        {"name": "genres", "kind": "multi_valued", "max_len": 4},
        {"name": "release_year", "kind": "numeric"},
    ]
    if model_path is not None:
        fields.append({"name": "title", "kind": "text", "model_path": str(model_path), "max_tokens": 12})
    return build(RankingConfig, {
        "task": "ranking",
        "data": {"root": str(DATA), "split": split, "max_rows": 3000},
        "features": {"fields": fields, "text_cache_dir": str(tmp_path / "cache")},
        "model": {"implementation": implementation, "embedding_dim": 4, "cin_layer_sizes": [4, 4],
                  "dnn_hidden_units": [8]},
        "train": {"epochs": 1, "batch_size": 256, "progress": False},
    })


def test_movielens_columns_and_splits():
    frame = load_movielens_100k(MovieLensConfig(root=str(DATA)))
    assert len(frame) == 100_000
    row = frame[frame["item_id"] == 1].iloc[0]
    assert row["title"] == "Toy Story" and row["release_year"] == 1995
    assert row["genres"] == "Animation|Children's|Comedy"
    assert 0.5 < frame["label"].mean() < 0.6
    random = split_frame(frame, "random", 0)
    assert [len(random[s]) for s in ("train", "valid", "test")] == [80_000, 10_000, 10_000]
    cold = split_frame(frame, "cold_item", 0)
    assert not set(cold["test"]["item_id"]) & set(cold["train"]["item_id"])
    assert not set(cold["test"]["item_id"]) & set(cold["valid"]["item_id"])
    assert cold["test"]["item_id"].nunique() == round(0.1 * frame["item_id"].nunique())
    assert sum(len(v) for v in cold.values()) == 100_000


def test_train_one_epoch_writes_checkpoint_events_and_reloads(tmp_path, tiny_bert):
    out = tmp_path / "run"
    result = run_config(tiny_config(tmp_path, tiny_bert), out)
    assert (out / "best.safetensors").is_file() and (out / "last.safetensors").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert not list(out.glob("*.tmp"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1
    for split in ("valid", "test"):
        assert 0.0 <= metrics[split]["auc"] <= 1.0 and metrics[split]["logloss"] > 0
    ckpt = load_checkpoint(out / "best.safetensors")
    assert ckpt.config["model"]["embedding_dim"] == 4
    assert "title" in ckpt.features.fitted and ckpt.features.fitted["item_id"].vocabulary_size > 1
    # evaluate.run rebuilds everything from the checkpoint and reproduces the metrics
    again = evaluate.run(out / "best.safetensors", out=out / "eval.json")
    assert again["test"] == pytest.approx(result["test"])
    assert json.loads((out / "eval.json").read_text())["test"] == pytest.approx(result["test"])


def test_resume_continues_from_last_epoch(tmp_path, tiny_bert):
    out = tmp_path / "run"
    config = tiny_config(tmp_path, None)
    run_config(config, out)
    config.train.epochs = 2
    resumed = run_config(config, out, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_stock_deepctr_baseline_runs_on_same_features(tmp_path, tiny_bert, capsys):
    out = tmp_path / "stock"
    result = run_config(tiny_config(tmp_path, tiny_bert, split="cold_item", implementation="deepctr"), out)
    assert result["implementation"] == "deepctr" and 0.0 <= result["test"]["auc"] <= 1.0
    assert "title" not in load_checkpoint(out / "best.safetensors").features.fitted  # text dropped
    assert evaluate.run(out / "best.safetensors")["test"] == pytest.approx(result["test"])
    assert capsys.readouterr().out == ""  # deepctr's prints go to the log


def test_shipped_configs_load():
    for path in sorted((REPO / "xdeepfm" / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.task == "ranking", path


def test_config_error_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: ranking\nfeatures: {fields: [{name: a, kind: numeric}]}\ntrain: {epocs: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.train.epocs: unknown key"):
        load_config(path)


def test_train_and_evaluate_command_lines_dispatch_ranking(tmp_path):
    """train.py / evaluate.py run a `task: ranking` YAML through the xDeepFM trainer."""
    import yaml

    from mmfusion.cli import evaluate_main, train_main
    from mmfusion.config import to_dict

    config = tmp_path / "ranking.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_config(tmp_path, None))))
    out = tmp_path / "run"
    assert train_main(["--config", str(config), "--out", str(out), "--seed", "3", "--log-level", "WARNING"]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["seed"] == 3
    assert evaluate_main(["--checkpoint", str(out / "best.safetensors"), "--out", str(tmp_path / "eval"),
                          "--log-level", "WARNING"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert evaluated["test"]["auc"] == pytest.approx(trained["test"]["auc"], abs=1e-6)


def test_oov_dropout_replaces_only_the_named_field(tmp_path):
    import torch

    from xdeepfm.features import FeaturePipeline
    from xdeepfm.model import XDeepFMRanker
    from xdeepfm.train import SplitData, drop_to_oov

    config = tiny_config(tmp_path, None)
    frame = load_movielens_100k(config.data).iloc[:2000]
    pipeline = FeaturePipeline(config.features).fit(frame, "train")
    model = XDeepFMRanker([pipeline.fitted[f.name] for f in pipeline.spec.fields], config.model)
    X = SplitData.build(frame, pipeline, model.columns, "train").X
    assert (X[:, model.feature_index["item_id"][0]] > 0).all()  # every training value is in the vocabulary

    dropped = drop_to_oov(model, X, {"item_id": 0.3}, torch.Generator().manual_seed(0))
    col = model.feature_index["item_id"][0]
    share = float((dropped[:, col] == 0).float().mean())
    assert 0.25 < share < 0.35
    others = [i for i in range(X.shape[1]) if i != col]
    assert torch.equal(dropped[:, others], X[:, others]) and (X[:, col] > 0).all()  # the input is not modified
    assert drop_to_oov(model, X, {}, torch.Generator()) is X

    with pytest.raises(KeyError, match="train.oov_dropout: no field 'movie'"):
        drop_to_oov(model, X, {"movie": 0.1}, torch.Generator())
    with pytest.raises(ValueError, match="train.oov_dropout.genres: only single categorical fields"):
        drop_to_oov(model, X, {"genres": 0.1}, torch.Generator())
    with pytest.raises(ConfigError, match=r"oov_dropout.item_id=1.5: must be in \[0, 1\)"):
        build(RankingConfig, {"features": {"fields": [{"name": "item_id", "kind": "categorical"}]},
                              "train": {"oov_dropout": {"item_id": 1.5}}})
