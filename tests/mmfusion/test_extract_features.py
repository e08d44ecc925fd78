"""mmfusion.extract feature steps one by one: frame sampling, audio presets, backbones and their weights."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfusion.extract.audio import AudioConfig, audio_features, feature_names
from mmfusion.extract.cli import main as extract_main
from mmfusion.extract.decode import SAMPLE_RATE, decode_clip
from mmfusion.extract.pipeline import fit_length
from mmfusion.extract.synthclip import write_clip
from mmfusion.extract.visual import VisualConfig, cached_weights, load_backbone, resolve, visual_features


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "c.mp4", 1.0, fps=15, size=(128, 96), tone_hz=250.0)


def test_frame_sampling_and_audio_decoding(clip):
    decoded = decode_clip(clip, fps=5, frame_size=48)
    np.testing.assert_allclose(decoded.frame_times, [0.0, 0.2, 0.4, 0.6, 0.8], atol=1e-6)
    assert decoded.frames.shape == (5, 48, 64, 3) and decoded.frames.dtype == np.uint8  # short side 48, aspect kept
    assert abs(decoded.duration - 1.0) < 1e-6 and decoded.audio_note == ""
    assert abs(len(decoded.audio) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # 1 s at 16 kHz (+ AAC priming)
    spectrum = np.abs(np.fft.rfft(decoded.audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(decoded.audio) - 250.0) < 2.0  # the tone survives AAC
    assert len(decode_clip(clip, fps=30, frame_size=48).frames) == 15  # faster than the source: every frame


@pytest.mark.parametrize("preset", ["mfcc", "fbank"])
@pytest.mark.parametrize("dim", [5, 20, 33])
def test_audio_presets_have_the_asked_width(preset, dim):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.2 * np.sin(2 * np.pi * 180.0 * t)).astype(np.float32)
    cfg = AudioConfig(preset=preset, dim=dim)
    feats = audio_features(tone, cfg)
    names = feature_names(cfg)
    assert feats.shape == (98, dim) and len(names) == dim and np.isfinite(feats).all()
    assert names[:3] == ["f0_hz", "voiced", "log_energy"]
    assert abs(np.median(feats[:, 0]) - 180.0) < 4.0 and feats[:, 1].mean() > 0.9


def test_silence_and_noise_are_unvoiced():
    rng = np.random.default_rng(0)
    for wave in (np.zeros(SAMPLE_RATE, np.float32), (0.1 * rng.normal(size=SAMPLE_RATE)).astype(np.float32)):
        feats = audio_features(wave, AudioConfig())
        assert feats.shape == (98, 74) and np.isfinite(feats).all()
        assert not feats[:, 1].any() and not feats[:, 0].any()  # no voicing, F0 = 0 Hz like COVAREP
    assert audio_features(np.zeros(100, np.float32), AudioConfig()).shape == (1, 74)  # shorter than a frame


def test_fit_length_averages_equal_segments():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    np.testing.assert_array_equal(fit_length(x, 5), (x[0::2] + x[1::2]) / 2)
    assert fit_length(x, 10) is x


def test_random_resnet18_and_a_local_weights_file(clip, tmp_path):
    frames = decode_clip(clip, fps=3, frame_size=224).frames
    random_cfg = VisualConfig(backbone="resnet18", weights="random", batch_size=2)
    feats = visual_features(frames, random_cfg)
    assert feats.shape == (3, 512) and np.isfinite(feats).all() and feats.std() > 0
    # the same weights from a file (torchvision's layout: with the fc layer) give the same features
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.get_model("resnet18", weights=None).state_dict()
    torch.save(state, tmp_path / "r18.pt")
    file_cfg = resolve(VisualConfig(backbone="resnet18", weights=str(tmp_path / "r18.pt")))
    np.testing.assert_allclose(visual_features(frames, file_cfg), feats, rtol=1e-5, atol=1e-5)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: not a state dict of torchvision resnet18"):
        load_backbone("resnet18", str(tmp_path / "bad.pt"))


def test_auto_uses_cached_weights_only_when_present(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert resolve(VisualConfig()).backbone == "stats"  # nothing cached: the offline statistics
    with pytest.raises(FileNotFoundError, match="resnet18 weights .*not in the torchvision cache"):
        resolve(VisualConfig(backbone="resnet18"))
    path = cached_weights("resnet18")
    assert path.name == "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stand-in")
    chosen = resolve(VisualConfig())
    assert chosen.backbone == "resnet18" and chosen.weights == str(path) and chosen.dim == 512


def test_cli_records_the_backbone(clip, tmp_path, capsys):
    (tmp_path / "meta.csv").write_text(f"video,id,text\n{clip.name},c,a clip\n")
    out = tmp_path / "r.pkl"
    assert extract_main(["--videos", str(clip.parent), "--meta", str(tmp_path / "meta.csv"), "--out", str(out),
                         "--visual", "mobilenet_v3_small", "--vision-weights", "random", "--fps", "2",
                         "--audio-preset", "fbank", "--audio-dim", "16", "--workers", "1", "--no-cache",
                         "--log-level", "WARNING"]) == 0
    assert "audio 16-d fbank, vision 576-d mobilenet_v3_small" in capsys.readouterr().out
    raw = pickle.loads(out.read_bytes())
    assert raw["test"]["vision"].shape == (1, 2, 576) and raw["test"]["audio"].shape[2] == 16
    assert raw["extraction"]["vision_weights"] == "random" and raw["extraction"]["vision_dim"] == 576
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    assert extract_main(["--videos", str(clip.parent), "--meta", str(tmp_path / "meta.csv"), "--out",
                         str(tmp_path / "bad.pkl"), "--visual", "resnet18", "--vision-weights", str(bad),
                         "--log-level", "CRITICAL"]) == 2  # refused once, before any clip
    assert not (tmp_path / "bad.pkl").exists()
