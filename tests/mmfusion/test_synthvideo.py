"""SynthVideo (mmfusion.data.synthvideo): SynthMOSI's clips as mp4 files, and the cues the
``prosody`` / ``face`` extractor presets measure in them."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmfusion.data.synthvideo import (
    VIDEO_PRESETS,
    check_out_dir,
    direct_pickle,
    generate,
    render_clip,
    speakers,
)
from mmfusion.data.synthvideo import main as synthvideo_main
from mmfusion.extract.audio import PROSODY_NAMES, AudioConfig, audio_features, feature_names
from mmfusion.extract.cli import main as extract_main
from mmfusion.extract.pipeline import ExtractConfig, extract_file
from mmfusion.extract.synthclip import EspeakMissing, espeak_available
from mmfusion.extract.visual import FACE_NAMES, VisualConfig, visual_features
from mmfusion.extract.visual import feature_names as visual_names

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")

TEXT = "Okay, let us talk about this blender. The motor is really good. I would definitely recommend it."
CUES = ExtractConfig(fps=12, audio=AudioConfig(preset="prosody"), visual=VisualConfig(backbone="face"),
                     max_audio_len=100_000, max_vision_len=100_000)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthvideo") / "tiny"
    generate("video_tiny", 0, out, workers=2)
    return out


def test_tiny_matches_the_direct_generator(tiny):
    meta, truth = read_csv(tiny / "meta.csv"), read_csv(tiny / "truth.csv")
    assert len(meta) == len(truth) == VIDEO_PRESETS["video_tiny"].n
    assert list(meta[0]) == ["video", "id", "text", "label", "split"]
    direct = direct_pickle("video_tiny", 0, text_features=False)
    rows = iter(zip(meta, truth))
    for split in ("train", "valid", "test"):
        d = direct[split]
        for i in range(len(d["id"])):
            m, t = next(rows)
            assert (m["id"], m["split"], m["text"]) == (d["id"][i], split, d["raw_text"][i])
            assert np.float32(float(m["label"])) == d["regression_labels"][i] == np.float32(float(t["y"]))
            assert np.float32(float(t["s_a"])) == d["regression_labels_A"][i]
            assert np.float32(float(t["s_v"])) == d["regression_labels_V"][i]
            assert ("clear", "ambiguous", "sarcastic")[d["synth_text_kind"][i]] == t["kind"]
            assert 0 < float(t["segment_start"]) < float(t["segment_end"]) <= float(t["duration"])
            assert (tiny / "videos" / m["video"]).stat().st_size > 1000


def test_generation_is_deterministic(tiny, tmp_path):
    generate("video_tiny", 0, tmp_path / "again", workers=1, limit=3)
    again = read_csv(tmp_path / "again" / "truth.csv")
    assert again == read_csv(tiny / "truth.csv")[:3]
    for row in again:
        name = f"{row['id']}.mp4"
        assert (tmp_path / "again" / "videos" / name).read_bytes() == (tiny / "videos" / name).read_bytes()
    generate("video_tiny", 1, tmp_path / "other", workers=1, limit=3)
    assert read_csv(tmp_path / "other" / "meta.csv") != read_csv(tiny / "meta.csv")[:3]


def test_meta_round_trips_through_extract(tiny, tmp_path):
    out = tmp_path / "feats.pkl"
    code = extract_main(["--videos", str(tiny / "videos"), "--meta", str(tiny / "meta.csv"), "--out", str(out),
                         "--labels", "--fps", "12", "--audio-preset", "prosody", "--visual", "face", "--workers", "2",
                         "--no-cache", "--log-level", "WARNING"])
    assert code == 0
    with out.open("rb") as f:
        data = pickle.load(f)
    truth = {r["id"]: r for r in read_csv(tiny / "truth.csv")}
    direct = direct_pickle("video_tiny", 0, text_features=False)
    for split in ("train", "valid", "test"):
        part = data[split]
        assert len(part["id"]) == VIDEO_PRESETS["video_tiny"].split_sizes()[split]
        for i, clip_id in enumerate(part["id"]):
            assert truth[clip_id]["split"] == split
            assert part["regression_labels"][i] == np.float32(float(truth[clip_id]["y"]))
        np.testing.assert_array_equal(part["text_bert"], direct[split]["text_bert"])  # same tokens as SynthMOSI
        assert part["audio"].shape[2] == len(PROSODY_NAMES) and part["vision"].shape[2] == len(FACE_NAMES)
        assert np.isfinite(part["audio"]).all() and np.isfinite(part["vision"]).all()
        assert (part["vision"][:, :, 0].sum(axis=1) == part["vision_lengths"]).all()  # a face in every frame
    assert data["extraction"]["audio_features"] == list(PROSODY_NAMES)
    assert data["extraction"]["vision_backbone"] == "face" and data["extraction"]["vision_weights"] is None


def segment_means(path: Path, info) -> tuple[np.ndarray, np.ndarray]:
    """Mean prosody and face features inside the expressive segment minus outside it."""
    features = extract_file(path, CUES)
    ta, tv = np.arange(len(features.audio)) / 100.0, np.arange(len(features.vision)) / 12.0
    in_a = (ta > info.segment_start) & (ta < info.segment_end)
    in_v = (tv > info.segment_start + 0.3) & (tv < info.segment_end - 0.3)
    return (features.audio[in_a].mean(0) - features.audio[~in_a].mean(0),
            features.vision[in_v].mean(0) - features.vision[~in_v].mean(0))


def test_face_cues_follow_s_v(tmp_path):
    levels = np.arange(-3, 4, dtype=float)
    speaker = speakers(0, 16)[3]
    faces = []
    for s_v in levels:
        info = render_clip(tmp_path / f"v{s_v:+.0f}.mp4", TEXT, 0.0, s_v, 7, speaker=speaker)
        faces.append(segment_means(tmp_path / f"v{s_v:+.0f}.mp4", info)[1])
    faces = np.array(faces)
    for name in ("mouth_curvature", "mouth_corner_lift", "brow_tilt", "face_warmth"):
        column = faces[:, FACE_NAMES.index(name)]
        assert np.corrcoef(levels, column)[0, 1] > 0.9, (name, column)
    assert (np.diff(faces[:, FACE_NAMES.index("mouth_curvature")]) > 0).all()


def test_prosody_cues_follow_s_a(tmp_path):
    speaker = speakers(0, 16)[5]
    diff = {}
    for s_a in (-3.0, 3.0):
        info = render_clip(tmp_path / f"a{s_a:+.0f}.mp4", TEXT, s_a, 0.0, 11, speaker=speaker)
        diff[s_a] = segment_means(tmp_path / f"a{s_a:+.0f}.mp4", info)[0]
    # positive delivery: higher, livelier pitch and louder, faster speech than negative delivery
    for name in ("f0_st_rel", "f0_range_local", "energy_rel_db", "voiced_frac_local"):
        k = PROSODY_NAMES.index(name)
        assert diff[3.0][k] > diff[-3.0][k], (name, diff[3.0][k], diff[-3.0][k])


def test_presets_on_silence_and_faceless_frames():
    cfg = AudioConfig(preset="prosody")
    assert cfg.out_dim == 16 and feature_names(cfg) == list(PROSODY_NAMES)
    rng = np.random.default_rng(0)
    for wave in (np.zeros(16_000, np.float32), (0.1 * rng.normal(size=16_000)).astype(np.float32)):
        feats = audio_features(wave, cfg)
        assert feats.shape == (98, 16) and np.isfinite(feats).all() and not feats[:, 1].any()
    face = VisualConfig(backbone="face")
    assert face.dim == 17 and face.frame_size == 96 and not face.needs_weights and visual_names(face) == list(FACE_NAMES)
    blank = np.full((3, 96, 128, 3), (40, 90, 160), np.uint8)  # a blue wall: no skin anywhere
    assert not visual_features(blank, face)[:, :15].any()


def test_render_clip_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="s_v"):
        render_clip(tmp_path / "x.mp4", TEXT, 0.0, 4.0, 0)
    with pytest.raises(ValueError, match="empty text"):
        render_clip(tmp_path / "x.mp4", "  ", 0.0, 0.0, 0)


def test_without_espeak_a_clear_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(EspeakMissing, match="apt-get install espeak-ng"):
        render_clip(tmp_path / "x.mp4", TEXT, 0.0, 0.0, 0)
    assert synthvideo_main(["--preset", "video_tiny", "--out", str(tmp_path / "o")]) == 2
    assert "espeak-ng" in caplog.text and "apt-get install espeak-ng" in caplog.text
    assert not (tmp_path / "o").exists()


def test_refuses_a_non_empty_out_dir(tmp_path, caplog):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        check_out_dir(tmp_path / "o", overwrite=False)
    assert synthvideo_main(["--preset", "video_tiny", "--out", str(tmp_path / "o"), "--limit", "1"]) == 2
    assert "--overwrite" in caplog.text and sorted(p.name for p in (tmp_path / "o").iterdir()) == ["keep.txt"]
    check_out_dir(tmp_path / "o", overwrite=True)
