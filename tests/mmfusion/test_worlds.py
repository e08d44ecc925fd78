"""SynthMOSI worlds (mmfusion.data.worlds): the default is unchanged byte for byte, every world keeps
the MMSA format and a hidden truth the oracle can use, and each world does what its name says."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from mmcore.config import ConfigError, build
from mmfusion.data.mmsa import load_mmsa
from mmfusion.data.synthetic import (
    ABSENT_AUDIO,
    ABSENT_VISION,
    SPLITS,
    GeneratorParams,
    generate,
    make_mixing,
    modality_sequences,
    world_target,
    write_pickle,
)
from mmfusion.data.worlds import WORLDS, get_world
from mmfusion.experiment import SentimentDataConfig

# sha256 of generate("tiny", 0) (every split, key, dtype, shape and byte), taken with the generator
# before the worlds were added: the default world must stay this exact dataset.
DEFAULT_TINY_S0 = "e57b5e994e301f2116a16019dad1406dc80d59115050441a25495a54d8001dcd"
DEFAULT_TINY_S0_SEGMENTS = "ea3fbd3fde585d304575bb0e271235c0769602044776f2188631407627383dc6"


def digest(data: dict) -> str:
    h = hashlib.sha256()
    for split in sorted(data):
        for key in sorted(data[split]):
            a = np.asarray(data[split][key])
            h.update(f"{split}/{key}/{a.dtype}/{a.shape}".encode())
            h.update(a.tobytes() if a.dtype.kind != "U" else "\x00".join(a.tolist()).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def worlds() -> dict[str, dict]:
    return {name: generate("tiny", 0, world=name) for name in WORLDS}


def test_default_world_is_the_dataset_of_before(worlds):
    assert digest(worlds["default"]) == DEFAULT_TINY_S0
    assert digest(generate("tiny", 0, segments=True, world="default")) == DEFAULT_TINY_S0_SEGMENTS


def test_unknown_world_is_refused_with_the_list():
    with pytest.raises(ValueError, match="unknown SynthMOSI world 'nope'.*'trend'"):
        generate("tiny", 0, world="nope")
    with pytest.raises(ConfigError, match="data.synthetic.world.*'nope'.*'sarcasm'"):
        build(SentimentDataConfig, {"path": "x.pkl", "synthetic": {"size": "tiny", "world": "nope"}})
    assert build(SentimentDataConfig, {"path": "x.pkl", "synthetic": {"size": "tiny", "world": "burst"}}).synthetic.world == "burst"


@pytest.mark.parametrize("name", [w for w in WORLDS if w != "default"])
def test_every_world_writes_a_loadable_mmsa_pickle(worlds, name, tmp_path):
    data = worlds[name]
    default = worlds["default"]
    for split in SPLITS:
        assert set(default[split]) <= set(data[split])  # the same MMSA keys (plus synth_* extras)
        for key in ("audio", "vision", "text_bert", "audio_lengths", "vision_lengths"):
            assert data[split][key].shape == default[split][key].shape and data[split][key].dtype == default[split][key].dtype
        assert (data[split]["synth_world"] == name).all()
        assert np.isfinite(data[split]["audio"]).all() and np.isfinite(data[split]["vision"]).all()
    write_pickle(data, tmp_path / "w.pkl")
    loaded = load_mmsa(tmp_path / "w.pkl")
    assert loaded.has_unimodal_labels and len(loaded.splits["test"].labels) == len(data["test"]["id"])


def _pooled(data: dict, key: str) -> np.ndarray:
    return np.concatenate([data[split][key] for split in SPLITS])


@pytest.mark.parametrize("name", list(WORLDS))
def test_hidden_truth_explains_the_label_better_than_the_words_alone(worlds, name):
    """The hidden truth stays right in every world (y is y*(s_t, s_a, s_v [, clip type]) plus annotator
    noise) and the audio/vision cue is in the label: y* is closer to y than the best function of s_t alone."""
    data, world = worlds[name], get_world(name)
    params = replace(GeneratorParams(), **dict(world.params))
    y, s_t, s_a, s_v = (_pooled(data, k) for k in ("regression_labels", "regression_labels_T", "regression_labels_A",
                                                     "regression_labels_V"))
    clip_type = _pooled(data, "synth_clip_type") if world.clip_types else np.full(y.size, 2)
    oracle_mae = np.mean(np.abs(y - world_target(s_t, s_a, s_v, params, world, clip_type)))
    text_best = np.array([y[s_t == v].mean() for v in s_t])  # E[y | s_t], in sample: the best text-only
    assert oracle_mae < 0.35 and oracle_mae < np.mean(np.abs(y - text_best)) - 0.1


def _r2(features: np.ndarray, target: np.ndarray) -> float:
    """In-sample R^2 of least squares of ``target`` on ``features`` (with an intercept)."""
    x = np.column_stack([features, np.ones(len(target))])
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    return 1.0 - np.var(target - x @ coef) / np.var(target)


def _sequences(world: str, n: int = 600, length: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = np.round(rng.uniform(-3, 3, n) * 3) / 3
    mix = make_mixing(np.random.default_rng(1), 5, 5)
    x = modality_sequences(rng, s, np.full(n, length), length, mix, "audio", GeneratorParams(), world=get_world(world))
    return s, x.astype(np.float64)


def test_trend_world_carries_the_cue_in_the_slope_not_the_mean():
    s, x = _sequences("trend")
    t = np.arange(x.shape[1]) - (x.shape[1] - 1) / 2
    slope = np.einsum("t,ntd->nd", t, x) / np.sum(t**2)
    mean_r2, slope_r2 = _r2(x.mean(axis=1), s), _r2(slope, s)
    assert slope_r2 > 0.5 and mean_r2 < 0.5 * slope_r2, (mean_r2, slope_r2)


def test_burst_world_carries_the_cue_at_the_end_of_the_clip():
    s, x = _sequences("burst")
    tail = x[:, -x.shape[1] // 5 :].mean(axis=1)  # last 20% of frames
    mean_r2, tail_r2 = _r2(x.mean(axis=1), s), _r2(tail - x.mean(axis=1), s)
    assert tail_r2 > 0.5 and mean_r2 < 0.6 * tail_r2, (mean_r2, tail_r2)
    _, default = _sequences("default")
    assert _r2(default[:, -default.shape[1] // 5 :].mean(axis=1) - default.mean(axis=1), s) < tail_r2


def test_level_world_carries_the_cue_in_the_mean():
    s, x = _sequences("level")
    _, d = _sequences("default")
    assert _r2(x.mean(axis=1), s) > max(0.8, _r2(d.mean(axis=1), s))


def test_absent_world_silences_a_modality_in_its_truth_and_its_frames(worlds):
    tr = worlds["absent"]["train"]
    absent, missing = tr["synth_absent"], tr["synth_missing"]
    assert 0.15 < np.mean(absent != 0) < 0.6 and missing.any() and (missing & (absent == 0)).sum() == 0
    assert (tr["regression_labels_A"][absent == ABSENT_AUDIO] == 0).all()
    assert (tr["regression_labels_V"][absent == ABSENT_VISION] == 0).all()
    gone_audio = missing & (absent == ABSENT_AUDIO)
    assert gone_audio.any() and (tr["audio"][gone_audio] == 0).all()
    kept = absent == 0
    assert (np.abs(tr["audio"][kept]).sum(axis=(1, 2)) > 0).all()


def test_speaker_world_gives_each_speaker_its_own_offsets(worlds):
    tr = worlds["speaker"]["train"]
    means = np.stack([tr["audio"][i, : tr["audio_lengths"][i]].mean(axis=0) for i in range(len(tr["id"]))])
    speaker = tr["synth_speaker"]
    within = np.mean([means[speaker == k].var(axis=0).mean() for k in np.unique(speaker) if (speaker == k).sum() > 2])
    assert within < 0.5 * means.var(axis=0).mean()  # clip means cluster by speaker


def test_cliptype_world_weights_the_modalities_by_clip_type(worlds):
    data = worlds["cliptype"]
    y = np.concatenate([data[s]["regression_labels"] for s in SPLITS])
    s_t, s_a, s_v = (np.concatenate([data[s][f"regression_labels_{m}"] for s in SPLITS]) for m in "TAV")
    kind = np.concatenate([data[s]["synth_clip_type"] for s in SPLITS])
    neutral = s_t == 0
    for c, strong in ((0, 1), (1, 0)):  # close-up: the face decides; voice-over: the voice
        rows = neutral & (kind == c)
        coef, *_ = np.linalg.lstsq(np.column_stack([s_a[rows], s_v[rows]]), y[rows], rcond=None)
        assert coef[strong] > 2 * abs(coef[1 - strong]), coef


def test_sarcasm_world_flips_positive_words_said_with_a_negative_voice(worlds):
    data = worlds["sarcasm"]
    y, s_t, s_a = (np.concatenate([data[s][k] for s in SPLITS])
                   for k in ("regression_labels", "regression_labels_T", "regression_labels_A"))
    flipped = (s_t >= 1) & (s_a <= -1.5)
    assert flipped.sum() >= 10 and np.mean(y[flipped] < 0) > 0.8
    sincere = (s_t >= 1) & (s_a >= 0)
    assert np.mean(y[sincere] > 0) > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("name", ["trend", "cliptype"])
def test_reference_oracle_beats_text_only_per_world(name, tmp_path):
    """``python -m mmfusion.reference`` on a generated world: the oracle ahead of text-only."""
    from mmfusion.reference import main
    data, out = tmp_path / f"{name}.pkl", tmp_path / f"{name}.md"
    main(["--data", str(data), "--size", "tiny", "--world", name, "--out", str(out)])
    table: dict[str, str] = {}
    for line in out.read_text().splitlines():  # the first table (all metrics); Non0_acc_2 is its 4th column
        if line.startswith("| ("):
            table.setdefault(line.split("|")[1].strip(), line.split("|")[4].strip())
    oracle = next(v for k, v in table.items() if k.startswith("(f) oracle"))
    assert f"World: `{name}`" in out.read_text()
    assert float(oracle) > float(table["(a) text-only ridge"]) + 5  # Non0_acc_2 in %


def test_text_world_names_the_world_whose_text_and_labels_are_the_same(worlds):
    """What lets the worlds study train one text-only model per text world (World.text_world)."""
    keys = ("id", "raw_text", "text_bert", "regression_labels")
    shared = sorted(w for w in WORLDS if get_world(w).text_world == "default")
    assert shared == ["burst", "default", "level", "segment", "speaker", "trend"]
    for name, data in worlds.items():
        same = all(np.array_equal(data[s][k], worlds["default"][s][k]) for s in SPLITS for k in keys)
        assert same == (get_world(name).text_world == "default"), name
        assert not same or not np.array_equal(data["train"]["audio"], worlds["default"]["train"]["audio"]) or name == "default"
