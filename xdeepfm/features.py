"""Declarative feature spec -> fitted feature pipeline (the input layer of the source paper's ranking model,
section II.C.3; docs/references.md).

A feature spec is a list of fields in YAML, each with a ``kind``::

    fields:
      - {name: user_id, kind: categorical}
      - {name: age, kind: numeric}
      - {name: genres, kind: multi_valued, sep: "|", max_len: 6}
      - {name: title, kind: text}                       # bundled MiniLM unless model_path is set
      - {name: semantics, kind: vector, path: sem.npz, key_column: item_id}
      - {name: sentiment, kind: vector, path: sem.npz, key_column: item_id, array: sentiment}
      - {name: history, kind: sequence, target: item_id, content: [genres, title], max_len: 20}

What fitting (on the training split only) learns and how ``transform`` encodes each kind:

- categorical: label encoding. Values are compared as strings. **Index 0 is reserved for
  out-of-vocabulary/unknown values** (unseen in training, or missing); the training values get
  1..n in sorted order, so the embedding table has n + 1 rows. Output int64 (N,).
- multi_valued: the column is split on ``sep``; each token is label-encoded like a categorical
  (0 = unknown), padded with 0 / truncated to ``max_len``. Output int64 (N, max_len). Index 0 is
  also the padding index, so unknown tokens are dropped by the masked mean pooling.
- numeric: z-score with mean/std fitted on train (std 0 -> 1). NaN, inf or non-numbers are
  errors naming the column and the first bad row. Output float32 (N,).
- text: BERT-family sentence vector, mean-pooled over the attention mask (Reimers & Gurevych
  2019, [SBERT] in docs/references.md), optionally L2-normalised; computed in batches under
  ``torch.inference_mode`` for the unique texts only and cached on disk (see
  ``SentenceVectorCache``). Missing text is "". Output float32 (N, hidden).
- vector: pre-computed vectors (e.g. video semantics from the multimodal model) read from an
  ``.npz`` with arrays ``ids`` and ``vectors`` (or the 2-D array named by ``array``, so one file
  from ``mmfusion.predict`` can feed a ``sentiment`` and an ``embedding`` field) and joined on
  ``key_column``; ids missing from the file get a zero vector. The table is stored with the fitted pipeline. Output float32 (N, d).
- sequence: a behaviour history (``xdeepfm.history`` builds the column: the user's last items,
  newest first, ``sep``-joined; a list of ids is accepted too). The ids are encoded with the
  vocabulary of the ``target`` categorical field (the model shares its embedding table), 0 =
  OOV/padding, padded/truncated to ``max_len``: output int64 (N, max_len). An item outside the
  target's vocabulary (e.g. ingested after training) is code 0, i.e. dropped from the history,
  exactly like an unknown token of a multi_valued field. Fitting also builds the **content table**
  of the ``content`` fields (fields of the spec that describe the target item: categorical,
  multi_valued, text, vector): for every target vocabulary index, that field's encoding on the
  item's first training row (row 0, OOV/padding, is all zeros), so the model represents a history
  item by its id embedding and its content. Every vocabulary item has a row (both come from the
  training rows); the tables are saved with the pipeline (``features.safetensors``).

The fitted pipeline saves to ``<dir>/features.json`` (spec, vocabularies, statistics) and
``<dir>/features.safetensors`` (vector tables) -- no pickle -- and ``FeaturePipeline.load``
rebuilds an identical pipeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import pandas as pd

from mmcore.config import build
from mmcore.files import sha256_file, write_bytes
from mmcore.hf import default_model_path, load_model, load_tokenizer

log = logging.getLogger(__name__)

Kind = Literal["categorical", "numeric", "multi_valued", "text", "vector", "sequence"]
CONTENT_KINDS = ("categorical", "multi_valued", "text", "vector")  # what a sequence's content fields may be
FEATURES_JSON = "features.json"
FEATURES_ARRAYS = "features.safetensors"
FORMAT_VERSION = 1


class FeatureError(ValueError):
    """Input data does not match the feature spec (the message names the column and row)."""


@dataclass
class FieldSpec:
    """One input field. ``column`` defaults to ``name``; kind-specific keys are checked."""

    name: str
    kind: Kind
    column: str | None = None
    # multi_valued
    sep: str = "|"
    max_len: int = 8
    # text
    model_path: str | None = None  # None -> the bundled all-MiniLM-L6-v2
    max_tokens: int = 32
    batch_size: int = 128
    normalize: bool = True
    # vector (``column`` defaults to ``key_column``)
    path: str | None = None
    key_column: str | None = None
    array: str = "vectors"  # which array of the .npz holds the (N, d) vectors
    # sequence (also ``sep`` and ``max_len``): the categorical item field whose vocabulary (and
    # embedding table) the ids share, and the fields describing that item (its content)
    target: str | None = None
    content: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.column is None:  # vector fields read their key column
            self.column = self.key_column if self.kind == "vector" and self.key_column else self.name
        if self.kind in ("multi_valued", "sequence") and (self.max_len < 1 or not self.sep):
            raise ValueError(f"field {self.name!r}: {self.kind} needs max_len >= 1 and a non-empty sep")
        if self.kind == "sequence" and not self.target:
            raise ValueError(f"field {self.name!r}: sequence fields need 'target' (the categorical item field)")
        if self.kind != "sequence" and (self.target or self.content):
            raise ValueError(f"field {self.name!r}: 'target' and 'content' are for sequence fields only")
        if self.kind == "text" and (self.max_tokens < 2 or self.batch_size < 1):
            raise ValueError(f"field {self.name!r}: text needs max_tokens >= 2 and batch_size >= 1")
        if self.kind == "vector" and (self.path is None or self.key_column is None):
            raise ValueError(f"field {self.name!r}: vector fields need 'path' (an .npz) and 'key_column'")


@dataclass
class FeatureSpec:
    """The declarative spec: the fields plus where text vectors are cached."""

    fields: list[FieldSpec]
    text_cache_dir: str = ".cache/xdeepfm_text"

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate field names {dup}")
        if not self.fields:
            raise ValueError("fields: at least one field is required")
        by_name = {f.name: f for f in self.fields}
        for seq in self.of_kind("sequence"):
            target = by_name.get(seq.target)
            if target is None or target.kind != "categorical":
                raise ValueError(f"field {seq.name!r}: target {seq.target!r} must name a categorical field "
                                 f"(categorical fields: {[f.name for f in self.of_kind('categorical')]})")
            for name in seq.content:
                if name not in by_name or by_name[name].kind not in CONTENT_KINDS or name == seq.target:
                    raise ValueError(f"field {seq.name!r}: content field {name!r} must name a field of kind "
                                     f"{'/'.join(CONTENT_KINDS)} other than the target (fields: {names})")

    def of_kind(self, *kinds: str) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind in kinds]


def load_spec(mapping: dict, where: str = "features") -> FeatureSpec:
    """Build a ``FeatureSpec`` from a YAML mapping (errors name the key)."""
    return build(FeatureSpec, mapping, where)


# --------------------------------------------------------------------------- sentence vectors


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class SentenceVectorCache:
    """Sentence vectors from a local BERT-family model, with an on-disk cache (the text-field service;
    the sentiment model's trainable text encoder is ``mmfusion.text_encoder``).

    vector(text) = sum_t h_t m_t / sum_t m_t  (mean of the last hidden states over the attention
    mask m), then L2-normalised when ``normalize``. The cache key is (model identity, text):
    the model identity hashes the weight files (``*.safetensors``/``*.bin``) and ``config.json``
    together with ``max_tokens`` and ``normalize``; each text is keyed by its SHA-256.

    On disk, the cache of one model identity is a set of append-only segments in ``cache_dir``:
    ``<model_key>.seg-<ns>-<pid>-<rand>.safetensors``, each holding ``vectors`` (n, hidden) float32
    and ``text_sha256`` (n, 32) uint8, written atomically once and never rewritten; loading merges
    every segment (and the single-file cache of earlier versions, ``<model_key>.json`` +
    ``<model_key>.safetensors``; the first vector of a text wins). The files are read once per
    instance and kept in memory; ``compact()`` merges the segments into one.

    Two modes (``persist``):

    - ``persist=True`` (the default: training and ingestion, ``FeaturePipeline.fit``/``transform``):
      each ``encode`` call that meets new texts writes them as one new segment (before encoding
      them, it merges segments other processes wrote since).
    - ``persist=False`` (serving; ``ScoringEngine`` calls ``for_serving``): the disk cache is read,
      never written. Texts missing from it are kept in a bounded in-memory LRU of ``lru_entries``
      vectors (about ``lru_entries * (hidden * 4 + 400)`` bytes; 0 keeps none), so what clients
      send cannot grow the files or the process without bound.

    Thread-safe: the in-memory state has a lock, and the tokenizer and model another (a fast
    tokenizer must not be used from two threads at once). ``encode(texts, deadline)`` checks
    ``time.monotonic()`` against ``deadline`` before each model batch and raises ``TimeoutError``
    past it. ``encoder_calls`` counts forward passes of the BERT model (tests use it to check cache hits).
    """

    SEGMENT_INFIX = ".seg-"
    AUTO_COMPACT = 64  # persist mode: more segments than this are merged into one after a write

    def __init__(
        self,
        model_path: str | None = None,
        cache_dir: str | Path = ".cache/xdeepfm_text",
        max_tokens: int = 32,
        batch_size: int = 128,
        normalize: bool = True,
        persist: bool = True,
        lru_entries: int = 10_000,
    ) -> None:
        import threading
        from collections import OrderedDict

        if model_path is None:
            model_path = default_model_path()  # the bundled all-MiniLM-L6-v2
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise FileNotFoundError(f"text model {self.model_path}: no config.json (expected a local model directory)")
        if lru_entries < 0:
            raise ValueError(f"lru_entries {lru_entries}: expected >= 0")
        self.cache_dir = Path(cache_dir)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.normalize = normalize
        self.persist = persist
        self.lru_entries = lru_entries
        self.encoder_calls = 0
        self._model = None
        self._tokenizer = None
        self._dim: int | None = None
        self.model_key = self._model_key()
        self._lock = threading.RLock()  # the in-memory cache below
        self._model_lock = threading.Lock()  # the tokenizer and the model
        self._row_of: dict[str, int] = {}  # text sha256 -> row of _vectors (what the disk cache holds)
        self._vectors: np.ndarray | None = None  # rows 0.._n-1 used; capacity doubles
        self._n = 0
        self._merged: set[str] = set()  # cache files already read
        self._loaded = False
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()  # persist=False: text sha256 -> vector

    def _model_key(self) -> str:
        digest = hashlib.sha256()
        weights = sorted(p for p in self.model_path.iterdir() if p.suffix in (".safetensors", ".bin"))
        if not weights:
            raise FileNotFoundError(f"text model {self.model_path}: no *.safetensors or *.bin weights")
        for path in [self.model_path / "config.json", *weights]:
            digest.update(path.name.encode())
            digest.update(sha256_file(path).encode())
        digest.update(f"max_tokens={self.max_tokens};normalize={self.normalize};pool=mean".encode())
        return digest.hexdigest()[:32]

    def for_serving(self, lru_entries: int = 10_000) -> "SentenceVectorCache":
        """Switch to ``persist=False`` with an LRU of ``lru_entries`` request-time vectors (returns self)."""
        if lru_entries < 0:
            raise ValueError(f"lru_entries {lru_entries}: expected >= 0")
        with self._lock:
            self.persist, self.lru_entries = False, lru_entries
            while len(self._lru) > lru_entries:
                self._lru.popitem(last=False)
        return self

    # -- cache -----------------------------------------------------------------------------
    def _legacy_paths(self) -> tuple[Path, Path]:
        return self.cache_dir / f"{self.model_key}.json", self.cache_dir / f"{self.model_key}.safetensors"

    def segment_paths(self) -> list[Path]:
        """The segment files of this model identity, oldest first."""
        if not self.cache_dir.is_dir():
            return []
        return sorted(self.cache_dir.glob(f"{self.model_key}{self.SEGMENT_INFIX}*.safetensors"))

    def _read_file(self, path: Path) -> tuple[list[str], np.ndarray] | None:
        from safetensors.numpy import load_file

        try:
            if path.name.endswith(".json"):  # the single-file cache of earlier versions
                hashes = json.loads(path.read_text())["text_sha256"]
                vectors = load_file(str(path.with_suffix(".safetensors")))["vectors"]
            else:
                arrays = load_file(str(path))
                vectors, digests = arrays["vectors"], arrays["text_sha256"]
                if digests.ndim != 2 or digests.shape[1] != 32:
                    raise ValueError(f"text_sha256 has shape {digests.shape}, expected (n, 32)")
                hashes = [bytes(row).hex() for row in digests]
        except FileNotFoundError:
            return None  # removed by a concurrent compact(): its vectors are in the merged segment
        except Exception as exc:  # a damaged file costs re-encoding, never a wrong vector
            log.warning("text cache file %s is unreadable (%s); ignoring it", path, exc)
            return None
        if vectors.ndim != 2 or len(hashes) != len(vectors):
            log.warning("text cache %s is inconsistent (%d hashes, %s vectors); ignoring it", path, len(hashes), vectors.shape)
            return None
        return hashes, vectors

    def _append(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Add rows to the in-memory copy of the disk cache (texts already there are skipped). Holds ``_lock``."""
        keep, seen = [], set()
        for i, h in enumerate(hashes):
            if h not in self._row_of and h not in seen:
                seen.add(h)
                keep.append(i)
        if not keep:
            return
        vectors = np.asarray(vectors, np.float32)[keep]
        need = self._n + len(keep)
        if self._vectors is None or need > len(self._vectors) or self._vectors.shape[1] != vectors.shape[1]:
            if self._vectors is not None and self._vectors.shape[1] != vectors.shape[1]:
                log.warning("text cache %s: vectors of width %d and %d; ignoring the new ones", self.cache_dir,
                            self._vectors.shape[1], vectors.shape[1])
                return
            grown = np.empty((max(need, 2 * self._n, 64), vectors.shape[1]), np.float32)
            if self._n:
                grown[: self._n] = self._vectors[: self._n]
            self._vectors = grown
        self._vectors[self._n : need] = vectors
        for offset, i in enumerate(keep):
            self._row_of[hashes[i]] = self._n + offset
        self._n = need

    def _merge_disk(self) -> None:
        """Read the cache files not read yet (the legacy single file, then the segments). Holds ``_lock``."""
        legacy_index, legacy_array = self._legacy_paths()
        paths = ([legacy_index] if legacy_index.is_file() and legacy_array.is_file() else []) + self.segment_paths()
        for path in paths:
            if path.name not in self._merged:
                self._merged.add(path.name)
                found = self._read_file(path)
                if found is not None:
                    self._append(*found)
        self._loaded = True

    def _write_segment(self, hashes: list[str], vectors: np.ndarray) -> Path:
        import os
        import time

        from safetensors.numpy import save

        digests = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), np.uint8).reshape(len(hashes), 32)
        path = self.cache_dir / f"{self.model_key}{self.SEGMENT_INFIX}{time.time_ns():020d}-{os.getpid()}-{os.urandom(4).hex()}.safetensors"
        write_bytes(path, save({"vectors": np.ascontiguousarray(vectors, np.float32), "text_sha256": digests},
                               metadata={"model_path": str(self.model_path)}))
        self._merged.add(path.name)
        return path

    def compact(self) -> Path | None:
        """Merge every cache file of this model identity into one segment (then remove the others)."""
        with self._lock:
            self._merge_disk()
            old = self.segment_paths()
            legacy = [p for p in self._legacy_paths() if p.is_file()]
            if self._n == 0 or (len(old) == 1 and not legacy):
                return old[0] if old else None
            hashes = [""] * self._n
            for h, row in self._row_of.items():
                hashes[row] = h
            merged = self._write_segment(hashes, self._vectors[: self._n])
            for path in [*old, *legacy]:
                if path != merged:
                    path.unlink(missing_ok=True)
            return merged

    @property
    def cached_count(self) -> int:
        """Texts in the (in-memory copy of the) disk cache."""
        with self._lock:
            return self._n

    @property
    def lru_count(self) -> int:
        """Request-time texts held in the LRU (``persist=False``)."""
        with self._lock:
            return len(self._lru)

    def _gather(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, missing mask): rows from the disk cache, then the LRU (refreshed); zeros where missing. Holds ``_lock``."""
        out = np.zeros((len(hashes), self.dim), np.float32)
        get = self._row_of.get
        rows = np.fromiter((get(h, -1) for h in hashes), np.int64, len(hashes))
        missing = rows < 0
        if self._n and not missing.all():
            out[~missing] = self._vectors[rows[~missing]]
        if missing.any() and self._lru:
            for i in np.flatnonzero(missing):
                vector = self._lru.get(hashes[i])
                if vector is not None:
                    self._lru.move_to_end(hashes[i])
                    out[i] = vector
                    missing[i] = False
        return out, missing

    def _remember(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Keep request-time vectors in the LRU (copies: an entry never pins its batch). Holds ``_lock``."""
        if self.lru_entries == 0:
            return
        for h, vector in zip(hashes[-self.lru_entries :], vectors[-self.lru_entries :]):
            self._lru[h] = np.array(vector, np.float32)
            self._lru.move_to_end(h)
        while len(self._lru) > self.lru_entries:
            self._lru.popitem(last=False)

    # -- model -----------------------------------------------------------------------------
    def _load_model(self) -> None:
        if self._model is None:
            self._tokenizer = load_tokenizer(self.model_path, "text field")
            self._model = load_model(self.model_path, "text field").eval()

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        self._load_model()
        tokens = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        with torch.inference_mode():
            self.encoder_calls += 1
            hidden = self._model(**tokens).last_hidden_state  # (B, T, H)
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().numpy()

    def _encode_all(self, texts: list[str], deadline: float | None) -> np.ndarray:
        import time

        from tqdm.auto import tqdm

        batches = range(0, len(texts), self.batch_size)
        out = []
        for i in tqdm(batches, desc="text vectors", leave=False, disable=not self.persist):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"text encoding stopped after {i} of {len(texts)} texts: past the deadline")
            with self._model_lock:  # one batch at a time: other callers' batches can go in between
                out.append(self._encode_batch(texts[i : i + self.batch_size]))
        return np.concatenate(out)

    def warm_up(self) -> None:
        """Read the disk cache and load the model (one forward pass on a dummy text, not cached)."""
        with self._lock:
            if not self._loaded:
                self._merge_disk()
        with self._model_lock:
            self._encode_batch(["warm-up"])

    @property
    def dim(self) -> int:
        if self._dim is None:
            config = json.loads((self.model_path / "config.json").read_text())
            self._dim = int(config["hidden_size"])
        return self._dim

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (len(texts), hidden), missing mask) from the caches only: nothing is encoded; zeros where missing."""
        hashes = [_text_hash(t) for t in texts]
        with self._lock:
            if not self._loaded:
                self._merge_disk()
            return self._gather(hashes)

    def encode(self, texts: Sequence[str], deadline: float | None = None) -> np.ndarray:
        """Vectors (len(texts), hidden) float32; only texts missing from the caches are encoded."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        hashes = [_text_hash(t) for t in texts]
        with self._lock:
            if self.persist or not self._loaded:
                self._merge_disk()  # persist: also what other processes added since
            out, missing = self._gather(hashes)
        if not missing.any():
            return out
        text_of = dict(zip(hashes, texts))
        todo_hashes = list(dict.fromkeys(hashes[i] for i in np.flatnonzero(missing)))
        todo = [text_of[h] for h in todo_hashes]
        (log.info if self.persist else log.debug)("encoding %d new texts with %s (%d cached)", len(todo),
                                                  self.model_path.name, self._n)
        new = self._encode_all(todo, deadline)
        with self._lock:
            if self.persist:
                self._write_segment(todo_hashes, new)
                self._append(todo_hashes, new)
                if len(self.segment_paths()) > self.AUTO_COMPACT:
                    self.compact()
            else:
                self._remember(todo_hashes, new)
        row = {h: i for i, h in enumerate(todo_hashes)}
        index = np.flatnonzero(missing)
        out[index] = new[[row[hashes[i]] for i in index]]
        return out


# --------------------------------------------------------------------------- pipeline


def _require_column(df: pd.DataFrame, spec: FieldSpec, where: str) -> pd.Series:
    if spec.column not in df.columns:
        raise FeatureError(
            f"{where}: column {spec.column!r} (field {spec.name!r}, {spec.kind}) is missing; "
            f"available columns: {sorted(map(str, df.columns))}"
        )
    return df[spec.column]


def _as_strings(series: pd.Series) -> pd.Series:
    """Values as strings for the vocabulary; missing values become None (-> OOV)."""
    return series.astype(object).where(series.notna(), None).map(lambda v: None if v is None else str(v))


def _numeric_values(series: pd.Series, spec: FieldSpec, where: str) -> np.ndarray:
    """float64 values, or a FeatureError naming the column and the first bad row."""
    if pd.api.types.is_bool_dtype(series) or not (
        pd.api.types.is_numeric_dtype(series) or pd.api.types.is_object_dtype(series)
    ):
        raise FeatureError(f"{where}: column {spec.column!r} (numeric): expected numbers, got dtype {series.dtype}")
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = series.iloc[i]
        what = "NaN/missing" if pd.isna(raw) else ("infinite" if isinstance(raw, (int, float, np.number)) else f"not a number: {raw!r}")
        raise FeatureError(
            f"{where}: column {spec.column!r} (numeric): row {i} (index {series.index[i]!r}) is {what}; "
            f"expected a finite number ({int(bad.sum())} bad rows in total)"
        )
    return values


def _split_tokens(series: pd.Series, spec: FieldSpec) -> pd.Series:
    """Exploded tokens, indexed by row position (0..N-1), empty tokens removed."""
    text = _as_strings(series).fillna("")
    tokens = text.str.split(spec.sep, regex=False).explode().str.strip()
    tokens.index = np.repeat(np.arange(len(series)), text.str.split(spec.sep, regex=False).map(len).to_numpy())
    return tokens[tokens != ""]


def _encode(values: pd.Series, vocabulary: list[str]) -> np.ndarray:
    """Codes 1..n for vocabulary members, 0 for anything else (OOV/missing)."""
    return pd.Index(vocabulary, dtype=object).get_indexer(values.astype(object)).astype(np.int64) + 1


def _merge_moments(acc: tuple[int, float, float], values: np.ndarray) -> tuple[int, float, float]:
    """(count, mean, sum of squared deviations) of ``acc``'s rows plus ``values``."""
    n_b = len(values)
    if n_b == 0:
        return acc
    mean_b = float(values.mean())
    m2_b = float(((values - mean_b) ** 2).sum())
    n_a, mean_a, m2_a = acc
    if n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


@dataclass
class FittedField:
    """What fitting learned for one field."""

    spec: FieldSpec
    vocabulary: list[str] | None = None  # categorical / multi_valued (index i+1 <-> vocabulary[i])
    mean: float | None = None  # numeric
    std: float | None = None
    dim: int | None = None  # text / vector
    text_model_key: str | None = None
    # sequence: content field name -> (target vocabulary size, width) table; saved in features.safetensors
    content: dict[str, np.ndarray] | None = dataclasses.field(default=None, repr=False)

    @property
    def vocabulary_size(self) -> int:
        """Embedding rows: the n training values plus the reserved OOV row 0."""
        return len(self.vocabulary or []) + 1


class FeaturePipeline:
    """Fit on the training frame, then ``transform`` any frame into arrays keyed by field name."""

    def __init__(self, spec: FeatureSpec, fitted: dict[str, FittedField] | None = None,
                 vector_tables: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.spec = spec
        self.fitted = fitted or {}
        self.vector_tables = vector_tables or {}  # name -> (ids as str array, vectors)
        self._sentence_caches: dict[str, SentenceVectorCache] = {}

    # -- fitting ---------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return len(self.fitted) == len(self.spec.fields)

    def sentence_cache(self, spec: FieldSpec) -> SentenceVectorCache:
        """The sentence-vector service of text field ``spec`` (one per field, created on first use)."""
        key = spec.name
        if key not in self._sentence_caches:
            self._sentence_caches[key] = SentenceVectorCache(spec.model_path, self.spec.text_cache_dir, spec.max_tokens,
                                                             spec.batch_size, spec.normalize)
        return self._sentence_caches[key]

    def fit(self, df: pd.DataFrame, where: str = "train") -> "FeaturePipeline":
        return self.fit_stream([(where, df)])

    def fit_stream(self, chunks: Iterable[tuple[str, pd.DataFrame]]) -> "FeaturePipeline":
        """Fit in one pass over ``(where, frame)`` chunks (e.g. Parquet shards), none kept in memory.

        Vocabularies are the union over chunks; numeric mean and std are merged chunk by chunk
        (Chan, Golub & LeVeque's pairwise update). One chunk gives exactly what ``fit`` gives.
        """
        vocab: dict[str, set[str]] = {f.name: set() for f in self.spec.of_kind("categorical", "multi_valued")}
        moments: dict[str, tuple[int, float, float]] = {f.name: (0, 0.0, 0.0) for f in self.spec.of_kind("numeric")}
        by_name = {f.name: f for f in self.spec.fields}
        items: dict[str, list[pd.DataFrame]] = {f.name: [] for f in self.spec.of_kind("sequence")}  # first row per item
        n_chunks = 0
        for where, df in chunks:
            n_chunks += 1
            for spec in self.spec.fields:
                series = _require_column(df, spec, where)
                if spec.kind == "sequence":
                    key = by_name[spec.target].column
                    columns = list(dict.fromkeys([key, *(by_name[c].column for c in spec.content)]))
                    items[spec.name].append(df[columns].drop_duplicates(key))
                elif spec.kind == "categorical":
                    vocab[spec.name].update(_as_strings(series).dropna().unique().tolist())
                elif spec.kind == "multi_valued":
                    vocab[spec.name].update(_split_tokens(series, spec).unique().tolist())
                elif spec.kind == "numeric":
                    moments[spec.name] = _merge_moments(moments[spec.name], _numeric_values(series, spec, where))
        if n_chunks == 0:
            raise FeatureError("fit_stream: no data to fit on (zero chunks)")
        fitted: dict[str, FittedField] = {}
        for spec in self.spec.fields:
            if spec.kind in ("categorical", "multi_valued"):
                fitted[spec.name] = FittedField(spec, vocabulary=sorted(vocab[spec.name]))
            elif spec.kind == "numeric":
                n, mean, m2 = moments[spec.name]
                std = float(np.sqrt(m2 / n)) if n else float("nan")
                fitted[spec.name] = FittedField(spec, mean=mean if n else float("nan"), std=std if std > 0 else 1.0)
            elif spec.kind == "text":
                encoder = self.sentence_cache(spec)
                fitted[spec.name] = FittedField(spec, dim=encoder.dim, text_model_key=encoder.model_key)
            elif spec.kind == "vector":
                ids, vectors = self._read_vector_file(spec)
                self.vector_tables[spec.name] = (ids, vectors)
                fitted[spec.name] = FittedField(spec, dim=int(vectors.shape[1]))
        self.fitted = fitted  # every field but the sequences: the content tables encode with them
        for spec in self.spec.of_kind("sequence"):
            fitted[spec.name] = FittedField(spec, content=self._content_tables(spec, pd.concat(items[spec.name])))
        return self

    def _content_tables(self, spec: FieldSpec, firsts: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per content field, its encoding of each target vocabulary item (row i <-> code i; row 0 zeros)."""
        target = self.fitted[spec.target]
        key = next(f for f in self.spec.fields if f.name == spec.target).column
        firsts = firsts.drop_duplicates(key)
        codes = _encode(_as_strings(firsts[key]), target.vocabulary)
        firsts, codes = firsts[codes > 0], codes[codes > 0]  # (missing keys are not in the vocabulary)
        tables = {}
        for name in spec.content:
            content = next(f for f in self.spec.fields if f.name == name)
            encoded = self._encode_field(content, _require_column(firsts, content, f"content of {spec.name!r}"),
                                         f"content of {spec.name!r}")
            encoded = encoded.reshape(len(encoded), -1)
            table = np.zeros((target.vocabulary_size, encoded.shape[1]), encoded.dtype)
            table[codes] = encoded
            tables[name] = table
        return tables

    @staticmethod
    def _read_vector_file(spec: FieldSpec) -> tuple[np.ndarray, np.ndarray]:
        path = Path(spec.path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if "ids" not in data or spec.array not in data:
                    raise FeatureError(f"{path}: vector field {spec.name!r} needs arrays 'ids' and {spec.array!r}, found {sorted(data.files)}")
                ids, vectors = data["ids"].astype(str), data[spec.array].astype(np.float32)
        except FileNotFoundError:
            raise FeatureError(f"{path}: vector file for field {spec.name!r} not found") from None
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise FeatureError(f"{path}: field {spec.name!r}: expected ids (N,) and {spec.array} (N, d), got {ids.shape} and {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise FeatureError(f"{path}: field {spec.name!r}: row {int(np.flatnonzero(~np.isfinite(vectors).all(1))[0])} of {spec.array!r} is not finite")
        return ids, vectors

    # -- transform -------------------------------------------------------------------------
    def transform(self, df: pd.DataFrame, where: str = "data") -> dict[str, np.ndarray]:
        """Arrays keyed by field name (see the module docstring for dtypes and shapes)."""
        if not self.is_fitted:
            raise RuntimeError("FeaturePipeline.transform called before fit/load")
        return {spec.name: self._encode_field(spec, _require_column(df, spec, where), where) for spec in self.spec.fields}

    def _encode_field(self, spec: FieldSpec, series: pd.Series, where: str) -> np.ndarray:
        """One field's encoding (see the module docstring for each kind)."""
        fit = self.fitted[spec.name]
        if spec.kind == "categorical":
            return _encode(_as_strings(series), fit.vocabulary)
        if spec.kind in ("multi_valued", "sequence"):
            if spec.kind == "sequence":  # a JSON list of ids is accepted as well as a sep-joined string
                series = series.map(lambda v: spec.sep.join(map(str, v)) if isinstance(v, (list, tuple, np.ndarray)) else v)
            vocabulary = self.fitted[spec.target].vocabulary if spec.kind == "sequence" else fit.vocabulary
            tokens = _split_tokens(series, spec)
            position = tokens.groupby(level=0).cumcount().to_numpy()
            rows = tokens.index.to_numpy()
            keep = position < spec.max_len
            matrix = np.zeros((len(series), spec.max_len), np.int64)
            matrix[rows[keep], position[keep]] = _encode(tokens, vocabulary)[keep]
            return matrix
        if spec.kind == "numeric":
            values = _numeric_values(series, spec, where)
            return ((values - fit.mean) / fit.std).astype(np.float32)
        if spec.kind == "text":
            encoder = self.sentence_cache(spec)
            if encoder.model_key != fit.text_model_key:
                raise FeatureError(f"field {spec.name!r}: text model {encoder.model_path} differs from the one fitted "
                                   f"(model key {encoder.model_key} != {fit.text_model_key})")
            texts = _as_strings(series).fillna("")
            unique, inverse = np.unique(texts.to_numpy(dtype=str), return_inverse=True)
            return encoder.encode(unique.tolist())[inverse.reshape(-1)]
        ids, vectors = self.vector_tables[spec.name]  # vector
        row = pd.Index(ids, dtype=object).get_indexer(_as_strings(series).astype(object))
        padded = np.concatenate([vectors, np.zeros((1, vectors.shape[1]), np.float32)])
        if (row < 0).any():
            log.info("%s: field %r: %d of %d rows have no vector (zeros used)", where, spec.name, int((row < 0).sum()), len(row))
        return padded[row]  # -1 -> the zero row

    def fit_transform(self, df: pd.DataFrame, where: str = "train") -> dict[str, np.ndarray]:
        return self.fit(df, where).transform(df, where)

    # -- serialisation -----------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "spec": dataclasses.asdict(self.spec),
            "fitted": {
                name: {k: v for k, v in dataclasses.asdict(fit).items() if k not in ("spec", "content")}
                for name, fit in self.fitted.items()
            },
        }

    def to_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-ready metadata, named float32 arrays): everything needed to rebuild the pipeline."""
        meta = self.to_json_dict()
        meta["vector_ids"] = {name: ids.tolist() for name, (ids, _) in self.vector_tables.items()}
        arrays = {f"{name}.vectors": np.ascontiguousarray(vectors, np.float32)
                  for name, (_, vectors) in self.vector_tables.items()}
        for name, fit in self.fitted.items():  # sequence content tables: "<field>.content.<content field>"
            meta["fitted"][name]["content"] = None if fit.content is None else sorted(fit.content)
            for content, table in (fit.content or {}).items():
                arrays[f"{name}.content.{content}"] = np.ascontiguousarray(table)
        return meta, arrays

    @classmethod
    def from_payload(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], where: str = "features") -> "FeaturePipeline":
        if meta.get("format_version") != FORMAT_VERSION:
            raise FeatureError(f"{where}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        spec = load_spec(meta["spec"], f"{where}:spec")
        by_name = {f.name: f for f in spec.fields}
        fitted = {}
        for name, values in meta["fitted"].items():
            values = dict(values)
            content = values.pop("content", None)
            if content is not None:
                missing = [f"{name}.content.{c}" for c in content if f"{name}.content.{c}" not in arrays]
                if missing:
                    raise FeatureError(f"{where}: field {name!r}: content tables {missing} are missing from the arrays")
                values["content"] = {c: arrays[f"{name}.content.{c}"] for c in content}
            fitted[name] = FittedField(by_name[name], **values)
        tables = {name: (np.asarray(ids, dtype=str), arrays[f"{name}.vectors"]) for name, ids in meta["vector_ids"].items()}
        return cls(spec, fitted, tables)

    def save(self, directory: str | Path) -> None:
        """Write ``features.safetensors`` (vector tables) then ``features.json``, each atomically."""
        from safetensors.numpy import save

        directory = Path(directory)
        meta, arrays = self.to_payload()
        write_bytes(directory / FEATURES_ARRAYS, save(arrays or {"_empty": np.zeros(0, np.float32)}))
        write_bytes(directory / FEATURES_JSON, json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, directory: str | Path) -> "FeaturePipeline":
        from safetensors.numpy import load_file

        directory = Path(directory)
        path = directory / FEATURES_JSON
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: fitted feature pipeline not found") from None
        return cls.from_payload(meta, load_file(str(directory / FEATURES_ARRAYS)), str(path))
