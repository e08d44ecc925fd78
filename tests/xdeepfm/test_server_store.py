"""The service with an item/user store, two processes on one port: ranking by id over HTTP equals
the in-process ranking, POST /v1/items makes a new item rankable at once in every process, and
the mistakes are refused with the field named."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from tests.serving_factory import tiny_ranking
from xdeepfm.catalog import build_store, rank_by_id
from xdeepfm.server import RankingServer
from xdeepfm.serving import ScoringEngine
from xdeepfm.store import SQLiteStore

IDS = [f"i{k}" for k in range(1, 31)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tiny = tiny_ranking()
    engine = ScoringEngine.load(tiny.artifact, tiny.text_cache)
    frame = tiny.frame.copy()
    frame["genres"] = frame.groupby("item_id")["genres"].transform("first")
    path = tmp_path_factory.mktemp("store") / "store.sqlite"
    build_store(engine, frame, path)
    server = RankingServer(tiny.artifact, startup_timeout=120,
                           args=["--text-cache", str(tiny.text_cache), "--store", str(path), "--processes", "2", "--ingest"])
    try:
        yield server.start(), engine, path
    finally:
        server.stop()


def test_two_processes_answer_and_the_model_lists_the_store(setup):
    server, _, _ = setup
    pids = {requests.get(f"{server.url}/readyz", headers={"Connection": "close"}, timeout=10).json()["pid"]
            for _ in range(30)}
    assert len(pids) == 2
    store = server.model()["store"]
    assert store["items"] == 30 and store["context_columns"] == ["price"]


def test_keep_alive_connections_are_spread_evenly_over_the_processes(setup):
    """The acceptor hands each connection to the process with the fewest open ones: 4 + 2 = 6 clients
    held open together land 3 + 3, never by chance 4 + 2 or 6 + 0 (the kernel's SO_REUSEPORT hash)."""
    server, _, _ = setup
    sessions = [requests.Session() for _ in range(6)]
    try:
        pids = [s.get(f"{server.url}/readyz", timeout=10).json()["pid"] for s in sessions]
        again = [s.get(f"{server.url}/readyz", timeout=10).json()["pid"] for s in sessions]
    finally:
        for s in sessions:
            s.close()
    assert pids == again  # kept alive: each session stays on its process
    assert sorted(pids.count(pid) for pid in set(pids)) == [3, 3]


def test_rank_by_id_over_http_equals_the_in_process_ranking(setup):
    server, engine, path = setup
    got = server.rank_ids("7", IDS, top_k=5, context={"price": 9.0})
    want = rank_by_id(engine, SQLiteStore(path), "7", IDS, top_k=5, context={"price": 9.0})
    assert [i["id"] for i in got["items"]] == want.ids
    np.testing.assert_allclose([i["score"] for i in got["items"]], want.scores, atol=1e-6)
    assert got["n_candidates"] == 30 and got["unknown_ids"] == {}


def test_an_ingested_item_is_ranked_by_the_next_request_in_every_process(setup):
    server, engine, _ = setup
    columns = {"item_id": "new1", "genres": "War", "title": "a war film nobody has seen"}
    answer = server.put_items([{"columns": columns, "vectors": {"semantics": [1.5, -0.5, 2.0]}}])
    assert answer["items"] == [{"id": "new1", "semantics": None}] and answer["n_items"] == 31
    for _ in range(10):  # new connections land on either process
        response = requests.post(f"{server.url}/v1/rank", headers={"Connection": "close"}, timeout=30,
                                 json={"user_id": "7", "candidate_ids": ["new1", "i1"], "context": {"price": 9.0}})
        assert response.status_code == 200 and "new1" in [i["id"] for i in response.json()["items"]]


@pytest.mark.parametrize("body, status, field, message", [
    ({"user_id": "7", "candidate_ids": ["i1", "ghost"], "context": {"price": 1.0}, "unknown": "error"}, 422,
     "candidate_ids[1]", "unknown item 'ghost'"),
    ({"user_id": "7", "candidate_ids": ["i1"]}, 422, "context.price", "missing"),
    ({"user_id": 7, "candidate_ids": ["i1"]}, 422, "user_id", "string"),
    ({"user_id": "7", "candidate_ids": []}, 422, "candidate_ids", "at least 1"),
])
def test_rank_by_id_mistakes_name_the_field(setup, body, status, field, message):
    server, _, _ = setup
    response = server.request("POST", "/v1/rank", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and message in error["message"]


@pytest.mark.parametrize("items, field, message", [
    ([{"columns": {"item_id": "x", "genres": "War", "title": "t"}}], "items[0].vectors.semantics", "missing"),
    ([{"columns": {"item_id": "x", "genres": "War", "title": "t"},
       "video": base64.b64encode(b"not really a video").decode()}], "items[0].video", "does not ingest videos"),
    ([{"columns": {"item_id": "x", "genres": "War"}, "vectors": {"semantics": [0, 0, 0]}}], "items[0].title", "missing"),
])
def test_items_mistakes_write_nothing(setup, items, field, message):
    server, _, path = setup
    before = SQLiteStore(path).generation()
    response = server.request("POST", "/v1/items", json={"items": [{"columns": {"item_id": "ok", "genres": "War",
                                                                                "title": "fine"},
                                                                    "vectors": {"semantics": [0, 0, 0]}}] + items})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field.replace("items[0]", "items[1]") and message in error["message"]
    assert SQLiteStore(path).generation() == before and "ok" not in SQLiteStore(path).ids("item")
