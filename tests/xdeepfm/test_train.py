"""End to end on a few thousand real ML-100K rows: train 1 epoch, checkpoint, TensorBoard, evaluate; resume,
--stop-after and the device choice."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from mmcore.checkpoint import CheckpointError, save_checkpoint
from mmcore.config import ConfigError, build
from mmcore.loop import RunDir, RunDirError
from tests.xdeepfm_factory import make_tiny_bert
from xdeepfm.checkpoint import load_ranking_checkpoint
from xdeepfm.data.movielens import MovieLensConfig, default_root, load_movielens_100k, split_frame
from xdeepfm.evaluate import evaluate_checkpoint
from xdeepfm.experiment import RankingExperiment, load_experiment
from xdeepfm.train import train

DATA = default_root()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def tiny_config(tmp_path: Path, model_path: Path | None, split: str = "random", implementation: str = "ours") -> RankingExperiment:
    fields = [
        {"name": "user_id", "kind": "categorical"},
        {"name": "item_id", "kind": "categorical"},
        {"name": "gender", "kind": "categorical"},
        {"name": "genres", "kind": "multi_valued", "max_len": 4},
        {"name": "release_year", "kind": "numeric"},
    ]
    if model_path is not None:
        fields.append({"name": "title", "kind": "text", "model_path": str(model_path), "max_tokens": 12})
    return build(RankingExperiment, {
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
    result = train(tiny_config(tmp_path, tiny_bert), out)
    assert (out / "best.safetensors").is_file() and (out / "last.safetensors").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 0
    assert not list(out.glob("*.tmp"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1
    for split in ("valid", "test"):
        assert 0.0 <= metrics[split]["auc"] <= 1.0 and metrics[split]["logloss"] > 0
    ckpt = load_ranking_checkpoint(out / "best.safetensors")
    assert ckpt.config["model"]["embedding_dim"] == 4
    assert "title" in ckpt.features.fitted and ckpt.features.fitted["item_id"].vocabulary_size > 1
    # evaluate_checkpoint rebuilds everything from the checkpoint (given as its run directory) and reproduces the metrics
    again = evaluate_checkpoint(out, out_dir=out / "eval")
    assert again["test"] == pytest.approx(result["test"]) and again["checkpoint"] == str(out / "best.safetensors")
    assert json.loads((out / "eval" / "eval_metrics.json").read_text())["test"] == pytest.approx(result["test"])


def test_resume_continues_from_last_epoch(tmp_path, tiny_bert):
    out = tmp_path / "run"
    config = tiny_config(tmp_path, None)
    train(config, out)
    config.train.epochs = 2
    resumed = train(config, out, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_stock_deepctr_baseline_runs_on_same_features(tmp_path, tiny_bert, capsys):
    out = tmp_path / "stock"
    result = train(tiny_config(tmp_path, tiny_bert, split="cold_item", implementation="deepctr"), out)
    assert result["implementation"] == "deepctr" and 0.0 <= result["test"]["auc"] <= 1.0
    assert "title" not in load_ranking_checkpoint(out / "best.safetensors").features.fitted  # text dropped
    assert evaluate_checkpoint(out / "best.safetensors")["test"] == pytest.approx(result["test"])
    assert capsys.readouterr().out == ""  # deepctr's prints go to the log
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "config.json", "metrics.json", "run.json"]
    with pytest.raises(ValueError, match="the stock baseline.*trains in one go"):
        train(tiny_config(tmp_path, None, implementation="deepctr"), tmp_path / "stock2", stop_after=1)


def test_config_error_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: ranking\nfeatures: {fields: [{name: a, kind: numeric}]}\ntrain: {epocs: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.train.epocs: unknown key"):
        load_experiment(path)
    path.write_text("task: ranking\nseed: 3\nfeatures: {fields: [{name: a, kind: numeric}]}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.seed: unknown key"):  # the seed is train.seed
        load_experiment(path)


def test_load_experiment_base_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("task: ranking\nfeatures: {fields: [{name: a, kind: numeric}]}\ntrain: {epochs: 3, lr: 0.01}\n")
    (tmp_path / "variant.yaml").write_text("base: base.yaml\ndata: {split: cold_item}\n")
    cfg = load_experiment(tmp_path / "variant.yaml", ["train.seed=7", "train.grad_clip=1.5", "train.device=cpu"])
    assert (cfg.data.split, cfg.train.epochs, cfg.train.lr) == ("cold_item", 3, 0.01)
    assert (cfg.train.seed, cfg.train.grad_clip, cfg.train.device) == (7, 1.5, "cpu")
    defaults = load_experiment(base)
    assert (defaults.train.seed, defaults.train.grad_clip, defaults.train.device) == (0, None, "auto")
    with pytest.raises(ConfigError, match=r"variant.yaml.train.sed: unknown key"):
        load_experiment(tmp_path / "variant.yaml", ["train.sed=1"])
    with pytest.raises(ConfigError, match=r"train.grad_clip=-1.0: must be >= 0"):
        load_experiment(base, ["train.grad_clip=-1"])


def test_train_and_evaluate_command_lines_dispatch_ranking(tmp_path):
    """train.py / evaluate.py run a `task: ranking` YAML through the xDeepFM trainer."""
    import yaml

    from mmapp.cli import evaluate_main, train_main
    from mmcore.config import to_dict

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
        build(RankingExperiment, {"features": {"fields": [{"name": "item_id", "kind": "categorical"}]},
                              "train": {"oov_dropout": {"item_id": 1.5}}})


def _weights(path: Path) -> dict:
    return load_ranking_checkpoint(path).model_state


def test_stop_after_then_resume_equals_uninterrupted_run(tmp_path):
    """--stop-after 1, then --resume twice (the second stops again, the third finishes): the same
    weights, history and metrics as one uninterrupted run, bit for bit (dropout and OOV dropout on,
    so the per-epoch seeds must be replayed)."""
    config = tiny_config(tmp_path, None)
    config.model.dnn_dropout = 0.2
    config.train.oov_dropout = {"item_id": 0.3}
    config.train.epochs, config.train.patience = 3, 5
    full = train(config, tmp_path / "full")
    cut = tmp_path / "cut"
    assert train(config, cut, stop_after=1) == {"stopped_after_epoch": 1}
    assert RunDir(cut).last.is_file() and not RunDir(cut).metrics.exists()
    assert load_ranking_checkpoint(RunDir(cut).last).state["epoch"] == 1
    assert train(config, cut, resume=True, stop_after=1) == {"stopped_after_epoch": 2}
    resumed = train(config, cut, resume=True)
    for key in ("best_epoch", "valid", "test", "history"):
        assert resumed[key] == full[key], key
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for name in ("best.safetensors", "last.safetensors"):
        ours, theirs = _weights(cut / name), _weights(tmp_path / "full" / name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (name, key)
    # stop_after beyond the last epoch simply finishes the run
    assert "test" in train(config, tmp_path / "long", stop_after=10)


def test_device_cpu_and_auto_train_and_cuda_is_refused_without_cuda(tmp_path):
    for device in ("cpu", "auto"):
        config = tiny_config(tmp_path, None)
        config.train.device = device
        result = train(config, tmp_path / device)
        assert 0.0 <= result["test"]["auc"] <= 1.0
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    for device, message in (("cuda", r"train.device: 'cuda' but CUDA is not available on this machine"),
                            ("cuda:1", r"train.device: 'cuda:1' but CUDA is not available"),
                            ("gpu", r"train.device: 'gpu' is not one of auto \| cpu \| cuda \| cuda:N")):
        config = tiny_config(tmp_path, None)
        config.train.device = device
        with pytest.raises(ValueError, match=message):
            train(config, tmp_path / "refused")
        config.model.implementation = "deepctr"  # the baseline takes the same device
        with pytest.raises(ValueError, match=message):
            train(config, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused before anything is written


def test_grad_clip_is_applied_to_every_step(tmp_path, monkeypatch):
    import xdeepfm.train as trainer

    calls = []
    original = trainer.clip_gradients
    monkeypatch.setattr(trainer, "clip_gradients", lambda model, max_norm: calls.append(max_norm) or original(model, max_norm))
    config = tiny_config(tmp_path, None)
    config.train.grad_clip = 1e-9
    clipped = train(config, tmp_path / "clipped")
    assert calls and set(calls) == {1e-9}  # one call per step, with the configured norm
    assert clipped["history"][0]["train_bce"] != train(tiny_config(tmp_path, None), tmp_path / "free")["history"][0]["train_bce"]


# --------------------------------------------------------------------- configs that make no sense

NONSENSE = [
    ("train.lr=-0.1", r"train.lr=-0.1: must be > 0.0"),
    ("train.lr=0", r"train.lr=0.0: must be > 0.0"),
    ("train.lr=.nan", r"train.lr=nan: expected a number, got NaN"),
    ("train.batch_size=0", r"train.batch_size=0: must be >= 1"),
    ("train.eval_batch_size=-5", r"train.eval_batch_size=-5: must be >= 1"),
    ("train.epochs=0", r"train.epochs=0: must be >= 1"),
    ("train.patience=-1", r"train.patience=-1: must be >= 1"),
    ("train.patience=0", r"train.patience=0: must be >= 1"),  # 0 stops before the first epoch
    ("train.weight_decay=-0.01", r"train.weight_decay=-0.01: must be >= 0.0"),
    ("train.grad_clip=-1", r"train.grad_clip=-1.0: must be >= 0.0"),
    ("model.embedding_dim=0", r"model.embedding_dim=0: must be >= 1"),
    ("model.fields_per_vector=0", r"model.fields_per_vector=0: must be >= 1"),
    ("model.dnn_dropout=1.0", r"model: dnn_dropout 1.0: expected a value in \[0, 1\)"),
    ("model.dnn_dropout=-0.1", r"model: dnn_dropout -0.1: expected a value in \[0, 1\)"),
    ("model.cin_layer_sizes=[4, 0]", r"model.cin_layer_sizes=\[4, 0\]: every layer size must be >= 1"),
    ("model.dnn_hidden_units=[-8]", r"model.dnn_hidden_units=\[-8\]: every layer size must be >= 1"),
    ("model.l2_linear=-1e-5", r"model.l2_linear=-1e-05: must be >= 0.0"),
    ("model.l2_cin=-1", r"model.l2_cin=-1.0: must be >= 0.0"),
    ("model.init_std=-0.1", r"model.init_std=-0.1: must be >= 0.0"),
    ("eval.k=0", r"eval.k=0: must be >= 1"),
    ("data.max_rows=0", r"data.max_rows=0: must be >= 1"),
    ("data.like_threshold=6", r"data.like_threshold=6: must be <= 5"),
    ("data.zip_prefix_len=-1", r"data.zip_prefix_len=-1: must be >= 0"),
]


@pytest.mark.parametrize("override, message", NONSENSE, ids=[o for o, _ in NONSENSE])
def test_nonsense_config_values_are_refused_at_build_time(tmp_path, override, message):
    path = tmp_path / "bad.yaml"
    path.write_text("task: ranking\nfeatures: {fields: [{name: a, kind: numeric}]}\n")
    load_experiment(path)  # the defaults build
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}[.:] ?{message}$"):
        load_experiment(path, [override])


def test_empty_layer_lists_still_switch_cin_and_dnn_off(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("task: ranking\nfeatures: {fields: [{name: a, kind: numeric}]}\n"
                    "model: {cin_layer_sizes: [], dnn_hidden_units: []}\ntrain: {epochs: 1, patience: 1}\n")
    cfg = load_experiment(path)
    assert (cfg.model.cin_layer_sizes, cfg.model.dnn_hidden_units, cfg.train.patience) == ([], [], 1)
    with pytest.raises(ConfigError, match=r"eval.k=0: must be >= 1"):
        build(RankingExperiment, {"features": {"fields": [{"name": "a", "kind": "numeric"}]}, "eval": {"k": 0}})


# ------------------------------------------------------------------------------- resume mistakes


def test_resume_refuses_a_changed_model_or_a_best_checkpoint_naming_the_file(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tmp_path, None), out)
    last = RunDir(out).last
    pristine = last.read_bytes()

    def resume_with(change) -> None:
        config = tiny_config(tmp_path, None)
        config.train.epochs = 2
        change(config)
        train(config, out, resume=True)

    with pytest.raises(RunDirError, match="--resume with model.embedding_dim=8, but the run was started with"):
        resume_with(lambda c: setattr(c.model, "embedding_dim", 8))  # the run's record names the key first
    RunDir(out).state.unlink()  # without it (a run from before run.json), the checkpoint itself refuses
    fits = re.escape(f"{last}: does not fit the model this config builds (was the model changed since the run started?)")
    for change in (lambda c: setattr(c.model, "embedding_dim", 8),
                   lambda c: setattr(c.model, "cin_layer_sizes", [8, 8]),
                   lambda c: setattr(c.model, "dnn_hidden_units", [16, 8]),
                   lambda c: c.features.fields.pop()):  # a feature field dropped since the run started
        with pytest.raises(CheckpointError, match=fits):
            resume_with(change)
    assert last.read_bytes() == pristine  # refused before anything was trained or written

    shutil.copy(RunDir(out).best, last)  # a best checkpoint where last belongs
    with pytest.raises(CheckpointError, match=re.escape(f"{last}: not a resume checkpoint (no optimizer and loop state)")):
        resume_with(lambda c: None)
    save_checkpoint(last, "mmfusion-checkpoint-v2", {"model.w": torch.zeros(2)}, {"epoch": 1})
    with pytest.raises(CheckpointError, match=re.escape(f"{last}: a sentiment checkpoint (mmfusion-checkpoint-v2), "
                                                        "not a ranking checkpoint")):
        resume_with(lambda c: None)
    last.write_bytes(pristine)
    assert [h["epoch"] for h in train(tiny_config(tmp_path, None), out, resume=True)["history"]] == [1]


def test_evaluate_refuses_what_is_not_a_ranking_checkpoint(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is not a checkpoint\n" * 3)
    with pytest.raises(CheckpointError, match=re.escape(f"{text}: not a readable checkpoint")):
        evaluate_checkpoint(text)
    sentiment = tmp_path / "sentiment.safetensors"
    save_checkpoint(sentiment, "mmfusion-checkpoint-v2", {"model.w": torch.zeros(2)}, {"epoch": 1})
    with pytest.raises(CheckpointError, match=re.escape(f"{sentiment}: a sentiment checkpoint (mmfusion-checkpoint-v2), "
                                                        "not a ranking checkpoint (xdeepfm-checkpoint-v2)")):
        evaluate_checkpoint(sentiment)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        evaluate_checkpoint(tmp_path)  # a directory without best.safetensors


def test_cosine_schedule_sets_each_epochs_lr_and_survives_a_resume(tmp_path, monkeypatch):
    import math

    import xdeepfm.train as trainer

    config = tiny_config(tmp_path, None)
    config.train.epochs, config.train.patience, config.train.lr = 3, 5, 0.01
    config.train.lr_schedule = "cosine"
    seen = []
    original = trainer.train_epoch

    def spy(model, optimizer, *args, **kwargs):
        seen.append({g["lr"] for g in optimizer.param_groups})
        return original(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_epoch", spy)
    full = train(config, tmp_path / "full")
    want = [0.01 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]  # 0.01, 0.0075, 0.0025
    assert [s.pop() for s in seen] == pytest.approx(want) and want[1] == pytest.approx(0.0075)
    seen.clear()
    train(config, tmp_path / "cut", stop_after=1)
    resumed = train(config, tmp_path / "cut", resume=True)  # the lr of epochs 2-3 from the checkpoint's base lr
    assert [s.pop() for s in seen] == pytest.approx(want)
    assert resumed["history"] == full["history"]
    config.model.implementation = "deepctr"
    with pytest.raises(ValueError, match="lr_schedule: 'cosine' is for the 'ours' trainer"):
        train(config, tmp_path / "stock")
    with pytest.raises(ConfigError, match="lr_schedule"):
        build(RankingExperiment, {"task": "ranking", "features": {"fields": [{"name": "user_id", "kind": "categorical"}]},
                                  "train": {"lr_schedule": "step"}})
