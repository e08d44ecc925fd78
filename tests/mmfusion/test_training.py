"""End to end on the tiny SynthMOSI preset: train.py, evaluate.py, resume, TensorBoard tags."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmapp.cli import evaluate_main, train_main
from mmcore.checkpoint import CheckpointError
from mmcore.config import build
from mmcore.loop import RunDirError
from mmfusion.checkpoint import load_sentiment_checkpoint
from mmfusion.experiment import SentimentExperiment
from mmfusion.train import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "synthmosi_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_data(tiny_synthmosi) -> Path:
    return tiny_synthmosi


def tiny_config(data: Path, **train_overrides) -> SentimentExperiment:
    """The tiny config on precomputed text features (no BERT in the loop: fast)."""
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["path"] = str(data)
    raw["data"].pop("synthetic", None)
    raw["model"]["text"] = {"source": "features"}
    raw["train"].update(train_overrides)
    return build(SentimentExperiment, raw, where=str(TINY))


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    config = out / "config.yaml"
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["path"] = str(tiny_data)
    config.write_text(yaml.safe_dump(raw))
    assert train_main(["--config", str(config), "--out", str(out / "run"), "--log-level", "WARNING"]) == 0
    return out / "run"


def test_run_directory_contents(tiny_run):
    assert {"best.safetensors", "last.safetensors", "metrics.json", "tensorboard"} <= {p.name for p in tiny_run.iterdir()}
    summary = json.loads((tiny_run / "metrics.json").read_text())
    assert set(summary["test"]) == {"Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Acc_5", "Acc_7", "MAE", "Corr"}
    assert 0.0 <= summary["test"]["MAE"] < 3.0
    state = load_sentiment_checkpoint(tiny_run / "best.safetensors")
    assert len(state.meta["norm"]["mean"]["audio"]) == 5  # normalisation statistics travel with the checkpoint
    assert state.meta["config"]["task"] == "sentiment"


def test_tensorboard_tags(tiny_run):
    events = EventAccumulator(str(tiny_run / "tensorboard"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    for tag in ("train/loss", "train/loss_M", "train/loss_A", "valid/MAE", "valid/Non0_acc_2", "lr/text_decay", "lr/other_decay",
                "slgm/A/mean_abs_diff", "slgm/V/sign_agreement", "slgm/A/corr_generated",
                "soft_mapping/weight_text", "speed/train_clips_per_s"):
        assert tag in scalars, tag
    assert "slgm/A/labels" in tags["histograms"]
    assert any(t.startswith("attention/audio/clip") for t in tags["images"])
    assert any(t.startswith("attention/vision/clip") for t in tags["images"])
    hparams = EventAccumulator(str(tiny_run / "tensorboard" / "hparams"))
    hparams.Reload()
    assert "hparam/test_MAE" in hparams.Tags()["scalars"]


def test_evaluate_writes_metrics_and_predictions(tiny_run, tiny_data, tmp_path):
    assert evaluate_main(["--checkpoint", str(tiny_run), "--data", str(tiny_data),
                          "--out", str(tmp_path), "--log-level", "WARNING"]) == 0
    metrics = json.loads((tmp_path / "metrics_test.json").read_text())["metrics"]
    summary = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["MAE"] == pytest.approx(summary["test"]["MAE"], abs=1e-6)
    rows = list(csv.DictReader((tmp_path / "predictions_test.csv").open()))
    assert list(rows[0]) == ["id", "label", "M", "T", "A", "V"]
    assert len(rows) == 32 and rows[0]["id"].startswith("synth_")


def test_bad_config_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {path: x.pkl}\nmodel: {n_layrs: 2}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(config)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "bad.yaml.model.n_layrs: unknown key" in proc.stderr


def test_resume_matches_uninterrupted(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, epochs=4, patience=10)
    full = train(cfg, tmp_path / "full")
    assert train(cfg, tmp_path / "cut", stop_after=2) == {"stopped_after_epoch": 2}
    assert load_sentiment_checkpoint(tmp_path / "cut" / "last.safetensors").meta["epoch"] == 2
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert resumed == full
    a = load_sentiment_checkpoint(tmp_path / "full" / "last.safetensors")
    b = load_sentiment_checkpoint(tmp_path / "cut" / "last.safetensors")
    for group in ("model", "slgm", "optim"):
        assert a.group(group) and a.group(group).keys() == b.group(group).keys()
        for key in a.group(group):
            torch.testing.assert_close(a.group(group)[key], b.group(group)[key], rtol=0, atol=0)


def test_stop_after_and_resume_through_the_command_line(tiny_data, tmp_path):
    config = tmp_path / "tiny.yaml"
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["path"] = str(tiny_data)
    config.write_text(yaml.safe_dump(raw))
    common = ["--config", str(config), "--out", str(tmp_path / "run"), "--log-level", "WARNING",
              "--set", "train.epochs=2", "--set", "model.text.source=features"]
    assert train_main([*common, "--stop-after", "1"]) == 0
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert load_sentiment_checkpoint(tmp_path / "run" / "last.safetensors").meta["epoch"] == 1
    assert train_main([*common, "--resume"]) == 0
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert load_sentiment_checkpoint(tmp_path / "run" / "last.safetensors").meta["epoch"] == 2
    assert summary["best_epoch"] in (1, 2)


def test_set_overrides_reach_the_sentiment_trainer_and_bad_ones_are_named(tiny_data, tmp_path, caplog):
    config = tmp_path / "tiny.yaml"
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["path"] = str(tiny_data)
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert train_main(["--config", str(config), "--out", str(out), "--log-level", "WARNING",
                       "--set", "train.epochs=1", "--set", "model.text.source=features", "--set", "model.d_model=16"]) == 0
    stored = load_sentiment_checkpoint(out / "best.safetensors").meta["config"]
    assert stored["train"]["epochs"] == 1 and stored["model"]["d_model"] == 16
    assert stored["model"]["text"]["source"] == "features"
    for override, message in (("model.n_layrs=2", "model.n_layrs: unknown key"),
                              ("train.lr=fast", "train.lr: expected a number, got str 'fast'"),
                              ("train.epochs=1.5", "train.epochs: expected an integer, got float 1.5"),
                              ("train", "expected key=value")):
        caplog.clear()
        assert train_main(["--config", str(config), "--out", str(tmp_path / "bad"), "--set", override]) == 2
        assert message in caplog.text


def test_resume_refuses_a_changed_model_and_a_best_checkpoint(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, epochs=2, patience=10)
    assert train(cfg, tmp_path / "run", stop_after=1) == {"stopped_after_epoch": 1}
    wider = tiny_config(tiny_data, epochs=2, patience=10)
    wider.model.d_model = 64
    with pytest.raises(RunDirError, match=r"--resume with model.d_model=64, but the run was started with model.d_model=32"):
        train(wider, tmp_path / "run", resume=True)
    (tmp_path / "run" / "run.json").unlink()  # without the run's record, the checkpoint itself refuses
    with pytest.raises(CheckpointError, match=r"last.safetensors: does not fit the model this config builds"):
        train(wider, tmp_path / "run", resume=True)
    (tmp_path / "run" / "best.safetensors").replace(tmp_path / "run" / "last.safetensors")
    with pytest.raises(CheckpointError, match=r"last.safetensors: not a resume checkpoint"):
        train(cfg, tmp_path / "run", resume=True)


@pytest.mark.parametrize("override, message", [
    ("train.lr=-0.001", "train.lr=-0.001: must be > 0.0"),
    ("data.batch_size=0", "data.batch_size=0: must be >= 1"),
    ("train.epochs=0", "train.epochs=0: must be >= 1"),
    ("train.patience=0", "train.patience=0: must be >= 1"),
])
def test_values_that_make_no_sense_are_refused(override, message, tmp_path, caplog):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.read_text())
    assert train_main(["--config", str(config), "--out", str(tmp_path / "run"), "--set", override]) == 2
    assert f"tiny.yaml.{message}" in caplog.text
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_run_directory_is_refused_unless_overwrite_or_resume(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, epochs=1, patience=10)
    out = tmp_path / "run"
    first = train(cfg, out)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    with pytest.raises(RunDirError, match=r"run: holds a finished run; pass --overwrite to replace it or --resume"):
        train(cfg, out)
    (out / "predictions_valid.csv").write_text("stale")
    other = tiny_config(tiny_data, epochs=1, patience=10, seed=5)
    second = train(other, out, overwrite=True)
    assert not (out / "predictions_valid.csv").exists()  # the old run's files went with it
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(second)) != first
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1  # one run's events, whose hparams describe this checkpoint
    stored = json.loads((out / "run.json").read_text())
    assert stored["status"] == "finished" and stored["config"]["train"]["seed"] == 5
    with pytest.raises(RunDirError, match="--resume and --overwrite contradict"):
        train(other, out, resume=True, overwrite=True)


def test_an_interrupted_run_is_marked(tiny_data, tmp_path, monkeypatch):
    import mmfusion.train as trainer

    cfg = tiny_config(tiny_data, epochs=2, patience=10)
    monkeypatch.setattr(trainer, "finish", lambda state: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"
    with pytest.raises(RunDirError, match="holds an interrupted run"):
        train(cfg, tmp_path / "run")


def test_token_ids_beyond_the_encoders_vocabulary_are_refused_before_training(tiny_data, tmp_path):
    import pickle

    from mmfusion.data.mmsa import MMSAFormatError

    with open(tiny_data, "rb") as handle:
        raw = pickle.load(handle)
    raw["train"]["text_bert"][3, 0, 2] = 30522  # the bundled MiniLM has ids 0..30521
    bad = tmp_path / "bad_ids.pkl"
    with open(bad, "wb") as handle:
        pickle.dump(raw, handle)
    cfg = tiny_config(bad, epochs=1)
    cfg.model.text.source = "bert"
    with pytest.raises(MMSAFormatError, match=r"bad_ids.pkl.*'text_bert': sample 3: expected token ids .* in \[0, 30522\)"):
        train(cfg, tmp_path / "run")
