"""Scoring engine: raw JSON-like records -> the exported encoders -> one tensor -> click probabilities.

``ScoringEngine.load(DIR)`` loads a verified artifact (``xdeepfm.export``). ``score(rows)`` scores
a batch of records (dicts keyed by the input columns); ``rank(user, candidates, top_k)`` scores
one user's candidates and sorts them: the ``user`` dict holds every column shared by all
candidates (user and context fields), encoded once and broadcast, and each candidate holds the
rest. Per field kind, with the fitted pipeline's vocabularies and statistics:

- categorical: a str, int, float or bool (compared as ``str(value)``, as in training) or null;
  values outside the vocabulary, and null, go to the OOV bucket 0;
- multi_valued: a ``sep``-joined string or a list of tokens (or null); unknown tokens -> 0;
- numeric: a finite JSON number (not a bool), z-scored with the training mean/std; values more than
  ``MAX_ABS_Z`` (1e6) standard deviations from the mean are refused (they would overflow float32);
- text: a string (null = ""); sentence vectors come from the pipeline's ``SentenceVectorCache`` in
  serving mode (``for_serving``): its disk cache (keyed by model and text) is read once and never
  written, and texts it lacks are encoded and kept in a bounded in-memory LRU (``text_lru`` entries);
- vector: the key of a row of the exported table (e.g. a video id); unknown keys get zeros;
- sequence: a behaviour history (the user record's column of that name, from the store and
  ``POST /v1/events``): a ``sep``-joined string of item ids, newest first, or a list of ids; ids
  outside the target item field's vocabulary are dropped (padding), not reported as unknown.

Unknown categorical values, tokens and vector keys are reported per field in the result
(``unknown``), or refused with ``on_unknown="error"``. Every bad record raises ``RecordError``
naming the JSON path of the value (``candidates[3].age``) and what was expected.

The work is column-wise: Python touches each value once, to read it out of the parsed JSON and
look it up in a prebuilt dict (value -> code); types are checked per column, multi-valued strings
and texts are encoded once per distinct value, normalisation and stacking run on whole columns in
numpy, and the model runs on the stacked float matrix in batches under ``torch.inference_mode``
-- no ``DataLoader``, no ``DataFrame`` and no per-row Python in the model path. Results equal ``FeaturePipeline.transform``
followed by the model's forward pass (tested).

For a service: ``score``/``rank`` take ``deadline`` (a ``time.monotonic()`` value; past it, work
stops between fields, text batches and model batches with ``Deadline``, a ``TimeoutError``) and
``defer_texts``: with it, texts missing from the caches are not encoded but collected, and the call
ends with ``TextsMissing`` (after every other check passed) so that the caller can encode them
elsewhere (``encode_texts``, e.g. on a separate thread) and call again. ``warm_up`` loads the text
encoders before the first request.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from xdeepfm.export import RankingArtifact, load_artifact
from xdeepfm.features import FieldSpec, FittedField
from xdeepfm.inference import FastRanker

log = logging.getLogger(__name__)

OnUnknown = Literal["oov", "error"]
MAX_REPORTED = 20  # distinct unknown values listed per field
MAX_ABS_Z = 1e6  # numeric values further from the training mean (in standard deviations) are refused
MEMO_MAX_CHARS = 256  # multi-valued strings longer than this are encoded per request, not memoised
SCALARS = (str, int, float, bool)


class RecordError(ValueError):
    """A record does not fit the model's inputs; ``path`` is the JSON path of the bad value."""

    def __init__(self, path: str, message: str) -> None:
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}")


class Deadline(TimeoutError):
    """The work passed its deadline and was stopped."""


class TextsMissing(Exception):
    """``defer_texts``: these texts (field name -> distinct texts) are not cached; encode them, then call again."""

    def __init__(self, pending: dict[str, list[str]]) -> None:
        self.pending = pending
        super().__init__(f"{sum(map(len, pending.values()))} texts to encode ({', '.join(pending)})")


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise Deadline(f"stopped {what}: past the request's deadline")


@dataclass
class Scores:
    """Click probabilities of the scored rows and the unknown values met, per field."""

    scores: np.ndarray  # float32 (N,)
    unknown: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Ranking:
    """Candidate positions sorted by score (descending, ties by position), cut to top_k."""

    order: np.ndarray  # int64 (k,) indices into the request's candidates
    scores: np.ndarray  # float32 (k,) their probabilities
    unknown: dict[str, list[str]] = field(default_factory=dict)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _first(values: Sequence[Any], bad) -> int:
    return next(i for i, v in enumerate(values) if bad(v))


def _beyond_float(value: Any) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    return False


class _Column:
    """The values of one input column, from ``rows``/``candidates`` (one per record) or ``user`` (one value)."""

    def __init__(self, name: str, values: list[Any], where: str) -> None:
        self.name, self.values, self.where = name, values, where

    def error(self, i: int, message: str) -> RecordError:
        path = f"{self.where}.{self.name}" if self.where in ("user", "context") else f"{self.where}[{i}].{self.name}"
        return RecordError(path, message)


class _Memo:
    """Encoded rows of distinct multi-valued strings: value -> row of ``table``.

    Grows on misses; emptied when it would pass ``capacity`` rows. Guarded by the engine's lock.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity, self.row = capacity, {}
        self.table: np.ndarray | None = None

    def rows(self, keys: list[str], encode) -> tuple[np.ndarray, np.ndarray]:
        """(row per key, table); ``encode(list of distinct missing keys)`` -> their rows as an array."""
        todo = list(dict.fromkeys(k for k in keys if k not in self.row))
        if todo:
            if len(self.row) + len(todo) > self.capacity:
                self.row, self.table = {}, None
                todo = list(dict.fromkeys(keys))
            new = encode(todo)
            start = 0 if self.table is None else len(self.table)
            self.table = new if self.table is None else np.concatenate([self.table, new])
            self.row.update(zip(todo, range(start, start + len(todo))))
        get = self.row.__getitem__
        return np.fromiter(map(get, keys), np.int64, len(keys)), self.table


class ScoringEngine:
    """Scores raw records with an exported ranking model (see the module docstring).

    The model runs as ``xdeepfm.inference.FastRanker`` (``self.forward``: the same scores to 1e-6, in
    about 1/1.6 of the time at 100 rows). ``threads``: torch intra-op threads, set process-wide when the
    engine is built; 1 is the fastest for one request at a time on a core (docs/performance.md, the
    xdeepfm_forward section); None (the default) leaves the process's setting (``xdeepfm serve`` sets 1).
    """

    def __init__(self, artifact: RankingArtifact, batch_size: int = 8192, memo: int = 20_000,
                 text_lru: int = 10_000, threads: int | None = None) -> None:
        self.artifact = artifact
        self.model = artifact.model
        self.forward = FastRanker.from_model(self.model)  # the forward pass (an inference-only copy of the weights)
        if threads is not None:
            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.fields: list[tuple[FieldSpec, FittedField]] = [
            (spec, artifact.pipeline.fitted[spec.name]) for spec in artifact.pipeline.spec.fields
        ]
        self.columns = {spec.column for spec, _ in self.fields}
        self.item_field: str | None = artifact.info.get("item_field")
        self.width = max(end for _, end in self.model.feature_index.values())
        # value -> code (1..n; 0 = OOV) per categorical / multi-valued field, key -> row per vector table
        self._code = {spec.name: {v: i + 1 for i, v in enumerate(fit.vocabulary)} for spec, fit in self.fields
                      if spec.kind in ("categorical", "multi_valued")}
        self._vector = {}
        for name, (ids, vectors) in artifact.pipeline.vector_tables.items():
            padded = np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors])  # row 0: unknown key
            self._vector[name] = ({key: i + 1 for i, key in enumerate(ids.tolist())}, padded)
        # encoded multi-valued strings, kept across requests (``memo`` distinct values per field)
        self._memo = {spec.name: _Memo(memo) for spec, _ in self.fields if spec.kind in ("multi_valued", "sequence")}
        self._lock = threading.Lock()  # request threads share the memos (held for lookups only)
        # text fields: the disk cache read-only, request-time texts in an LRU of ``text_lru`` vectors per field
        self._text = {spec.name: artifact.pipeline.sentence_cache(spec).for_serving(text_lru)
                      for spec, _ in self.fields if spec.kind == "text"}

    @classmethod
    def from_pretrained(cls, directory: str | Path, text_cache_dir: str | Path | None = None,
                        **options: Any) -> "ScoringEngine":
        """The engine of an exported artifact directory (``mmfusion export``), verified file by file."""
        return cls(load_artifact(directory, text_cache_dir), **options)

    load = from_pretrained  # the name the service and the benches have used

    # -- public API ------------------------------------------------------------------------
    def score(self, rows: Sequence[dict[str, Any]], on_unknown: OnUnknown = "oov", *, deadline: float | None = None,
              defer_texts: bool = False) -> Scores:
        """Probabilities for every row (each a dict with every input column)."""
        if not rows:
            return Scores(np.zeros(0, np.float32))
        self._check_keys(rows, "rows")
        columns = {c: _Column(c, self._gather(rows, c, "rows"), "rows") for c in self.columns}
        X, unknown = self.encode(columns, len(rows), on_unknown, deadline=deadline, defer_texts=defer_texts)
        return Scores(self.score_matrix(X, deadline), unknown)

    def rank(self, user: dict[str, Any], candidates: Sequence[dict[str, Any]], top_k: int | None = None,
             on_unknown: OnUnknown = "oov", *, deadline: float | None = None, defer_texts: bool = False) -> Ranking:
        """The candidates sorted by probability for this user; ``top_k`` cuts the list."""
        extra = sorted(set(user) - self.columns)
        if extra:
            raise RecordError(f"user.{extra[0]}", f"unknown field (the model's inputs: {sorted(self.columns)})")
        if not candidates:
            return Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32))
        self._check_keys(candidates, "candidates")
        columns = {}
        for c in self.columns:
            if c in user:
                clash = next((i for i, cand in enumerate(candidates) if c in cand), None)
                if clash is not None:
                    raise RecordError(f"candidates[{clash}].{c}", "also given in user; a field comes from user or from "
                                                                  "every candidate, not both")
                columns[c] = _Column(c, [user[c]], "user")
            else:
                columns[c] = _Column(c, self._gather(candidates, c, "candidates", also_in="user"), "candidates")
        X, unknown = self.encode(columns, len(candidates), on_unknown, deadline=deadline, defer_texts=defer_texts)
        scores = self.score_matrix(X, deadline)
        order = np.argsort(-scores, kind="stable")[: min(top_k or len(scores), len(scores))]
        return Ranking(order, scores[order], unknown)

    @torch.inference_mode()
    def score_matrix(self, X: np.ndarray | torch.Tensor, deadline: float | None = None) -> np.ndarray:
        """Probabilities for the flat input matrix (N, width), in batches of ``batch_size``."""
        X = torch.as_tensor(X)
        out = []
        for i in range(0, len(X), self.batch_size):
            _check_deadline(deadline, f"scoring after {i} of {len(X)} rows")
            out.append(torch.sigmoid(self.forward(X[i : i + self.batch_size])))
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def encode_texts(self, pending: dict[str, list[str]], deadline: float | None = None) -> None:
        """Encode ``TextsMissing.pending`` into the text caches (their LRUs), checking ``deadline`` per batch."""
        for name, texts in pending.items():
            self._text[name].encode(texts, deadline)

    def field(self, name: str) -> tuple[FieldSpec, FittedField]:
        """The spec and fitted state of the field ``name`` (KeyError naming the model's fields)."""
        found = next(((s, f) for s, f in self.fields if s.name == name), None)
        if found is None:
            raise KeyError(f"{name!r} is not a field of this model (fields: {[s.name for s, _ in self.fields]})")
        return found

    def field_inputs(self, name: str, values: Sequence[Any], on_unknown: OnUnknown = "oov") -> np.ndarray:
        """The model inputs of one field for raw ``values`` ((n, d) float32): what ``encode`` puts in its columns
        (a title's sentence vector, a vector field's row for a key, a code, a z-score)."""
        spec, fit = self.field(name)
        column = _Column(spec.column, list(values), name)
        if spec.kind == "text":
            encoded, _ = self._encode_text(spec, fit, column)
        else:
            encoded, missing = getattr(self, f"_encode_{spec.kind}")(spec, fit, column)
            if on_unknown == "error" and missing is not None and missing.any():
                raise column.error(int(np.flatnonzero(missing)[0]), "unknown value (not seen in training)")
        return np.asarray(encoded, np.float32).reshape(len(column.values), -1)

    @staticmethod
    def column(name: str, values: list[Any], where: str) -> _Column:
        """An input column for ``encode``: one value per row, or one value (``where="user"``/``"context"``) broadcast."""
        return _Column(name, values, where)

    def field_width(self, name: str) -> int:
        start, end = self.model.feature_index[name]
        return end - start

    def warm_up(self) -> None:
        """Load every text encoder (and its disk cache) and run the model once, so the first request pays neither."""
        for cache in self._text.values():
            cache.warm_up()
        self.score_matrix(np.zeros((1, self.width), np.float32))

    # -- records -> columns ----------------------------------------------------------------
    def _check_keys(self, records: Sequence[dict[str, Any]], where: str) -> None:
        extra = set().union(*records) - self.columns
        if extra:
            name = sorted(extra)[0]
            i = _first(records, lambda r: name in r)
            raise RecordError(f"{where}[{i}].{name}", f"unknown field (the model's inputs: {sorted(self.columns)})")

    @staticmethod
    def _gather(records: Sequence[dict[str, Any]], column: str, where: str, also_in: str | None = None) -> list[Any]:
        try:
            return [r[column] for r in records]
        except KeyError:
            i = _first(records, lambda r: column not in r)
            hint = f" (in every candidate, or once in {also_in})" if also_in else ""
            raise RecordError(f"{where}[{i}].{column}", f"missing; every input column is required{hint}") from None

    # -- columns -> the model's input matrix -----------------------------------------------
    def encode(self, columns: dict[str, _Column], n: int, on_unknown: OnUnknown = "oov", *, deadline: float | None = None,
               defer_texts: bool = False, given: dict[str, np.ndarray] | None = None,
               only: set[str] | None = None) -> tuple[np.ndarray, dict[str, list[str]]]:
        """The flat float32 matrix (n, width) in the model's column layout, and the unknown values per field.

        A column holding one value (``rank``'s user fields) is broadcast to all n rows. With
        ``defer_texts``, uncached texts raise ``TextsMissing`` once every field has been checked.
        ``given`` holds precomputed inputs of text and vector fields by field name ((n, d) or (1, d),
        e.g. the stored title vectors and video semantics of ``xdeepfm.catalog``): they are used as they are.
        ``only``: encode these fields (by name) and leave the other columns of X unset.
        """
        X = np.empty((n, self.width), np.float32)
        unknown: dict[str, list[str]] = {}
        pending: dict[str, list[str]] | None = {} if defer_texts else None
        for spec, fit in self.fields:
            if only is not None and spec.name not in only:
                continue
            _check_deadline(deadline, f"encoding at field {spec.name!r}")
            if given is not None and spec.name in given:
                start, end = self.model.feature_index[spec.name]
                X[:, start:end] = given[spec.name]
                continue
            column = columns[spec.column]
            if spec.kind == "text":
                encoded, missing = self._encode_text(spec, fit, column, deadline, pending)
            else:
                encoded, missing = getattr(self, f"_encode_{spec.kind}")(spec, fit, column)
            if missing is not None and missing.any():
                values = self._unknown_values(spec, column, missing)
                if values:
                    if on_unknown == "error":
                        i = int(np.flatnonzero(missing)[0])
                        raise column.error(i, f"unknown value(s) {values[:5]} (not seen in training; "
                                              "send unknown='oov' to score them with the out-of-vocabulary bucket)")
                    unknown[spec.name] = values
            start, end = self.model.feature_index[spec.name]
            X[:, start:end] = encoded.reshape(len(encoded), end - start)  # broadcasts a single row
        if pending:
            raise TextsMissing(pending)
        return X, unknown

    def _unknown_values(self, spec: FieldSpec, column: _Column, missing: np.ndarray) -> list[str]:
        values = [column.values[i] for i in np.flatnonzero(missing)[: 10 * MAX_REPORTED]]
        if spec.kind == "multi_valued":
            known = self._code[spec.name]
            values = [t for v in values for t in self._tokens(spec, v) if t not in known]
        return list(dict.fromkeys(str(v) for v in values if v is not None))[:MAX_REPORTED]

    @staticmethod
    def _keys(column: _Column) -> list[Any]:
        """Scalar values as vocabulary keys: ``str(value)``, None stays None."""
        values = column.values
        types = set(map(type, values))
        if types <= {str}:
            return values
        if not types <= {str, int, float, bool, type(None)}:
            i = _first(values, lambda v: v is not None and not isinstance(v, SCALARS))
            raise column.error(i, f"expected a string or number, got {_type_name(values[i])}")
        return [v if v is None or type(v) is str else str(v) for v in values]

    @staticmethod
    def _lookup(keys: list[Any], code_of: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """(codes, unknown mask): 0 and True for a key outside the mapping (None: 0, not unknown)."""
        get = code_of.get
        codes = np.fromiter((get(k, 0) for k in keys), np.int64, len(keys))
        unknown = codes == 0
        if unknown.any():
            unknown &= np.fromiter((k is not None for k in keys), bool, len(keys))
        return codes, unknown

    def _encode_categorical(self, spec, fit, column):
        return self._lookup(self._keys(column), self._code[spec.name])

    def _tokens(self, spec: FieldSpec, value: Any) -> list[str]:
        text = (value if isinstance(value, str) else "" if value is None else
                spec.sep.join(map(str, value)) if isinstance(value, list) else str(value))  # a scalar: one token
        return [t for t in (t.strip() for t in text.split(spec.sep)) if t]

    def _encode_multi_valued(self, spec, fit, column):
        values = column.values
        bad = next((i for i, v in enumerate(values) if not (v is None or isinstance(v, SCALARS) or
                                                              (isinstance(v, list) and all(isinstance(t, SCALARS) for t in v)))), None)
        if bad is not None:
            raise column.error(bad, f"expected a {spec.sep!r}-separated string or a list of strings, got {_type_name(values[bad])}")
        keys = [v if isinstance(v, str) else ("" if v is None else
                                              spec.sep.join(map(str, v)) if isinstance(v, list) else str(v)) for v in values]
        code_of = self._code[spec.target if spec.kind == "sequence" else spec.name]

        def encode(distinct: list[str]) -> np.ndarray:  # codes (max_len) + 1 if any token is unknown
            table = np.zeros((len(distinct), spec.max_len + 1), np.int64)
            for row, text in enumerate(distinct):
                codes = [code_of.get(t, 0) for t in self._tokens(spec, text)]
                table[row, -1] = 0 in codes
                codes = codes[: spec.max_len]
                table[row, : len(codes)] = codes
            return table

        if any(len(k) > MEMO_MAX_CHARS for k in keys):  # long strings are not worth keeping (nor safe to keep)
            distinct = list(dict.fromkeys(keys))
            position = {k: i for i, k in enumerate(distinct)}
            encoded = encode(distinct)[[position[k] for k in keys]]
            return encoded[:, :-1], encoded[:, -1].astype(bool)
        with self._lock:
            rows, table = self._memo[spec.name].rows(keys, encode)
        encoded = table[rows]
        return encoded[:, :-1], encoded[:, -1].astype(bool)

    def _encode_sequence(self, spec, fit, column):
        """A history (a ``sep``-joined string of item ids, newest first, or a list of ids: the user record's
        column) as codes of the target item field; ids outside its vocabulary are dropped (code 0 is
        padding), as ``FeaturePipeline.transform`` does, so they are not reported as unknown."""
        codes, _ = self._encode_multi_valued(spec, fit, column)
        return codes, None

    def _encode_numeric(self, spec, fit, column):
        values = column.values
        if not set(map(type, values)) <= {int, float}:
            i = _first(values, lambda v: type(v) not in (int, float))
            raise column.error(i, f"expected a number, got {_type_name(values[i])}"
                                  + (f" {values[i]!r}" if isinstance(values[i], str) else ""))
        try:
            array = np.asarray(values, dtype=np.float64)
        except OverflowError:  # an int beyond float64
            raise column.error(_first(values, _beyond_float), "expected a finite number (this integer is beyond float64)") from None
        finite = np.isfinite(array)
        if not finite.all():
            raise column.error(int(np.flatnonzero(~finite)[0]), "expected a finite number")
        z = (array - fit.mean) / fit.std
        far = np.abs(z) > MAX_ABS_Z
        if far.any():
            i = int(np.flatnonzero(far)[0])
            raise column.error(i, f"{values[i]!r} is {abs(z[i]):.3g} standard deviations from the training mean; "
                                  f"at most {MAX_ABS_Z:g} are accepted")
        return z.astype(np.float32), None

    def _encode_text(self, spec, fit, column, deadline: float | None = None, pending: dict | None = None):
        values = column.values
        if not set(map(type, values)) <= {str, type(None)}:
            i = _first(values, lambda v: v is not None and not isinstance(v, str))
            raise column.error(i, f"expected a string, got {_type_name(values[i])}")
        texts = [v or "" for v in values]
        cache = self._text[spec.name]
        if pending is None:
            return cache.encode(texts, deadline), None
        vectors, missing = cache.lookup(texts)
        if missing.any():
            pending[spec.name] = list(dict.fromkeys(texts[i] for i in np.flatnonzero(missing)))
        return vectors, None

    def _encode_vector(self, spec, fit, column):
        row_of, table = self._vector[spec.name]
        rows, unknown = self._lookup(self._keys(column), row_of)
        return table[rows], unknown
