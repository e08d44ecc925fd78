"""The service under hostile or heavy use: work off the event loop, bounded queues and time limits,
slow and silent clients, readiness, bounded text caches, strict request values, finite artifacts.

Most tests run uvicorn in this process (``tests.serving_factory.ThreadedServer``) so that they can
slow the text encoder down (``slow_down``) and look at the pools; ``test_mixed_load_*`` runs the
real ``xdeepfm serve`` process.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient

from mmcore.artifact import MANIFEST, ArtifactError, state_dict_bytes, write_artifact
from tests.serving_factory import ThreadedServer, rank_body, records, slow_down, tiny_ranking
from xdeepfm.app import Limits, create_app
from xdeepfm.export import load_artifact
from xdeepfm.serving import ScoringEngine

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def tiny():
    return tiny_ranking()


@pytest.fixture
def engine(tiny) -> ScoringEngine:
    """A fresh engine per test (its own text caches and LRU)."""
    return ScoringEngine.load(tiny.artifact, text_cache_dir=tiny.text_cache)


def _title_cache(engine):
    return engine._text["title"]


def _post(url: str, body, timeout: float = 30):
    return requests.post(url, data=json.dumps(body), headers=JSON, timeout=timeout)


def _wait(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _in_thread(fn):
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and isinstance(error["message"], str) and error["message"]
    return error


# --------------------------------------------------------------------------------------------
# 1. Nothing stalls the event loop; bounded queues, time limits
# --------------------------------------------------------------------------------------------


def test_healthz_and_small_requests_answer_while_new_titles_are_encoded(engine, tiny):
    """The fast variant of the load test: one 1000-candidate request with new titles in flight (its
    encoding slowed to ~3 s), /healthz in milliseconds and a small request well before it ends."""
    slow_down(_title_cache(engine), 0.4)  # 1000 new titles = 8 batches of 128
    with ThreadedServer(engine, Limits(max_candidates=1000)) as server:
        huge = rank_body(tiny.frame, 1000, new_titles=f"huge {uuid.uuid4()}")
        started = time.monotonic()
        thread, result = _in_thread(lambda: _post(f"{server.url}/v1/rank", huge))
        _wait(lambda: server.app.state.encoding.active == 1, what="the huge request to reach the encoder")
        liveness = []
        for _ in range(10):
            t0 = time.perf_counter()
            assert requests.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
            liveness.append(time.perf_counter() - t0)
            time.sleep(0.05)
        t0 = time.perf_counter()
        small = _post(f"{server.url}/v1/rank", rank_body(tiny.frame, 5))
        small_s = time.perf_counter() - t0
        assert small.status_code == 200 and len(small.json()["items"]) == 5
        assert thread.is_alive(), "the huge request ended before the measurements: slow it down more"
        thread.join(60)
        assert result["value"].status_code == 200, result["value"].text
        assert len(result["value"].json()["items"]) == 1000 and time.monotonic() - started > 2
    assert max(liveness) < 0.2, liveness  # liveness: < 200 ms each, while the encoder is busy
    assert small_s < 1.0, small_s  # a small request does not wait for the encoding
    expected = engine.rank(huge["user"], huge["candidates"])  # the vectors are now in the LRU
    got = result["value"].json()["items"]
    np.testing.assert_allclose([i["score"] for i in got], expected.scores, rtol=0, atol=1e-6)


def test_a_full_scoring_queue_answers_503_with_retry_after(engine, tiny, monkeypatch):
    original, gate = engine.score_matrix, threading.Event()

    def blocked(X, deadline=None):
        gate.wait(10)
        return original(X, deadline)

    with ThreadedServer(engine, Limits(workers=1, queue=1)) as server:
        monkeypatch.setattr(engine, "score_matrix", blocked)  # after the warm-up, which scores once
        body = rank_body(tiny.frame, 3)
        first, _ = _in_thread(lambda: _post(f"{server.url}/v1/rank", body))
        second, second_result = _in_thread(lambda: _post(f"{server.url}/v1/rank", body))
        _wait(lambda: server.app.state.scoring.active == 2, what="one running and one waiting request")
        refused = _post(f"{server.url}/v1/rank", body)
        error = _error(refused, 503)
        assert refused.headers["retry-after"] == "1" and "busy" in error["message"]
        assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200
        gate.set()
        second.join(10)
        assert second_result["value"].status_code == 200
        _wait(lambda: server.app.state.scoring.active == 0, what="the pool to drain")
        assert _post(f"{server.url}/v1/rank", body).status_code == 200


def test_a_full_encoding_queue_answers_503_and_known_titles_still_pass(engine, tiny):
    slow_down(_title_cache(engine), 0.5)
    with ThreadedServer(engine, Limits(encode_queue=0)) as server:
        first, first_result = _in_thread(lambda: _post(f"{server.url}/v1/rank", rank_body(tiny.frame, 300, new_titles="a")))
        _wait(lambda: server.app.state.encoding.active == 1, what="the encoder to be busy")
        error = _error(_post(f"{server.url}/v1/rank", rank_body(tiny.frame, 3, new_titles="b")), 503)
        assert "encoding" in error["message"]
        t0 = time.perf_counter()
        assert _post(f"{server.url}/v1/rank", rank_body(tiny.frame, 3)).status_code == 200  # no new text: no wait
        assert time.perf_counter() - t0 < 1.0
        first.join(30)
        assert first_result["value"].status_code == 200


def test_the_request_time_limit_answers_504_and_stops_the_work(engine, tiny):
    cache = _title_cache(engine)
    slow_down(cache, 0.3)
    with ThreadedServer(engine, Limits(request_timeout_s=0.5)) as server:
        calls = cache.encoder_calls
        t0 = time.perf_counter()
        response = _post(f"{server.url}/v1/rank", rank_body(tiny.frame, 1000, new_titles="late"))
        elapsed = time.perf_counter() - t0
        error = _error(response, 504)
        assert "did not finish within 0.5 s" in error["message"] and error["field"] is None
        assert elapsed < 0.5 + 1.5, elapsed
        _wait(lambda: server.app.state.encoding.active == 0, timeout=3, what="the encoder to stop")
        assert cache.encoder_calls - calls <= 3  # stopped at a batch boundary, not all 8 batches
        assert _post(f"{server.url}/v1/rank", rank_body(tiny.frame, 3)).status_code == 200


# --------------------------------------------------------------------------------------------
# Slow and silent clients
# --------------------------------------------------------------------------------------------


def _read_all(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``timeout`` passes (False)."""
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_a_body_trickled_past_the_body_timeout_gets_408_and_a_closed_connection(engine):
    with ThreadedServer(engine, Limits(body_timeout_s=0.5)) as server:
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=5) as sock:
            sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"user\": ")
            t0 = time.monotonic()
            data, closed = _read_all(sock, 5)
        assert closed and time.monotonic() - t0 < 3
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), data[:200]
        error = json.loads(body)["error"]
        assert error["status"] == 408 and "did not arrive within 0.5 s" in error["message"]
        assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200


@pytest.mark.parametrize("sent", [b"", b"POST /v1/rank HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half a head"])
def test_a_connection_without_a_complete_request_head_is_closed(engine, sent):
    with ThreadedServer(engine, Limits(header_timeout_s=0.5, keep_alive_s=30)) as server:
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=5) as sock:
            sock.sendall(sent)
            t0 = time.monotonic()
            data, closed = _read_all(sock, 5)
        assert closed and data == b"" and 0.3 < time.monotonic() - t0 < 3


def test_an_idle_keep_alive_connection_is_closed(engine):
    with ThreadedServer(engine, Limits(keep_alive_s=0.5)) as server:
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            data, closed = _read_all(sock, 5)
        assert data.startswith(b"HTTP/1.1 200") and closed and time.monotonic() - t0 < 3


# --------------------------------------------------------------------------------------------
# Readiness and warm-up
# --------------------------------------------------------------------------------------------


def test_readyz_is_503_until_the_warm_up_is_done(engine, monkeypatch):
    gate = threading.Event()
    original = engine.warm_up
    monkeypatch.setattr(engine, "warm_up", lambda: (gate.wait(10), original()))
    with TestClient(create_app(engine)) as client:  # the lifespan starts the warm-up
        response = client.get("/readyz")
        error = _error(response, 503)
        assert "warming up" in error["message"] and response.headers["retry-after"] == "1"
        assert client.get("/healthz").json() == {"status": "ok"}  # live, not ready
        gate.set()
        _wait(lambda: client.get("/readyz").status_code == 200, what="ready")
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["scoring"] == {"workers": 1, "queue": 16, "in_flight": 0}


def test_readyz_reports_a_failed_warm_up(engine, monkeypatch):
    def broken():
        raise OSError("model.safetensors: unreadable")

    monkeypatch.setattr(engine, "warm_up", broken)
    with TestClient(create_app(engine)) as client:
        _wait(lambda: "failed" in client.get("/readyz").text, what="the failure")
        error = _error(client.get("/readyz"), 503)
        assert "warm-up failed (OSError: model.safetensors: unreadable)" in error["message"]


def test_the_warm_up_loads_the_encoder_and_writes_nothing(engine, tiny):
    cache = _title_cache(engine)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tiny.text_cache.iterdir())
    assert cache._model is None
    with ThreadedServer(engine):  # returns once /readyz is 200
        assert cache._model is not None and cache.encoder_calls == 1
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tiny.text_cache.iterdir()) == before


# --------------------------------------------------------------------------------------------
# 2. Request-time texts: bounded LRU, never the disk cache
# --------------------------------------------------------------------------------------------


def test_request_texts_stay_in_a_bounded_lru_and_never_reach_the_disk(tiny):
    engine = ScoringEngine.load(tiny.artifact, text_cache_dir=tiny.text_cache, text_lru=8)
    cache = _title_cache(engine)
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tiny.text_cache.iterdir())
    client = TestClient(create_app(engine, warm_up=False))
    for round_ in range(5):
        response = client.post("/v1/rank", json=rank_body(tiny.frame, 6, new_titles=f"lru {round_}"))
        assert response.status_code == 200, response.text
        assert cache.lru_count <= 8
    assert cache.lru_count == 8 and not cache.persist
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tiny.text_cache.iterdir()) == before
    calls = cache.encoder_calls
    assert client.post("/v1/rank", json=rank_body(tiny.frame, 6, new_titles="lru 4")).status_code == 200
    assert cache.encoder_calls == calls  # the latest titles are still held
    assert client.post("/v1/rank", json=rank_body(tiny.frame, 6, new_titles="lru 0")).status_code == 200
    assert cache.encoder_calls == calls + 1  # the oldest were evicted


# --------------------------------------------------------------------------------------------
# 4. Client mistakes are 4xx with the field named; the server's own faults a logged 500
# --------------------------------------------------------------------------------------------


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine, warm_up=False), raise_server_exceptions=False)


SENTINEL = "@@literal@@"


def _set(*path):
    """A function putting SENTINEL at ``path`` of a rank body (a final ``"<key>"`` element: as a field name)."""
    def put(body):
        target = body
        for part in path[:-1]:
            target = target[part]
        if isinstance(path[-1], str) and path[-1].startswith("<"):
            target[SENTINEL] = 1
        else:
            target[path[-1]] = SENTINEL
    return put


CLIENT_MISTAKES = {  # case: (where the literal goes, the raw JSON literal, status, field, message)
    "huge int, numeric": (_set("user", "age"), "9" * 400, 422, "user.age", r"an integer literal of 400 digits; at most 100"),
    "huge int, categorical": (_set("user", "user_id"), "1" * 5000, 422, "user.user_id", r"integer literal of 5000 digits"),
    "huge negative int, top_k": (_set("top_k"), "-" + "7" * 4400, 422, "top_k", r"integer literal of 4400 digits"),
    "1e999": (_set("candidates", 1, "price"), "1e999", 422, "candidates[1].price", r"the number 1e999 is out of range"),
    "NaN": (_set("user", "age"), "NaN", 422, "user.age", r"NaN is not valid JSON"),
    "-Infinity": (_set("candidates", 0, "item_id"), "-Infinity", 422, "candidates[0].item_id", r"-Infinity is not valid JSON"),
    "lone surrogate, echoed id": (_set("candidates", 0, "item_id"), '"\\ud800x"', 422, "candidates[0].item_id",
                                  r"lone UTF-16 surrogate"),
    "lone surrogate, title": (_set("candidates", 1, "title"), '"bad \\udfff title"', 422, "candidates[1].title",
                              r"lone UTF-16 surrogate"),
    "lone surrogate, field name": (_set("user", "<key>"), '"\\udc80"', 422, "user.\\udc80",
                                   r"lone UTF-16 surrogate escape in a field name"),
    "top_k true": (_set("top_k"), "true", 422, "top_k", r"^top_k: Input should be a valid integer"),
    "top_k false": (_set("top_k"), "false", 422, "top_k", r"^top_k: Input should be a valid integer"),
    "top_k 2.0": (_set("top_k"), "2.0", 422, "top_k", r"^top_k: Input should be a valid integer"),
    "top_k a string": (_set("top_k"), '"3"', 422, "top_k", r"^top_k: Input should be a valid integer"),
    "price true": (_set("candidates", 0, "price"), "true", 422, "candidates[0].price", r"expected a number, got bool"),
    "price far out": (_set("candidates", 1, "price"), "-1.5e300", 422, "candidates[1].price",
                      r"-1\.5e\+300 is .* standard deviations from the training mean; at most 1e\+06"),
    "deep nesting": (_set("user", "age"), "[" * 100_000 + "]" * 100_000, 400, None,
                     r"^malformed JSON body: nested deeper than the parser allows"),
    "nesting in a value": (_set("user", "gender"), "[" * 500 + "]" * 500, 422, "user.gender",
                           r"expected a string or number, got list"),
    "unknown as a list": (_set("unknown"), '["oov"]', 422, "unknown", r"^unknown: Input should be 'oov' or 'error'"),
}


@pytest.mark.parametrize("case", CLIENT_MISTAKES)
def test_client_mistakes_are_4xx_naming_the_field(client, tiny, case):
    put, literal, status, field, message = CLIENT_MISTAKES[case]
    body = rank_body(tiny.frame, 2)
    put(body)
    raw = json.dumps(body).replace(json.dumps(SENTINEL), literal, 1).encode()
    response = client.post("/v1/rank", content=raw, headers=JSON)
    error = _error(response, status)
    assert error["field"] == field, error
    assert re.search(message, error["message"]), error["message"]


@pytest.mark.parametrize("raw, message", [
    (b'{"user": {"gender": "\xff"}, "candidates": [{}]}', r"^the body is not UTF-8 \(byte 21: invalid start byte\)"),
    (b"", r"^malformed JSON body: Expecting value at character 0"),
    (b"\xef\xbb\xbf{}", r"^malformed JSON body: Unexpected UTF-8 BOM"),
])
def test_bodies_that_are_not_utf8_json_get_400(client, raw, message):
    error = _error(client.post("/v1/score", content=raw, headers=JSON), 400)
    assert error["field"] is None and re.search(message, error["message"]), error["message"]


def test_a_top_level_array_gets_422(client):
    error = _error(client.post("/v1/score", content=b"[1, 2]", headers=JSON), 422)
    assert error["field"] == "body" and "valid dictionary" in error["message"]


@pytest.mark.parametrize("genres, token", [(True, "True"), (7, "7"), (2.5, "2.5"), ([1, "Opera"], "1")])
def test_a_scalar_in_a_multi_valued_field_is_one_token(client, tiny, genres, token):
    """Found by the fuzz tests: a non-string scalar with an unknown token crashed the unknown-value report (500)."""
    body = rank_body(tiny.frame, 2)
    body["candidates"][1]["genres"] = genres
    response = client.post("/v1/rank", json=body)
    assert response.status_code == 200, response.text
    assert token in response.json()["unknown"]["genres"]


def test_an_integer_beyond_float64_in_a_numeric_field_names_it(engine, tiny):
    from xdeepfm.serving import RecordError

    rows = records(tiny.frame.head(2))
    rows[1]["price"] = 10**400  # the HTTP parser refuses such literals; the engine checks on its own too
    with pytest.raises(RecordError, match=r"^rows\[1\]\.price: expected a finite number \(this integer is beyond float64\)"):
        engine.score(rows)


def test_long_multi_valued_strings_are_scored_without_the_memo(engine, tiny):
    rows = records(tiny.frame.head(2))
    rows[1]["genres"] = "Drama|" * 200 + "Action"
    scores = engine.score(rows).scores
    assert all(len(key) <= 256 for key in engine._memo["genres"].row)
    expected = engine.score([rows[0], {**rows[1], "genres": "Drama|Drama"}]).scores  # max_len 2: the same codes
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


def test_an_unexpected_exception_is_a_logged_500_without_details(client, engine, tiny, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(engine, "rank", broken)
    with caplog.at_level(logging.ERROR, logger="xdeepfm.app"):
        response = client.post("/v1/rank", json=rank_body(tiny.frame, 2))
    error = _error(response, 500)
    assert error["message"] == "internal error (RuntimeError); see the server log"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert any("secret internal detail" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_strict_parsing_keeps_valid_numbers(client, tiny):
    body = rank_body(tiny.frame, 3, top_k=2)
    body["user"]["user_id"] = 10**99  # 100 digits: accepted (an unknown category)
    body["candidates"][0]["price"] = -1.5e5
    response = client.post("/v1/rank", content=json.dumps(body).encode(), headers=JSON)
    assert response.status_code == 200, response.text
    result = response.json()
    assert len(result["items"]) == 2 and result["unknown"]["user_id"] == [str(10**99)]
    pair = "\\ud83d\\ude00"  # a valid surrogate pair is one character, not a lone surrogate
    raw = json.dumps(rank_body(tiny.frame, 2)).replace('"item_id": "', f'"item_id": "{pair}', 1).encode()
    response = client.post("/v1/rank", content=raw, headers=JSON)
    assert response.status_code == 200 and response.json()["items"][0]["id"] is not None
    assert "\U0001f600" in json.dumps(response.json(), ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# 3. Artifacts whose numbers would crash (or poison) scoring are refused at load
# --------------------------------------------------------------------------------------------


def _rewrite(tiny, out: Path, change) -> Path:
    files = {p.name: p.read_bytes() for p in tiny.artifact.iterdir() if p.name != MANIFEST}
    change(files)
    manifest = json.loads((tiny.artifact / MANIFEST).read_text())
    base = {k: v for k, v in manifest.items() if k not in ("files", "manifest_sha256", "manifest_hmac_sha256")}
    return write_artifact(out, files, base)


def _set_stat(field: str, key: str, value):
    def change(files):
        meta = json.loads(files["features.json"])
        meta["fitted"][field][key] = value
        files["features.json"] = json.dumps(meta).encode()

    return change


def _poison_weight(files):
    from safetensors.torch import load

    state = load(files["weights.safetensors"])
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    files["weights.safetensors"] = state_dict_bytes(state)


def _poison_vectors(files):
    from safetensors.numpy import load, save

    arrays = load(files["features.safetensors"])
    arrays["semantics.vectors"] = arrays["semantics.vectors"].copy()
    arrays["semantics.vectors"][4, 1] = np.inf
    files["features.safetensors"] = save(arrays)


@pytest.mark.parametrize("change, pattern", [
    (_set_stat("price", "std", 0), r"features\.json: numeric field 'price': std is 0; expected a finite number > 0"),
    (_set_stat("age", "std", -2.0), r"features\.json: numeric field 'age': std is -2\.0"),
    (_set_stat("age", "mean", float("nan")), r"features\.json: numeric field 'age': mean is nan; expected a finite number"),
    (_set_stat("price", "std", "1"), r"features\.json: numeric field 'price': std is '1'"),
    (_poison_weight, r"weights\.safetensors: tensor '[^']+' has 1 non-finite values"),
    (_poison_vectors, r"features\.safetensors: tensor 'semantics\.vectors' \(vector field 'semantics'\) has 1 "
                      r"non-finite values \(first in row 4\)"),
], ids=["std 0", "std negative", "mean NaN", "std a string", "NaN weight", "inf vector"])
def test_load_artifact_refuses_non_finite_numbers_naming_file_and_field(tiny, tmp_path, change, pattern):
    artifact = _rewrite(tiny, tmp_path / "artifact", change)
    with pytest.raises(ArtifactError, match=pattern):
        load_artifact(artifact, tiny.text_cache)


def test_the_rewritten_artifact_loads_when_nothing_is_changed(tiny, tmp_path):
    artifact = _rewrite(tiny, tmp_path / "artifact", lambda files: None)
    engine = ScoringEngine(load_artifact(artifact, tiny.text_cache))
    assert np.isfinite(engine.score(records(tiny.frame.head(5))).scores).all()


# --------------------------------------------------------------------------------------------
# 6. The real process under mixed load (slow: about 25 s)
# --------------------------------------------------------------------------------------------


def _trickle(url: str, body: bytes, seconds: float) -> int | None:
    """Send ``body`` in pieces over ``seconds``; the status the server answers (None if it closed first)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        pieces = 20
        step = max(1, len(body) // pieces)
        try:
            for i in range(0, len(body), step):
                sock.sendall(body[i : i + step])
                time.sleep(seconds / pieces)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, _ = _read_all(sock, 15)
    match = re.match(rb"HTTP/1\.1 (\d{3})", data)
    return int(match.group(1)) if match else None


@pytest.mark.slow
def test_mixed_load_on_the_real_process(tiny, tmp_path):
    """Huge requests with new titles back to back, slow clients trickling bodies (some past the body
    timeout), and measured /healthz and small rank requests, for ~15 s on 2 shared cores.
    Bounds: /healthz p99 < 200 ms, small-request p99 < 1000 ms, no 5xx anywhere."""
    from xdeepfm.server import RankingServer

    server = RankingServer(tiny.artifact, log_path=tmp_path / "serve.log", startup_timeout=90,
                           args=["--text-cache", str(tiny.text_cache), "--threads", "1", "--body-timeout", "3"])
    statuses: list[int | None] = []
    stop = threading.Event()
    with server:
        def huge_loop():
            i = 0
            while not stop.is_set():
                body = rank_body(tiny.frame, 1000, new_titles=f"load {i} {uuid.uuid4()}")
                statuses.append(_post(f"{server.url}/v1/rank", body, timeout=60).status_code)
                i += 1

        def slow_loop(seconds: float):
            while not stop.is_set():
                statuses.append(_trickle(server.url, json.dumps(rank_body(tiny.frame, 50)).encode(), seconds))

        workers = [threading.Thread(target=huge_loop, daemon=True),
                   threading.Thread(target=slow_loop, args=(1.0,), daemon=True),  # in time: 200
                   threading.Thread(target=slow_loop, args=(5.0,), daemon=True)]  # too slow: 408
        for w in workers:
            w.start()
        time.sleep(1.0)
        liveness, small = [], []
        small_body = json.dumps(rank_body(tiny.frame, 10)).encode()
        with requests.Session() as session:
            end = time.monotonic() + 12
            while time.monotonic() < end:
                t0 = time.perf_counter()
                assert session.get(f"{server.url}/healthz", timeout=5).status_code == 200
                liveness.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                response = session.post(f"{server.url}/v1/rank", data=small_body, headers=JSON, timeout=30)
                small.append(time.perf_counter() - t0)
                statuses.append(response.status_code)
                time.sleep(0.02)
        stop.set()
        for w in workers:
            w.join(60)
    live_p99, small_p99 = np.percentile(liveness, 99) * 1000, np.percentile(small, 99) * 1000
    print(f"healthz p99 {live_p99:.1f} ms over {len(liveness)}; small rank p99 {small_p99:.1f} ms over {len(small)}; "
          f"statuses {sorted(set(map(str, statuses)))}")
    assert not [s for s in statuses if s is None or s >= 500], statuses
    assert 200 in statuses and 408 in statuses
    assert live_p99 < 200 and small_p99 < 1000
