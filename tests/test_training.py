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

from mmfusion.checkpoint import load_checkpoint
from mmfusion.cli import evaluate_main, train_main
from mmfusion.config import build
from mmfusion.trainer import SentimentConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "synthmosi_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_data(tiny_synthmosi) -> Path:
    return tiny_synthmosi


def tiny_config(data: Path, **train_overrides) -> SentimentConfig:
    """The tiny config on precomputed text features (no BERT in the loop: fast)."""
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["path"] = str(data)
    raw["data"].pop("synthetic", None)
    raw["model"]["text"] = {"source": "features"}
    raw["train"].update(train_overrides)
    return build(SentimentConfig, raw, where=str(TINY))


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
    assert {"model.pt", "last.pt", "metrics.json"} <= {p.name for p in tiny_run.iterdir()}
    summary = json.loads((tiny_run / "metrics.json").read_text())
    assert set(summary["test"]) == {"Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Acc_5", "Acc_7", "MAE", "Corr"}
    assert 0.0 <= summary["test"]["MAE"] < 3.0
    state = load_checkpoint(tiny_run / "model.pt")
    assert len(state["norm"]["mean"]["audio"]) == 5  # normalisation statistics travel with the checkpoint
    assert state["config"]["task"] == "sentiment"


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
    assert evaluate_main(["--checkpoint", str(tiny_run / "model.pt"), "--data", str(tiny_data),
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
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert resumed == full
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    torch.testing.assert_close(a["slgm"], b["slgm"], rtol=0, atol=0)
