"""MMSA pickles (CMU-MOSI / MOSEI / CH-SIMS as MMSA distributes them): load, check, normalise, batch.

The file is a pickled dict ``{"train": ..., "valid": ..., "test": ...}``; each split is a dict of
arrays over its N clips (the MMSA distribution format, docs/references.md):

=========================  ==============================  =========================================
key                        shape                           notes
=========================  ==============================  =========================================
``id``                     (N,) str                        required; unique across all three splits
``raw_text``               (N,) str                        optional (empty strings when absent)
``text_bert``              (N, 3, L) int                   token ids (>= 0, < vocab_size when given),
                                                           attention mask (0/1), segment ids (0/1)
``text``                   (N, L, Dt) float                precomputed text features
``text_lengths``           (N,) int                        optional, only used without ``text_bert``
``audio``                  (N, La, Da) float               required
``vision``                 (N, Lv, Dv) float               required
``audio_lengths``          (N,) int                        unaligned data only
``vision_lengths``         (N,) int                        unaligned data only
``regression_labels``      (N,) or (N, 1) in [-3, 3]       required: the multimodal label
``regression_labels_T/A/V`` (N,) or (N, 1) in [-3, 3]      optional (CH-SIMS); all three or none
=========================  ==============================  =========================================

At least one of ``text_bert`` / ``text`` is required. Real frames come first in every sequence,
padding after them. True lengths are:

* text: the sum of the ``text_bert`` attention mask (which must be a block of leading ones);
  without ``text_bert``, the ``text_lengths`` key; without that, one past the last text row that
  is not all zeros (trailing all-zero rows are padding);
* audio / vision: ``audio_lengths`` / ``vision_lengths``; when absent (the aligned release) the
  full sequence length.

A clip whose true length is 0 is kept (MMSA's own releases have none, but ``mmfusion.extract``
writes audio length 0 for a video without an audio track); in a batch it gets one all-zero frame
marked real, so that every mask row has a True position and attention or pooling over it stays
defined. Every sequence array has at least one position (L >= 1) and one feature (D >= 1).

Numbers must be real: complex values, strings and other objects where numbers belong are refused,
never converted. ``text_bert`` holds integral values that fit int64 (ids >= 0, mask and segment
ids 0 or 1); ``load_mmsa(path, vocab_size=text_vocab_size(model_path))`` also bounds the ids by
the text model's vocabulary, so that no id reaches the embedding lookup out of range.

**Pickle runs code on load: only load files you trust.**
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmcore.hf import default_model_path, load_tokenizer
from mmfusion.data.batch import MMSABatch

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
UNIMODAL_TASKS = ("T", "A", "V")
LABEL_RANGE = (-3.0, 3.0)
BINARY_ROWS = {1: "the attention mask", 2: "segment ids"}  # rows of text_bert that hold only 0 / 1
FLOAT_EXACT_INT = 2.0**53  # a float64 holds every integer below this exactly (ids beyond it are not ids)
Nonfinite = Literal["error", "zero"]


class MMSAFormatError(ValueError):
    """An MMSA pickle is not in the expected format; the message names file, split, key, sample."""


# --------------------------------------------------------------------------------------------
# Data containers
# --------------------------------------------------------------------------------------------


@dataclass
class MMSASplit:
    """One split as numpy arrays; row ``i`` of every array is clip ``i``."""

    name: str
    ids: np.ndarray  # (N,) str
    raw_text: np.ndarray  # (N,) str
    text_bert: np.ndarray | None  # (N, 3, Lt) int64: ids, attention mask, segment ids
    text: np.ndarray | None  # (N, Lt', Dt) float32
    text_lengths: np.ndarray  # (N,) int64
    audio: np.ndarray  # (N, La, Da) float32
    audio_lengths: np.ndarray  # (N,) int64
    vision: np.ndarray  # (N, Lv, Dv) float32
    vision_lengths: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) float32 in [-3, 3]
    unimodal_labels: dict[str, np.ndarray] | None = None  # {"T"|"A"|"V": (N,) float32}

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class MMSAData:
    """A loaded MMSA pickle: the three splits plus facts shared by all of them."""

    splits: dict[str, MMSASplit]
    path: Path
    aligned: bool  # True when no split carries audio_lengths / vision_lengths
    extraction: dict | None = None  # how mmfusion.extract made the file (its "extraction" entry), else None

    @property
    def train(self) -> MMSASplit:
        return self.splits["train"]

    @property
    def has_text_bert(self) -> bool:
        return self.train.text_bert is not None

    @property
    def text_dim(self) -> int | None:
        """Dt of the ``text`` features, or None when the pickle has only ``text_bert``."""
        return None if self.train.text is None else int(self.train.text.shape[2])

    @property
    def audio_dim(self) -> int:
        return int(self.train.audio.shape[2])

    @property
    def vision_dim(self) -> int:
        return int(self.train.vision.shape[2])

    @property
    def has_unimodal_labels(self) -> bool:
        return self.train.unimodal_labels is not None


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


class _SplitReader:
    """Turns one raw split dict into checked numpy arrays; every error names file/split/key."""

    def __init__(self, path: Path, name: str, raw: dict, nonfinite: Nonfinite, vocab_size: int | None = None) -> None:
        self.path, self.name, self.raw, self.nonfinite = path, name, raw, nonfinite
        self.vocab_size = vocab_size
        self.n: int | None = None
        self.n_key = ""

    def fail(self, key: str, message: str, index: int | None = None) -> MMSAFormatError:
        at = "" if index is None else f" sample {index}:"
        return MMSAFormatError(f"{self.path}: split '{self.name}', key '{key}':{at} {message}")

    def array(self, key: str, dtype: Any = None, *, keep_int: bool = False) -> np.ndarray:
        """``raw[key]`` as an array (lists and object arrays of equal-shaped rows are stacked).

        With a ``dtype`` the values must be real numbers (complex values, strings and other objects
        are refused, never converted) and are cast to it, refusing floats the cast would overflow;
        ``keep_int`` leaves integer arrays uncast (exact).
        """
        value = self.raw[key]
        try:
            arr = np.asarray(value)
            if arr.dtype == object and dtype is not None and arr.ndim == 1 and len(arr):
                arr = np.stack([np.asarray(row) for row in arr])
        except (ValueError, TypeError) as exc:
            try:
                rows = list(value)
            except TypeError:
                raise self.fail(key, f"expected an array over samples, got {type(value).__name__}") from None
            shapes = [_shape(row) for row in rows]
            ragged = next((i for i, shape in enumerate(shapes) if shape is None), None)
            if ragged is not None:
                raise self.fail(key, "expected a row of numbers with one shape, got ragged nested sequences", ragged) from None
            bad = next((i for i, shape in enumerate(shapes) if shape != shapes[0]), None)
            if bad is not None:
                raise self.fail(key, f"rows of unequal shape: expected {shapes[0]} like sample 0", bad) from None
            raise self.fail(key, f"expected an array of numbers, got rows that do not stack ({exc})") from None
        if arr.ndim == 0:
            raise self.fail(key, f"expected an array over samples, got {type(value).__name__} {_short(value)}")
        if dtype is None:
            return arr
        self.check_real(key, arr)
        if keep_int and arr.dtype.kind in "iub":
            return arr
        return self.cast(key, arr, dtype)

    def cast(self, key: str, arr: np.ndarray, dtype: Any) -> np.ndarray:
        """``arr.astype(dtype)``; a float that would overflow the narrower type is refused, not made inf."""
        target = np.dtype(dtype)
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                if arr.dtype.kind == "O" and target.kind == "f":
                    arr = arr.astype(np.float64)
                out = arr.astype(target, copy=False)
        except (ValueError, TypeError, OverflowError) as exc:
            raise self.fail(key, f"cannot convert to {target.name}: {exc}") from None
        if arr.dtype.kind == "f" and target.kind == "f" and target.itemsize < arr.dtype.itemsize:
            overflow = np.isfinite(arr) & ~np.isfinite(out)
            if overflow.any():
                sample, rest = _first_bad(overflow)
                raise self.fail(key, f"expected values within the {target.name} range, got {arr[(sample, *rest)]:g}",
                                sample)
        return out

    def check_real(self, key: str, arr: np.ndarray) -> None:
        """Refuse arrays that do not hold real numbers: complex, strings, dates, other objects."""
        kind = arr.dtype.kind
        if kind == "c":
            raise self.fail(key, f"expected real numbers, got complex values ({arr.dtype})")
        if kind in "US":
            raise self.fail(key, f"expected numbers, got strings ({arr.dtype})")
        if kind in "mMV":
            raise self.fail(key, f"expected numbers, got {arr.dtype}")
        if kind != "O":
            return
        for flat, item in enumerate(arr.flat):
            if isinstance(item, (bool, int, float, np.bool_, np.integer, np.floating)):
                continue
            sample = int(np.unravel_index(flat, arr.shape)[0])
            if isinstance(item, (complex, np.complexfloating)):
                raise self.fail(key, f"expected real numbers, got complex values ({_short(item)})", sample)
            what = "strings" if isinstance(item, (str, bytes)) else type(item).__name__
            raise self.fail(key, f"expected numbers, got {what} ({_short(item)})", sample)

    def check_rows(self, key: str, arr: np.ndarray) -> None:
        """Every array of a split has the same number of rows N (the first one read sets N)."""
        if arr.ndim == 0:
            raise self.fail(key, f"expected an array over samples, got a scalar {arr!r}")
        if self.n is None:
            self.n, self.n_key = int(arr.shape[0]), key
        elif arr.shape[0] != self.n:
            first_bad = min(int(arr.shape[0]), self.n)
            raise self.fail(
                key, f"has {arr.shape[0]} rows, expected N={self.n} (the rows of '{self.n_key}')", first_bad
            )

    def finite(self, key: str, arr: np.ndarray, allow_zero_fill: bool = True) -> np.ndarray:
        """NaN/inf raise, or (``nonfinite="zero"``, features only) become 0 with a warning."""
        bad = ~np.isfinite(arr)
        if not bad.any():
            return arr
        per_sample = bad.any(axis=tuple(range(1, arr.ndim)))
        first = int(np.argmax(per_sample))
        count = int(bad.sum())
        if self.nonfinite == "zero" and allow_zero_fill:
            if not arr.flags.writeable:
                arr = arr.copy()
            arr[bad] = 0.0  # in place: the array belongs to the freshly unpickled dict
            logger.warning(
                "%s: split '%s', key '%s': replaced %d non-finite values with 0 (%d samples, first %d)",
                self.path, self.name, key, count, int(per_sample.sum()), first,
            )
            return arr
        hint = " (load with nonfinite='zero' to replace them with 0)" if allow_zero_fill else ""
        raise self.fail(key, f"expected finite values, found {count} NaN/inf{hint}", first)

    def sequence(self, key: str) -> np.ndarray:
        """A required (N, L, D) float feature array (L, D >= 1 unless the split is empty)."""
        arr = self.array(key, np.float32)
        self.check_rows(key, arr)
        if arr.ndim != 3:
            raise self.fail(key, f"expected a 3-D array (N, L, D), got shape {arr.shape}")
        if len(arr) and 0 in arr.shape[1:]:
            raise self.fail(key, f"expected at least one frame and one feature (L >= 1, D >= 1), got shape {arr.shape}")
        return self.finite(key, arr)

    def vector(self, key: str, dtype: Any) -> np.ndarray:
        """An (N,) array; (N, 1) is accepted and flattened."""
        arr = self.array(key, None)
        self.check_rows(key, arr)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise self.fail(key, f"expected shape (N,) or (N, 1), got {arr.shape}")
        if np.dtype(dtype).kind in "fiub":
            self.check_real(key, arr)
        return self.cast(key, arr, dtype)

    def labels(self, key: str) -> np.ndarray:
        arr = self.finite(key, self.vector(key, np.float32), allow_zero_fill=False)
        low, high = LABEL_RANGE
        outside = (arr < low) | (arr > high)
        if outside.any():
            first = int(np.argmax(outside))
            raise self.fail(key, f"expected a label in [{low:g}, {high:g}], got {arr[first]:g}", first)
        return arr

    def lengths(self, key: str, max_len: int) -> np.ndarray:
        arr = self.finite(key, self.vector(key, np.float64), allow_zero_fill=False)
        not_int = arr != np.round(arr)
        if not_int.any():
            first = int(np.argmax(not_int))
            raise self.fail(key, f"expected an integer length, got {arr[first]:g}", first)
        bad = (arr < 0) | (arr > max_len)
        if bad.any():
            first = int(np.argmax(bad))
            raise self.fail(
                key, f"expected a length in [0, {max_len}] (the sequence length), got {int(arr[first])}", first
            )
        return arr.astype(np.int64)

    def text_bert(self) -> tuple[np.ndarray, np.ndarray]:
        """``text_bert`` as int64 (N, 3, L) and its lengths (attention-mask sums).

        Always: integral values that fit int64, token ids >= 0 (and < ``vocab_size`` when the
        reader has one), attention mask and segment ids 0 or 1, the mask a block of leading ones.
        """
        key = "text_bert"
        arr = self.array(key, np.float64, keep_int=True)
        self.check_rows(key, arr)
        if arr.ndim != 3 or arr.shape[1] != 3:
            raise self.fail(key, f"expected shape (N, 3, L) (ids, attention mask, segment ids), got {arr.shape}")
        if len(arr) and arr.shape[2] == 0:
            raise self.fail(key, f"expected at least one token position (L >= 1), got shape {arr.shape}")
        if arr.dtype.kind == "f":
            arr = self.finite(key, arr, allow_zero_fill=False)
            not_int = (arr != np.round(arr)).any(axis=(1, 2))
            if not_int.any():
                raise self.fail(key, "expected integer token ids / mask / segment ids", int(np.argmax(not_int)))
            too_big = np.abs(arr) >= FLOAT_EXACT_INT
            why = " (a float holds integers exactly only below 2**53)"
        else:
            too_big = arr > np.iinfo(np.int64).max if arr.dtype.kind == "u" else np.zeros(arr.shape, dtype=bool)
            why = ""
        if too_big.any():
            sample, (row, position) = _first_bad(too_big)
            value = arr[sample, row, position]
            raise self.fail(key, f"expected integer values that fit in int64, got {_number(value)} at row {row}, "
                            f"position {position}{why}", sample)
        arr = arr.astype(np.int64)
        for row, what in BINARY_ROWS.items():
            bad = (arr[:, row] != 0) & (arr[:, row] != 1)
            if bad.any():
                sample, (position,) = _first_bad(bad)
                raise self.fail(key, f"expected {what} (row {row}) to be 0 or 1, got {arr[sample, row, position]} "
                                f"at position {position}", sample)
        ids = arr[:, 0]
        bad = ids < 0
        if bad.any():
            sample, (position,) = _first_bad(bad)
            raise self.fail(key, f"expected token ids (row 0) >= 0, got {ids[sample, position]} at position {position}",
                            sample)
        if self.vocab_size is not None:
            bad = ids >= self.vocab_size
            if bad.any():
                sample, (position,) = _first_bad(bad)
                raise self.fail(key, f"expected token ids (row 0) in [0, {self.vocab_size}) (the text model's vocabulary), "
                                f"got {ids[sample, position]} at position {position}", sample)
        mask = arr[:, 1, :]
        lengths = mask.sum(axis=1)
        prefix = (np.arange(arr.shape[2])[None, :] < lengths[:, None]).astype(np.int64)
        bad = (mask != prefix).any(axis=1)
        if bad.any():
            raise self.fail(
                key,
                "expected the attention mask (row 1) to be 0/1 with all ones first, then zeros",
                int(np.argmax(bad)),
            )
        return arr, lengths.astype(np.int64)

    def ids(self) -> np.ndarray:
        """``id`` as (N,) str: every id a non-empty string (an integer id becomes its decimal
        string), no id twice in the split."""
        key = "id"
        arr = self.array(key, None)
        self.check_rows(key, arr)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise self.fail(key, f"expected shape (N,) or (N, 1), got {arr.shape}")
        ids: list[str] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(arr.tolist()):
            if isinstance(item, bytes):
                try:
                    item = item.decode("utf-8")
                except UnicodeDecodeError:
                    raise self.fail(key, f"expected a clip id in UTF-8, got {_short(item)}", i) from None
            if isinstance(item, int) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str):
                raise self.fail(key, f"expected a non-empty clip id (a string), got {type(item).__name__} {_short(item)}", i)
            if not item.strip():
                raise self.fail(key, f"expected a non-empty clip id, got {item!r}", i)
            if item in seen:
                raise self.fail(key, f"id {item!r} repeats sample {seen[item]}; expected every clip id once", i)
            seen[item] = i
            ids.append(item)
        return np.array(ids, dtype=str)

    def read(self) -> MMSASplit:
        raw = self.raw
        for key in ("id", "audio", "vision", "regression_labels"):
            if key not in raw:
                raise self.fail(key, f"required key is missing (keys present: {sorted(map(str, raw))})")
        if "text_bert" not in raw and "text" not in raw:
            raise self.fail("text_bert", "missing: need 'text_bert' (token ids) or 'text' (features)")

        labels = self.labels("regression_labels")
        ids = self.ids()
        raw_text = self.vector("raw_text", str) if "raw_text" in raw else np.full(len(ids), "", dtype=object)
        if "classification_labels" in raw:
            self.vector("classification_labels", np.float64)  # not used, but must cover the same clips

        text_bert, text_lengths = self.text_bert() if "text_bert" in raw else (None, None)
        text = self.sequence("text") if "text" in raw else None
        if text_lengths is None:
            assert text is not None
            if "text_lengths" in raw:
                text_lengths = self.lengths("text_lengths", text.shape[1])
            else:
                text_lengths = _trailing_nonzero_length(text)
        elif text is not None and text.shape[1] < text_bert.shape[2]:
            too_long = text_lengths > text.shape[1]
            if too_long.any():
                first = int(np.argmax(too_long))
                raise self.fail(
                    "text",
                    f"has {text.shape[1]} rows but the text_bert mask gives length {text_lengths[first]}",
                    first,
                )

        audio = self.sequence("audio")
        vision = self.sequence("vision")
        audio_lengths = (
            self.lengths("audio_lengths", audio.shape[1])
            if "audio_lengths" in raw
            else np.full(len(labels), audio.shape[1], dtype=np.int64)
        )
        vision_lengths = (
            self.lengths("vision_lengths", vision.shape[1])
            if "vision_lengths" in raw
            else np.full(len(labels), vision.shape[1], dtype=np.int64)
        )

        present = [t for t in UNIMODAL_TASKS if f"regression_labels_{t}" in raw]
        unimodal = None
        if present:
            missing = [t for t in UNIMODAL_TASKS if t not in present]
            if missing:
                raise self.fail(
                    f"regression_labels_{missing[0]}",
                    f"missing: unimodal labels must come for all of T, A, V (found only {present})",
                )
            unimodal = {t: self.labels(f"regression_labels_{t}") for t in UNIMODAL_TASKS}

        for key, lengths in (("text", text_lengths), ("audio", audio_lengths), ("vision", vision_lengths)):
            zero = int((lengths == 0).sum())
            if zero:
                logger.warning(
                    "%s: split '%s': %d clips have %s length 0 (first: sample %d); batches give them "
                    "one zero frame", self.path, self.name, zero, key, int(np.argmax(lengths == 0)),
                )

        return MMSASplit(
            name=self.name,
            ids=ids,
            raw_text=raw_text,
            text_bert=text_bert,
            text=text,
            text_lengths=text_lengths,
            audio=audio,
            audio_lengths=audio_lengths,
            vision=vision,
            vision_lengths=vision_lengths,
            labels=labels,
            unimodal_labels=unimodal,
        )


def _shape(value: Any) -> tuple[int, ...] | None:
    """``np.shape(value)``, or None for nested sequences that have no single shape."""
    try:
        return np.shape(value)
    except (ValueError, TypeError, AttributeError):
        return None


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (error messages stay one short line)."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any) -> str:
    """An array scalar for a message: integers in full, floats with ``%g``."""
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _first_bad(bad: np.ndarray) -> tuple[int, tuple[int, ...]]:
    """The first sample with a True in ``bad`` (N, ...) and the index of its first True inside it."""
    sample = int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))
    rest = np.unravel_index(int(np.argmax(bad[sample])), bad.shape[1:])
    return sample, tuple(int(i) for i in rest)


def _trailing_nonzero_length(text: np.ndarray) -> np.ndarray:
    """Per clip, one past the last row of ``text`` (N, L, D) that is not all zeros (0 if none)."""
    nonzero = (text != 0).any(axis=2)  # (N, L)
    last_from_end = np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), text.shape[1] - last_from_end, 0).astype(np.int64)


def _check_across_splits(path: Path, splits: dict[str, MMSASplit], raws: dict[str, dict]) -> None:
    """Every split has the same optional keys and the same feature dims as ``train``; no clip id
    is in two splits (a test clip copied from train would leak into the evaluation)."""
    owner: dict[str, tuple[str, int]] = {}
    for name in SPLITS:
        for i, clip_id in enumerate(splits[name].ids.tolist()):
            if clip_id in owner:
                other, j = owner[clip_id]
                raise MMSAFormatError(
                    f"{path}: split '{name}', key 'id': sample {i}: id {clip_id!r} is also sample {j} of split "
                    f"'{other}'; expected each clip in one split"
                )
            owner[clip_id] = (name, i)
    ref = splits["train"]
    for name in SPLITS[1:]:
        split = splits[name]
        for key in ("text_bert", "text", "audio_lengths", "vision_lengths", "regression_labels_T"):
            if (key in raws["train"]) != (key in raws[name]):
                where = "train" if key in raws["train"] else name
                raise MMSAFormatError(
                    f"{path}: split '{name}', key '{key}': present in split '{where}' only; "
                    f"expected every split to have the same keys"
                )
        for key, mine, theirs in (
            ("text", split.text, ref.text),
            ("audio", split.audio, ref.audio),
            ("vision", split.vision, ref.vision),
        ):
            if mine is not None and theirs is not None and mine.shape[2] != theirs.shape[2]:
                raise MMSAFormatError(
                    f"{path}: split '{name}', key '{key}': feature dim {mine.shape[2]} differs from "
                    f"split 'train' ({theirs.shape[2]}); expected the same dim in every split"
                )


def text_vocab_size(model_path: str | Path | None = None) -> int:
    """The vocabulary size of a BERT-family text model directory (None: the bundled MiniLM, 30522).

    Read from the directory's ``config.json`` (``vocab_size``: the size of the embedding table the
    ids index); a config without it falls back to the tokenizer (``len(tokenizer)``). The result
    is what ``load_mmsa(path, vocab_size=...)`` bounds ``text_bert`` token ids by. Raises
    ``FileNotFoundError`` / ``ValueError`` naming the path.
    """
    path = Path(model_path if model_path is not None else default_model_path())
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"text model_path {str(path)!r} is not a Hugging Face model directory "
                                "(expected a folder with config.json)")
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"text model {config}: not readable JSON ({exc})") from None
    if not isinstance(values, dict) or "vocab_size" not in values:
        return len(load_tokenizer(path, "text model"))
    size = values["vocab_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"text model {config}: vocab_size {size!r}: expected a positive integer")
    return size


def read_split(arrays: dict, name: str = "clips", where: str = "arrays", *, nonfinite: Nonfinite = "error",
               vocab_size: int | None = None) -> MMSASplit:
    """One split from in-memory arrays (the keys of an MMSA split), checked as ``load_mmsa`` checks a
    file's; errors name ``where`` and ``name``. Labels may be left out (they default to 0)."""
    if not isinstance(arrays, dict):
        raise MMSAFormatError(f"{where}: expected a dict of arrays, got {type(arrays).__name__}")
    if "regression_labels" not in arrays:
        n = len(arrays.get("id", arrays.get("audio", [])))
        arrays = {**arrays, "regression_labels": np.zeros(n, np.float32)}
    return _SplitReader(Path(where), name, arrays, nonfinite, vocab_size).read()


def load_mmsa(path: str | Path, *, nonfinite: Nonfinite = "error", vocab_size: int | None = None) -> MMSAData:
    """Read and check an MMSA pickle.

    **Pickle runs arbitrary code while loading: only load files you trust.**

    ``nonfinite="zero"`` replaces NaN/inf in ``text``/``audio``/``vision`` features with 0 and logs
    the count (real MOSI audio holds -inf); non-finite labels, lengths or token ids always raise.
    ``vocab_size`` (the text model's, ``text_vocab_size(model_path)``): every ``text_bert`` token
    id must be below it, so the model's embedding lookup cannot go out of range; without it ids
    are only checked to be integers >= 0 that fit int64.
    Raises ``FileNotFoundError`` for a missing file and ``MMSAFormatError`` for anything else wrong.
    """
    if nonfinite not in ("error", "zero"):
        raise ValueError(f"nonfinite must be 'error' or 'zero', got {nonfinite!r}")
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer))
                                   or vocab_size < 1):
        raise ValueError(f"vocab_size must be a positive integer or None, got {vocab_size!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MMSA pickle not found")
    try:
        with open(path, "rb") as handle:
            raw = pickle.load(handle)
    except Exception as exc:  # unpickling can fail with almost any exception type
        raise MMSAFormatError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise MMSAFormatError(f"{path}: expected a dict with keys {list(SPLITS)}, got {type(raw).__name__}")
    splits: dict[str, MMSASplit] = {}
    for name in SPLITS:
        if name not in raw:
            raise MMSAFormatError(
                f"{path}: split '{name}' is missing (top-level keys: {sorted(map(str, raw))}; "
                f"expected {list(SPLITS)})"
            )
        if not isinstance(raw[name], dict):
            raise MMSAFormatError(f"{path}: split '{name}': expected a dict of arrays, got {type(raw[name]).__name__}")
        splits[name] = _SplitReader(path, name, raw[name], nonfinite, None if vocab_size is None else int(vocab_size)).read()
    _check_across_splits(path, splits, {name: raw[name] for name in SPLITS})
    aligned = not any(k in raw[s] for s in SPLITS for k in ("audio_lengths", "vision_lengths"))
    extraction = raw.get("extraction") if isinstance(raw.get("extraction"), dict) else None
    data = MMSAData(splits=splits, path=path, aligned=aligned, extraction=extraction)
    logger.info("loaded %s: %s", path, ", ".join(f"{s} {len(splits[s])}" for s in SPLITS))
    return data


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def _valid_mask(lengths: np.ndarray, max_len: int) -> np.ndarray:
    return np.arange(max_len)[None, :] < lengths[:, None]


def _masked_mean_std(x: np.ndarray, lengths: np.ndarray, chunk_values: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and (population) std of ``x`` (N, L, D) over frames ``t < lengths[n]``.

    Two passes (mean, then mean squared deviation) in float64, over chunks of clips so that
    large splits never need a full float64 copy.
    """
    n, max_len, dim = x.shape
    rows = max(1, chunk_values // max(1, max_len * dim))
    chunks = [slice(s, s + rows) for s in range(0, n, rows)]
    count = int(np.minimum(lengths, max_len).sum())
    if count == 0:
        raise ValueError("no valid frames to compute normalisation statistics from")
    total = np.zeros(dim)
    for c in chunks:
        total += np.einsum("nl,nld->d", _valid_mask(lengths[c], max_len).astype(np.float64), x[c].astype(np.float64))
    mean = total / count
    squares = np.zeros(dim)
    for c in chunks:
        deviation = x[c].astype(np.float64) - mean
        squares += np.einsum("nl,nld->d", _valid_mask(lengths[c], max_len).astype(np.float64), deviation**2)
    return mean, np.sqrt(squares / count)


@dataclass
class NormStats:
    """Per-feature standardisation ``x' = (x - mean) / max(std, eps)`` for each sequence modality.

    Fit on the valid frames of the TRAIN split only (``NormStats.from_data``), then applied to
    every split. Keys of ``mean``/``std``: "audio", "vision", and "text" when text features are used.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]  # already floored at eps
    eps: float = 1e-6

    @classmethod
    def fit(cls, split: MMSASplit, *, include_text: bool | None = None, eps: float = 1e-6) -> "NormStats":
        """Statistics of ``split``; text features are included when ``include_text`` (default:
        when the split has ``text`` features and no ``text_bert``, i.e. when batches use them)."""
        if include_text is None:
            include_text = split.text is not None and split.text_bert is None
        if include_text and split.text is None:
            raise ValueError(f"split '{split.name}' has no text features to normalise")
        sources = {"audio": (split.audio, split.audio_lengths), "vision": (split.vision, split.vision_lengths)}
        if include_text:
            sources["text"] = (split.text, split.text_lengths)
        mean, std = {}, {}
        for modality, (x, lengths) in sources.items():
            if int(np.minimum(lengths, x.shape[1]).sum()) == 0:
                raise ValueError(f"split '{split.name}', key '{modality}': no valid frames to compute "
                                 "normalisation statistics from (every clip has length 0, or the split is empty)")
            m, s = _masked_mean_std(x, lengths)
            mean[modality] = m.astype(np.float32)
            std[modality] = np.maximum(s, eps).astype(np.float32)
        return cls(mean=mean, std=std, eps=eps)

    @classmethod
    def from_data(cls, data: MMSAData, *, include_text: bool | None = None, eps: float = 1e-6) -> "NormStats":
        """Statistics of ``data``'s train split (never valid/test: no leakage)."""
        return cls.fit(data.train, include_text=include_text, eps=eps)

    def apply(self, modality: str, x: np.ndarray) -> np.ndarray:
        """Standardise ``x`` (..., D) with this modality's statistics; float32 out."""
        if modality not in self.mean:
            raise KeyError(f"no normalisation statistics for {modality!r} (have {sorted(self.mean)})")
        if x.shape[-1] != self.mean[modality].shape[0]:
            raise ValueError(
                f"{modality}: feature dim {x.shape[-1]} does not match the statistics' {self.mean[modality].shape[0]}"
            )
        return ((x - self.mean[modality]) / self.std[modality]).astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"eps": float, "mean": {modality: [..]}, "std": {modality: [..]}}``."""
        return {
            "eps": float(self.eps),
            "mean": {k: v.tolist() for k, v in self.mean.items()},
            "std": {k: v.tolist() for k, v in self.std.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NormStats":
        for key in ("mean", "std"):
            if not isinstance(data.get(key), dict):
                raise ValueError(f"norm stats: '{key}' must be a mapping of modality -> list of floats")
        if set(data["mean"]) != set(data["std"]):
            raise ValueError(f"norm stats: 'mean' has {sorted(data['mean'])} but 'std' has {sorted(data['std'])}")
        mean = {k: np.asarray(v, dtype=np.float32) for k, v in data["mean"].items()}
        std = {k: np.asarray(v, dtype=np.float32) for k, v in data["std"].items()}
        for k in mean:
            if mean[k].ndim != 1 or mean[k].shape != std[k].shape:
                raise ValueError(f"norm stats: '{k}' mean {mean[k].shape} and std {std[k].shape} must be equal 1-D")
            if not (std[k] > 0).all():
                raise ValueError(f"norm stats: std.{k} must be positive")
        return cls(mean=mean, std=std, eps=float(data.get("eps", 1e-6)))


# --------------------------------------------------------------------------------------------
# Dataset and batching
# --------------------------------------------------------------------------------------------


@dataclass
class MMSASample:
    """One clip as ``MMSADataset`` returns it: full-length (padded) rows, padding zeroed."""

    index: int
    id: str
    text_ids: np.ndarray | None  # (Lt,) int64
    text_segment: np.ndarray | None  # (Lt,) int64
    text_feats: np.ndarray | None  # (Lt, Dt) float32 (only when there is no text_bert)
    text_length: int
    audio: np.ndarray  # (La, Da) float32
    audio_length: int
    vision: np.ndarray  # (Lv, Dv) float32
    vision_length: int
    label: float
    unimodal_labels: dict[str, float] | None


TextSource = Literal["bert", "features"]


class MMSADataset(Dataset):
    """Clips of one split; ``norm`` (fit on train) standardises audio, vision (and text features).

    ``text_source`` picks what the text branch receives: ``"bert"`` token ids (``text_bert``) or
    ``"features"`` (``text``); ``None`` takes token ids when the file has them.
    """

    def __init__(self, split: MMSASplit, norm: NormStats | None = None, text_source: TextSource | None = None) -> None:
        self.split = split
        self.norm = norm
        if text_source is None:
            text_source = "bert" if split.text_bert is not None else "features"
        if text_source == "bert" and split.text_bert is None:
            raise MMSAFormatError(f"split '{split.name}', key 'text_bert': the model reads token ids but the data has none "
                                  "(use model.text.source: features)")
        if text_source == "features" and split.text is None:
            raise MMSAFormatError(f"split '{split.name}', key 'text': the model reads text features but the data has none "
                                  "(use model.text.source: bert)")
        self.use_text_feats = text_source == "features"
        if norm is not None and self.use_text_feats and "text" not in norm.mean:
            logger.warning("norm stats have no 'text' entry: text features of split '%s' stay raw", split.name)

    def __len__(self) -> int:
        return len(self.split)

    def _normalised(self, modality: str, row: np.ndarray, length: int) -> np.ndarray:
        if self.norm is None or modality not in self.norm.mean:
            return row
        out = self.norm.apply(modality, row)
        out[length:] = 0.0  # padding stays zero
        return out

    def __getitem__(self, i: int) -> MMSASample:
        s = self.split
        unimodal = None if s.unimodal_labels is None else {t: float(v[i]) for t, v in s.unimodal_labels.items()}
        text_length = int(s.text_lengths[i])
        return MMSASample(
            index=int(i),
            id=str(s.ids[i]),
            text_ids=None if self.use_text_feats else s.text_bert[i, 0],
            text_segment=None if self.use_text_feats else s.text_bert[i, 2],
            text_feats=self._normalised("text", s.text[i], text_length) if self.use_text_feats else None,
            text_length=text_length,
            audio=self._normalised("audio", s.audio[i], int(s.audio_lengths[i])),
            audio_length=int(s.audio_lengths[i]),
            vision=self._normalised("vision", s.vision[i], int(s.vision_lengths[i])),
            vision_length=int(s.vision_lengths[i]),
            label=float(s.labels[i]),
            unimodal_labels=unimodal,
        )


def _lengths_and_mask(lengths: Sequence[int]) -> tuple[int, torch.Tensor]:
    """Batch width (longest true length, at least 1) and the (B, width) mask; a 0-length clip
    gets its first (all-zero) frame marked real so every row has a True position."""
    true = torch.as_tensor(lengths, dtype=torch.long).clamp(min=1)
    width = int(true.max())
    return width, torch.arange(width)[None, :] < true[:, None]


def collate_mmsa(samples: Sequence[MMSASample]) -> MMSABatch:
    """Stack clips into an ``MMSABatch`` padded to the batch's longest true length per modality."""
    if not samples:
        raise ValueError("collate_mmsa: empty batch")
    first = samples[0]
    text_width, text_mask = _lengths_and_mask([s.text_length for s in samples])
    audio_width, audio_mask = _lengths_and_mask([s.audio_length for s in samples])
    vision_width, vision_mask = _lengths_and_mask([s.vision_length for s in samples])

    def stack(rows: list[np.ndarray], width: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([r[:width] for r in rows]))

    text_ids = text_segment = text_feats = None
    if first.text_ids is not None:
        text_ids = stack([s.text_ids for s in samples], text_width)
        text_segment = stack([s.text_segment for s in samples], text_width)
    else:
        text_feats = stack([s.text_feats for s in samples], text_width)
    unimodal = None
    if first.unimodal_labels is not None:
        unimodal = {
            t: torch.tensor([s.unimodal_labels[t] for s in samples], dtype=torch.float32) for t in UNIMODAL_TASKS
        }
    return MMSABatch(
        index=torch.tensor([s.index for s in samples], dtype=torch.long),
        ids=[s.id for s in samples],
        text_mask=text_mask,
        audio=stack([s.audio for s in samples], audio_width),
        audio_mask=audio_mask,
        vision=stack([s.vision for s in samples], vision_width),
        vision_mask=vision_mask,
        label=torch.tensor([s.label for s in samples], dtype=torch.float32),
        text_ids=text_ids,
        text_segment=text_segment,
        text_feats=text_feats,
        unimodal_labels=unimodal,
    )


def make_loader(
    split: MMSASplit,
    norm: NormStats | None,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    text_source: TextSource | None = None,
) -> DataLoader:
    """A DataLoader of ``MMSABatch``es; shuffling is reproducible from ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        MMSADataset(split, norm, text_source),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate_mmsa,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


# --------------------------------------------------------------------------------------------
# Summary and CLI
# --------------------------------------------------------------------------------------------


def _stats(lengths: np.ndarray) -> str:
    return f"{lengths.mean():.1f}/{int(lengths.max()) if len(lengths) else 0}"


def describe(data: MMSAData) -> str:
    """A human-readable summary of ``data`` (one line per split)."""
    text = []
    if data.has_text_bert:
        text.append(f"text_bert (token ids, L={data.train.text_bert.shape[2]})")
    if data.text_dim is not None:
        text.append(f"text features (L={data.train.text.shape[1]}, Dt={data.text_dim})")
    lines = [
        f"MMSA pickle: {data.path}",
        f"  {'aligned' if data.aligned else 'unaligned'}; text: {' + '.join(text)}; "
        f"audio Da={data.audio_dim} (L={data.train.audio.shape[1]}); "
        f"vision Dv={data.vision_dim} (L={data.train.vision.shape[1]}); "
        f"unimodal labels: {'T/A/V' if data.has_unimodal_labels else 'none'}",
        f"  {'split':<6} {'N':>6}  {'text len':>11} {'audio len':>11} {'vision len':>11}  "
        f"{'label mean':>10} {'std':>6}  {'neg':>6} {'zero':>6} {'pos':>6}",
        f"  {'':<6} {'':>6}  {'(mean/max)':>11} {'(mean/max)':>11} {'(mean/max)':>11}",
    ]
    for name, s in data.splits.items():
        y = s.labels
        n = max(len(y), 1)
        if len(y) == 0:
            lines.append(f"  {name:<6} {0:>6}  (empty)")
            continue
        lines.append(
            f"  {name:<6} {len(s):>6}  {_stats(s.text_lengths):>11} {_stats(s.audio_lengths):>11} "
            f"{_stats(s.vision_lengths):>11}  {y.mean() + 0.0:>10.3f} {y.std():>6.3f}  "
            f"{(y < 0).sum() / n:>6.1%} {(y == 0).sum() / n:>6.1%} {(y > 0).sum() / n:>6.1%}"
        )
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """Command-line errors as one line (``prog: error: ...``) and exit code 2, without the usage."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _OneLineParser(
        prog="python -m mmfusion.data.mmsa",
        description="Check an MMSA pickle and print a summary. Pickle runs code: only trusted files.",
    )
    parser.add_argument("path", type=Path, help="MMSA pickle (e.g. MOSI unaligned_50.pkl)")
    parser.add_argument(
        "--nonfinite", choices=("error", "zero"), default="error", help="NaN/inf in features: fail or replace by 0"
    )
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", type=_positive_int, help="refuse text_bert token ids >= this")
    vocab.add_argument("--text-model", type=Path,
                       help="refuse text_bert token ids outside this BERT-family model's vocabulary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        vocab_size = text_vocab_size(args.text_model) if args.text_model is not None else args.vocab_size
        data = load_mmsa(args.path, nonfinite=args.nonfinite, vocab_size=vocab_size)
    except (MMSAFormatError, FileNotFoundError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return 2
    print(describe(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
