"""Small, valid, in-memory MMSA pickles for tests (the MMSA distribution format, docs/references.md).

``make_mmsa_dict`` returns the dict a real MMSA pickle holds (splits ``train``/``valid``/``test``),
with deterministic values, true lengths that differ between clips, and zeros on padded frames.
``write_mmsa_pickle`` writes such a dict (or any object) to a file. Both are plain functions so
any test can import them (``from tests.mmsa_factory import make_mmsa_dict``); ``tests/conftest.py``
exposes them as fixtures too.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

SPLITS = ("train", "valid", "test")
TextKind = Literal["bert", "features", "both"]


def make_split(
    n: int,
    *,
    aligned: bool = False,
    text: TextKind = "bert",
    text_len: int = 8,
    audio_len: int = 10,
    vision_len: int = 12,
    text_dim: int = 6,
    audio_dim: int = 5,
    vision_dim: int = 4,
    unimodal: bool = False,
    seed: int = 0,
    prefix: str = "clip",
) -> dict[str, Any]:
    """One split: ``n`` clips with the keys and shapes of an MMSA pickle.

    Aligned splits have one length ``text_len`` for every modality and no ``*_lengths`` keys
    (every frame is real). Unaligned splits have ``audio_lengths``/``vision_lengths`` in
    ``[1, L]`` with zeros after each true length. Text true lengths are in ``[2, text_len]``
    (the BERT attention mask is a block of leading ones; text features are zero after it).
    Labels are ``linspace(-3, 3, n)``, so they hit both ends of the range.
    """
    rng = np.random.default_rng(seed)
    if aligned:
        audio_len = vision_len = text_len
    text_lengths = rng.integers(2, text_len + 1, size=n)
    text_lengths[0] = text_len  # at least one clip fills the whole text window
    positions = np.arange(text_len)
    text_mask = positions[None, :] < text_lengths[:, None]

    split: dict[str, Any] = {
        "id": np.array([f"{prefix}_{i}" for i in range(n)], dtype=object),
        "raw_text": np.array([f"words of {prefix} {i}" for i in range(n)], dtype=object),
        "regression_labels": np.linspace(-3.0, 3.0, n).astype(np.float32),
        "classification_labels": np.digitize(np.linspace(-3.0, 3.0, n), [-1e-9, 1e-9]).astype(np.float32),
    }
    if text in ("bert", "both"):
        ids = rng.integers(1000, 2000, size=(n, text_len)) * text_mask
        segment = np.zeros((n, text_len), dtype=np.int64)
        split["text_bert"] = np.stack([ids, text_mask.astype(np.int64), segment], axis=1).astype(np.float32)
    if text in ("features", "both"):
        feats = rng.normal(size=(n, text_len, text_dim)).astype(np.float32)
        split["text"] = feats * text_mask[:, :, None]

    for name, length, dim in (("audio", audio_len, audio_dim), ("vision", vision_len, vision_dim)):
        values = rng.normal(loc=1.0, scale=2.0, size=(n, length, dim)).astype(np.float32)
        if aligned:
            split[name] = values
            continue
        lengths = rng.integers(1, length + 1, size=n)
        lengths[0] = length
        split[name] = values * (np.arange(length)[None, :] < lengths[:, None])[:, :, None]
        split[f"{name}_lengths"] = lengths.tolist()  # real pickles often hold plain lists

    if unimodal:
        for task in ("T", "A", "V"):
            split[f"regression_labels_{task}"] = np.clip(
                split["regression_labels"] + rng.normal(scale=0.5, size=n), -3, 3
            ).astype(np.float32)
    return split


def make_mmsa_dict(
    *,
    sizes: tuple[int, int, int] = (6, 4, 4),
    aligned: bool = False,
    text: TextKind = "bert",
    text_len: int = 8,
    audio_len: int = 10,
    vision_len: int = 12,
    text_dim: int = 6,
    audio_dim: int = 5,
    vision_dim: int = 4,
    unimodal: bool = False,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """A full MMSA dict ``{"train": ..., "valid": ..., "test": ...}`` with ``sizes`` clips per split."""
    return {
        name: make_split(
            n,
            aligned=aligned,
            text=text,
            text_len=text_len,
            audio_len=audio_len,
            vision_len=vision_len,
            text_dim=text_dim,
            audio_dim=audio_dim,
            vision_dim=vision_dim,
            unimodal=unimodal,
            seed=seed + k,
            prefix=name,
        )
        for k, (name, n) in enumerate(zip(SPLITS, sizes))
    }


def write_mmsa_pickle(obj: Any, path: str | Path) -> Path:
    """Pickle ``obj`` to ``path`` (a temp name, then renamed) and return the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return path
