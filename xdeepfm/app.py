"""The HTTP ranking service (FastAPI): ``create_app(engine, limits)``; ``xdeepfm serve`` runs it under uvicorn.

Endpoints (JSON in, JSON out):

- ``GET /healthz`` -> ``{"status": "ok"}`` once the artifact is loaded.
- ``GET /v1/model`` -> the artifact's manifest (format, versions, training metrics, checksums), its
  inputs (name, kind, column), the item field and the request limits.
- ``POST /v1/rank`` ``{"user": {...}, "candidates": [{...}, ...], "top_k": 10, "unknown": "oov"}`` ->
  ``{"items": [{"index": i, "id": ..., "score": p}, ...], "n_candidates": N, "unknown": {field: [values]}}``,
  sorted by score; ``user`` holds the columns shared by all candidates (user and context fields),
  each candidate the rest; ``id`` is the candidate's item field (model.json ``item_field``).
- ``POST /v1/score`` ``{"rows": [{...}, ...], "unknown": "oov"}`` -> ``{"scores": [p, ...], "unknown": {...}}``.

Errors are ``{"error": {"status": code, "field": JSON path or null, "message": "..."}}``:

| status | when |
|---|---|
| 400 | the body is not valid JSON |
| 413 | the body is larger than ``max_body_bytes`` |
| 415 | a POST without ``Content-Type: application/json`` |
| 422 | a missing, unknown or mistyped field (``candidates[3].price: expected a number, got str 'x'``), too many candidates or rows, ``top_k`` < 1, or an unknown category with ``"unknown": "error"`` |
| 404 / 405 | no such path / method |

Unknown categories with the default ``"unknown": "oov"`` are scored with the out-of-vocabulary
bucket and listed in the response's ``unknown``. Every request is logged on the ``xdeepfm.access``
logger as one JSON object: method, path, status, latency in ms, request bytes, rows scored.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from xdeepfm.serving import RecordError, ScoringEngine

log = logging.getLogger(__name__)
access_log = logging.getLogger("xdeepfm.access")


@dataclass
class Limits:
    """Per-request limits of the service."""

    max_candidates: int = 1000  # candidates per /v1/rank, rows per /v1/score
    max_body_bytes: int = 2_000_000


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: dict[str, Any] = Field(default_factory=dict, description="columns shared by all candidates")
    candidates: list[dict[str, Any]] = Field(min_length=1)
    top_k: int | None = Field(default=None, ge=1, description="return the best top_k (default: all)")
    unknown: Literal["oov", "error"] = "oov"


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Any]] = Field(min_length=1)
    unknown: Literal["oov", "error"] = "oov"


def error_response(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "field": field, "message": message}}, status_code=status)


def _json_path(loc: tuple) -> str:
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


class GuardMiddleware:
    """Pure ASGI: refuses oversized and non-JSON bodies, and writes the access log line."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, received = time.perf_counter(), 500, 0
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        async def send_logged(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, f"request body over {self.max_body_bytes} bytes")
            return message

        try:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                response = error_response(413, f"request body is {declared} bytes; at most {self.max_body_bytes} are accepted")
            elif scope["method"] == "POST" and headers.get("content-type", "").split(";")[0].strip() != "application/json":
                response = error_response(415, "Content-Type must be application/json")
            else:
                return await self.app(scope, receive_limited, send_logged)
            await response(scope, receive, send_logged)
        finally:
            access_log.info(json.dumps({
                "method": scope["method"], "path": scope["path"], "status": status,
                "ms": round(1000 * (time.perf_counter() - started), 3), "request_bytes": received,
                "rows": scope.get("state", {}).get("rows"),
                "client": scope["client"][0] if scope.get("client") else None,
            }))


def create_app(engine: ScoringEngine, limits: Limits | None = None) -> FastAPI:
    """The FastAPI application around a loaded ``ScoringEngine``."""
    limits = limits or Limits()
    app = FastAPI(title="xdeepfm ranking service", version=engine.artifact.manifest.get("format", "?"))
    app.add_middleware(GuardMiddleware, max_body_bytes=limits.max_body_bytes)
    artifact = engine.artifact
    model_info = {
        "artifact": str(artifact.directory),
        "manifest": artifact.manifest,
        "inputs": artifact.info.get("inputs"),
        "item_field": engine.item_field,
        "limits": asdict(limits),
    }

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0]
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "JSON decode error")
            return error_response(400, f"malformed JSON body: {detail} at character {first['loc'][-1]}")
        path = _json_path(tuple(first.get("loc", ())))
        message = f"{path}: {first.get('msg')}"
        if first.get("type") == "missing":
            message = f"{path}: field required"
        return error_response(422, message, path)

    @app.exception_handler(RecordError)
    async def bad_record(request: Request, exc: RecordError) -> JSONResponse:
        return error_response(422, str(exc), exc.path)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    def check_count(request: Request, name: str, n: int) -> None:
        request.state.rows = n
        if n > limits.max_candidates:
            raise RecordError(name, f"{n} {name} given; at most {limits.max_candidates} per request")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model() -> dict:
        return model_info

    @app.post("/v1/rank")
    async def rank(body: RankRequest, request: Request) -> JSONResponse:
        check_count(request, "candidates", len(body.candidates))
        ranking = engine.rank(body.user, body.candidates, body.top_k, body.unknown)
        ids = ([body.candidates[i].get(engine.item_field) for i in ranking.order.tolist()]
               if engine.item_field else [None] * len(ranking.order))
        items = [{"index": i, "id": item, "score": s}
                 for i, item, s in zip(ranking.order.tolist(), ids, ranking.scores.tolist())]
        return JSONResponse({"items": items, "n_candidates": len(body.candidates), "unknown": ranking.unknown})

    @app.post("/v1/score")
    async def score(body: ScoreRequest, request: Request) -> JSONResponse:
        check_count(request, "rows", len(body.rows))
        result = engine.score(body.rows, body.unknown)
        return JSONResponse({"scores": result.scores.tolist(), "unknown": result.unknown})

    return app
