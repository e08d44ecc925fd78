"""Issue 18's model and training options: per-clip normalisation, first differences, modality dropout,
the learning-rate schedule. Off by default, and then the model and loop are the ones of before."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmcore.config import ConfigError, build
from mmfusion.data.mmsa import load_mmsa, make_loader
from mmfusion.experiment import SentimentTrainConfig
from mmfusion.model import MultimodalSentimentModel, first_differences, instance_normalise
from mmfusion.train import lr_factor, train
from tests.mmfusion.test_model import make_batch, tiny_cfg
from tests.mmfusion.test_training import tiny_config

# MultimodalSentimentModel(tiny_cfg()) after torch.manual_seed(0) on make_batch(), printed by the model
# before these options existed: eval mode, and train mode after torch.manual_seed(1)
BEFORE_EVAL = [0.6674591302871704, 0.4091877043247223, 0.37078794836997986]
BEFORE_TRAIN = [0.7099021673202515, 0.36196866631507874, 0.4144178628921509]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _outputs(training: bool, **cfg) -> list[float]:
    torch.manual_seed(0)
    model = MultimodalSentimentModel(tiny_cfg(**cfg)).train(training)
    if training:
        torch.manual_seed(1)
    with torch.no_grad():
        return model(make_batch()).preds["M"].tolist()


def test_options_off_give_the_model_of_before():
    assert _outputs(False) == pytest.approx(BEFORE_EVAL, abs=1e-6)
    assert _outputs(True) == pytest.approx(BEFORE_TRAIN, abs=1e-6)
    assert _outputs(True, modality_dropout=0.0, input_norm="none", input_deltas=False) == pytest.approx(BEFORE_TRAIN, abs=1e-6)


def test_modality_dropout_acts_in_training_only():
    assert _outputs(False, modality_dropout=0.5) == pytest.approx(BEFORE_EVAL, abs=1e-6)  # never at eval
    assert _outputs(True, modality_dropout=0.9) != pytest.approx(BEFORE_TRAIN, abs=1e-4)
    with pytest.raises(ValueError, match="model.modality_dropout=1.0"):
        tiny_cfg(modality_dropout=1.0)


def test_instance_normalisation_removes_clip_offsets_and_scales():
    batch = make_batch()
    x, mask = batch.audio, batch.audio_mask
    shifted = x * 3.0 + 5.0
    a, b = instance_normalise(x, mask), instance_normalise(shifted, mask)
    assert torch.allclose(a, b, atol=1e-4)
    real = mask.unsqueeze(-1)
    assert torch.all(a[~mask.unsqueeze(-1).expand_as(a)] == 0)
    means = (a * real).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(means, torch.zeros_like(means), atol=1e-5)


def test_first_differences_see_a_trend_and_ignore_a_level():
    mask = torch.tensor([[True] * 5 + [False] * 2])
    level = torch.full((1, 7, 1), 4.0)
    ramp = torch.arange(7.0).view(1, 7, 1) * 0.5
    assert torch.all(first_differences(level, mask) == 0)
    assert first_differences(ramp, mask).squeeze().tolist() == [0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0]


def test_options_on_build_and_keep_padding_out():
    torch.manual_seed(0)
    model = MultimodalSentimentModel(tiny_cfg(input_norm="instance", input_deltas=True)).eval()
    assert model.encoders["audio"].proj.in_features == 2 * 5
    with torch.no_grad():
        out = model(make_batch()).preds["M"]
        padded = model(make_batch(extra_pad=3)).preds["M"]  # garbage after the lengths changes nothing
    assert torch.isfinite(out).all() and torch.allclose(out, padded, atol=1e-5)


def test_lr_factor_warms_up_then_decays_to_zero():
    assert lr_factor(1, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(1, 100, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 100)))
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build(SentimentTrainConfig, {"warmup_epochs": -1})
    with pytest.raises(ConfigError, match="lr_schedule"):
        build(SentimentTrainConfig, {"lr_schedule": "linear"})


@pytest.fixture(scope="module")
def dropout_run(tiny_synthmosi, tmp_path_factory):
    """The tiny config trained with modality dropout 0.3 and the cosine schedule (6 epochs)."""
    out = tmp_path_factory.mktemp("dropout") / "run"
    cfg = tiny_config(tiny_synthmosi, lr_schedule="cosine", warmup_epochs=1, attention_clips=0)
    cfg.model.modality_dropout = 0.3
    train(cfg, out)
    return cfg, out


def test_cosine_schedule_ends_at_zero_lr(dropout_run):
    from mmfusion.checkpoint import load_sentiment_checkpoint
    _, out = dropout_run
    groups = load_sentiment_checkpoint(out / "last.safetensors").optimizer_state()["param_groups"]
    assert all(g["lr"] == pytest.approx(0.0, abs=1e-9) and g["base_lr"] > 0 for g in groups)


def test_a_clip_without_its_vision_keeps_a_finite_prediction_of_the_same_sign(dropout_run, tiny_synthmosi):
    """Trained with modality dropout, a clip whose vision is zeroed (or missing: all-False mask) is
    still predicted from its text and audio: finite, same sign, near the full prediction."""
    from mmfusion.checkpoint import load_sentiment_checkpoint
    from mmfusion.data.mmsa import NormStats
    from mmfusion.experiment import build_model_config
    from mmfusion.train import data_dims
    cfg, out = dropout_run
    data = load_mmsa(tiny_synthmosi)
    norm = NormStats.fit(data.splits["train"], include_text=True)
    model = MultimodalSentimentModel(build_model_config(cfg.model, data_dims(data)))
    model.load_state_dict(load_sentiment_checkpoint(out / "best.safetensors").group("model"))
    model.eval()
    split = data.splits["test"]
    batch = next(iter(make_loader(split, norm, len(split.labels), shuffle=False, text_source="features")))
    t, a = split.unimodal_labels["T"], split.unimodal_labels["A"]
    with torch.no_grad():
        full = model(batch).preds["M"]
        batch.vision = torch.zeros_like(batch.vision)
        zeroed = model(batch).preds["M"]
        batch.vision_mask = torch.zeros_like(batch.vision_mask)
        missing = model(batch).preds["M"]
    strong = np.flatnonzero((np.sign(t) == np.sign(a)) & (np.abs(t) >= 1) & (np.abs(a) >= 1)
                            & (np.sign(full.numpy()) == np.sign(t)))
    assert strong.size >= 3
    for pred in (zeroed, missing):
        assert torch.isfinite(pred).all()
        assert np.mean(np.sign(pred.numpy()[strong]) == np.sign(t[strong])) >= 0.8
        assert (pred - full).abs()[strong].mean() < 1.0
