"""SynthMOSI generator: format (MMSA pickles), determinism, labels, padding, text round trip."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mmcore.hf import default_model_path
from mmfusion.data import synthetic
from mmfusion.data.synthetic import (
    KIND_AMBIGUOUS,
    KIND_CLEAR,
    KIND_SARCASTIC,
    PRESETS,
    SPLITS,
    GeneratorParams,
    agreement,
    generate,
    multimodal_target,
    quantise,
    write_pickle,
)

TINY = PRESETS["tiny"]
COMMON_KEYS = {
    "id", "raw_text", "text_bert", "audio", "vision", "regression_labels", "classification_labels",
    "regression_labels_T", "regression_labels_A", "regression_labels_V", "synth_text_kind",
}


@pytest.fixture(scope="module")
def tiny() -> dict:
    return generate("tiny", seed=3)


@pytest.fixture(scope="module")
def tiny_aligned() -> dict:
    return generate("tiny", seed=3, aligned=True)


def _on_grid(x: np.ndarray) -> bool:
    return bool(np.allclose(x * 3.0, np.round(x * 3.0), atol=1e-5))


def test_unaligned_shapes_dtypes_keys(tiny: dict) -> None:
    assert set(tiny) == set(SPLITS)
    for split, n in TINY.split_sizes().items():
        d = tiny[split]
        assert set(d) == COMMON_KEYS | {"audio_lengths", "vision_lengths"}
        assert d["text_bert"].shape == (n, 3, 50) and d["text_bert"].dtype == np.int64
        assert d["audio"].shape == (n, TINY.max_audio_len, 5) and d["audio"].dtype == np.float32
        assert d["vision"].shape == (n, TINY.max_vision_len, 20) and d["vision"].dtype == np.float32
        for key in ("regression_labels", "regression_labels_T", "regression_labels_A", "regression_labels_V"):
            assert d[key].shape == (n,) and d[key].dtype == np.float32
        assert d["classification_labels"].dtype == np.int64
        assert d["id"].shape == d["raw_text"].shape == (n,)
        assert d["audio_lengths"].dtype == d["vision_lengths"].dtype == np.int64


def test_ids_unique_across_splits(tiny: dict) -> None:
    ids = np.concatenate([tiny[s]["id"] for s in SPLITS])
    assert len(set(ids)) == len(ids) == sum(TINY.split_sizes().values())
    assert tiny["train"]["id"][0] == "synth_000000"
    assert tiny["valid"]["id"][0] == f"synth_{TINY.n_train:06d}"


def test_aligned_shapes_and_no_length_keys(tiny_aligned: dict) -> None:
    for split, n in TINY.split_sizes().items():
        d = tiny_aligned[split]
        assert set(d) == COMMON_KEYS
        assert d["audio"].shape == (n, 50, 5)
        assert d["vision"].shape == (n, 50, 20)
        # real frames are the word positions ([CLS] ... [SEP]); zero after them
        n_tokens = d["text_bert"][:, 1].sum(axis=1)
        after = np.arange(50)[None, :] >= n_tokens[:, None]
        assert not d["audio"][after].any() and not d["vision"][after].any()
        assert (np.abs(d["audio"][~after]).sum(axis=-1) > 0).all()


def test_same_seed_is_byte_identical_and_other_seed_differs(tiny: dict) -> None:
    again = generate("tiny", seed=3)
    for split in SPLITS:
        for key, value in tiny[split].items():
            assert value.dtype == again[split][key].dtype, key
            assert value.tobytes() == again[split][key].tobytes(), (split, key)
    other = generate("tiny", seed=4)
    assert other["train"]["audio"].tobytes() != tiny["train"]["audio"].tobytes()
    assert list(other["train"]["raw_text"]) != list(tiny["train"]["raw_text"])


def test_labels_in_range_on_third_grid_and_classes(tiny: dict) -> None:
    for split in SPLITS:
        d = tiny[split]
        for key in ("regression_labels", "regression_labels_T", "regression_labels_A", "regression_labels_V"):
            assert np.all(np.abs(d[key]) <= 3.0), key
            assert _on_grid(d[key]), key
        y = d["regression_labels"]
        expected = np.where(y < 0, 0, np.where(y == 0, 1, 2))
        np.testing.assert_array_equal(d["classification_labels"], expected)
    y = np.concatenate([tiny[s]["regression_labels"] for s in SPLITS])
    assert (y < 0).any() and (y > 0).any()
    assert (np.round(y) != y).any()  # some averaged (non-integer) labels on the 1/3 grid


def test_lengths_in_bounds_and_zero_padding(tiny: dict) -> None:
    for split in SPLITS:
        d = tiny[split]
        for modality, max_len in (("audio", TINY.max_audio_len), ("vision", TINY.max_vision_len)):
            lengths = d[f"{modality}_lengths"]
            assert lengths.min() >= 1 and lengths.max() <= max_len
            x = d[modality]
            pad = np.arange(max_len)[None, :] >= lengths[:, None]
            assert not x[pad].any(), f"{split}/{modality}: non-zero padding"
            last = x[np.arange(len(x)), lengths - 1]
            assert (np.abs(last).sum(axis=-1) > 0).all(), f"{split}/{modality}: last real frame is zero"
        assert len(np.unique(d["audio_lengths"])) > 1  # lengths vary per clip


def test_text_bert_decodes_to_raw_text(tiny: dict) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    for split in SPLITS:
        d = tiny[split]
        ids, mask, segment = d["text_bert"][:, 0], d["text_bert"][:, 1], d["text_bert"][:, 2]
        assert not segment.any()
        for i in range(len(ids)):
            n = int(mask[i].sum())
            assert mask[i, :n].all() and not mask[i, n:].any()
            assert ids[i, 0] == tokenizer.cls_token_id and ids[i, n - 1] == tokenizer.sep_token_id
            assert tokenizer.decode(ids[i, :n], skip_special_tokens=True) == d["raw_text"][i].lower()


def test_ambiguous_and_sarcastic_fraction_present() -> None:
    rng = np.random.default_rng(0)
    clips = synthetic.sample_clips(rng, 4000, GeneratorParams())
    frac = np.bincount(clips.kind, minlength=3) / clips.kind.size
    assert 0.25 <= frac[KIND_AMBIGUOUS] + frac[KIND_SARCASTIC] <= 0.35
    ambiguous = clips.kind == KIND_AMBIGUOUS
    assert np.all(clips.s_t[ambiguous] == 0.0)
    # the words do not decide the polarity of ambiguous clips: both signs are common
    assert 0.3 <= np.mean(clips.y[ambiguous] > 0) <= 0.7
    # sarcastic clips: positive words, mostly negative labels
    sarcastic = clips.kind == KIND_SARCASTIC
    assert np.all(clips.s_t[sarcastic] > 0)
    assert np.mean(clips.y[sarcastic] < 0) > 0.6
    # clear clips: the words mostly decide
    clear = (clips.kind == KIND_CLEAR) & (clips.y != 0) & (clips.s_t != 0)
    assert np.mean(np.sign(clips.s_t[clear]) == np.sign(clips.y[clear])) > 0.9


def test_multimodal_target_by_hand() -> None:
    p = GeneratorParams()
    # agreement: geometric mean with the common sign, 0 when voice and face disagree
    np.testing.assert_allclose(agreement(np.array([1.0, -1.0, 2.0, 0.0]), np.array([4.0, -4.0, -1.0, 3.0])),
                               [2.0, -2.0, 0.0, 0.0])
    s_t, s_a, s_v = np.array([0.0, 1.5, 1.5, -3.0]), np.array([2.0, -2.0, 2.0, 3.0]), np.array([2.0, -2.0, 2.0, 3.0])
    got = multimodal_target(s_t, s_a, s_v, p)
    # clip 0: words neutral, gate 1: 0.1 * 4 + 0.5 * 2 = 1.4
    # clip 1: irony = clip(2 - 0.5, 0, 1) = 1, so 0.75 * 1.5 * (-1) + 0.5 * (0.1 * -4 + 0.5 * -2) = -1.825
    # clip 2: no irony: 1.125 + 0.5 * (0.4 + 1.0) = 1.825
    # clip 3: gate 0: 0.75 * -3 = -2.25
    np.testing.assert_allclose(got, [1.4, -1.825, 1.825, -2.25])
    np.testing.assert_allclose(quantise(np.array([0.2, 0.5, -3.4, 1.0])), [1 / 3, 2 / 3, -3.0, 1.0])


def test_write_pickle_is_atomic_and_loads(tmp_path: Path, tiny: dict) -> None:
    path = tmp_path / "sub" / "tiny.pkl"
    write_pickle(tiny, path)
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pkl"]  # no temp file left behind
    with open(path, "rb") as fh:
        back = pickle.load(fh)
    assert back["test"]["raw_text"].tolist() == tiny["test"]["raw_text"].tolist()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_pickle({"train": Unpicklable()}, path)
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pkl"]  # old file intact, temp removed
    with open(path, "rb") as fh:
        assert set(pickle.load(fh)) == set(SPLITS)


@pytest.mark.parametrize("aligned", [False, True])
def test_loads_through_mmsa_loader(tmp_path: Path, aligned: bool) -> None:
    from mmfusion.data.mmsa import load_mmsa

    data = generate("tiny", seed=5, aligned=aligned)
    path = tmp_path / "synth.pkl"
    write_pickle(data, path)
    loaded = load_mmsa(path)
    assert loaded.aligned is aligned
    assert loaded.audio_dim == 5 and loaded.vision_dim == 20
    assert loaded.has_unimodal_labels and loaded.has_text_bert
    for split, n in TINY.split_sizes().items():
        s = loaded.splits[split]
        assert len(s) == n
        np.testing.assert_array_equal(s.labels, data[split]["regression_labels"])
        np.testing.assert_array_equal(s.text_lengths, data[split]["text_bert"][:, 1].sum(axis=1))
        if not aligned:
            np.testing.assert_array_equal(s.audio_lengths, data[split]["audio_lengths"])


def test_unknown_size_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown size 'huge': expected one of \['mosei', 'mosi', 'tiny'\]"):
        generate("huge", seed=0)


def test_cli_writes_pickle(tmp_path: Path) -> None:
    out = tmp_path / "cli.pkl"
    synthetic.main(["--size", "tiny", "--seed", "1", "--out", str(out), "--aligned"])
    with open(out, "rb") as fh:
        data = pickle.load(fh)
    assert data["train"]["audio"].shape == (TINY.n_train, 50, 5)
    assert "audio_lengths" not in data["train"]


@pytest.mark.slow
def test_text_features_are_encoder_states() -> None:
    data = generate("tiny", seed=2, text_features=True)
    text, mask = data["train"]["text"], data["train"]["text_bert"][:, 1]
    assert text.shape == (TINY.n_train, 50, 384) and text.dtype == np.float32
    assert not text[mask == 0].any()
    assert (np.abs(text[mask == 1]).sum(axis=-1) > 0).all()


def test_reference_pooled_stats_by_hand() -> None:
    from mmfusion.reference import pooled_stats

    x = np.array([[[1.0], [3.0], [99.0]], [[-2.0], [0.0], [0.0]]], dtype=np.float32)  # (2, 3, 1)
    got = pooled_stats(x, np.array([2, 1]))
    # clip 0 over frames [1, 3]: mean 2, std 1, max 3, min 1; clip 1 over [-2]: -2, 0, -2, -2
    np.testing.assert_allclose(got, [[2.0, 1.0, 3.0, 1.0], [-2.0, 0.0, -2.0, -2.0]])
