"""The live item and user store the ranking service reads: one SQLite file, a row per item or user.

A ranking request by id (``{"user_id": ..., "candidate_ids": [...]}``) carries no features; the
service joins them from this store (``xdeepfm.catalog``). Per entity (``item`` or ``user``) the
store keeps the model's input columns that belong to it (``columns``: category, brand, price,
title, ...) as JSON, and its precomputed vectors (``vectors``: the title's sentence vector, the
video semantics, ...) as one float32 blob in the order of the store's ``StoreLayout``. One row
holds everything of one entity, so a reader never sees half of an item; every write is one
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), so an upsert of many items is all or nothing.

Why SQLite by default: it is in the standard library, needs no server, keeps the store in one file
beside the artifact, and in WAL mode lets any number of readers (threads and worker processes of
the service) read while one writer writes, each reader seeing a consistent snapshot. The interface
(``FeatureStore``: get many by id, put many in one transaction, a generation counter) is narrow
enough for a Redis (a hash per entity, MULTI/EXEC for the batch, INCR for the generation) or
PostgreSQL (the same tables, ``bytea`` vectors) back end.

``generation`` is a counter in the ``meta`` table, incremented in the same transaction as every
write. A process caches decoded rows and drops its cache when the generation moves, which it
reads in the same read transaction as the rows: a cached row is never older than the snapshot the
request read.

Explanations (schema 2): an item may carry a JSON ``explanation`` (why its video's sentiment is what
it is: the sentiment model's modality shares, attended words and attention over time, computed by the
application layer, ``mmapp.ingest``), kept in the ``explanation`` table beside its row and written in
the same transaction; upserting an item without one removes the old one (it described the old video).
A schema-1 store (made before explanations) still opens: it has none, and a write that carries one is
refused with the reason.

Events and histories (schema 2): the ``event`` table is the interaction log (user, item, label,
time; ``add_events`` appends a batch in one transaction, as ``POST /v1/events`` does). When the
model reads a behaviour history (a ``sequence`` field), the layout's ``history`` names its column,
and a user's history is not stored in their row but read from the log at request time
(``history``: the last ``max_len`` items with ``label >= positive_min``, newest first), so the next
request after an event sees it, and an event does not move the generation (no cached row changes).
``seen`` is every item a user has an event with (what ``/v1/recommend`` leaves out).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

Entity = Literal["item", "user"]
ENTITIES: tuple[Entity, ...] = ("item", "user")
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # schema 1: no explanation table
MAX_EXPLANATION_BYTES = 1_000_000  # one item's explanation JSON
MAX_ID_CHARS = 256
CHUNK = 500  # ids per SELECT ... IN (...)


class StoreError(ValueError):
    """The store file, its layout or a record is not what the artifact expects; the message says which."""


@dataclass(frozen=True)
class EntityLayout:
    """What the store keeps per item or per user: its key column, input columns and vector widths."""

    key: str  # the input column holding the id (e.g. video_id, user_id)
    columns: tuple[str, ...]  # input columns stored as JSON values (the key included)
    vectors: tuple[tuple[str, int], ...] = ()  # (field name, width) of each stored vector, blob order

    @property
    def width(self) -> int:
        return sum(dim for _, dim in self.vectors)


@dataclass(frozen=True)
class HistoryLayout:
    """The behaviour-history column the store fills from its event log (``xdeepfm.history``'s rule)."""

    column: str  # the model's input column of the sequence field (e.g. history)
    max_len: int  # the last N positive items
    sep: str = "|"  # how the ids are joined in the column
    positive_min: float = 1.0  # an event is positive when label >= positive_min


@dataclass(frozen=True)
class StoreLayout:
    """The store's shape, fixed when it is created from an artifact and checked when it is opened."""

    item: EntityLayout
    user: EntityLayout
    context: tuple[str, ...] = ()  # input columns in neither table: sent with each request (device, time, ...)
    history: HistoryLayout | None = None  # the user's behaviour history, read from the event log

    def entity(self, kind: Entity) -> EntityLayout:
        return self.item if kind == "item" else self.user

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StoreLayout":
        raw = json.loads(text)

        def entity(d: dict) -> EntityLayout:
            return EntityLayout(d["key"], tuple(d["columns"]), tuple((n, int(w)) for n, w in d["vectors"]))

        history = raw.get("history")
        return cls(entity(raw["item"]), entity(raw["user"]), tuple(raw.get("context", ())),
                   HistoryLayout(**history) if history else None)


@dataclass
class Record:
    """One item or user: its id, its input columns (JSON values) and its vectors (float32)."""

    id: str
    columns: dict[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    updated_at: float = 0.0
    explanation: dict[str, Any] | None = None  # items only: written by ``put``, read by ``SQLiteStore.explanation``


@dataclass(frozen=True)
class Event:
    """One interaction: ``user_id`` met ``item_id`` with ``label`` (e.g. 1 = click) at ``time`` (seconds)."""

    user_id: str
    item_id: str
    label: float
    time: float


def _check_event(event: Event, where: str) -> tuple[str, str, float, float]:
    user, item = _check_id(event.user_id, f"{where}.user_id"), _check_id(event.item_id, f"{where}.item_id")
    for name in ("label", "time"):
        value = getattr(event, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise StoreError(f"{where}.{name}: expected a finite number, got {value!r:.80}")
    return user, item, float(event.label), float(event.time)


def _check_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS or not value.isprintable():
        raise StoreError(f"{where}: expected a non-empty printable string id of at most {MAX_ID_CHARS} characters, "
                         f"got {value!r:.80}")
    return value


def _check_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreError(f"{where}: {value!r} is not a finite number")
        return
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return
    raise StoreError(f"{where}: expected a string, number, boolean, null or list of strings, got {type(value).__name__}")


def encode_record(record: Record, layout: EntityLayout, where: str) -> tuple[str, str, bytes]:
    """(id, columns JSON, vectors blob) of a record checked against ``layout`` (StoreError naming the field)."""
    rid = _check_id(record.id, f"{where}.id")
    missing = [c for c in layout.columns if c not in record.columns]
    extra = sorted(set(record.columns) - set(layout.columns))
    if missing:
        raise StoreError(f"{where}: column {missing[0]!r} is missing (the store's columns: {list(layout.columns)})")
    if extra:
        raise StoreError(f"{where}: column {extra[0]!r} is not one of the store's columns {list(layout.columns)}")
    if str(record.columns[layout.key]) != rid:
        raise StoreError(f"{where}: column {layout.key!r} is {record.columns[layout.key]!r} but the id is {rid!r}")
    for name, value in record.columns.items():
        _check_value(value, f"{where}.{name}")
    parts = []
    for name, dim in layout.vectors:
        if name not in record.vectors:
            raise StoreError(f"{where}: vector {name!r} is missing (the store keeps {[n for n, _ in layout.vectors]})")
        vector = np.asarray(record.vectors[name], dtype=np.float32).reshape(-1)
        if vector.shape != (dim,):
            raise StoreError(f"{where}: vector {name!r} has {vector.size} values; expected {dim}")
        if not np.isfinite(vector).all():
            raise StoreError(f"{where}: vector {name!r} has non-finite values")
        parts.append(vector)
    extra = sorted(set(record.vectors) - {n for n, _ in layout.vectors})
    if extra:
        raise StoreError(f"{where}: vector {extra[0]!r} is not one the store keeps ({[n for n, _ in layout.vectors]})")
    blob = np.concatenate(parts).tobytes() if parts else b""
    return rid, json.dumps(record.columns, sort_keys=True, allow_nan=False), blob


def decode_record(rid: str, columns: str, blob: bytes, updated_at: float, layout: EntityLayout, where: str) -> Record:
    values = np.frombuffer(blob, dtype=np.float32)
    if values.size != layout.width:
        raise StoreError(f"{where}: row {rid!r} holds {values.size} vector values; the layout needs {layout.width}")
    vectors, start = {}, 0
    for name, dim in layout.vectors:
        vectors[name] = values[start : start + dim]
        start += dim
    return Record(rid, json.loads(columns), vectors, updated_at)


class FeatureStore(Protocol):
    """What the service needs of a store (SQLite here; Redis or PostgreSQL could follow)."""

    layout: StoreLayout

    def get(self, kind: Entity, ids: Sequence[str]) -> dict[str, Record]: ...

    def put(self, kind: Entity, records: Sequence[Record]) -> int: ...

    def count(self, kind: Entity) -> int: ...

    def generation(self) -> int: ...

    def explanation(self, item_id: str) -> dict[str, Any] | None: ...

    def ids(self, kind: Entity, limit: int | None = None) -> list[str]: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS item (id TEXT PRIMARY KEY, columns TEXT NOT NULL, vectors BLOB NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS user (id TEXT PRIMARY KEY, columns TEXT NOT NULL, vectors BLOB NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS explanation (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS event (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
                                  label REAL NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS event_by_user ON event (user_id, time, seq);
CREATE INDEX IF NOT EXISTS item_by_write ON item (updated_at);
"""


class SQLiteStore:
    """The default ``FeatureStore``: one SQLite file in WAL mode, a connection per thread.

    ``SQLiteStore.create(path, layout)`` makes a new file (refusing an existing one unless
    ``overwrite``); ``SQLiteStore(path)`` opens one and reads its layout; ``expect`` (a layout)
    makes opening fail with a message naming the first difference. ``cache`` decoded rows per entity
    are kept in this process until the store's generation moves.
    """

    def __init__(self, path: str | Path, expect: StoreLayout | None = None, cache: int = 100_000,
                 busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: item/user store not found (create it with `mmfusion store`)")
        self.busy_timeout_s, self.cache_size = busy_timeout_s, cache
        self._local = threading.local()
        self._lock = threading.Lock()
        self._cache: dict[str, OrderedDict[str, Record]] = {k: OrderedDict() for k in ENTITIES}
        self._cached_generation = -1
        try:
            meta = dict(self._connection().execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not an item/user store ({exc})") from None
        if meta.get("schema") not in {str(v) for v in READABLE_SCHEMAS} or "layout" not in meta:
            raise StoreError(f"{self.path}: not an item/user store of schema {' or '.join(map(str, READABLE_SCHEMAS))} "
                             f"(meta: {sorted(meta)}, schema {meta.get('schema')!r})")
        self.schema = int(meta["schema"])
        self.layout = StoreLayout.from_json(meta["layout"])
        if expect is not None and expect != self.layout:
            raise StoreError(f"{self.path}: its layout does not fit this artifact: {describe_difference(self.layout, expect)}")

    @classmethod
    def create(cls, path: str | Path, layout: StoreLayout, overwrite: bool = False, **options: Any) -> "SQLiteStore":
        """A new, empty store with ``layout`` at ``path`` (written beside, then renamed into place)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: exists (pass overwrite to replace it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            stale.unlink(missing_ok=True)
        with sqlite3.connect(tmp) as conn:
            conn.executescript(_SCHEMA)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", str(SCHEMA_VERSION)), ("layout", layout.to_json()),
                                                                ("generation", "0")])
        conn.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        tmp.replace(path)
        log.info("created item/user store %s (item columns %s, user columns %s)", path, list(layout.item.columns),
                 list(layout.user.columns))
        return cls(path, **options)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            self._local.conn = conn
        return conn

    # -- reads ---------------------------------------------------------------------------------
    def generation(self) -> int:
        return int(self._connection().execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def count(self, kind: Entity) -> int:
        return int(self._connection().execute(f"SELECT COUNT(*) FROM {_table(kind)}").fetchone()[0])

    def get(self, kind: Entity, ids: Sequence[str]) -> dict[str, Record]:
        """The stored records of ``ids`` (absent ids are absent from the result), one snapshot."""
        table, layout = _table(kind), self.layout.entity(kind)
        conn = self._connection()
        found: dict[str, Record] = {}
        conn.execute("BEGIN")
        try:
            generation = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            with self._lock:
                if generation != self._cached_generation:
                    for cached in self._cache.values():
                        cached.clear()
                    self._cached_generation = generation
                cache = self._cache[kind]
                for rid in ids:
                    if rid in cache:
                        found[rid] = cache[rid]
            wanted = list(dict.fromkeys(r for r in ids if r not in found))
            rows = []
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                rows += conn.execute(f"SELECT id, columns, vectors, updated_at FROM {table} WHERE id IN "
                                     f"({','.join('?' * len(chunk))})", chunk).fetchall()
        finally:
            conn.execute("COMMIT")
        fresh = {row[0]: decode_record(*row, layout, f"{self.path}:{table}") for row in rows}
        with self._lock:
            if generation == self._cached_generation:
                cache = self._cache[kind]
                cache.update(fresh)
                while len(cache) > self.cache_size:
                    cache.popitem(last=False)
        found.update(fresh)
        return found

    def ids(self, kind: Entity, limit: int | None = None) -> list[str]:
        """The ids of ``kind`` in id order, the first ``limit`` of them when given."""
        sql = f"SELECT id FROM {_table(kind)} ORDER BY id" + ("" if limit is None else " LIMIT ?")
        return [r[0] for r in self._connection().execute(sql, () if limit is None else (int(limit),))]

    def explanation(self, item_id: str) -> dict[str, Any] | None:
        """The stored explanation of an item, or None (none stored, or a schema-1 store)."""
        if self.schema < 2:
            return None
        row = self._connection().execute("SELECT body FROM explanation WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def last_write(self, kind: Entity) -> float:
        """The newest ``updated_at`` of ``kind`` (0 for an empty table): what ``updated_since`` continues from."""
        row = self._connection().execute(f"SELECT MAX(updated_at) FROM {_table(kind)}").fetchone()
        return float(row[0] or 0.0)

    def updated_since(self, kind: Entity, since: float) -> list[Record]:
        """The records written after ``since`` (a ``time.time()`` value), oldest write first."""
        table, layout = _table(kind), self.layout.entity(kind)
        rows = self._connection().execute(f"SELECT id, columns, vectors, updated_at FROM {table} WHERE updated_at > ? "
                                          "ORDER BY updated_at", (since,)).fetchall()
        return [decode_record(*row, layout, f"{self.path}:{table}") for row in rows]

    def history(self, user_id: str, limit: int | None = None, positive_min: float | None = None) -> list[str]:
        """The user's last ``limit`` (default the layout's ``max_len``) positive items, newest first
        (ties in time: the later logged first). Needs a layout with a history, or both arguments."""
        rule = self.layout.history
        if rule is None and (limit is None or positive_min is None):
            raise StoreError(f"{self.path}: the store keeps no behaviour history (the artifact has no sequence field)")
        limit = rule.max_len if limit is None else limit
        positive_min = rule.positive_min if positive_min is None else positive_min
        if self.schema < 2:
            return []
        rows = self._connection().execute("SELECT item_id FROM event WHERE user_id = ? AND label >= ? "
                                          "ORDER BY time DESC, seq DESC LIMIT ?", (user_id, positive_min, int(limit)))
        return [r[0] for r in rows]

    def seen(self, user_id: str) -> set[str]:
        """Every item the user has an event with, whatever its label."""
        if self.schema < 2:
            return set()
        return {r[0] for r in self._connection().execute("SELECT DISTINCT item_id FROM event WHERE user_id = ?", (user_id,))}

    def count_events(self) -> int:
        if self.schema < 2:
            return 0
        return int(self._connection().execute("SELECT COUNT(*) FROM event").fetchone()[0])

    # -- writes --------------------------------------------------------------------------------
    def add_events(self, events: Sequence[Event], users: Sequence[Record] = ()) -> int:
        """Append ``events`` to the log and upsert ``users`` (e.g. the stand-in record of a new user),
        all in one transaction (nothing is written when one is refused); returns the events logged."""
        if self.schema < 2:
            raise StoreError(f"{self.path} is a schema-{self.schema} store, made before the event log; rebuild it "
                             "(`mmfusion store`) to record events")
        rows = [_check_event(e, f"events[{i}]") for i, e in enumerate(events)]
        user_rows = [encode_record(r, self.layout.user, f"users[{i}]") for i, r in enumerate(users)]
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        now = time.time()  # inside the write lock: rows' updated_at follow the order of the commits
        try:
            conn.executemany("INSERT INTO event (user_id, item_id, label, time) VALUES (?, ?, ?, ?)", rows)
            if user_rows:
                conn.executemany("INSERT OR REPLACE INTO user VALUES (?, ?, ?, ?)",
                                 [(rid, cols, blob, now) for rid, cols, blob in user_rows])
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(rows)

    def put(self, kind: Entity, records: Sequence[Record]) -> int:
        """Insert or replace ``records`` in one transaction (all or none); returns the new generation."""
        layout = self.layout.entity(kind)
        rows = [encode_record(r, layout, f"{kind}s[{i}]") for i, r in enumerate(records)]
        seen: dict[str, int] = {}
        for i, (rid, _, _) in enumerate(rows):
            if rid in seen:
                raise StoreError(f"{kind}s[{i}].id: {rid!r} also given as {kind}s[{seen[rid]}]")
            seen[rid] = i
        explained = self._explanations(kind, records)
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        now = time.time()  # inside the write lock: rows' updated_at follow the order of the commits
        try:
            conn.executemany(f"INSERT OR REPLACE INTO {_table(kind)} VALUES (?, ?, ?, ?)",
                             [(rid, cols, blob, now) for rid, cols, blob in rows])
            if kind == "item" and self.schema >= 2:
                conn.executemany("DELETE FROM explanation WHERE id = ?", [(r.id,) for r in records if r.id not in explained])
                conn.executemany("INSERT OR REPLACE INTO explanation VALUES (?, ?)", list(explained.items()))
            conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            generation = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return generation

    def _explanations(self, kind: Entity, records: Sequence[Record]) -> dict[str, str]:
        """id -> explanation JSON of the records that carry one (StoreError naming the record if it cannot be kept)."""
        out = {}
        for i, record in enumerate(records):
            if record.explanation is None:
                continue
            where = f"{kind}s[{i}].explanation"
            if kind != "item":
                raise StoreError(f"{where}: only items carry explanations")
            if self.schema < 2:
                raise StoreError(f"{where}: {self.path} is a schema-{self.schema} store, made before explanations; "
                                 "rebuild it (`mmfusion store`) to keep them")
            if not isinstance(record.explanation, dict):
                raise StoreError(f"{where}: expected a JSON object, got {type(record.explanation).__name__}")
            try:
                body = json.dumps(record.explanation, sort_keys=True, allow_nan=False, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise StoreError(f"{where}: not JSON ({exc})") from None
            if len(body) > MAX_EXPLANATION_BYTES:
                raise StoreError(f"{where}: {len(body)} bytes of JSON; at most {MAX_EXPLANATION_BYTES}")
            out[record.id] = body
        return out

    def checkpoint(self) -> None:
        """Move the write-ahead log into the database file, so that the file alone holds every write
        (WAL keeps recent writes in ``<file>-wal`` until then; a plain file copy would miss them)."""
        self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def backup(self, path: str | Path) -> "SQLiteStore":
        """A consistent copy of the store at ``path`` (SQLite's online backup: safe while others write)."""
        path = Path(path)
        path.unlink(missing_ok=True)
        with sqlite3.connect(path) as target:
            self._connection().backup(target)
        target.close()
        return SQLiteStore(path, cache=self.cache_size, busy_timeout_s=self.busy_timeout_s)

    def close(self) -> None:
        """Checkpoint the log into the file (best effort: another process may be reading) and close."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:
                pass
            conn.close()
            self._local.conn = None


def _table(kind: str) -> str:
    if kind not in ENTITIES:
        raise ValueError(f"entity {kind!r}: expected one of {list(ENTITIES)}")
    return kind


def describe_difference(have: StoreLayout, want: StoreLayout) -> str:
    """The first difference between two layouts, in words."""
    for kind in ENTITIES:
        a, b = have.entity(kind), want.entity(kind)
        if a.key != b.key:
            return f"{kind} key is {a.key!r}, the artifact's is {b.key!r}"
        if a.columns != b.columns:
            return f"{kind} columns are {list(a.columns)}, the artifact's are {list(b.columns)}"
        if a.vectors != b.vectors:
            return f"{kind} vectors are {dict(a.vectors)}, the artifact's are {dict(b.vectors)}"
    if have.history != want.history:
        return f"history is {have.history}, the artifact's is {want.history}"
    return f"context columns are {list(have.context)}, the artifact's are {list(want.context)}"


def partition_columns(frame, columns: Iterable[str], item_key: str, user_key: str) -> tuple[list[str], list[str], list[str]]:
    """(item columns, user columns, context columns) of ``columns`` by what each is constant within.

    A column that never varies within one item's rows of ``frame`` belongs to the item; else one
    that never varies within a user's rows belongs to the user; else it is context (sent per request).
    The keys themselves belong to their own entity.
    """
    columns = list(columns)
    for key in (item_key, user_key):
        if key not in frame.columns:
            raise StoreError(f"column {key!r} is not in the data (columns: {sorted(frame.columns)})")
    item_varies = frame.groupby(item_key, sort=False).nunique(dropna=False).max()
    user_varies = frame.groupby(user_key, sort=False).nunique(dropna=False).max()
    item, user, context = [item_key], [user_key], []
    for c in columns:
        if c in (item_key, user_key):
            continue
        if item_varies.get(c, 2) <= 1:
            item.append(c)
        elif user_varies.get(c, 2) <= 1:
            user.append(c)
        else:
            context.append(c)
    return item, user, context
