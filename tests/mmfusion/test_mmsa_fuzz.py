"""Property-based fuzzing of the MMSA pickle loader (Hypothesis).

Every example starts from a small valid MMSA dict (``tests/mmsa_factory.py``) and applies one to
three random mutations: wrong dtypes and shapes, values out of range (token ids, segment ids,
mask values, labels, lengths), NaN/inf, complex numbers, strings and other objects where numbers
belong, duplicate, empty or shared clip ids, missing keys, extra junk keys, truncated or extended
rows, splits that are not dicts. The property:

* ``load_mmsa`` raises an ``MMSAFormatError`` whose message starts with the file and names the
  split and the key, or
* it returns an ``MMSAData`` from which ``make_loader`` builds a batch of every non-empty split
  that the model can consume: masks with a True position per row and as wide as the padded
  tensors, finite features, token ids inside the vocabulary, segment ids 0/1.

No other exception type is ever acceptable (IndexError, TypeError, a numpy warning...).
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mmfusion.data.mmsa import SPLITS, MMSAFormatError, NormStats, load_mmsa, make_loader
from tests.mmsa_factory import make_mmsa_dict, write_mmsa_pickle

VOCAB = 2000  # the factory's token ids are in [1000, 2000)
KEYS = ("id", "raw_text", "text_bert", "text", "text_lengths", "audio", "vision", "audio_lengths", "vision_lengths",
        "regression_labels", "regression_labels_T", "regression_labels_A", "regression_labels_V",
        "classification_labels")
JUNK_KEYS = ("annotations", "extra", 7, ("tuple", "key"), "id ", "")

SPECIAL_VALUES = (
    0, 1, 2, -1, -5, 0.5, 3.0, 3.5, -3.5, 1999, 2000, 30522, 2**31, 2**62, 2**63 - 1, 1e30, -1e30, 1e300,
    np.nan, np.inf, -np.inf, True, "1.5", "x", "", None, 1 + 2j, b"bytes", object(), [1, 2], {"a": 1},
)
DTYPES = (np.bool_, np.int8, np.int16, np.int64, np.uint8, np.uint64, np.float16, np.float32, np.float64,
          np.complex64, np.complex128, object, str)


def junk_value(draw: st.DrawFn, n: int) -> Any:
    """Something that does not belong in an MMSA split (for replacing a key or adding one)."""
    kind = draw(st.sampled_from(["special", "strings", "objects", "empty", "nested", "wrong_n", "random_3d"]))
    if kind == "special":
        return draw(st.sampled_from(SPECIAL_VALUES))
    if kind == "strings":
        return np.array([f"s{i}" for i in range(n)])
    if kind == "objects":
        return np.array([draw(st.sampled_from(SPECIAL_VALUES)) for _ in range(n)], dtype=object)
    if kind == "empty":
        return np.zeros((0,))
    if kind == "nested":
        return [[draw(st.sampled_from(SPECIAL_VALUES))] for _ in range(n)]
    if kind == "wrong_n":
        return np.zeros((n + draw(st.integers(-n, 3)), 4, 2), dtype=np.float32)
    return np.random.default_rng(draw(st.integers(0, 99))).normal(size=(n, draw(st.integers(0, 3)), 2))


def poke(draw: st.DrawFn, value: Any) -> Any:
    """``value`` (an array or list) with one random element replaced by a special value."""
    arr = np.array(value, dtype=object if not isinstance(value, np.ndarray) else None)
    if arr.size == 0:
        return arr
    index = tuple(draw(st.integers(0, max(0, d - 1))) for d in arr.shape)
    new = draw(st.sampled_from(SPECIAL_VALUES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the overflowing cast is the point: the loader must notice
        try:
            arr[index] = new
        except (TypeError, ValueError, OverflowError):
            arr = arr.astype(object)
            arr[index] = new
    return arr


def reshape(draw: st.DrawFn, value: Any) -> Any:
    arr = np.asarray(value)
    how = draw(st.sampled_from(["drop_axis", "add_axis", "transpose", "truncate", "extend", "flatten", "zero_width"]))
    if how == "drop_axis" and arr.ndim >= 2:
        return arr[..., 0]
    if how == "add_axis":
        return arr[..., None]
    if how == "transpose" and arr.ndim >= 2:
        return np.swapaxes(arr, 0, -1)
    if how == "truncate":
        return arr[: draw(st.integers(0, max(0, len(arr) - 1)))] if arr.ndim else arr
    if how == "extend" and arr.ndim:
        return np.concatenate([arr, arr[:1]]) if len(arr) else arr
    if how == "zero_width" and arr.ndim >= 2:
        return arr[:, :0]
    return arr.reshape(-1)


def retype(draw: st.DrawFn, value: Any) -> Any:
    dtype = draw(st.sampled_from(DTYPES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return np.asarray(value).astype(dtype)
        except (TypeError, ValueError, OverflowError):
            return np.asarray(value, dtype=object)


def text_bert_value(draw: st.DrawFn, value: Any) -> Any:
    """``text_bert`` with a targeted bad value: an id, mask or segment entry out of its range."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # an earlier mutation made it something else
        return value
    if arr.ndim != 3 or arr.shape[1] != 3 or arr.size == 0:
        return arr
    row = draw(st.integers(0, 2))
    index = (draw(st.integers(0, arr.shape[0] - 1)), row, draw(st.integers(0, arr.shape[2] - 1)))
    arr[index] = draw(st.sampled_from([-1, -(2**40), 2, 5, VOCAB, VOCAB + 1, 30522, 2**62, 1e19, 1e30, 0.5, np.nan]))
    return arr


def clip_count(part: dict) -> int:
    """How many clips the split's ``id`` holds (3 when that is not clear any more)."""
    try:
        return len(part["id"]) if np.ndim(part["id"]) else 3
    except (KeyError, TypeError, ValueError):
        return 3


@st.composite
def mutated_dataset(draw: st.DrawFn) -> tuple[dict, list[str]]:
    raw = make_mmsa_dict(
        sizes=(4, 3, 3),
        aligned=draw(st.booleans()),
        text=draw(st.sampled_from(["bert", "features", "both"])),
        text_len=5, audio_len=4, vision_len=6, text_dim=3, audio_dim=2, vision_dim=3,
        unimodal=draw(st.booleans()),
        seed=draw(st.integers(0, 5)),
    )
    notes = []
    for _ in range(draw(st.integers(1, 3))):
        split = draw(st.sampled_from(SPLITS))
        part = raw.get(split)
        kind = draw(st.sampled_from(["poke", "poke", "text_bert", "reshape", "retype", "delete", "replace", "junk_key",
                                     "duplicate_id", "shared_id", "list", "split_level"]))
        keys = sorted(k for k in part if isinstance(k, str)) if isinstance(part, dict) else []
        if not keys:
            continue
        key = draw(st.sampled_from(keys))
        n = clip_count(part)
        notes.append(f"{kind} {split}.{key}")
        try:
            if kind == "poke":
                part[key] = poke(draw, part[key])
            elif kind == "text_bert" and "text_bert" in part:
                part["text_bert"] = text_bert_value(draw, part["text_bert"])
            elif kind == "reshape":
                part[key] = reshape(draw, part[key])
            elif kind == "retype":
                part[key] = retype(draw, part[key])
            elif kind == "delete":
                del part[key]
            elif kind == "replace":
                part[key] = junk_value(draw, n)
            elif kind == "junk_key":
                part[draw(st.sampled_from(JUNK_KEYS))] = junk_value(draw, n)
            elif kind == "duplicate_id" and "id" in part:
                ids = list(np.asarray(part["id"]).reshape(-1))
                if len(ids) >= 2:
                    ids[draw(st.integers(1, len(ids) - 1))] = ids[0]
                    part["id"] = ids
            elif kind == "shared_id" and "id" in part:
                other = draw(st.sampled_from([s for s in SPLITS if s != split]))
                ids = list(np.asarray(part["id"]).reshape(-1))
                theirs = raw[other].get("id") if isinstance(raw.get(other), dict) else None
                if ids and theirs is not None and np.size(theirs):
                    ids[draw(st.integers(0, len(ids) - 1))] = np.asarray(theirs).reshape(-1)[0]
                    part["id"] = ids
            elif kind == "list":
                value = part[key]
                if isinstance(value, np.ndarray):
                    part[key] = value.tolist()
                elif isinstance(value, (list, tuple)):
                    part[key] = list(value)
            elif kind == "split_level":
                action = draw(st.sampled_from(["drop", "not_a_dict", "junk_top_key"]))
                if action == "drop":
                    del raw[split]
                elif action == "not_a_dict":
                    raw[split] = junk_value(draw, n)
                else:
                    raw["extraction"] = {"note": "a top-level key of its own is fine"}
        except (TypeError, ValueError, OverflowError, IndexError, AttributeError):
            notes[-1] += " (not applicable: skipped)"  # the generator's own limits, not the loader's
    return raw, notes


SPLIT_LEVEL = re.compile(r": split '(train|valid|test)'( is missing|: expected a dict)")
NAMES_KEY = re.compile(r": split '(train|valid|test)', key '[^']*': ")


def check_error(exc: BaseException, path: Path, notes: list[str]) -> None:
    message = str(exc)
    assert isinstance(exc, MMSAFormatError), f"{notes}: {type(exc).__name__}: {message}"
    assert message.startswith(f"{path}: "), f"{notes}: the message does not start with the file: {message}"
    assert "\n" not in message, f"{notes}: not one line: {message!r}"
    assert NAMES_KEY.search(message) or SPLIT_LEVEL.search(message), f"{notes}: names no split/key: {message}"


def check_batches(path: Path, vocab_size: int | None, notes: list[str]) -> None:
    """The file loaded: every non-empty split must give a batch the model can consume."""
    data = load_mmsa(path, vocab_size=vocab_size)
    try:
        norm = NormStats.from_data(data)
    except ValueError as exc:  # a train split without one valid frame: refused, naming split and key
        assert re.search(r"split 'train', key '(audio|vision|text)': no valid frames", str(exc)), (notes, str(exc))
        norm = None
    for name, split in data.splits.items():
        if len(split) == 0:
            continue
        batch = next(iter(make_loader(split, norm, batch_size=3, shuffle=False)))
        for modality in ("audio", "vision"):
            values, mask = getattr(batch, modality), getattr(batch, f"{modality}_mask")
            assert values.shape[:2] == mask.shape and mask.any(dim=1).all(), (notes, name, modality)
            assert torch.isfinite(values).all(), (notes, name, modality)
        assert batch.text_mask.any(dim=1).all(), (notes, name)
        if batch.text_ids is not None:
            ids, segment = batch.text_ids, batch.text_segment
            assert ids.shape == segment.shape == batch.text_mask.shape, (notes, name)
            assert ids.dtype == torch.long and int(ids.min()) >= 0, (notes, name)
            assert set(segment.unique().tolist()) <= {0, 1}, (notes, name)
            if vocab_size is not None:  # the lookups that would raise IndexError in the text encoder
                torch.nn.Embedding(vocab_size, 2)(ids)
                torch.nn.Embedding(2, 2)(segment)
        else:
            assert batch.text_feats.shape[:2] == batch.text_mask.shape and torch.isfinite(batch.text_feats).all()
        assert torch.isfinite(batch.label).all() and batch.label.abs().max() <= 3, (notes, name)


@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory(prefix="mmsa_fuzz_") as folder:
        yield Path(folder)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutated_dataset(), vocab_size=st.sampled_from([None, VOCAB, 30522]))
def test_mutated_mmsa_is_refused_by_name_or_batches(fuzz_dir: Path, case: tuple[dict, list[str]], vocab_size) -> None:
    raw, notes = case
    path = write_mmsa_pickle(raw, fuzz_dir / "fuzz.pkl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy cast warning means a value was silently changed
        try:
            load_mmsa(path, vocab_size=vocab_size)
        except Exception as exc:  # noqa: BLE001 -- the property is about which exceptions
            check_error(exc, path, notes)
            event("refused: " + re.sub(r".*?key '([^']*)': (sample \d+: )?", r"\1: ", str(exc))[:50])
            return
        event("loaded and batched")
        check_batches(path, vocab_size, notes)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    split=st.sampled_from(SPLITS),
    row=st.integers(0, 2),
    sample=st.integers(0, 2),
    position=st.integers(0, 4),
    value=st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True)),
    vocab_size=st.sampled_from([None, VOCAB]),
)
def test_any_text_bert_value_is_refused_or_safe_to_embed(fuzz_dir: Path, split, row, sample, position, value,
                                                         vocab_size) -> None:
    raw = make_mmsa_dict(sizes=(3, 3, 3), text_len=5)
    arr = raw[split]["text_bert"].astype(object)
    arr[sample, row, position] = value
    raw[split]["text_bert"] = arr
    path = write_mmsa_pickle(raw, fuzz_dir / "text_bert.pkl")
    notes = [f"text_bert {split}[{sample}, {row}, {position}] = {value!r}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            data = load_mmsa(path, vocab_size=vocab_size)
        except Exception as exc:  # noqa: BLE001
            check_error(exc, path, notes)
            assert "key 'text_bert'" in str(exc) and f"split '{split}'" in str(exc), (notes, str(exc))
            return
    stored = data.splits[split].text_bert[sample, row, position]
    assert stored == value, notes  # accepted values are kept exactly
    assert stored >= 0 and (row == 0 or stored in (0, 1)) and (vocab_size is None or row or stored < vocab_size), notes
    check_batches(path, vocab_size, notes)
