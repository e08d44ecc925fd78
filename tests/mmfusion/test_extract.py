"""mmfusion.extract end to end: real mp4 files -> MMSA pickle -> load_mmsa -> train -> predict."""

from __future__ import annotations

import csv
import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmcore.config import build
from mmcore.hf import default_model_path
from mmfusion import SentimentModel
from mmfusion.data.mmsa import load_mmsa
from mmfusion.experiment import SentimentExperiment
from mmfusion.extract.audio import feature_names as audio_names
from mmfusion.extract.cli import main as extract_main
from mmfusion.extract.pipeline import ExtractConfig, extract
from mmfusion.extract.synthclip import espeak_available, speak, write_clip
from mmfusion.extract.visual import STATS_NAMES, VisualConfig
from mmfusion.predict import main as predict_main
from mmfusion.train import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "synthmosi_tiny.yaml"
COLUMN = {name: j for j, name in enumerate(STATS_NAMES)}

# (id, file, seconds, tone Hz, hue, cut, audio, split, label, title)
CLIPS = [
    ("p0", "p0.mp4", 2.0, 220.0, 0.06, None, True, "train", 2.0, "I love this blender, it is great"),
    ("p1", "p1.mp4", 1.6, 330.0, 0.31, 0.8, True, "train", -1.5, "Terrible headphones, they broke"),
    ("p2", "p2.mp4", 1.2, 150.0, 0.56, None, True, "train", 0.6, "A decent phone charger"),
    ("p3", "p3.mp4", 1.4, 260.0, 0.81, None, False, "train", -0.4, "Sneakers with a weak sole"),
    ("p4", "p4.mp4", 1.0, 200.0, 0.15, None, True, "valid", 1.0, "Nice lamp"),
    ("p5", "p5.mp4", 1.0, 400.0, 0.45, None, True, "valid", -2.0, "Awful kettle"),
    ("p6", "p6.mp4", 1.2, 180.0, 0.60, None, True, "test", 0.0, "A backpack"),
    ("p7", "p7.mp4", 1.0, 300.0, 0.90, None, True, "test", 2.6, "Perfect yoga mat"),
]


def write_meta(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> tuple[Path, Path]:
    """Eight small real mp4 files (moving coloured frames + a tone; one without audio) and meta.csv."""
    root = tmp_path_factory.mktemp("extract")
    videos = root / "videos"
    rows = []
    for clip_id, name, seconds, tone, hue, cut, audio, split, label, title in CLIPS:
        write_clip(videos / name, seconds, tone_hz=tone, hue=hue, cut_at=cut, audio=audio)
        rows.append({"video": name, "id": clip_id, "text": title, "transcript": "", "label": label, "split": split})
    rows[1]["transcript"] = "honestly the worst sound I have heard"
    return videos, write_meta(root / "meta.csv", rows)


@pytest.fixture(scope="module")
def extracted(clip_dir, tmp_path_factory) -> Path:
    videos, meta = clip_dir
    out = tmp_path_factory.mktemp("feats") / "feats.pkl"
    code = extract_main(["--videos", str(videos), "--meta", str(meta), "--out", str(out), "--labels",
                         "--visual", "stats", "--workers", "2", "--text-features", "--log-level", "WARNING"])
    assert code == 0
    return out


def test_pickle_loads_with_the_mmfusion_loader(extracted):
    data = load_mmsa(extracted)
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [4, 2, 2]
    assert data.audio_dim == 74 and data.vision_dim == len(STATS_NAMES) == 34 and data.text_dim == 384
    assert not data.aligned and data.has_text_bert
    train = data.train
    assert list(train.ids) == ["p0", "p1", "p2", "p3"]
    np.testing.assert_allclose(train.labels, [2.0, -1.5, 0.6, -0.4])
    # 100 audio rows per second (AAC adds up to a few frames of priming), fps=5 vision rows per second
    seconds = np.array([c[2] for c in CLIPS[:4]])
    assert np.all(np.abs(train.audio_lengths[[0, 1, 2]] - 100 * seconds[[0, 1, 2]]) <= 8)
    np.testing.assert_array_equal(train.vision_lengths, np.round(5 * seconds).astype(int))
    assert train.text_bert.shape[1:] == (3, 50)


def test_extra_keys_and_record(extracted):
    with open(extracted, "rb") as handle:
        raw = pickle.load(handle)
    record = raw["extraction"]
    assert record["audio_dim"] == 74 and record["audio_features"] == audio_names(raw_audio_config(record))
    assert record["vision_backbone"] == "stats" and record["vision_dim"] == 34
    assert record["vision_features"] == list(STATS_NAMES)
    train = raw["train"]
    assert list(train["video"]) == ["p0.mp4", "p1.mp4", "p2.mp4", "p3.mp4"]
    np.testing.assert_array_equal(train["audio_missing"], [False, False, False, True])
    assert train["audio_lengths"][3] == 0 and not train["audio"][3].any()  # zeros + the flag, no crash
    np.testing.assert_allclose(train["duration"], [2.0, 1.6, 1.2, 1.4], atol=0.08)
    # text: title (segment 0) [SEP] transcript (segment 1), decodable back to the words
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    ids, mask, segments = train["text_bert"][1]
    n = int(mask.sum())
    assert tokenizer.decode(ids[:n], skip_special_tokens=True) == "terrible headphones, they broke honestly the worst sound i have heard"
    assert segments[:n].min() == 0 and segments[:n].max() == 1 and not segments[n:].any()
    assert train["raw_text"][1] == "Terrible headphones, they broke honestly the worst sound I have heard"
    assert (train["text_bert"][0][2] == 0).all()  # no transcript: one segment


def raw_audio_config(record: dict):
    from mmfusion.extract.audio import AudioConfig

    return AudioConfig(**record["config"]["audio"])


def test_features_follow_the_signal(extracted):
    data = load_mmsa(extracted)
    train, valid = data.train, data.splits["valid"]
    for split, row, tone in ((train, 0, 220.0), (train, 1, 330.0), (train, 2, 150.0), (valid, 1, 400.0)):
        feats = split.audio[row, : split.audio_lengths[row]]
        voiced = feats[:, 1] > 0
        assert voiced.mean() > 0.9
        assert abs(np.median(feats[voiced, 0]) - tone) < 0.02 * tone  # F0 of the tone, in Hz
    vision = train.vision
    assert (vision[:, 1:5, COLUMN["motion_energy"]] > 0.005).all()  # the square moves
    shots = vision[1, : train.vision_lengths[1], COLUMN["shot_change"]]
    np.testing.assert_array_equal(np.flatnonzero(shots), [4])  # the cut at 0.8 s = sampled frame 4 at 5 fps
    assert not vision[0, : train.vision_lengths[0], COLUMN["shot_change"]].any()
    hue = [int(np.argmax(vision[i, 0, :8])) for i in range(4)]
    assert hue == [int(c[4] * 8) for c in CLIPS[:4]] == [0, 2, 4, 6]  # dominant hue bin of the background


def test_predict_on_extracted_features(extracted, clip_dir, tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["data"] = {"path": str(extracted), "batch_size": 4}
    raw["model"]["text"] = {"source": "features"}
    raw["train"].update(epochs=1, attention_clips=0)
    train(build(SentimentExperiment, raw, where=str(TINY)), tmp_path / "run")
    out = tmp_path / "semantics.npz"
    assert predict_main(["--checkpoint", str(tmp_path / "run" / "best.safetensors"), "--data", str(extracted),
                         "--out", str(out), "--log-level", "WARNING"]) == 0
    with np.load(out, allow_pickle=False) as sem:
        assert list(sem["ids"]) == [c[0] for c in CLIPS]
        assert list(sem["split"]) == [c[7] for c in CLIPS]
        assert sem["sentiment"].shape == (8, 4) and np.isfinite(sem["sentiment"]).all()
        assert sem["embedding"].shape == (8, 64) and np.isfinite(sem["embedding"]).all()
        assert np.unique(sem["embedding"].round(5), axis=0).shape[0] == 8  # clips get different semantics
    # the Python API on the video file itself: the same semantics as through the extracted pickle
    model = SentimentModel.from_pretrained(tmp_path / "run")
    videos, _ = clip_dir
    with np.load(out, allow_pickle=False) as sem:
        expected = {name: sem[name] for name in ("ids", "sentiment", "embedding")}
    for index in (0, 1, 3):  # p3 has no audio track; p1 a transcript
        clip_id, name, *_, title = CLIPS[index]
        transcript = "honestly the worst sound I have heard" if clip_id == "p1" else ""
        got = model.predict_video(videos / name, text=title, transcript=transcript)
        assert list(got["ids"]) == [clip_id]
        np.testing.assert_allclose(got["sentiment"][0], expected["sentiment"][index], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["embedding"][0], expected["embedding"][index], rtol=0, atol=1e-5)


def test_rerun_reads_the_cache_and_options_change_the_key(clip_dir, tmp_path):
    videos, meta = clip_dir
    cache = tmp_path / "cache"
    cfg = ExtractConfig(visual=VisualConfig(backbone="stats"))
    first = extract(videos, meta, cfg, cache_dir=cache)
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == 8 and not any(r.cached for r in first.reports)
    entries[0].unlink()  # an interrupted run: one file still to do
    second = extract(videos, meta, cfg, cache_dir=cache)
    assert sorted(r.cached for r in second.reports) == [False] + [True] * 7  # only that one decoded again
    for split in ("train", "valid", "test"):
        for key in ("audio", "vision", "audio_lengths", "vision_lengths", "text_bert", "audio_missing"):
            np.testing.assert_array_equal(first.data[split][key], second.data[split][key])
    third = extract(videos, meta, dataclasses.replace(cfg, fps=4.0), cache_dir=cache)
    assert not any(r.cached for r in third.reports)  # another option, another key
    assert len(list(cache.glob("*.npz"))) == 16 and not [p for p in cache.iterdir() if p.name.startswith(".")]
    # without --labels the label column is not read: 0 placeholders, and the record says so
    assert [len(first.data[s]["id"]) for s in ("train", "valid", "test")] == [4, 2, 2]
    assert not any(first.data[s]["regression_labels"].any() for s in ("train", "valid", "test"))
    assert first.data["extraction"]["labels"].startswith("none")


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_speech_clip(tmp_path):
    sentence = "This blender is absolutely amazing, I use it every morning."
    write_clip(tmp_path / "videos" / "speech.mp4", 3.5, speech=speak(sentence))
    meta = write_meta(tmp_path / "meta.csv", [{"video": "speech.mp4", "id": "s", "text": "Blender review",
                                               "transcript": sentence}])
    result = extract(tmp_path / "videos", meta, ExtractConfig(visual=VisualConfig(backbone="stats")))
    split = result.data["test"]
    feats = split["audio"][0, : split["audio_lengths"][0]]
    voiced = feats[:, 1] > 0
    assert 0.2 < voiced.mean() < 0.95  # speech has pauses and unvoiced sounds, unlike a tone
    assert 70 < np.median(feats[voiced, 0]) < 250  # espeak-ng's default voice
    assert feats[voiced, 3].mean() > feats[~voiced, 3].mean()  # voiced frames carry more energy
    assert split["raw_text"][0] == f"Blender review {sentence}"
