"""Issue 18's model and training options: per-clip normalisation, first differences, modality dropout,
the learning-rate schedule. Off by default, and then the model and loop are the ones of before."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmcore.config import ConfigError, build
from mmcore.loop import EarlyStopping
from mmfusion.checkpoint import load_sentiment_checkpoint as load_checkpoint
from mmfusion.data.mmsa import load_mmsa, make_loader
from mmfusion.experiment import SentimentTrainConfig
from mmfusion.model import MultimodalSentimentModel, first_differences, instance_normalise
from mmfusion.sequence_encoder import SequenceEncoder
from mmfusion.train import lr_factor, plateau_step, train
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


def test_both_norms_keep_the_raw_channels_beside_the_per_clip_ones():
    torch.manual_seed(0)
    model = MultimodalSentimentModel(tiny_cfg(input_norm="both", input_deltas=True)).eval()
    assert model.encoders["audio"].proj.in_features == 4 * 5  # [x, inst(x)] and their differences
    batch = make_batch()
    x, mask = model.prepare_input(batch.audio.float(), batch.audio_mask.bool())
    assert torch.equal(x[..., :5], batch.audio.float())  # the level stays
    assert torch.allclose(x[..., 5:10], instance_normalise(batch.audio.float(), batch.audio_mask.bool()))
    assert torch.allclose(x[..., 10:], first_differences(x[..., :10], mask))


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


def test_plateau_lowers_the_rates_after_each_run_of_flat_epochs():
    """plateau_patience 2, factor 0.5: the scale halves after the 2nd and 4th flat epoch in a row,
    and a new best resets the count, not the scale."""
    cfg = SimpleNamespace(train=build(SentimentTrainConfig, {"lr_schedule": "plateau", "plateau_patience": 2,
                                                             "plateau_factor": 0.5, "patience": 10}))
    state = SimpleNamespace(cfg=cfg, stopper=EarlyStopping("MAE", 10, "min"), lr_scale=1.0)
    scales = []
    for epoch, mae in enumerate([1.0, 1.1, 1.2, 1.3, 1.4, 0.9, 1.0, 1.0], start=1):
        plateau_step(state, state.stopper.step(mae, epoch))
        scales.append(state.lr_scale)
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    for bad in ({"plateau_factor": 1.0}, {"plateau_factor": 0.0}, {"plateau_patience": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build(SentimentTrainConfig, {"lr_schedule": "plateau", **bad})


def test_plateau_schedule_resumes_like_an_uninterrupted_run(tiny_synthmosi, tmp_path):
    cfg = tiny_config(tiny_synthmosi, epochs=5, patience=10, lr_schedule="plateau", plateau_patience=1,
                      warmup_epochs=1, attention_clips=0)
    full = train(cfg, tmp_path / "full")
    assert train(cfg, tmp_path / "cut", stop_after=3) == {"stopped_after_epoch": 3}
    assert train(cfg, tmp_path / "cut", resume=True) == full
    a, b = (load_checkpoint(tmp_path / run / "last.safetensors") for run in ("full", "cut"))
    assert a.meta["lr_scale"] == b.meta["lr_scale"] <= 1.0
    groups = a.optimizer_state()["param_groups"]
    assert all(0 < g["lr"] <= g["base_lr"] for g in groups)


def test_multiscale_conv_encoder_sees_far_frames_and_keeps_padding_out():
    torch.manual_seed(0)
    one = SequenceEncoder(4, 8, "conv", n_layers=1, kernel_size=3, dropout=0.0).eval()
    multi = SequenceEncoder(4, 8, "conv", n_layers=1, kernel_size=3, dropout=0.0, dilations=(1, 8)).eval()
    assert "convs.0.weight" in one.state_dict() and not any(k.startswith("convs") for k in multi.state_dict())
    x, mask = torch.randn(2, 12, 4), torch.arange(12)[None, :] < torch.tensor([[12], [5]])
    bumped = x.clone()
    bumped[0, 0] += 5.0  # frame 0 reaches frame 8 only through the dilation-8 branch (kernel 3)
    with torch.no_grad():
        assert torch.allclose(one(bumped, mask)[0, 8], one(x, mask)[0, 8])
        assert not torch.allclose(multi(bumped, mask)[0, 8], multi(x, mask)[0, 8])
        h = multi(x, mask)
        dirty = x.clone()
        dirty[1, 5:] = 1e3  # garbage after clip 1's length
        longer = torch.cat([x, torch.randn(2, 6, 4) * 100], 1)
        long_mask = torch.arange(18)[None, :] < torch.tensor([[12], [5]])
        torch.testing.assert_close(multi(dirty, mask), h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(multi(longer, long_mask)[:, :12], h, atol=1e-5, rtol=1e-5)
    assert torch.all(h[1, 5:] == 0)


def test_multiscale_option_in_the_model_config():
    torch.manual_seed(0)
    model = MultimodalSentimentModel(tiny_cfg(conv_dilations=[1, 4, 16])).eval()
    assert len(model.encoders["audio"].scales[0]) == 3
    with torch.no_grad():
        out, padded = model(make_batch()).preds["M"], model(make_batch(extra_pad=3)).preds["M"]
    assert torch.isfinite(out).all() and torch.allclose(out, padded, atol=1e-5)
    for bad in ([], [0], [1, -2]):
        with pytest.raises(ValueError, match="conv_dilations"):
            tiny_cfg(conv_dilations=bad)
