"""MMSA pickle loader: round trips, lengths and masks, per-batch padding, train-only
normalisation, and one clear error per kind of bad input."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcore.hf import default_model_path
from mmfusion.data.mmsa import (
    MMSADataset,
    MMSAFormatError,
    NormStats,
    collate_mmsa,
    describe,
    load_mmsa,
    main,
    make_loader,
    text_vocab_size,
)
from tests.mmsa_factory import make_mmsa_dict, make_split, write_mmsa_pickle


def write(tmp_path: Path, data, name: str = "data.pkl") -> Path:
    return write_mmsa_pickle(data, tmp_path / name)


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------


def test_unaligned_round_trip(tmp_path: Path) -> None:
    raw = make_mmsa_dict(sizes=(6, 4, 5), unimodal=True)
    data = load_mmsa(write(tmp_path, raw))
    assert not data.aligned and data.has_text_bert and data.has_unimodal_labels
    assert (data.text_dim, data.audio_dim, data.vision_dim) == (None, 5, 4)
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [6, 4, 5]
    for name, split in data.splits.items():
        r = raw[name]
        assert split.ids.tolist() == list(r["id"])
        assert split.raw_text.tolist() == list(r["raw_text"])
        assert split.text_bert.dtype == np.int64
        np.testing.assert_array_equal(split.text_bert, r["text_bert"].astype(np.int64))
        np.testing.assert_array_equal(split.text_lengths, r["text_bert"][:, 1].sum(axis=1))
        np.testing.assert_array_equal(split.audio, r["audio"])
        np.testing.assert_array_equal(split.audio_lengths, r["audio_lengths"])
        np.testing.assert_array_equal(split.vision_lengths, r["vision_lengths"])
        assert split.labels.dtype == np.float32
        np.testing.assert_allclose(split.labels, r["regression_labels"])
        np.testing.assert_allclose(split.unimodal_labels["A"], r["regression_labels_A"])
        assert split.text is None


def test_aligned_lengths_are_full_length(tmp_path: Path) -> None:
    raw = make_mmsa_dict(aligned=True, text_len=7)
    assert "audio_lengths" not in raw["train"]
    data = load_mmsa(write(tmp_path, raw))
    assert data.aligned
    split = data.splits["valid"]
    assert split.audio.shape[1] == split.vision.shape[1] == 7
    np.testing.assert_array_equal(split.audio_lengths, [7, 7, 7, 7])
    np.testing.assert_array_equal(split.vision_lengths, [7, 7, 7, 7])


def test_text_features_without_text_bert(tmp_path: Path) -> None:
    raw = make_mmsa_dict(text="features", text_dim=3)
    # Clip 1 of train: an all-zero row INSIDE the text (row 1) must not cut it: length = last nonzero + 1.
    raw["train"]["text"][1] = 0.0
    raw["train"]["text"][1, 0] = 1.0
    raw["train"]["text"][1, 2] = 2.0
    data = load_mmsa(write(tmp_path, raw))
    assert not data.has_text_bert and data.text_dim == 3
    train = data.train
    assert train.text_bert is None
    assert train.text_lengths[1] == 3
    expected = (raw["valid"]["text"] != 0).any(axis=2).sum(axis=1)  # factory: real rows, then zeros
    np.testing.assert_array_equal(data.splits["valid"].text_lengths, expected)
    batch = collate_mmsa([MMSADataset(train)[i] for i in range(len(train))])
    assert batch.text_ids is None and batch.text_segment is None
    assert batch.text_feats.shape == (6, 8, 3)


def test_text_lengths_key_is_used_for_feature_text(tmp_path: Path) -> None:
    raw = make_mmsa_dict(text="features")
    for name in ("train", "valid", "test"):
        raw[name]["text_lengths"] = np.ones(len(raw[name]["id"]), dtype=np.int64)
    raw["test"]["text_lengths"][2] = 5
    data = load_mmsa(write(tmp_path, raw))
    np.testing.assert_array_equal(data.splits["test"].text_lengths, [1, 1, 5, 1])


def test_lists_column_labels_and_object_ids_are_accepted(tmp_path: Path) -> None:
    raw = make_mmsa_dict()
    train = raw["train"]
    expected_audio = train["audio"].copy()
    train["audio"] = [row for row in train["audio"]]  # list of (La, Da) arrays
    train["vision"] = train["vision"].tolist()  # nested lists
    train["regression_labels"] = train["regression_labels"][:, None]  # (N, 1)
    train["id"] = list(train["id"])
    data = load_mmsa(write(tmp_path, raw))
    np.testing.assert_array_equal(data.train.audio, expected_audio)
    assert data.train.vision.dtype == np.float32 and data.train.vision.shape == (6, 12, 4)
    assert data.train.labels.shape == (6,)
    assert data.train.ids[0] == "train_0"


# ------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------


def test_collate_pads_to_batch_max_and_masks_follow_lengths(tmp_path: Path) -> None:
    data = load_mmsa(write(tmp_path, make_mmsa_dict(sizes=(8, 2, 2))))
    train = data.train
    rows = [i for i in range(8) if train.audio_lengths[i] < 10][:3]
    dataset = MMSADataset(train)
    batch = collate_mmsa([dataset[i] for i in rows])

    assert batch.index.tolist() == rows
    assert batch.ids == [f"train_{i}" for i in rows]
    for key, lengths, full in (
        ("text", train.text_lengths, train.text_bert.shape[2]),
        ("audio", train.audio_lengths, train.audio.shape[1]),
        ("vision", train.vision_lengths, train.vision.shape[1]),
    ):
        mask = getattr(batch, f"{key}_mask")
        width = int(lengths[rows].max())
        assert mask.dtype == torch.bool and mask.shape == (3, width), key
        assert mask.sum(dim=1).tolist() == lengths[rows].tolist(), key
    assert batch.audio.shape[1] < 10  # padded to this batch, not to the file's 10
    np.testing.assert_array_equal(batch.audio.numpy(), train.audio[rows, : batch.audio.shape[1]])
    np.testing.assert_array_equal(batch.vision.numpy(), train.vision[rows, : batch.vision.shape[1]])
    np.testing.assert_array_equal(batch.text_ids.numpy(), train.text_bert[rows, 0, : batch.text_mask.shape[1]])
    assert batch.text_ids.dtype == torch.long and batch.text_segment.dtype == torch.long
    assert batch.text_feats is None and batch.unimodal_labels is None
    np.testing.assert_allclose(batch.label.numpy(), train.labels[rows])


def test_collate_carries_unimodal_labels(tmp_path: Path) -> None:
    data = load_mmsa(write(tmp_path, make_mmsa_dict(unimodal=True)))
    batch = collate_mmsa([MMSADataset(data.train)[i] for i in (4, 0)])
    assert set(batch.unimodal_labels) == {"T", "A", "V"}
    np.testing.assert_allclose(batch.unimodal_labels["V"].numpy(), data.train.unimodal_labels["V"][[4, 0]])


def test_zero_length_clip_gets_one_zero_frame(tmp_path: Path) -> None:
    raw = make_mmsa_dict()
    raw["train"]["vision_lengths"][3] = 0
    raw["train"]["vision"][3] = 0.0
    data = load_mmsa(write(tmp_path, raw))
    assert data.train.vision_lengths[3] == 0
    batch = collate_mmsa([MMSADataset(data.train)[3]])
    assert batch.vision_mask.tolist() == [[True]]
    assert batch.vision.abs().sum() == 0


def test_make_loader_is_seeded_and_covers_the_split(tmp_path: Path) -> None:
    data = load_mmsa(write(tmp_path, make_mmsa_dict(sizes=(10, 2, 2))))

    def order(seed: int) -> list[int]:
        return [i for b in make_loader(data.train, None, 3, True, seed) for i in b.index.tolist()]

    assert order(7) == order(7)
    assert sorted(order(7)) == list(range(10))
    assert order(7) != order(8)
    assert [b.index.tolist() for b in make_loader(data.train, None, 4, False, 0)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ------------------------------------------------------------------------------------------
# Normalisation
# ------------------------------------------------------------------------------------------


def _tiny_norm_dict() -> dict:
    """Hand-sized data: train audio has valid frames 1, 3, 5 (feature 0) and 2, 2, 2 (feature 1),
    padded with 99 (which must be ignored); valid/test hold huge values (which must be ignored)."""
    data = make_mmsa_dict(sizes=(2, 2, 2), audio_dim=2, audio_len=3)
    train = data["train"]
    train["audio"] = np.array(
        [[[1, 2], [3, 2], [99, 99]], [[5, 2], [99, 99], [99, 99]]], dtype=np.float32
    )
    train["audio_lengths"] = [2, 1]
    for name in ("valid", "test"):
        data[name]["audio"] = np.full((2, 3, 2), 1000.0, dtype=np.float32)
        data[name]["audio_lengths"] = [3, 3]
    return data


def test_norm_stats_use_valid_train_frames_only(tmp_path: Path) -> None:
    data = load_mmsa(write(tmp_path, _tiny_norm_dict()))
    norm = NormStats.from_data(data)
    assert set(norm.mean) == {"audio", "vision"}  # text_bert data: no text features to normalise
    np.testing.assert_allclose(norm.mean["audio"], [3.0, 2.0])
    # population std of (1, 3, 5) = sqrt(8/3); feature 1 is constant -> floored at eps
    np.testing.assert_allclose(norm.std["audio"], [np.sqrt(8 / 3), 1e-6], rtol=1e-6)
    vision, lengths = data.train.vision, data.train.vision_lengths
    valid = np.concatenate([vision[i, : lengths[i]] for i in range(len(lengths))])
    np.testing.assert_allclose(norm.mean["vision"], valid.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(norm.std["vision"], valid.std(axis=0), rtol=1e-5)

    sample = MMSADataset(data.train, norm)[0]
    np.testing.assert_allclose(sample.audio[:, 0], [-2 / np.sqrt(8 / 3), 0.0, 0.0], rtol=1e-6)
    assert sample.audio[2].tolist() == [0.0, 0.0]  # padding stays zero after normalising
    assert data.train.audio[0, 2, 0] == 99  # the split itself is untouched


def test_norm_stats_json_round_trip_and_text_features(tmp_path: Path) -> None:
    data = load_mmsa(write(tmp_path, make_mmsa_dict(text="features", text_dim=3)))
    norm = NormStats.from_data(data)
    assert set(norm.mean) == {"text", "audio", "vision"} and norm.mean["text"].shape == (3,)
    restored = NormStats.from_dict(json.loads(json.dumps(norm.to_dict())))
    for key in norm.mean:
        np.testing.assert_array_equal(restored.mean[key], norm.mean[key])
        np.testing.assert_array_equal(restored.std[key], norm.std[key])
    x = np.ones((2, 3), dtype=np.float32)
    np.testing.assert_allclose(restored.apply("text", x), (x - norm.mean["text"]) / norm.std["text"])
    with pytest.raises(ValueError, match="feature dim 4 does not match"):
        norm.apply("audio", np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="std.audio must be positive"):
        NormStats.from_dict({"mean": {"audio": [0.0]}, "std": {"audio": [0.0]}})


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def _set(split: str, key: str, value):
    def mutate(d):
        d[split][key] = value(d[split]) if callable(value) else value
    return mutate


def _poke(split: str, key: str, index, value):
    def mutate(d):
        arr = np.array(d[split][key], dtype=np.float64 if key.endswith("lengths") else None)
        arr[index] = value
        d[split][key] = arr
    return mutate


def _delete(split: str, key: str):
    def mutate(d):
        del d[split][key]
    return mutate


def _no_audio_frames(d):
    for split in d.values():
        split["audio"] = split["audio"][:, :0]
        split["audio_lengths"] = [0] * len(split["id"])


def _bad_mask(d):
    d["valid"]["text_bert"][1, 1, :] = 0
    d["valid"]["text_bert"][1, 1, 2] = 1  # a one after a zero


BAD_CASES = {
    "missing split": (lambda d: d.pop("valid"), r"split 'valid' is missing"),
    "missing audio": (_delete("test", "audio"), r"split 'test', key 'audio': required key is missing"),
    "missing label": (_delete("train", "regression_labels"), r"split 'train', key 'regression_labels': required key"),
    "no text at all": (_delete("train", "text_bert"), r"split 'train', key 'text_bert': missing: need 'text_bert'"),
    "N mismatch": (
        _set("valid", "vision", lambda s: s["vision"][:3]),
        r"split 'valid', key 'vision': sample 3: has 3 rows, expected N=4 \(the rows of 'regression_labels'\)",
    ),
    "audio not 3-D": (
        _set("train", "audio", lambda s: s["audio"][:, :, 0]),
        r"split 'train', key 'audio': expected a 3-D array \(N, L, D\), got shape \(6, 10\)",
    ),
    "text_bert not (N,3,L)": (
        _set("test", "text_bert", lambda s: s["text_bert"][:, :2]),
        r"split 'test', key 'text_bert': expected shape \(N, 3, L\)",
    ),
    "NaN in audio": (
        _poke("train", "audio", (2, 0, 1), np.nan),
        r"split 'train', key 'audio': sample 2: expected finite values, found 1 NaN/inf",
    ),
    "inf in vision": (
        _poke("test", "vision", (3, 1, 0), -np.inf),
        r"split 'test', key 'vision': sample 3: expected finite values",
    ),
    "NaN label": (
        _poke("valid", "regression_labels", 2, np.nan),
        r"split 'valid', key 'regression_labels': sample 2: expected finite values",
    ),
    "label out of range": (
        _poke("train", "regression_labels", 4, 3.5),
        r"split 'train', key 'regression_labels': sample 4: expected a label in \[-3, 3\], got 3.5",
    ),
    "labels (N,2)": (
        _set("train", "regression_labels", lambda s: np.zeros((6, 2))),
        r"split 'train', key 'regression_labels': expected shape \(N,\) or \(N, 1\), got \(6, 2\)",
    ),
    "length too long": (
        _poke("test", "audio_lengths", 1, 11),
        r"split 'test', key 'audio_lengths': sample 1: expected a length in \[0, 10\] \(the sequence length\), got 11",
    ),
    "negative length": (
        _poke("valid", "vision_lengths", 2, -1),
        r"split 'valid', key 'vision_lengths': sample 2: expected a length in \[0, 12\]",
    ),
    "fractional length": (
        _poke("valid", "vision_lengths", 0, 2.5),
        r"split 'valid', key 'vision_lengths': sample 0: expected an integer length, got 2.5",
    ),
    "broken attention mask": (
        _bad_mask,
        r"split 'valid', key 'text_bert': sample 1: expected the attention mask \(row 1\) to be 0/1 with all ones first",
    ),
    "dim differs across splits": (
        _set("test", "audio", lambda s: np.zeros((4, 10, 6), dtype=np.float32)),
        r"split 'test', key 'audio': feature dim 6 differs from split 'train' \(5\)",
    ),
    "key in one split only": (
        _delete("test", "audio_lengths"),
        r"split 'test', key 'audio_lengths': present in split 'train' only",
    ),
    "partial unimodal labels": (
        _set("train", "regression_labels_T", lambda s: s["regression_labels"].copy()),
        r"split 'train', key 'regression_labels_A': missing: unimodal labels must come for all of T, A, V",
    ),
    "ragged audio list": (
        _set("valid", "audio", lambda s: [s["audio"][0], s["audio"][1], s["audio"][2][:4], s["audio"][3]]),
        r"split 'valid', key 'audio': sample 2: rows of unequal shape: expected \(10, 5\)",
    ),
    "split not a dict": (lambda d: d.__setitem__("test", [1, 2]), r"split 'test': expected a dict of arrays, got list"),
    # token ids / mask / segment ids that would crash the text encoder's embedding lookup
    "negative token id": (
        _poke("train", "text_bert", (1, 0, 0), -5),
        r"split 'train', key 'text_bert': sample 1: expected token ids \(row 0\) >= 0, got -5 at position 0",
    ),
    "token id overflows int64": (
        _poke("valid", "text_bert", (2, 0, 1), 1e30),
        r"split 'valid', key 'text_bert': sample 2: expected integer values that fit in int64, got 1e\+30 at row 0, position 1",
    ),
    "uint64 token id beyond int64": (
        _set("train", "text_bert", lambda s: _uint64_with(s["text_bert"], (3, 0, 2), 2**63 + 7)),
        r"split 'train', key 'text_bert': sample 3: expected integer values that fit in int64, got 9223372036854775815",
    ),
    "segment id 2": (
        _poke("test", "text_bert", (0, 2, 3), 2),
        r"split 'test', key 'text_bert': sample 0: expected segment ids \(row 2\) to be 0 or 1, got 2 at position 3",
    ),
    "negative segment id": (
        _poke("train", "text_bert", (5, 2, 0), -1),
        r"split 'train', key 'text_bert': sample 5: expected segment ids \(row 2\) to be 0 or 1, got -1 at position 0",
    ),
    "attention mask value 2": (
        _poke("valid", "text_bert", (3, 1, 0), 2),
        r"split 'valid', key 'text_bert': sample 3: expected the attention mask \(row 1\) to be 0 or 1, got 2 at position 0",
    ),
    "text_bert without positions": (
        _set("train", "text_bert", lambda s: s["text_bert"][:, :, :0]),
        r"split 'train', key 'text_bert': expected at least one token position \(L >= 1\), got shape \(6, 3, 0\)",
    ),
    # clip ids
    "duplicate id in a split": (
        _set("train", "id", lambda s: ["train_0", "train_1", "train_2", "train_1", "train_4", "train_5"]),
        r"split 'train', key 'id': sample 3: id 'train_1' repeats sample 1; expected every clip id once",
    ),
    "empty id": (
        _set("valid", "id", lambda s: ["valid_0", "valid_1", "  ", "valid_3"]),
        r"split 'valid', key 'id': sample 2: expected a non-empty clip id, got '  '",
    ),
    "missing id (None)": (
        _set("test", "id", lambda s: np.array(["test_0", None, "test_2", "test_3"], dtype=object)),
        r"split 'test', key 'id': sample 1: expected a non-empty clip id \(a string\), got NoneType None",
    ),
    "float id": (
        _set("test", "id", lambda s: np.array([0.5, 1.5, 2.5, np.nan])),
        r"split 'test', key 'id': sample 0: expected a non-empty clip id \(a string\), got float 0.5",
    ),
    "test id copied from train": (
        _set("test", "id", lambda s: ["test_0", "test_1", "train_4", "test_3"]),
        r"split 'test', key 'id': sample 2: id 'train_4' is also sample 4 of split 'train'; expected each clip in one split",
    ),
    "valid id copied from train": (
        _set("valid", "id", lambda s: ["train_0", "valid_1", "valid_2", "valid_3"]),
        r"split 'valid', key 'id': sample 0: id 'train_0' is also sample 0 of split 'train'",
    ),
    # numbers that are not real numbers
    "complex audio": (
        _set("train", "audio", lambda s: s["audio"] + 1j),
        r"split 'train', key 'audio': expected real numbers, got complex values \(complex64\)",
    ),
    "complex labels": (
        _set("valid", "regression_labels", lambda s: s["regression_labels"].astype(np.complex64)),
        r"split 'valid', key 'regression_labels': expected real numbers, got complex values",
    ),
    "complex text_bert": (
        _set("test", "text_bert", lambda s: s["text_bert"].astype(np.complex128)),
        r"split 'test', key 'text_bert': expected real numbers, got complex values",
    ),
    "complex in an object list": (
        _set("train", "vision", lambda s: np.array([complex(1, 1)] * 6, dtype=object)),
        r"split 'train', key 'vision': expected real numbers, got complex",
    ),
    "labels as strings": (
        _set("train", "regression_labels", lambda s: s["regression_labels"].astype(str)),
        r"split 'train', key 'regression_labels': expected numbers, got strings",
    ),
    "lengths as strings": (
        _set("test", "audio_lengths", lambda s: [str(v) for v in s["audio_lengths"]]),
        r"split 'test', key 'audio_lengths': expected numbers, got strings",
    ),
    "audio an opaque object": (
        _set("valid", "audio", lambda s: object()),
        r"split 'valid', key 'audio': expected an array over samples, got object",
    ),
    "audio beyond float32": (
        _set("train", "audio", lambda s: _float64_with(s["audio"], (4, 0, 0), 1e300)),
        r"split 'train', key 'audio': sample 4: expected values within the float32 range, got 1e\+300",
    ),
    "audio without frames": (
        _no_audio_frames,
        r"split 'train', key 'audio': expected at least one frame and one feature \(L >= 1, D >= 1\), got shape \(6, 0, 5\)",
    ),
    "label below the range": (
        _poke("test", "regression_labels", 0, -3.01),
        r"split 'test', key 'regression_labels': sample 0: expected a label in \[-3, 3\], got -3.01",
    ),
    "-inf label": (
        _poke("train", "regression_labels", 1, -np.inf),
        r"split 'train', key 'regression_labels': sample 1: expected finite values",
    ),
}


def _uint64_with(arr: np.ndarray, index, value: int) -> np.ndarray:
    out = np.asarray(arr).astype(np.uint64)
    out[index] = value
    return out


def _float64_with(arr: np.ndarray, index, value: float) -> np.ndarray:
    out = np.asarray(arr, dtype=np.float64)
    out[index] = value
    return out


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_names_file_split_key_and_sample(tmp_path: Path, case: str) -> None:
    mutate, pattern = BAD_CASES[case]
    raw = make_mmsa_dict()
    mutate(raw)
    path = write(tmp_path, raw, "bad.pkl")
    with pytest.raises(MMSAFormatError, match=re.escape(str(path)) + ": " + pattern):
        load_mmsa(path)


def test_not_a_pickle_not_a_dict_and_missing_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    with pytest.raises(MMSAFormatError, match=re.escape(str(text)) + r": not a readable pickle \(UnpicklingError"):
        load_mmsa(text)
    as_list = write(tmp_path, [1, 2, 3], "list.pkl")
    with pytest.raises(MMSAFormatError, match=r"list.pkl: expected a dict with keys \['train', 'valid', 'test'\], got list"):
        load_mmsa(as_list)
    with pytest.raises(FileNotFoundError, match=r"absent.pkl: MMSA pickle not found"):
        load_mmsa(tmp_path / "absent.pkl")


def test_nonfinite_zero_replaces_features_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = make_mmsa_dict()
    raw["train"]["audio"][1, 0, :2] = -np.inf  # real MOSI audio holds -inf
    raw["train"]["audio"][4, 0, 0] = np.nan
    path = write(tmp_path, raw)
    with pytest.raises(MMSAFormatError, match=r"sample 1: expected finite values, found 3 NaN/inf \(load with nonfinite='zero'"):
        load_mmsa(path)
    with caplog.at_level(logging.WARNING, logger="mmfusion.data.mmsa"):
        data = load_mmsa(path, nonfinite="zero")
    assert data.train.audio[1, 0, :2].tolist() == [0.0, 0.0] and data.train.audio[4, 0, 0] == 0.0
    assert np.isfinite(data.train.audio).all()
    assert "split 'train', key 'audio': replaced 3 non-finite values with 0 (2 samples, first 1)" in caplog.text

    raw["valid"]["regression_labels"][0] = np.inf  # labels are never zero-filled
    with pytest.raises(MMSAFormatError, match=r"split 'valid', key 'regression_labels': sample 0: expected finite"):
        load_mmsa(write(tmp_path, raw, "bad_label.pkl"), nonfinite="zero")


# ------------------------------------------------------------------------------------------
# Token ids against the text model's vocabulary; confirmed limits (labels, length 0)
# ------------------------------------------------------------------------------------------


def test_vocab_size_bounds_token_ids(tmp_path: Path) -> None:
    raw = make_mmsa_dict()  # factory ids are in [1000, 2000)
    raw["valid"]["text_bert"][2, 0, 1] = 1999
    path = write(tmp_path, raw)
    assert load_mmsa(path, vocab_size=2000).splits["valid"].text_bert[2, 0, 1] == 1999
    raw["valid"]["text_bert"][2, 0, 1] = 2000
    path = write(tmp_path, raw, "beyond.pkl")
    load_mmsa(path)  # without a vocabulary only the always-true limits apply
    with pytest.raises(MMSAFormatError, match=re.escape(str(path)) + r": split 'valid', key 'text_bert': sample 2: "
                       r"expected token ids \(row 0\) in \[0, 2000\) \(the text model's vocabulary\), got 2000 at position 1"):
        load_mmsa(path, vocab_size=2000)
    for bad in (0, -3, 2.5, True, "30522"):
        with pytest.raises(ValueError, match=r"vocab_size must be a positive integer"):
            load_mmsa(path, vocab_size=bad)


def test_bundled_minilm_vocabulary_refuses_id_30522(tmp_path: Path) -> None:
    assert text_vocab_size() == text_vocab_size(default_model_path()) == 30522
    raw = make_mmsa_dict()
    raw["test"]["text_bert"][1, 0, 0] = 30521
    ok = write(tmp_path, raw, "ok.pkl")
    assert load_mmsa(ok, vocab_size=text_vocab_size()).splits["test"].text_bert[1, 0, 0] == 30521
    raw["test"]["text_bert"][1, 0, 0] = 30522
    bad = write(tmp_path, raw, "bad.pkl")
    with pytest.raises(MMSAFormatError, match=r"split 'test', key 'text_bert': sample 1: expected token ids \(row 0\) "
                       r"in \[0, 30522\)"):
        load_mmsa(bad, vocab_size=text_vocab_size())
    raw = make_mmsa_dict(text="features")  # no text_bert: nothing to check, vocab_size is harmless
    load_mmsa(write(tmp_path, raw, "feats.pkl"), vocab_size=10)


def test_text_vocab_size_reads_config_json_and_names_bad_paths(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 1234}))
    assert text_vocab_size(model) == 1234
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": "many"}))
    with pytest.raises(ValueError, match=re.escape(str(model)) + r".*config.json: vocab_size 'many': expected a positive integer"):
        text_vocab_size(model)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        text_vocab_size(tmp_path / "nowhere")


def test_label_range_ends_and_zero_length_text_are_accepted(tmp_path: Path) -> None:
    raw = make_mmsa_dict()
    raw["train"]["regression_labels"][:2] = [-3.0, 3.0]  # the ends of the range are labels
    raw["train"]["text_bert"][4, :2] = 0  # length-0 text: no ids, empty mask (documented: one zero frame)
    data = load_mmsa(write(tmp_path, raw))
    assert data.train.labels[:2].tolist() == [-3.0, 3.0] and data.train.text_lengths[4] == 0
    batch = collate_mmsa([MMSADataset(data.train)[4]])
    assert batch.text_mask.tolist() == [[True]] and batch.text_ids.tolist() == [[0]]


def test_numeric_lists_and_integer_ids_still_load(tmp_path: Path) -> None:
    raw = make_mmsa_dict()
    raw["train"]["text_bert"] = raw["train"]["text_bert"].astype(np.int64)  # exact integers stay exact
    raw["valid"]["text_bert"] = raw["valid"]["text_bert"].astype(np.uint16)
    raw["test"]["id"] = [10, 11, 12, 13]  # integer ids are read as their decimal strings
    raw["test"]["regression_labels"] = raw["test"]["regression_labels"].astype(np.float64).tolist()
    data = load_mmsa(write(tmp_path, raw))
    assert data.splits["test"].ids.tolist() == ["10", "11", "12", "13"]
    assert data.splits["valid"].text_bert.dtype == np.int64


# ------------------------------------------------------------------------------------------
# Summary and CLI
# ------------------------------------------------------------------------------------------


def test_describe_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = make_mmsa_dict(sizes=(5, 2, 2), aligned=True)  # train labels -3, -1.5, 0, 1.5, 3
    path = write(tmp_path, raw)
    summary = describe(load_mmsa(path))
    assert "aligned; text: text_bert (token ids, L=8); audio Da=5 (L=8); vision Dv=4 (L=8)" in summary
    train_line = next(line for line in summary.splitlines() if line.strip().startswith("train"))
    assert train_line.split() == ["train", "5", f"{raw['train']['text_bert'][:, 1].sum(1).mean():.1f}/8",
                                  "8.0/8", "8.0/8", "0.000", f"{np.std([-3, -1.5, 0, 1.5, 3]):.3f}",
                                  "40.0%", "20.0%", "40.0%"]
    assert main([str(path)]) == 0
    assert capsys.readouterr().out.strip() == summary
    assert main([str(tmp_path / "absent.pkl")]) == 2
    assert "MMSA pickle not found" in capsys.readouterr().err


def test_cli_checks_token_ids_against_a_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = make_mmsa_dict()
    raw["train"]["text_bert"][0, 0, 0] = 30522
    path = write(tmp_path, raw)
    assert main([str(path)]) == 0
    capsys.readouterr()
    for flags in (["--vocab-size", "30522"], ["--text-model", default_model_path()]):
        assert main([str(path), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert err.startswith(f"error: {path}: split 'train', key 'text_bert': sample 0: expected token ids")
    assert main([str(path), "--text-model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "nowhere") in err
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--vocab-size", "-4"])
    assert exit_info.value.code == 2
    assert "argument --vocab-size: expected a positive integer, got '-4'" in capsys.readouterr().err


def test_split_factory_helpers_make_consistent_rows() -> None:
    split = make_split(3, aligned=False, text="both", unimodal=True)
    n = {len(np.asarray(v)) for v in split.values()}
    assert n == {3}
