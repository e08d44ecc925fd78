"""The HTTP service as a real process on a free loopback port: round trips, documented errors, limits, access log."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from tests.serving_factory import ITEM_COLUMNS, records, tiny_ranking
from xdeepfm.server import RankingServer
from xdeepfm.serving import ScoringEngine

MAX_CANDIDATES, MAX_BODY = 25, 20_000


@pytest.fixture(scope="module")
def tiny():
    return tiny_ranking()


@pytest.fixture(scope="module")
def engine(tiny) -> ScoringEngine:
    return ScoringEngine.load(tiny.artifact, text_cache_dir=tiny.text_cache)


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "serve.log"
    process = RankingServer(tiny.artifact, log_path=log, startup_timeout=90,
                            args=["--text-cache", str(tiny.text_cache), "--max-candidates", str(MAX_CANDIDATES),
                                  "--max-body-bytes", str(MAX_BODY), "--threads", "1"])
    try:
        yield process.start()
    finally:
        process.stop()
        assert process.process.poll() is not None  # the child is gone


@pytest.fixture
def still_serving(server, tiny):
    """After the test: the same server answers /healthz and scores a valid row."""
    yield
    assert server.health() == {"status": "ok"}
    assert len(server.score(records(tiny.frame.head(1)))["scores"]) == 1


def test_bound_to_loopback_and_healthy(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.health() == {"status": "ok"}


def test_started_means_ready_and_the_limits_are_served(server):
    ready = server.ready()  # RankingServer.start waited for this: artifact loaded, text encoder warmed up
    assert ready["status"] == "ready"
    assert ready["scoring"]["workers"] == 1 and ready["encoding"] == {"workers": 1, "queue": 4, "in_flight": 0}
    limits = server.model()["limits"]
    assert limits["workers"] == 1 and limits["queue"] == 16 and limits["request_timeout_s"] == 30.0
    assert limits["body_timeout_s"] == 10.0 and limits["text_lru"] == 10_000
    assert "warm-up done" in server.log_tail(100_000)


def test_score_round_trip_equals_the_engine(server, engine, tiny):
    rows = records(tiny.frame.head(20))
    body = server.score(rows)
    np.testing.assert_allclose(body["scores"], engine.score(rows).scores, rtol=0, atol=1e-6)
    assert body["unknown"] == {}


def test_rank_round_trip_equals_the_engine(server, engine, tiny):
    user = {"user_id": 11, "gender": "F", "age": 29.0}
    candidates = [{k: r[k] for k in ITEM_COLUMNS} for r in records(tiny.frame.drop_duplicates("item_id").head(20))]
    expected = engine.rank(user, candidates, top_k=5)
    body = server.rank(user, candidates, top_k=5)
    assert [item["index"] for item in body["items"]] == expected.order.tolist()
    assert [item["id"] for item in body["items"]] == [candidates[i]["item_id"] for i in expected.order]
    np.testing.assert_allclose([item["score"] for item in body["items"]], expected.scores, rtol=0, atol=1e-6)
    assert body["n_candidates"] == 20


def test_model_endpoint_serves_the_manifest(server, tiny):
    info = server.model()
    assert info["manifest"] == json.loads((tiny.artifact / "manifest.json").read_text())
    assert info["item_field"] == "item_id" and info["limits"]["max_candidates"] == MAX_CANDIDATES
    assert [i["name"] for i in info["inputs"]][:2] == ["user_id", "item_id"]


def _post(server, path, body=None, raw=None, content_type="application/json"):
    data = raw if raw is not None else json.dumps(body).encode()
    return server.request("POST", path, data=data, headers={"Content-Type": content_type})


def _rank_body(tiny, n=3, **changes):
    user = {"user_id": 11, "gender": "F", "age": 29.0}
    candidates = [{k: r[k] for k in ITEM_COLUMNS} for r in records(tiny.frame.head(n))]
    return {"user": user, "candidates": candidates, **changes}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case, status, field, message", [
    ("malformed json", 400, None, r"^malformed JSON body: Expecting .* at character \d+"),
    ("not json", 415, None, r"^Content-Type must be application/json"),
    ("missing candidates", 422, "candidates", r"^candidates: field required"),
    ("missing field", 422, "candidates[2].price", r"^candidates\[2\]\.price: missing"),
    ("wrong type", 422, "candidates[1].price", r"^candidates\[1\]\.price: expected a number, got str 'ten'"),
    ("wrong container", 422, "candidates", r"^candidates: Input should be a valid list"),
    ("bad top_k", 422, "top_k", r"^top_k: Input should be greater than or equal to 1"),
    ("unknown key", 422, "user_data", r"^user_data: Extra inputs are not permitted"),
    ("too many candidates", 422, "candidates", rf"^candidates: {MAX_CANDIDATES + 1} candidates given; at most {MAX_CANDIDATES}"),
    ("unknown category, strict", 422, "candidates[0].item_id", r"^candidates\[0\]\.item_id: unknown value\(s\) \['nope'\]"),
    ("too large", 413, None, rf"^request body is \d+ bytes; at most {MAX_BODY}"),
])
def test_bad_requests_get_the_documented_error(server, tiny, case, status, field, message):
    body = _rank_body(tiny)
    raw, content_type = None, "application/json"
    if case == "malformed json":
        raw = b'{"user": {"user_id": 1,}'
    elif case == "not json":
        content_type = "text/plain"
    elif case == "missing candidates":
        del body["candidates"]
    elif case == "missing field":
        del body["candidates"][2]["price"]
    elif case == "wrong type":
        body["candidates"][1]["price"] = "ten"
    elif case == "wrong container":
        body["candidates"] = {"item_id": "i1"}
    elif case == "bad top_k":
        body["top_k"] = 0
    elif case == "unknown key":
        body["user_data"] = {}
    elif case == "too many candidates":
        body = _rank_body(tiny, MAX_CANDIDATES + 1)
    elif case == "unknown category, strict":
        body["candidates"][0]["item_id"] = "nope"
        body["unknown"] = "error"
    elif case == "too large":
        body["user"]["padding"] = "x" * MAX_BODY
    response = _post(server, "/v1/rank", body, raw, content_type)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["field"] == field
    assert re.search(message, error["message"]), error["message"]


@pytest.mark.usefixtures("still_serving")
def test_unknown_categories_are_scored_and_reported(server, engine, tiny):
    body = _rank_body(tiny)
    body["candidates"][1]["item_id"] = "brand-new"
    body["candidates"][1]["genres"] = "Drama|Opera"
    response = _post(server, "/v1/rank", body)
    assert response.status_code == 200
    result = response.json()
    assert result["unknown"] == {"item_id": ["brand-new"], "genres": ["Opera"], "semantics": ["brand-new"]}
    assert any(item["id"] == "brand-new" for item in result["items"])
    expected = engine.rank(body["user"], body["candidates"])
    np.testing.assert_allclose([i["score"] for i in result["items"]], expected.scores, rtol=0, atol=1e-6)


@pytest.mark.usefixtures("still_serving")
def test_streamed_body_over_the_limit_is_refused(server):
    chunks = (b"x" * 5000 for _ in range(10))  # no Content-Length: chunked transfer
    response = server.request("POST", "/v1/score", data=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "over 20000 bytes" in response.json()["error"]["message"]


def _access_entries(server) -> list[dict]:
    return [json.loads(line.split("xdeepfm.access: ", 1)[1]) for line in server.log_path.read_text().splitlines()
            if "xdeepfm.access: " in line]


def test_access_log_is_structured_with_latency(server, tiny):
    server.score(records(tiny.frame.head(7)))
    deadline = time.monotonic() + 10  # the line is written right after the response is sent
    while not [e for e in _access_entries(server) if e["rows"] == 7] and time.monotonic() < deadline:
        time.sleep(0.05)
    entry = [e for e in _access_entries(server) if e["rows"] == 7][-1]
    assert entry["method"] == "POST" and entry["path"] == "/v1/score" and entry["status"] == 200
    assert entry["ms"] > 0 and entry["request_bytes"] > 0 and entry["client"] == "127.0.0.1"


def test_serve_refuses_a_tampered_artifact_naming_the_file(tiny, tmp_path):
    import shutil

    from xdeepfm.server import ServerError

    artifact = Path(shutil.copytree(tiny.artifact, tmp_path / "artifact"))
    data = bytearray((artifact / "weights.safetensors").read_bytes())
    data[-5] ^= 0x01
    (artifact / "weights.safetensors").write_bytes(bytes(data))
    server = RankingServer(artifact, args=["--text-cache", str(tiny.text_cache)], startup_timeout=60)
    with pytest.raises(ServerError, match=r"weights\.safetensors: sha256 .* does not match manifest\.json"):
        server.start()
    assert server.process.returncode == 2


def test_a_service_without_ingest_is_read_only(server):
    response = server.request("POST", "/v1/items", json={"items": [{"columns": {"item_id": "x"}}]})
    assert response.status_code == 403 and "read-only" in response.json()["error"]["message"]
    assert server.model()["ingestion"] == {"items": False, "videos": False} and server.model()["store"] is None
