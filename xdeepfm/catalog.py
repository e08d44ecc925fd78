"""Ranking by id: the item and user store joined into the scoring engine's inputs.

``store_layout(engine, frame)`` decides, from the training data, which of the model's input columns
belong to an item, which to a user and which are per-request context (``store.partition_columns``),
and which vectors the store keeps: the sentence vector of every text column of the entity and every
vector field keyed by the entity's id (e.g. the video semantics, keyed by ``video_id``).
``build_store`` writes a store from a data frame (the training impressions, or item and user
tables); ``item_record`` makes the record of one new item (its title encoded here; its semantics
given, e.g. by the sentiment model at ingestion).

``rank_by_id(engine, store, user_id, candidate_ids, ...)`` reads the user and the candidates from
the store (one snapshot each), fills the request's context columns, and scores with the stored
vectors used as they are (no BERT pass for a stored title). Ids the store does not hold are
reported per id (``unknown_ids``) and left out of the ranking, or refused with ``on_unknown="error"``.
An unknown user is scored as a new user: categorical user columns at the out-of-vocabulary
bucket, numeric ones at the training mean, texts empty, vectors zero.

A model with a behaviour history (a ``sequence`` field) gets it from the store's event log: the
layout's ``history`` names the column, ``build_store`` logs the frame's interactions as events, and
``rank_by_id`` fills the column with the user's last positive items (``SQLiteStore.history``), so an
event recorded by ``record_events`` (``POST /v1/events``) changes the next ranking.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from xdeepfm.history import HistoryConfig
from xdeepfm.serving import MAX_REPORTED, OnUnknown, RecordError, ScoringEngine
from xdeepfm.store import (
    EntityLayout,
    Event,
    FeatureStore,
    HistoryLayout,
    Record,
    SQLiteStore,
    StoreError,
    StoreLayout,
    partition_columns,
)

log = logging.getLogger(__name__)

USER_KEYS = ("user_id",)


class Ingestor(Protocol):
    """Turns an uploaded video into an item's vectors (``POST /v1/items`` with a ``video``).

    Called with the file's bytes, the item's columns, its transcript and the JSON path of the item
    (for errors: raise ``RecordError(f"{where}.video", reason)``); returns the vectors by field name
    (e.g. ``video_sentiment``, ``video_embedding``) and a JSON-able description of the semantics for
    the response; an ``"explanation"`` key of that description (a JSON object: why the sentiment model
    read the video as it did) is kept in the store beside the item instead (``GET /v1/items/{id}``).
    The application layer builds one from the sentiment model (``mmapp.ingest``).
    """

    def __call__(self, video: bytes, columns: dict[str, Any], transcript: str,
                 where: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...


def default_store_path(artifact: str | Path) -> Path:
    """The store file beside an artifact directory: ``<artifact>.store.sqlite``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".store.sqlite")


def _vectors_of(engine: ScoringEngine, key: str, columns: Sequence[str]) -> tuple[tuple[str, int], ...]:
    out = []
    for spec, _ in engine.fields:
        if (spec.kind == "text" and spec.column in columns) or (spec.kind == "vector" and spec.key_column == key):
            out.append((spec.name, engine.field_width(spec.name)))
    return tuple(out)


def history_layout(engine: ScoringEngine, history: HistoryConfig | None = None) -> HistoryLayout | None:
    """The history column of ``engine``'s sequence field (None without one); ``history`` (the training
    config's ``history:`` section) says which events are positive."""
    sequences = [spec for spec, _ in engine.fields if spec.kind == "sequence"]
    if not sequences:
        return None
    if len(sequences) > 1:
        raise StoreError(f"the store fills one behaviour history; the artifact has {[s.name for s in sequences]}")
    spec = sequences[0]
    return HistoryLayout(spec.column, spec.max_len, spec.sep, (history or HistoryConfig()).positive_min)


def store_layout(engine: ScoringEngine, frame, user_key: str | None = None,
                 history: HistoryConfig | None = None) -> StoreLayout:
    """The layout of a store for ``engine``'s model, its columns partitioned by ``frame`` (impressions)."""
    item_key = engine.item_field
    if item_key is None:
        raise StoreError("the artifact names no item field (model.json item_field); export it with --item-field")
    user_key = user_key or next((c for c in USER_KEYS if c in engine.columns), None)
    if user_key is None:
        raise StoreError(f"no user id column among the model's inputs {sorted(engine.columns)} (expected one of {USER_KEYS})")
    sequence = history_layout(engine, history)
    missing = sorted(engine.columns - set(frame.columns) - ({sequence.column} if sequence else set()))
    if missing:
        raise StoreError(f"the data lacks input column {missing[0]!r} of the model")
    inputs = sorted(engine.columns - ({sequence.column} if sequence else set()))
    item, user, context = partition_columns(frame, inputs, item_key, user_key)
    return StoreLayout(item=EntityLayout(item_key, tuple(item), _vectors_of(engine, item_key, item)),
                       user=EntityLayout(user_key, tuple(user), _vectors_of(engine, user_key, user)),
                       context=tuple(context), history=sequence)


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def records(engine: ScoringEngine, layout: EntityLayout, frame, batch: int = 4096) -> list[Record]:
    """One record per distinct key of ``frame``: its columns, and its vectors encoded by the engine."""
    rows = frame.drop_duplicates(layout.key)[list(layout.columns)]
    out: list[Record] = []
    for start in range(0, len(rows), batch):
        part = rows.iloc[start : start + batch]
        columns = {c: [_json_value(v) for v in part[c].tolist()] for c in layout.columns}
        columns[layout.key] = [str(v) for v in columns[layout.key]]
        vectors = {name: engine.field_inputs(name, columns[engine.field(name)[0].column]) for name, _ in layout.vectors}
        for i in range(len(part)):
            out.append(Record(columns[layout.key][i], {c: columns[c][i] for c in layout.columns},
                              {name: v[i] for name, v in vectors.items()}))
    return out


def build_store(engine: ScoringEngine, frame, path: str | Path, overwrite: bool = False,
                users: Any = None, items: Any = None, explanations: dict[str, dict] | None = None,
                history: HistoryConfig | None = None) -> SQLiteStore:
    """A new store at ``path`` holding every item and user of ``frame`` (impressions with all input
    columns); ``items`` / ``users`` frames, when given, add entities that have no impression;
    ``explanations`` (item id -> JSON object) are kept beside their items. Every row of ``frame`` is
    also logged as an event when it has a time and a label (``history``: the training config's
    section names those columns and the positive rule; required for a model with a behaviour
    history): the user histories and seen items that ranking and recommending read."""
    layout = store_layout(engine, frame, history=history)
    store = SQLiteStore.create(path, layout, overwrite=overwrite)
    for kind, extra in (("item", items), ("user", users)):
        entity = layout.entity(kind)
        source = frame if extra is None else _concat(frame, extra, entity)
        recs = records(engine, entity, source)
        if kind == "item" and explanations:
            for record in recs:
                record.explanation = explanations.get(record.id)
        for start in tqdm(range(0, len(recs), 5000), desc=f"store {kind}s", unit="batch", leave=False):
            store.put(kind, recs[start : start + 5000])
    rule = history or HistoryConfig()
    if layout.history is not None or {rule.time_column, rule.label_column} <= set(frame.columns):
        events = frame_events(frame, layout, rule)
        for start in tqdm(range(0, len(events), 50_000), desc="store events", unit="batch", leave=False):
            store.add_events(events[start : start + 50_000])
    store.checkpoint()  # the file alone holds the store (it can be copied)
    log.info("store %s: %d items, %d users", path, store.count("item"), store.count("user"))
    return store


def frame_events(frame, layout: StoreLayout, history: HistoryConfig) -> list[Event]:
    """The rows of ``frame`` as events, in time order (the log's order breaks ties of one second)."""
    for name in ("time_column", "label_column"):
        if getattr(history, name) not in frame.columns:
            raise StoreError(f"the data lacks column {getattr(history, name)!r} (history.{name}), needed to log "
                             "its interactions for the behaviour history")
    rows = frame[[layout.user.key, layout.item.key, history.label_column, history.time_column]]
    rows = rows.sort_values(history.time_column, kind="stable")
    return [Event(str(u), str(i), float(label), float(t)) for u, i, label, t in rows.itertuples(index=False)]


def _concat(frame, extra, entity: EntityLayout):
    missing = [c for c in entity.columns if c not in extra.columns]
    if missing:
        raise StoreError(f"the extra {entity.key} table lacks column {missing[0]!r}")
    return pd.concat([frame[list(entity.columns)], extra[list(entity.columns)]], ignore_index=True)


def item_record(engine: ScoringEngine, layout: StoreLayout, columns: dict[str, Any],
                vectors: dict[str, Any] | None = None, where: str = "item", explanation: dict | None = None) -> Record:
    """The record of one item from its columns: text vectors encoded here, other vectors from ``vectors``.

    Values are checked by the engine (an unknown category is fine: the OOV bucket; a wrong type is a
    ``RecordError`` naming ``<where>.<column>``)."""
    entity = layout.item
    missing = [c for c in entity.columns if c not in columns]
    if missing:
        raise RecordError(f"{where}.{missing[0]}", f"missing; an item needs {list(entity.columns)}")
    extra = sorted(set(columns) - set(entity.columns))
    if extra:
        raise RecordError(f"{where}.{extra[0]}", f"not an item column (the item columns: {list(entity.columns)})")
    columns = dict(columns)
    if not isinstance(columns[entity.key], str):
        raise RecordError(f"{where}.{entity.key}", f"expected a string id, got {type(columns[entity.key]).__name__}")
    for spec, _ in engine.fields:  # type checks of every column, as a ranking request would make them
        if spec.column in columns and spec.kind in ("categorical", "numeric", "multi_valued"):
            try:
                engine.field_inputs(spec.name, [columns[spec.column]])
            except RecordError as exc:
                raise RecordError(f"{where}.{spec.column}", exc.message) from None
    given = dict(vectors or {})
    out = {}
    for name, dim in entity.vectors:
        spec, _ = engine.field(name)
        if name in given:
            vector = np.asarray(given.pop(name), dtype=np.float32).reshape(-1)
            if vector.shape != (dim,) or not np.isfinite(vector).all():
                raise RecordError(f"{where}.vectors.{name}", f"expected {dim} finite numbers, got shape {vector.shape}")
            out[name] = vector
        elif spec.kind == "text":
            try:
                out[name] = engine.field_inputs(name, [columns[spec.column]])[0]
            except RecordError as exc:
                raise RecordError(f"{where}.{spec.column}", exc.message) from None
        else:
            raise RecordError(f"{where}.vectors.{name}", f"missing: vector field {name!r} ({dim} values) must be given "
                                                         "(or a video, where the service ingests videos)")
    if given:
        raise RecordError(f"{where}.vectors.{sorted(given)[0]}", f"not a stored vector (the store keeps {[n for n, _ in entity.vectors]})")
    return Record(columns[entity.key], columns, out, explanation=explanation)


@dataclass
class IdRanking:
    """The ranked ids with their probabilities, the unknown values met per field, the unknown ids, and
    the model's input rows of the ranked ids (``inputs``, (len(ids), width): what ``xdeepfm.explain`` reads)."""

    ids: list[str]
    scores: np.ndarray
    n_candidates: int
    unknown: dict[str, list[str]] = field(default_factory=dict)
    unknown_ids: dict[str, list[str]] = field(default_factory=dict)
    inputs: np.ndarray | None = None


def new_user(engine: ScoringEngine, entity: EntityLayout, user_id: str) -> Record:
    """The stand-in record of a user the store does not hold (see the module docstring)."""
    fit_of = {spec.column: (spec, fit) for spec, fit in engine.fields}
    columns: dict[str, Any] = {}
    for c in entity.columns:
        spec, fit = fit_of.get(c, (None, None))
        columns[c] = float(fit.mean) if spec is not None and spec.kind == "numeric" else None
    columns[entity.key] = user_id
    return Record(user_id, columns, {name: np.zeros(dim, np.float32) for name, dim in entity.vectors})


def record_events(engine: ScoringEngine, store: SQLiteStore, events: Sequence[Event]) -> int:
    """Log ``events`` (``POST /v1/events``); a user the store does not hold gets its new-user record in
    the same transaction, so the next request finds them with their history. Returns the events logged."""
    ids = list(dict.fromkeys(e.user_id for e in events if isinstance(e.user_id, str) and e.user_id))
    known = store.get("user", ids)
    new = [new_user(engine, store.layout.user, uid) for uid in ids if uid not in known]
    return store.add_events(events, users=new)


def rank_by_id(engine: ScoringEngine, store: FeatureStore, user_id: str, candidate_ids: Sequence[str],
               top_k: int | None = None, context: dict[str, Any] | None = None, on_unknown: OnUnknown = "oov", *,
               deadline: float | None = None, defer_texts: bool = False) -> IdRanking:
    """Rank ``candidate_ids`` for ``user_id`` with the features joined from ``store`` (module docstring)."""
    layout = store.layout
    context = dict(context or {})
    extra = sorted(set(context) - set(layout.context))
    if extra:
        owner = "an item" if extra[0] in layout.item.columns else "a user" if extra[0] in layout.user.columns else None
        why = f"a column of {owner}, read from the store" if owner else "not an input of the model"
        raise RecordError(f"context.{extra[0]}", f"{why}; the context columns are {list(layout.context)}")
    missing = [c for c in layout.context if c not in context]
    if missing:
        raise RecordError(f"context.{missing[0]}", f"missing; send the context columns {list(layout.context)} with the request")
    seen: dict[str, int] = {}
    for i, cid in enumerate(candidate_ids):
        if cid in seen:
            raise RecordError(f"candidate_ids[{i}]", f"{cid!r} is also candidate_ids[{seen[cid]}]")
        seen[cid] = i
    unknown_ids: dict[str, list[str]] = {}
    user = store.get("user", [user_id]).get(user_id)
    if user is None:
        if on_unknown == "error":
            raise RecordError("user_id", f"unknown user {user_id!r} (not in the user store; send unknown='oov' to rank "
                                         "for a new user)")
        unknown_ids["user_id"] = [user_id]
        user = new_user(engine, layout.user, user_id)
    items = store.get("item", list(candidate_ids))
    absent = [(i, c) for i, c in enumerate(candidate_ids) if c not in items]
    if absent:
        if on_unknown == "error":
            i, cid = absent[0]
            raise RecordError(f"candidate_ids[{i}]", f"unknown item {cid!r} (not in the item store; ingest it first, "
                                                     "or send unknown='oov' to rank the known ones)")
        unknown_ids["candidate_ids"] = [c for _, c in absent]
    known = [items[c] for c in candidate_ids if c in items]
    if not known:
        return IdRanking([], np.zeros(0, np.float32), len(candidate_ids), {}, unknown_ids)
    rows = item_rows(engine, layout)
    X, unknown = rows.gather(known, on_unknown)  # (n, width): the item columns filled
    raw = {**{c: [user.columns[c]] for c in layout.user.columns}, **{c: [v] for c, v in context.items()}}
    where = {**{c: "user" for c in layout.user.columns}, **{c: "context" for c in context}}
    if layout.history is not None:  # the user's behaviour history, from the event log
        raw[layout.history.column] = [layout.history.sep.join(store.history(user_id))]
        where[layout.history.column] = "user"
    columns = {c: engine.column(c, values, where[c]) for c, values in raw.items()}
    given = {name: user.vectors[name][None] for name, _ in layout.user.vectors}
    head, head_unknown = engine.encode(columns, 1, on_unknown, deadline=deadline, defer_texts=defer_texts, given=given,
                                       only=rows.rest)
    X[:, rows.rest_index] = head[0, rows.rest_index]
    for name, values in head_unknown.items():
        unknown[name] = list(dict.fromkeys(unknown.get(name, []) + values))[:MAX_REPORTED]
    scores = engine.score_matrix(X, deadline)
    order = np.argsort(-scores, kind="stable")[: min(top_k or len(scores), len(scores))]
    return IdRanking([known[i].id for i in order], scores[order], len(candidate_ids), unknown, unknown_ids, X[order])


class ItemRows:
    """The item fields' part of the model's input matrix, kept per stored item.

    An item's inputs (its codes, z-scores, title vector and semantics) do not depend on the user, so
    each item is encoded once per process and its row reused by every request, until the store hands
    out a new record for it (after an upsert: the store's generation moved). The rows live in one
    matrix of the model's full input width (the user and context columns zero), so ``gather`` is one
    row selection: it returns the (n, width) inputs of a request's candidates with their item columns
    filled, and the unknown values among them (per field, as ``encode`` reports them). At most
    ``capacity`` items are kept; the least recently used one gives its row up first.
    """

    def __init__(self, engine: ScoringEngine, layout: StoreLayout, capacity: int = 200_000) -> None:
        self.engine, self.layout, self.capacity = engine, layout, capacity
        item_columns = set(layout.item.columns)
        self.fields = [spec.name for spec, _ in engine.fields if spec.column in item_columns]
        self.rest = {spec.name for spec, _ in engine.fields} - set(self.fields)
        span = lambda names: np.concatenate([np.arange(*engine.model.feature_index[n]) for n in names]) \
            if names else np.zeros(0, np.int64)  # noqa: E731
        self.index = span(self.fields)
        self.rest_index = span([spec.name for spec, _ in engine.fields if spec.name in self.rest])
        self._matrix = np.zeros((0, engine.width), np.float32)  # grows by doubling up to capacity
        self._slots: OrderedDict[str, tuple[Record, int, dict[str, list[str]]]] = OrderedDict()  # LRU order
        self._lock = threading.Lock()

    def _encode(self, records: list[Record]) -> tuple[np.ndarray, dict[str, list[str]]]:
        """(len(records), width) inputs with the item columns filled (the rest zero), and the unknown values."""
        columns = {c: self.engine.column(c, [r.columns[c] for r in records], "candidates") for c in self.layout.item.columns}
        given = {name: np.stack([r.vectors[name] for r in records]) for name, _ in self.layout.item.vectors}
        X, unknown = self.engine.encode(columns, len(records), "oov", given=given, only=set(self.fields))
        X[:, self.rest_index] = 0.0
        return X, unknown

    def _slot(self) -> int:
        """A free row of the matrix (the caller holds the lock): a new one, or the least recently used item's."""
        if len(self._slots) >= self.capacity:
            return self._slots.popitem(last=False)[1][1]
        n = len(self._slots)
        if n == len(self._matrix):
            grown = np.zeros((min(self.capacity, max(64, 2 * n)), self.engine.width), np.float32)
            grown[:n] = self._matrix
            self._matrix = grown
        return n

    def gather(self, records: list[Record], on_unknown: OnUnknown = "oov") -> tuple[np.ndarray, dict[str, list[str]]]:
        with self._lock:
            entries = [self._slots.get(r.id) for r in records]
        missing = list({r.id: r for r, e in zip(records, entries) if e is None or e[0] is not r}.values())
        fresh: dict[str, tuple[np.ndarray, dict[str, list[str]]]] = {}
        if missing:
            block, unknown = self._encode(missing)
            per_item = [self._encode([r])[1] for r in missing] if unknown else [{}] * len(missing)
            fresh = {r.id: (row, u) for r, row, u in zip(missing, block, per_item)}
        with self._lock:  # every row is copied under the lock: no other thread reuses a slot meanwhile
            if len(records) <= self.capacity:
                for r in records:  # this request's items are the most recent: its inserts evict others
                    if r.id in self._slots:
                        self._slots.move_to_end(r.id)
                for r in missing:
                    entry = self._slots.pop(r.id, None)
                    slot = entry[1] if entry is not None else self._slot()
                    self._matrix[slot] = fresh[r.id][0]
                    self._slots[r.id] = (r, slot, fresh[r.id][1])
            entries = [self._slots.get(r.id) for r in records]
            held = [e is not None and e[0] is r for r, e in zip(records, entries)]  # else a newer version landed
            if all(held):
                X = self._matrix[[e[1] for e in entries]]
            else:  # the rows not held are filled below
                X = np.zeros((len(records), self.engine.width), np.float32)
                take = [i for i, h in enumerate(held) if h]
                X[take] = self._matrix[[entries[i][1] for i in take]]
        lists: list[dict[str, list[str]]] = []
        for i, (r, e, h) in enumerate(zip(records, entries, held)):
            if not h:
                X[i], u = fresh[r.id] if r.id in fresh else self._encode([r])
            else:
                u = e[2]
            lists.append(u)
        unknown: dict[str, list[str]] = {}
        for i, u in enumerate(lists):
            if u and on_unknown == "error":
                name = next(iter(u))
                raise RecordError(f"candidate_ids[{i}]", f"item {records[i].id!r}: {name} {u[name][:5]} not seen in training "
                                                         "(send unknown='oov' to score it with the out-of-vocabulary bucket)")
            for name, values in u.items():
                unknown[name] = list(dict.fromkeys(unknown.get(name, []) + values))[:MAX_REPORTED]
        return X, unknown


_ROWS: "weakref.WeakKeyDictionary[ScoringEngine, dict[StoreLayout, ItemRows]]" = weakref.WeakKeyDictionary()
_ROWS_LOCK = threading.Lock()


def item_rows(engine: ScoringEngine, layout: StoreLayout) -> ItemRows:
    """The engine's ``ItemRows`` for a store layout (one per engine and layout, made on first use)."""
    with _ROWS_LOCK:
        per_engine = _ROWS.setdefault(engine, {})
        if layout not in per_engine:  # a frozen dataclass of tuples: hashable, equal by value
            per_engine[layout] = ItemRows(engine, layout)
        return per_engine[layout]


def open_store(engine: ScoringEngine, path: str | Path) -> SQLiteStore:
    """Open the store at ``path`` and check it fits ``engine``'s artifact (its columns and vector widths)."""
    store = SQLiteStore(path)
    for kind in ("item", "user"):
        entity: EntityLayout = store.layout.entity(kind)
        unknown = [c for c in entity.columns if c not in engine.columns]
        if unknown:
            raise StoreError(f"{path}: {kind} column {unknown[0]!r} is not an input of the artifact")
        for name, dim in entity.vectors:
            try:
                width = engine.field_width(name)
            except KeyError:
                raise StoreError(f"{path}: {kind} vector {name!r} is not a field of the artifact") from None
            if width != dim:
                raise StoreError(f"{path}: {kind} vector {name!r} has width {dim}; the artifact's field has {width}")
    covered = set(store.layout.item.columns) | set(store.layout.user.columns) | set(store.layout.context)
    if store.layout.history is not None:
        covered.add(store.layout.history.column)
    if store.layout.history != history_layout(engine, HistoryConfig(positive_min=store.layout.history.positive_min)
                                               if store.layout.history else None):
        raise StoreError(f"{path}: the store's behaviour history {store.layout.history} does not fit the artifact's "
                         f"sequence field {history_layout(engine)}")
    if covered != engine.columns:
        raise StoreError(f"{path}: the store's columns {sorted(covered)} are not the artifact's inputs {sorted(engine.columns)}")
    return store

