"""The HTTP ranking service (FastAPI): ``create_app(engine, limits)``; ``xdeepfm serve`` runs it under uvicorn.

Endpoints (JSON in, JSON out):

- ``GET /healthz`` -> ``{"status": "ok"}``: liveness. Answered on the event loop, which never
  parses, encodes or scores, so it takes milliseconds however busy the scoring threads are.
- ``GET /readyz`` -> ``{"status": "ready", "scoring": {...}, "encoding": {...}}`` (200) once the
  artifact is loaded (before the server listens) *and* every text encoder is loaded and has run
  once (the warm-up, started with the server); before that, or if the warm-up failed, a 503 error
  (``Retry-After``). Route traffic only to ready instances; requests sent earlier wait for the
  encoder like any other request.
- ``GET /v1/model`` -> the artifact's manifest (format, versions, training metrics, checksums), its
  inputs (name, kind, column), the item field and the service's limits.
- ``POST /v1/rank`` ``{"user": {...}, "candidates": [{...}, ...], "top_k": 10, "unknown": "oov"}`` ->
  ``{"items": [{"index": i, "id": ..., "score": p}, ...], "n_candidates": N, "unknown": {field: [values]}}``,
  sorted by score; ``user`` holds the columns shared by all candidates (user and context fields),
  each candidate the rest; ``id`` is the candidate's item field (model.json ``item_field``).
- ``"explain": true`` on either form of ``/v1/rank`` (opt-in: it costs a Shapley pass per item, see
  docs/performance.md) adds to every returned item ``"explanation": {"logit", "baseline_logit",
  "attributions": [{"group", "value", "linear"}, ...]}`` (sorted by |value|; baseline_logit + the sum of
  the values == logit) and to the response ``"explanation": {"method", "baseline", "groups"}``
  (``xdeepfm.explain.attribute``: the exact linear part plus Shapley values of the CIN + DNN part over
  the model's fields, one group per field, so a vector field such as ``video_sentiment`` is one group).
  At most ``max_explained`` items per request (422 naming ``explain`` beyond: lower ``top_k``).
- ``GET /v1/items/{id}`` -> ``{"id", "columns", "vectors", "explanation"}``: a stored item, with the
  explanation of its video's sentiment kept beside it (``mmapp`` computes it when it builds the store or
  ingests the video; null when none); ``GET /v1/items?limit=N`` / ``GET /v1/users?limit=N`` ->
  ``{"ids": [...], "total": n}`` (the first N ids in id order, N at most ``max_candidates``).
- ``GET /`` -> the web page (``xdeepfm/web/``, served from ``/ui/``; no CDN) and ``GET /docs`` -> Swagger UI
  served from the package's own copy of its files (``fastapi-offline``), so both work offline.
- ``POST /v1/rank`` by id (a service started with ``--store``): ``{"user_id": "u7", "candidate_ids": ["v1", ...],
  "context": {...}, "top_k": 10, "unknown": "oov"}`` -> ``{"items": [{"id": ..., "score": p}, ...], "n_candidates": N,
  "unknown": {...}, "unknown_ids": {"user_id": [...], "candidate_ids": [...]}}``: the user's and the items'
  columns and vectors come from the item/user store (``xdeepfm.store``, ``xdeepfm.catalog``); ``context``
  holds the columns that are neither (device, time, ...). Ids the store lacks are listed in
  ``unknown_ids`` (an unknown user is ranked for as a new user, unknown items are left out), or
  refused with ``"unknown": "error"`` (422 naming ``candidate_ids[i]``).
- ``POST /v1/items`` ``{"items": [{"columns": {...}, "vectors": {...}, "video": "<base64 mp4>", "transcript": "..."}]}``
  -> ``{"items": [{"id": ..., "semantics": {...} or null}], "generation": g, "n_items": N}``: upserts
  items into the store, all of them in one transaction (one bad item: 422 and nothing written), visible to
  the next ranking request in every server process. A title's sentence vector is computed here; the
  other vectors (video semantics) are given, or computed from ``video`` when the service was started
  with an ingestor (``mmfusion serve --sentiment``: extraction and the sentiment model, ``mmapp.ingest``).
  It runs on its own *ingestion* thread (``ingest_queue`` may wait, ``ingest_timeout_s``), bodies up
  to ``max_item_body_bytes``.
- ``POST /v1/recommend`` ``{"user_id": "u7", "k": 10, "exclude_seen": true, "context": {...}}`` (a service
  started with ``--store`` and a recommender, ``--recommender``) -> ``{"items": [{"id": ..., "score": p,
  "channel": "two_tower"}, ...], "n_candidates": N, "n_seen": m, "history": [...]}``: recall over the whole
  catalogue (popularity, ItemCF, the two-tower model's FAISS index), merged to ``n`` candidates with
  per-channel quotas, ranked by the ranker with the store's features (``xdeepfm.recommend``); the items
  the user has met in the event log are left out (``exclude_seen``). ``"explain": true`` as on ``/v1/rank``.
- ``POST /v1/events`` ``{"events": [{"user_id": "u7", "item_id": "v1", "label": 1, "time": 1733000000}, ...]}``
  -> ``{"logged": n, "new_users": m, "n_events": N}``: appends interactions to the store's event log in one
  transaction (a writable service, like ``/v1/items``). A model with a behaviour history reads the user's last
  positive items from that log, so the next ranking request already sees them; a user the store did not hold
  is added (as a new user) in the same write.
- ``POST /v1/score`` ``{"rows": [{...}, ...], "unknown": "oov"}`` -> ``{"scores": [p, ...], "unknown": {...}}``.

How a POST runs (``Limits`` holds every bound):

1. the body is read on the event loop; all of it must arrive within ``body_timeout_s`` of the
   request's start (else 408, and the connection is closed) and be at most ``max_body_bytes``;
2. it is parsed (strict UTF-8 JSON: no NaN/Infinity, integer literals of at most
   ``MAX_INT_DIGITS`` digits, finite numbers, no lone UTF-16 surrogates), validated (strict types:
   a boolean is not an integer) and scored on the *scoring* pool: ``workers`` threads, and at most
   ``queue`` more requests waiting for one; a request beyond that gets 503 with ``Retry-After``;
3. texts in no cache (new titles) are not encoded on the scoring pool: the request moves to the
   *encoding* thread (one; ``encode_queue`` more may wait, else 503), which encodes them into the
   text LRU, then comes back to the scoring pool. A request with 1000 new titles thus holds the
   BERT encoder for seconds, but the scoring thread only for the milliseconds of its lookups;
4. from the end of its body, a request has ``request_timeout_s``: queued past it, it never runs;
   running, it stops at the next field, text batch or model batch. The answer is then 504.

Errors are ``{"error": {"status": code, "field": JSON path or null, "message": "..."}}``:

| status | when |
|---|---|
| 400 | the body is not UTF-8, not JSON, or nested deeper than the parser allows |
| 408 | the body did not arrive within ``body_timeout_s`` |
| 413 | the body is larger than ``max_body_bytes`` |
| 415 | a POST without ``Content-Type: application/json`` |
| 422 | a missing, unknown or mistyped field (``candidates[3].price: expected a number, got str 'x'``), a value JSON parsers disagree on (NaN, Infinity, an out-of-range number, an integer literal of over ``MAX_INT_DIGITS`` digits, a lone surrogate), too many candidates or rows, ``top_k`` < 1 or not an integer, or an unknown category with ``"unknown": "error"`` |
| 403 | ``POST /v1/items`` on a read-only service (started without ``--ingest`` / ``--sentiment``) |
| 404 / 405 | no such path / method |
| 503 | the scoring or encoding queue is full (``Retry-After``), or ``/readyz`` before the warm-up |
| 504 | the request did not finish within ``request_timeout_s`` |
| 500 | a fault of the server (logged with its traceback; the body names only the exception type) |

Unknown categories with the default ``"unknown": "oov"`` are scored with the out-of-vocabulary
bucket and listed in the response's ``unknown``. Every request is logged on the ``xdeepfm.access``
logger as one JSON object: method, path, status, latency in ms, request bytes, rows scored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from xdeepfm.catalog import Ingestor, item_record, rank_by_id, record_events
from xdeepfm.explain import attribute
from xdeepfm.recommend import Recommender, recommend
from xdeepfm.serving import Deadline, RecordError, ScoringEngine, TextsMissing
from xdeepfm.store import Event, FeatureStore, StoreError

log = logging.getLogger(__name__)
access_log = logging.getLogger("xdeepfm.access")

WEB_DIR = Path(__file__).with_name("web")  # the page (index.html, app.js, style.css): package data
MAX_INT_DIGITS = 100  # longer integer literals are refused (Python's own limit, 4300, raises deep inside parsing)
MAX_MESSAGE_CHARS = 2000  # error messages are cut here (they may quote a client's value)
RETRY_AFTER_S = 1
GRACE_S = 1.0  # a thread stuck past the deadline gets this long before the client gets its 504 anyway
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Limits:
    """The bounds of the service (``xdeepfm serve`` options; ``GET /v1/model`` lists them)."""

    max_candidates: int = 1000  # candidates per /v1/rank, rows per /v1/score
    max_body_bytes: int = 2_000_000
    workers: int = 1  # scoring threads
    queue: int = 16  # requests that may wait for a scoring thread (beyond those running)
    encode_queue: int = 4  # requests that may wait for the text-encoding thread (beyond the one running)
    request_timeout_s: float = 30.0  # from the end of the body to the answer
    body_timeout_s: float = 10.0  # from the request's head to the end of its body (408)
    header_timeout_s: float = 10.0  # from connecting (or the previous response) to a complete request head
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 100  # open connections / requests in progress (uvicorn limit_concurrency)
    text_lru: int = 10_000  # request-time text vectors kept in memory, per text field
    max_item_body_bytes: int = 64_000_000  # POST /v1/items (videos travel base64-encoded in the JSON body)
    max_items: int = 100  # items per POST /v1/items
    ingest_queue: int = 4  # /v1/items requests that may wait for the ingestion thread (beyond the one running)
    ingest_timeout_s: float = 300.0  # from the end of a /v1/items body to its answer (extraction takes seconds)
    max_explained: int = 50  # items explained per /v1/rank with "explain": true (a Shapley pass each)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 0 if f.name in ("queue", "encode_queue", "ingest_queue", "text_lru") else 1
            if f.name.endswith("_s"):
                if not value > 0:
                    raise ValueError(f"{f.name} {value!r}: expected a number of seconds > 0")
            elif type(value) is not int or value < least:
                raise ValueError(f"{f.name} {value!r}: expected an integer >= {least}")


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: dict[str, Any] = Field(default_factory=dict, description="columns shared by all candidates")
    candidates: list[dict[str, Any]] = Field(min_length=1)
    top_k: int | None = Field(default=None, ge=1, strict=True, description="return the best top_k (default: all)")
    unknown: Literal["oov", "error"] = "oov"
    explain: bool = Field(default=False, strict=True, description="add per-field attributions of each returned item's logit")


class RankByIdRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(description="a user of the store (an unknown one is ranked for as a new user)")
    candidate_ids: list[str] = Field(min_length=1, description="item ids of the store")
    context: dict[str, Any] = Field(default_factory=dict, description="per-request columns (device, time, ...)")
    top_k: int | None = Field(default=None, ge=1, strict=True, description="return the best top_k (default: all)")
    unknown: Literal["oov", "error"] = "oov"
    explain: bool = Field(default=False, strict=True, description="add per-field attributions of each returned item's logit")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, description="a user of the store (an unknown one is recommended for as a new user)")
    k: int = Field(default=10, ge=1, strict=True, description="how many items to return")
    exclude_seen: bool = Field(default=True, strict=True, description="leave out the items the user has an event with")
    context: dict[str, Any] = Field(default_factory=dict, description="per-request columns (device, time, ...)")
    explain: bool = Field(default=False, strict=True, description="add per-field attributions of each returned item's logit")


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    columns: dict[str, Any] = Field(description="the item's input columns (its id, title, category, price, ...)")
    vectors: dict[str, list[float]] = Field(default_factory=dict, description="precomputed vectors by field name "
                                                                             "(e.g. video semantics)")
    video: str | None = Field(default=None, description="the product video file, base64-encoded (needs a service "
                                                        "started with ingestion: `mmfusion serve --sentiment ...`)")
    transcript: str = Field(default="", description="the spoken words of the video, when known")


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(min_length=1)


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    label: float = Field(description="e.g. 1 = click / like, 0 = shown and skipped")
    time: float = Field(description="when it happened, seconds since the epoch")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Any]] = Field(min_length=1)
    unknown: Literal["oov", "error"] = "oov"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class BodyError(Exception):
    """The client's body is refused: ``status`` (400/422), ``field`` (JSON path or None), message."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status, self.message, self.field = status, message, field
        super().__init__(message)


class Busy(Exception):
    """A pool's queue is full."""

    def __init__(self, lane: str, capacity: int) -> None:
        self.lane, self.capacity = lane, capacity
        super().__init__(f"the server is busy: {capacity} requests are already running or waiting for the {lane} "
                         f"thread(s); retry in {RETRY_AFTER_S} s")


def _printable(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Text that encodes as UTF-8 (lone surrogates written as ``\\udXXX``), cut to ``limit`` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def error_response(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    field = None if field is None else _printable(field, 500)
    return JSONResponse({"error": {"status": status, "field": field, "message": _printable(message)}},
                        status_code=status, headers=headers)


def _json_path(loc: tuple) -> str:
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _validation_error(errors: list[dict]) -> BodyError:
    first = errors[0]
    path = _json_path(tuple(first.get("loc", ())))
    message = f"{path}: field required" if first.get("type") == "missing" else f"{path}: {first.get('msg')}"
    return BodyError(422, message, path)


# --------------------------------------------------------------------------------------------
# Parsing: strict JSON, every refusal naming the value's path
# --------------------------------------------------------------------------------------------


class _Refused:
    """A parsed value the service refuses (what replaces it until ``_locate`` names its path)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _locate(value: Any) -> tuple[str, str] | None:
    """(path, message) of the first refused value or lone surrogate, in document order (iterative: any depth)."""
    stack = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _Refused):
            return path or "body", item.message
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return path or "body", "a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair) is not text"
        elif isinstance(item, dict):
            for key in item:
                if _LONE_SURROGATE.search(key):
                    return _join(path, key), "a lone UTF-16 surrogate escape in a field name is not text"
            stack.extend((v, _join(path, k)) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def parse_json(raw: bytes) -> Any:
    """The JSON value of ``raw``, or ``BodyError``: 400 for bytes that are not UTF-8 JSON, 422 naming the path of
    NaN/Infinity, an out-of-range number, an integer literal over ``MAX_INT_DIGITS`` digits or a lone surrogate."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, f"the body is not UTF-8 (byte {exc.start}: {exc.reason})") from None
    refused: list[_Refused] = []

    def refuse(message: str) -> _Refused:
        refused.append(_Refused(message))
        return refused[-1]

    def parse_int(literal: str) -> int | _Refused:
        digits = len(literal) - literal.startswith("-")
        if digits > MAX_INT_DIGITS:
            return refuse(f"an integer literal of {digits} digits; at most {MAX_INT_DIGITS} are accepted")
        return int(literal)

    def parse_float(literal: str) -> float | _Refused:
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            return refuse(f"the number {literal[:40]} is out of range (beyond float64)")
        return value

    def parse_constant(name: str) -> _Refused:
        return refuse(f"{name} is not valid JSON (use a finite number or null)")

    try:
        value = json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except json.JSONDecodeError as exc:
        raise BodyError(400, f"malformed JSON body: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise BodyError(400, "malformed JSON body: nested deeper than the parser allows") from None
    if refused or _SURROGATE_ESCAPE.search(raw):
        found = _locate(value)
        if found is not None:
            path, message = found
            raise BodyError(422, f"{path}: {message}", path)
    return value


def render(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Worker pools
# --------------------------------------------------------------------------------------------


def _retrieve(future) -> None:
    if not future.cancelled():
        future.exception()  # an abandoned (timed-out) job's error is not "never retrieved"


class Lane:
    """``workers`` threads and room for ``queue`` more jobs; ``run`` raises ``Busy`` beyond that, ``Deadline`` past the deadline.

    A job's slot is freed when the job itself ends (not when its caller gives up), so the bound
    holds for the work, not just for the answers.
    """

    def __init__(self, name: str, workers: int, queue: int) -> None:
        self.name, self.workers, self.capacity = name, workers, workers + queue
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"xdeepfm-{name}")
        self._lock = threading.Lock()
        self.active = 0  # running + waiting

    def stats(self) -> dict[str, int]:
        return {"workers": self.workers, "queue": self.capacity - self.workers, "in_flight": self.active}

    async def run(self, fn: Callable[[], Any], deadline: float) -> Any:
        with self._lock:
            if self.active >= self.capacity:
                raise Busy(self.name, self.capacity)
            self.active += 1

        def job() -> Any:
            try:
                if time.monotonic() > deadline:
                    raise Deadline(f"the request waited for a {self.name} thread past its time limit")
                return fn()
            except TimeoutError as exc:
                raise exc if isinstance(exc, Deadline) else Deadline(str(exc)) from None
            finally:
                with self._lock:
                    self.active -= 1

        try:
            future = asyncio.get_running_loop().run_in_executor(self.pool, job)
        except RuntimeError:  # the pool is shut down
            with self._lock:
                self.active -= 1
            raise Busy(self.name, self.capacity) from None
        future.add_done_callback(_retrieve)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()) + GRACE_S)
        except Deadline:
            raise
        except asyncio.TimeoutError:
            raise Deadline(f"no answer from the {self.name} thread within the request's time limit") from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Job:
    """One POST: parse + validate + score on the scoring pool; ``second`` after its texts were encoded elsewhere."""

    def __init__(self, service: "_Service", kind: str, raw: bytes, state, deadline: float) -> None:
        self.service, self.kind, self.raw, self.state, self.deadline = service, kind, raw, state, deadline
        self.body: RankRequest | RankByIdRequest | RecommendRequest | ScoreRequest | None = None

    def _validate(self, value: Any) -> None:
        if self.kind == "rank":
            model = RankByIdRequest if isinstance(value, dict) and "candidate_ids" in value else RankRequest
        elif self.kind == "recommend":
            model = RecommendRequest
        else:
            model = ScoreRequest
        self.body = validated(model, value)

    def first(self) -> bytes:
        value = parse_json(self.raw)
        self.raw = b""
        self._validate(value)
        if isinstance(self.body, RecommendRequest):
            return self._recommend()
        name = {RankRequest: "candidates", RankByIdRequest: "candidate_ids", ScoreRequest: "rows"}[type(self.body)]
        n = len(getattr(self.body, name))
        self.state.rows = n
        limit = self.service.limits.max_candidates
        if n > limit:
            raise RecordError(name, f"{n} {name} given; at most {limit} per request")
        if getattr(self.body, "explain", False):
            returned = min(self.body.top_k or n, n)
            cap = self.service.limits.max_explained
            if returned > cap:
                raise RecordError("explain", f"{returned} items to explain; at most {cap} per request (send top_k <= {cap})")
        if isinstance(self.body, RankByIdRequest) and self.service.store is None:
            raise RecordError("candidate_ids", "this service has no item/user store, so it ranks only full feature rows "
                                               "(`candidates`); start it with --store")
        return self._run(defer_texts=True)

    def second(self) -> bytes:
        if isinstance(self.body, RecommendRequest):
            return self._recommend()
        return self._run(defer_texts=False)

    def _recommend(self) -> bytes:
        body, service = self.body, self.service
        if service.store is None or service.recommender is None:
            raise RecordError("user_id", "this service has no recommender: start it with --store and --recommender "
                                         "(the directory `mmfusion recommender` writes)")
        if body.explain and body.k > service.limits.max_explained:
            raise RecordError("explain", f"{body.k} items to explain; at most {service.limits.max_explained} per request "
                                         f"(send k <= {service.limits.max_explained})")
        if body.k > service.limits.max_candidates:
            raise RecordError("k", f"k={body.k}; at most {service.limits.max_candidates} per request")
        result = recommend(service.engine, service.store, service.recommender, body.user_id, body.k, body.exclude_seen,
                           body.context, deadline=self.deadline)
        self.state.rows = result.n_candidates
        items = [{"id": i, "score": s, "channel": c} for i, s, c in zip(result.ids, result.scores, result.channels)]
        payload = {"items": items, "n_candidates": result.n_candidates, "n_seen": result.n_seen, "history": result.history}
        if body.explain and items:
            payload["explanation"] = explain_items(service.engine, result.inputs, items, self.deadline)
        return render(payload)

    def _run(self, defer_texts: bool) -> bytes:
        engine, body = self.service.engine, self.body
        if isinstance(body, ScoreRequest):
            result = engine.score(body.rows, body.unknown, deadline=self.deadline, defer_texts=defer_texts)
            return render({"scores": result.scores.tolist(), "unknown": result.unknown})
        if isinstance(body, RankByIdRequest):
            ranked = rank_by_id(engine, self.service.store, body.user_id, body.candidate_ids, body.top_k, body.context,
                                body.unknown, deadline=self.deadline, defer_texts=defer_texts)
            items = [{"id": item, "score": score} for item, score in zip(ranked.ids, ranked.scores.tolist())]
            payload = {"items": items, "n_candidates": ranked.n_candidates, "unknown": ranked.unknown,
                       "unknown_ids": ranked.unknown_ids}
            if body.explain:
                payload["explanation"] = explain_items(engine, ranked.inputs, items, self.deadline)
            return render(payload)
        ranking = engine.rank(body.user, body.candidates, body.top_k, body.unknown, deadline=self.deadline,
                              defer_texts=defer_texts)
        order = ranking.order.tolist()
        ids = [body.candidates[i].get(engine.item_field) for i in order] if engine.item_field else [None] * len(order)
        items = [{"index": i, "id": item, "score": s} for i, item, s in zip(order, ids, ranking.scores.tolist())]
        payload = {"items": items, "n_candidates": len(body.candidates), "unknown": ranking.unknown}
        if body.explain:
            rows = [{**body.user, **body.candidates[i]} for i in order]  # the ranked rows, encoded again (texts cached)
            columns = {c: engine.column(c, [r.get(c) for r in rows], "candidates") for c in engine.columns}
            X, _ = engine.encode(columns, len(rows), body.unknown, deadline=self.deadline)
            payload["explanation"] = explain_items(engine, X, items, self.deadline)
        return render(payload)


EXPLAIN_CHUNK = 16  # rows per attribution pass (the deadline is checked between passes)
BASELINE = "oov: categories at the out-of-vocabulary bucket, numbers at the training mean, texts and vectors zero"


def explanation_groups(engine: ScoringEngine) -> dict[str, list[str]]:
    """One group per model field, named for a person (``video_sentiment`` -> "video sentiment")."""
    return {name.replace("_", " "): [name] for name in engine.model.feature_index}


def explain_items(engine: ScoringEngine, X: np.ndarray, items: list[dict], deadline: float) -> dict:
    """Adds ``"explanation"`` to each of ``items`` (in the order of the rows of ``X``) and returns the response's
    ``explanation`` header: ``xdeepfm.explain.attribute`` on the engine's model, ``EXPLAIN_CHUNK`` rows a pass."""
    groups = explanation_groups(engine)
    method = "exact"
    for start in range(0, len(items), EXPLAIN_CHUNK):
        if time.monotonic() > deadline:
            raise Deadline(f"explaining stopped after {start} of {len(items)} items")
        result = attribute(engine.model, X[start:start + EXPLAIN_CHUNK], groups)
        method = result.method
        for k, item in enumerate(items[start:start + EXPLAIN_CHUNK]):
            order = np.argsort(-np.abs(result.values[k]), kind="stable")
            item["explanation"] = {
                "logit": float(result.logit[k]), "baseline_logit": result.baseline_logit,
                "attributions": [{"group": result.groups[j], "value": float(result.values[k, j]),
                                  "linear": float(result.linear[k, j])} for j in order],
            }
    return {"method": f"Shapley values over fields, {method}; linear part exact", "baseline": BASELINE, "groups": groups}


def validated(model: type[BaseModel], value: Any) -> Any:
    """``value`` (parsed JSON) as a ``model`` request, or a 422 ``BodyError`` naming the first bad field."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise _validation_error(exc.errors(include_input=False, include_url=False)) from None


def ingest_items(service: "_Service", raw: bytes, state, deadline: float) -> bytes:
    """POST /v1/items: every item checked (and its video turned into semantics), then all upserted in one transaction."""
    body = validated(ItemsRequest, parse_json(raw))
    state.rows = len(body.items)
    if len(body.items) > service.limits.max_items:
        raise RecordError("items", f"{len(body.items)} items given; at most {service.limits.max_items} per request")
    if service.store is None:
        raise RecordError("items", "this service has no item store; start it with --store")
    records, described = [], []
    for i, item in enumerate(body.items):
        where = f"items[{i}]"
        vectors: dict[str, Any] = dict(item.vectors)
        semantics = None
        if item.video is not None:
            if service.ingestor is None:
                raise RecordError(f"{where}.video", "this service does not ingest videos (start it with "
                                                    "`mmfusion serve --sentiment ARTIFACT`); send the item's vectors instead")
            try:
                video = base64.b64decode(item.video, validate=True)
            except (binascii.Error, ValueError):
                raise RecordError(f"{where}.video", "not valid base64") from None
            if time.monotonic() > deadline:
                raise Deadline(f"ingestion stopped before {where}")
            derived, semantics = service.ingestor(video, item.columns, item.transcript, where)
            both = sorted(set(derived) & set(vectors))
            if both:
                raise RecordError(f"{where}.vectors.{both[0]}", "given, but it also comes from the video; send one of them")
            vectors.update(derived)
        explanation = None
        if semantics is not None and "explanation" in semantics:
            semantics = dict(semantics)
            explanation = semantics.pop("explanation")
            semantics["explained"] = explanation is not None
        records.append(item_record(service.engine, service.store.layout, item.columns, vectors, where, explanation))
        described.append(semantics)
    try:
        generation = service.store.put("item", records)
    except StoreError as exc:
        raise RecordError("items", str(exc)) from None
    items = [{"id": r.id, "semantics": d} for r, d in zip(records, described)]
    log.info("upserted %d item(s) into %s (generation %d)", len(records), service.store.path, generation)
    return render({"items": items, "generation": generation, "n_items": service.store.count("item")})


def log_events(service: "_Service", raw: bytes, state) -> bytes:
    """POST /v1/events: every event checked, then all appended (and new users added) in one transaction."""
    body = validated(EventsRequest, parse_json(raw))
    state.rows = len(body.events)
    if len(body.events) > service.limits.max_candidates:
        raise RecordError("events", f"{len(body.events)} events given; at most {service.limits.max_candidates} per request")
    if service.store is None:
        raise RecordError("events", "this service has no item/user store to log events in; start it with --store")
    users_before = service.store.count("user")
    try:
        logged = record_events(service.engine, service.store, [Event(e.user_id, e.item_id, e.label, e.time) for e in body.events])
    except StoreError as exc:
        message = str(exc)
        field = message.split(":", 1)[0] if message.startswith("events[") else "events"
        raise RecordError(field, message.split(": ", 1)[-1] if field != "events" else message) from None
    return render({"logged": logged, "new_users": service.store.count("user") - users_before,
                   "n_events": service.store.count_events()})


@dataclass
class _Service:
    engine: ScoringEngine
    limits: Limits
    store: FeatureStore | None = None
    ingestor: Ingestor | None = None
    writable: bool = False
    recommender: Recommender | None = None


# --------------------------------------------------------------------------------------------
# ASGI guard: body limits, the access log, the catch-all
# --------------------------------------------------------------------------------------------


class GuardMiddleware:
    """Pure ASGI: refuses oversized, late and non-JSON bodies, turns any unhandled exception into a
    logged 500 JSON error, and writes the access log line; POSTs to a path of ``direct`` go to its
    endpoint instead of the application."""

    def __init__(self, app, max_body_bytes: int, body_timeout_s: float | None = None,
                 path_limits: dict[str, int] | None = None, direct: dict[str, Callable] | None = None) -> None:
        self.app, self.max_body_bytes, self.body_timeout_s = app, max_body_bytes, body_timeout_s
        self.path_limits = dict(path_limits or {})
        self.direct = dict(direct or {})  # POST path -> an ASGI endpoint answering it instead of ``app``

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, received, body_done = time.perf_counter(), None, 0, False
        deadline = None if self.body_timeout_s is None else time.monotonic() + self.body_timeout_s
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        max_body = self.path_limits.get(scope["path"], self.max_body_bytes)

        async def send_logged(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_limited():
            nonlocal received, body_done
            if body_done or deadline is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise HTTPException(408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                                             f"({received} bytes received)", headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise HTTPException(413, f"request body over {max_body} bytes", headers={"Connection": "close"})
                body_done = not message.get("more_body", False)
            return message

        try:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_body:
                response = error_response(413, f"request body is {declared} bytes; at most {max_body} are accepted",
                                          headers={"Connection": "close"})
            elif scope["method"] == "POST" and headers.get("content-type", "").split(";")[0].strip() != "application/json":
                response = error_response(415, "Content-Type must be application/json")
            else:
                endpoint = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
                return await (endpoint or self.app)(scope, receive_limited, send_logged)
            await response(scope, receive, send_logged)
        except ClientDisconnect:
            status = status or 499  # the client went away mid-body: nobody to answer
        except Exception as exc:
            log.exception("%s %s failed", scope["method"], scope["path"])
            if status is None:
                await error_response(500, f"internal error ({type(exc).__name__}); see the server log")(scope, receive, send_logged)
        finally:
            access_log.info(json.dumps({
                "method": scope["method"], "path": scope["path"], "status": status or 500,
                "ms": round(1000 * (time.perf_counter() - started), 3), "request_bytes": received,
                "rows": scope.get("state", {}).get("rows"),
                "client": scope["client"][0] if scope.get("client") else None,
            }))


# --------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------


SCORING_POSTS = {"/v1/rank": "rank", "/v1/recommend": "recommend", "/v1/score": "score"}  # the hot path


def create_app(engine: ScoringEngine, limits: Limits | None = None, warm_up: bool = True,
               store: FeatureStore | None = None, ingestor: Ingestor | None = None, writable: bool = False,
               recommender: Recommender | None = None) -> FastAPI:
    """The FastAPI application around a loaded ``ScoringEngine``.

    ``warm_up``: load the text encoders at start-up (the app's lifespan) and report ready after;
    without it the app is ready at once. ``store``: the item/user store (``xdeepfm.store``) that
    ranking by id reads and ``POST /v1/items`` writes (without it, both are refused with the reason).
    ``ingestor``: turns uploaded videos into semantics (``xdeepfm.catalog.Ingestor``; the
    application layer's ``mmapp.ingest`` builds it from the sentiment model). ``writable``: accept
    ``POST /v1/items`` (a write to the store; without it the service is read-only and answers 403);
    an ingestor implies it. ``recommender``: the recall stage of ``POST /v1/recommend`` (``xdeepfm.recommend``).
    """
    limits = limits or Limits()
    scoring = Lane("scoring", limits.workers, limits.queue)
    encoding = Lane("encoding", 1, limits.encode_queue)
    ingesting = Lane("ingestion", 1, limits.ingest_queue)
    logging_events = Lane("events", 1, limits.queue)
    service = _Service(engine, limits, store, ingestor, writable or ingestor is not None, recommender)
    readiness: dict[str, Any] = {"ready": not warm_up, "error": None}

    def warm_and_freeze() -> None:
        engine.warm_up()
        gc.collect()
        gc.freeze()  # what start-up made (~500k objects: torch, transformers, the model) is never traversed again:
        # a full collection of them takes ~250 ms, and would stall the event loop (liveness) at random

    async def run_warm_up() -> None:
        started = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(encoding.pool, warm_and_freeze)
        except Exception as exc:
            readiness["error"] = f"{type(exc).__name__}: {exc}"
            log.exception("warm-up failed; /readyz reports not ready")
        else:
            readiness["ready"] = True
            log.info("warm-up done in %.2f s: ready", time.perf_counter() - started)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(run_warm_up()) if warm_up else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            scoring.close()
            encoding.close()
            ingesting.close()
            logging_events.close()

    # FastAPIOffline: /docs serves Swagger UI from the package's own copy of its files (FastAPI's loads from a CDN)
    app = FastAPIOffline(title="xdeepfm ranking service", version=engine.artifact.manifest.get("format", "?"),
                         lifespan=lifespan, redoc_url=None, favicon_url="/ui/favicon.svg")
    app.state.scoring, app.state.encoding, app.state.readiness = scoring, encoding, readiness
    artifact = engine.artifact
    model_info = {
        "artifact": str(artifact.directory),
        "manifest": artifact.manifest,
        "inputs": artifact.info.get("inputs"),
        "item_field": engine.item_field,
        "limits": asdict(limits),
        "store": None if store is None else {"path": str(getattr(store, "path", "")), "items": store.count("item"),
                                             "users": store.count("user"), "item_columns": list(store.layout.item.columns),
                                             "user_columns": list(store.layout.user.columns),
                                             "context_columns": list(store.layout.context)},
        "ingestion": {"items": service.writable, "videos": ingestor is not None},
        "recommender": None if recommender is None else {"channels": list(recommender.channels),
                                                         "merge": asdict(recommender.merge)},
    }
    retry = {"Retry-After": str(RETRY_AFTER_S)}

    def refusal(exc: Exception) -> JSONResponse | None:
        """The error response for a refused request (one mapping for the direct path and FastAPI's handlers)."""
        if isinstance(exc, RequestValidationError):
            error = _validation_error(exc.errors())
            return error_response(error.status, error.message, error.field)
        if isinstance(exc, BodyError):
            return error_response(exc.status, exc.message, exc.field)
        if isinstance(exc, RecordError):
            return error_response(422, str(exc), exc.path)
        if isinstance(exc, Busy):
            return error_response(503, str(exc), headers=retry)
        if isinstance(exc, TimeoutError):
            return error_response(504, f"the request did not finish within {limits.request_timeout_s:g} s and was stopped ({exc})")
        if isinstance(exc, HTTPException):
            return error_response(exc.status_code, str(exc.detail), headers=exc.headers)
        return None

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        return refusal(exc)

    for refused_type in (RequestValidationError, BodyError, RecordError, Busy, TimeoutError, HTTPException):
        app.add_exception_handler(refused_type, refused)

    async def handle(kind: str, raw: bytes, state) -> bytes:
        """A scoring POST's answer: parse, validate and score on the scoring lane (texts on the encoding lane)."""
        deadline = time.monotonic() + limits.request_timeout_s
        job = _Job(service, kind, raw, state, deadline)
        try:
            return await scoring.run(job.first, deadline)
        except TextsMissing as missing:
            pending = missing.pending
        await encoding.run(lambda: engine.encode_texts(pending, deadline), deadline)
        return await scoring.run(job.second, deadline)

    async def scoring_post(scope, receive, send) -> None:
        """``POST /v1/rank``, ``/v1/recommend``, ``/v1/score`` as a plain ASGI endpoint, called by the guard.

        These requests are the service's hot path: the same guard (body limits, access log, catch-all), lanes
        and error bodies as FastAPI's routes, without Starlette's exception middleware, routing, request objects
        and dependency machinery, a measurable share of a request's CPU next to a 1.5 ms forward pass
        (docs/performance.md, "Ranking by id"). FastAPI's routes for the same POSTs stay for the OpenAPI
        schema (``/docs``) and answer only if a request reaches them some other way.
        """
        chunks, more = [], True
        try:
            while more:  # the guard's receive: HTTPException 408/413 past its limits
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            state = State(scope.setdefault("state", {}))  # the guard's access log reads state["rows"]
            response = Response(await handle(SCORING_POSTS[scope["path"]], b"".join(chunks), state),
                                media_type="application/json")
        except Exception as exc:
            response = refusal(exc)
            if response is None:
                raise
        await response(scope, receive, send)

    app.add_middleware(GuardMiddleware, max_body_bytes=limits.max_body_bytes, body_timeout_s=limits.body_timeout_s,
                       path_limits={"/v1/items": limits.max_item_body_bytes},
                       direct={path: scoring_post for path in SCORING_POSTS})

    def body_schema(model: type[BaseModel]) -> dict:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if readiness["ready"]:
            return JSONResponse({"status": "ready", "pid": os.getpid(), "scoring": scoring.stats(),
                                 "encoding": encoding.stats(), "ingestion": ingesting.stats()})
        if readiness["error"]:
            return error_response(503, f"not ready: the warm-up failed ({readiness['error']})")
        return error_response(503, "not ready: warming up (loading the text encoders)", headers=retry)

    @app.get("/v1/model")
    async def model() -> dict:
        return model_info

    @app.post("/v1/rank", openapi_extra=body_schema(RankRequest))
    async def rank(request: Request) -> Response:  # answered by scoring_post (the guard's direct path)
        return Response(await handle("rank", await request.body(), request.state), media_type="application/json")

    @app.post("/v1/recommend", openapi_extra=body_schema(RecommendRequest))
    async def recommend_items(request: Request) -> Response:  # answered by scoring_post (the guard's direct path)
        return Response(await handle("recommend", await request.body(), request.state), media_type="application/json")

    async def write(request: Request, lane: Lane, timeout_s: float, job: Callable[[bytes, Any, float], bytes]) -> Response:
        """A POST that writes to the store: refused on a read-only service, else ``job`` on its own lane."""
        if not service.writable:
            return error_response(403, "this service is read-only: start it with --ingest (or --sentiment) to accept "
                                       f"POST {request.url.path}")
        raw = await request.body()
        deadline = time.monotonic() + timeout_s
        payload = await lane.run(lambda: job(raw, request.state, deadline), deadline)
        return Response(payload, media_type="application/json")

    @app.post("/v1/items", openapi_extra=body_schema(ItemsRequest))
    async def items(request: Request) -> Response:
        return await write(request, ingesting, limits.ingest_timeout_s,
                           lambda raw, state, deadline: ingest_items(service, raw, state, deadline))

    @app.post("/v1/events", openapi_extra=body_schema(EventsRequest))
    async def events(request: Request) -> Response:
        return await write(request, logging_events, limits.request_timeout_s,
                           lambda raw, state, deadline: log_events(service, raw, state))

    @app.post("/v1/score", openapi_extra=body_schema(ScoreRequest))
    async def score(request: Request) -> Response:  # answered by scoring_post (the guard's direct path)
        return Response(await handle("score", await request.body(), request.state), media_type="application/json")

    def listing(kind: str, limit: int) -> JSONResponse:
        if store is None:
            return error_response(404, f"this service has no item/user store, so no {kind}s to list; start it with --store")
        if not 1 <= limit <= limits.max_candidates:
            return error_response(422, f"limit {limit}: expected 1 to {limits.max_candidates}", "limit")
        return JSONResponse({"ids": store.ids(kind, limit), "total": store.count(kind)})

    @app.get("/v1/users")
    async def list_users(limit: int = 100) -> JSONResponse:
        return await asyncio.get_running_loop().run_in_executor(None, listing, "user", limit)

    @app.get("/v1/items")
    async def list_items(limit: int = 100) -> JSONResponse:
        return await asyncio.get_running_loop().run_in_executor(None, listing, "item", limit)

    def one_item(item_id: str) -> JSONResponse:
        if store is None:
            return error_response(404, "this service has no item store; start it with --store")
        record = store.get("item", [item_id]).get(item_id)
        if record is None:
            return error_response(404, f"unknown item {item_id!r} (not in the item store)", "id")
        return JSONResponse({"id": record.id, "columns": record.columns,
                             "vectors": {name: v.tolist() for name, v in record.vectors.items()},
                             "explanation": store.explanation(item_id)})

    @app.get("/v1/items/{item_id:path}")
    async def get_item(item_id: str) -> JSONResponse:
        return await asyncio.get_running_loop().run_in_executor(None, one_item, item_id)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=WEB_DIR, html=True), name="ui")
    return app
