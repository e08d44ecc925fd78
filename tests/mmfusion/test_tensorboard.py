"""TensorBoard a person can read: the event files of a tiny sentiment run, read back; the figures it draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmfusion import tensorboard as tb
from mmfusion.experiment import load_experiment
from mmfusion.train import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _events(directory: Path) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    return events


def test_sentiment_run_logs_figures_text_card_and_epoch_axis(tiny_synthmosi, tmp_path):
    overrides = [f"data.path={tiny_synthmosi}", "data.synthetic=null", "model.text.source=features",
                 "train.epochs=2", "train.attention_clips=1", "train.slgm_start_epoch=2"]
    out = tmp_path / "run"
    train(load_experiment(CONFIGS / "synthmosi_tiny.yaml", overrides), out)
    events = _events(out / "tensorboard")
    tags = events.Tags()
    images = set(tags["images"])
    for tag in ("attention_map/audio/clip0", "attention_map/vision/clip0", "attention_map/text/clip0",
                "soft_mapping/shares", "attention/audio/clip0"):
        assert tag in images, tag
    figure = events.Images("attention_map/audio/clip0")[-1]
    assert figure.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and figure.width > 200 and figure.height > 100
    assert [e.step for e in events.Images("soft_mapping/shares")] == [1, 2]
    scalars = set(tags["scalars"])
    for tag in ("train_epoch/loss", "train_epoch/loss_M", "valid/MAE", "soft_mapping/weight_audio"):
        assert tag in scalars, tag
    # train and valid share the epoch axis
    assert [e.step for e in events.Scalars("train_epoch/loss_M")] == [e.step for e in events.Scalars("valid/MAE")] == [1, 2]
    card = [t for t in tags["tensors"] if t.startswith("about/tags")]
    assert card, tags["tensors"]
    text = events.Tensors(card[0])[0].tensor_proto.string_val[0].decode()
    assert "corr_copied_M" in text and "slgm_start_epoch` = 2" in text


def test_attention_figure_labels_and_shares_chart():
    weights = np.random.default_rng(0).random((4, 6))
    figure = tb.attention_figure(weights, ["[CLS]", "great", "sound", "[SEP]"], "audio", frame_stride=4)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["[CLS]", "great", "sound", "[SEP]"]
    assert "audio frame" in ax.get_xlabel() and len(figure.axes) == 2  # the heat map and its colour bar
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["0", "4"]
    chart = tb.shares_figure({"text": [(1, 0.4), (2, 0.5)], "audio": [(1, 0.3), (2, 0.2)], "vision": [(1, 0.3), (2, 0.3)]})
    assert len(chart.axes[0].get_lines()) == 3 and chart.axes[0].get_xlabel() == "epoch"
