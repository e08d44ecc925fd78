"""Ranking explanations through HTTP (``"explain": true`` on both forms of /v1/rank), items read back with the
explanation kept beside them, the store's listings, and the offline /docs page."""

from __future__ import annotations

import math
import re
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.serving_factory import tiny_ranking
from xdeepfm.app import Limits, create_app
from xdeepfm.catalog import build_store, item_record
from xdeepfm.explain import attribute
from xdeepfm.serving import ScoringEngine
from xdeepfm.store import SQLiteStore, StoreError

IDS = [f"i{k}" for k in range(1, 31)]
EXPLANATION = {"outputs": {"M": 0.5}, "shares": {"text": 0.2, "audio": 0.5, "vision": 0.3},
               "audio": {"words": [{"word": "great", "weight": 0.7, "position": 1}], "curve": [0.25, 0.75]}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tiny = tiny_ranking()
    engine = ScoringEngine.load(tiny.artifact, tiny.text_cache)
    frame = tiny.frame.copy()
    frame["genres"] = frame.groupby("item_id")["genres"].transform("first")
    path = tmp_path_factory.mktemp("store") / "store.sqlite"
    store = build_store(engine, frame, path, explanations={"i3": EXPLANATION})
    app = create_app(engine, Limits(max_explained=6), warm_up=False, store=store)
    with TestClient(app) as client:
        yield client, engine, store, tiny


def _rows_body(tiny, n=8, **extra):
    rows = tiny.frame.drop_duplicates("item_id").head(n)
    user = {"user_id": int(rows.iloc[0]["user_id"]), "gender": "F", "age": 30.0}
    candidates = [{c: (float(r[c]) if c == "price" else r[c]) for c in ("item_id", "genres", "price", "title")}
                  for _, r in rows.iterrows()]
    return {"user": user, "candidates": candidates, **extra}


def _check_complete(items, model_groups):
    for item in items:
        e = item["explanation"]
        total = e["baseline_logit"] + sum(a["value"] for a in e["attributions"])
        assert total == pytest.approx(e["logit"], abs=1e-4)  # completeness, through HTTP
        assert 1 / (1 + math.exp(-e["logit"])) == pytest.approx(item["score"], abs=1e-5)  # the logit of the score served
        assert sorted(a["group"] for a in e["attributions"]) == sorted(model_groups)
        values = [abs(a["value"]) for a in e["attributions"]]
        assert values == sorted(values, reverse=True)


def test_explain_on_candidate_rows_sums_to_the_logit_and_equals_attribute(setup):
    client, engine, _, tiny = setup
    plain = client.post("/v1/rank", json=_rows_body(tiny, top_k=4)).json()
    answer = client.post("/v1/rank", json=_rows_body(tiny, top_k=4, explain=True)).json()
    assert "explanation" not in plain and "explanation" not in plain["items"][0]
    assert [i["index"] for i in answer["items"]] == [i["index"] for i in plain["items"]]  # explaining changes no ranking
    groups = answer["explanation"]["groups"]
    assert groups["video sentiment" if "video_sentiment" in groups else "genres"]  # one group per model field
    assert set(sum(groups.values(), [])) == set(engine.model.feature_index)
    _check_complete(answer["items"], groups)
    # the values are xdeepfm.explain.attribute's on the same rows, in the engine's model
    body = _rows_body(tiny, top_k=4)
    rows = [{**body["user"], **body["candidates"][i["index"]]} for i in answer["items"]]
    X, _ = engine.encode({c: engine.column(c, [r[c] for r in rows], "rows") for c in engine.columns}, len(rows))
    want = attribute(engine.model, X, {g: m for g, m in groups.items()})
    for k, item in enumerate(answer["items"]):
        got = {a["group"]: a["value"] for a in item["explanation"]["attributions"]}
        np.testing.assert_allclose([got[g] for g in want.groups], want.values[k], atol=1e-6)


def test_explain_by_id_sums_to_the_logit(setup):
    client, _, _, _ = setup
    answer = client.post("/v1/rank", json={"user_id": "7", "candidate_ids": IDS, "top_k": 5, "context": {"price": 9.0},
                                           "explain": True}).json()
    assert len(answer["items"]) == 5
    _check_complete(answer["items"], answer["explanation"]["groups"])
    assert answer["explanation"]["baseline"].startswith("oov")


def test_explaining_more_than_the_cap_is_refused_with_the_reason(setup):
    client, _, _, _ = setup
    reply = client.post("/v1/rank", json={"user_id": "7", "candidate_ids": IDS, "context": {"price": 9.0}, "explain": True})
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["field"] == "explain" and "30 items to explain; at most 6" in error["message"] and "top_k" in error["message"]
    bad = client.post("/v1/rank", json={"user_id": "7", "candidate_ids": IDS, "top_k": 2, "context": {"price": 9.0},
                                        "explain": "yes"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "explain"


def test_an_item_is_served_with_its_explanation(setup):
    client, _, store, _ = setup
    item = client.get("/v1/items/i3").json()
    assert item["id"] == "i3" and item["columns"]["item_id"] == "i3" and item["explanation"] == EXPLANATION
    stored = store.get("item", ["i3"])["i3"]
    assert item["columns"] == stored.columns and set(item["vectors"]) == set(stored.vectors)
    for name, vector in stored.vectors.items():
        np.testing.assert_allclose(item["vectors"][name], vector, rtol=1e-6)
    assert client.get("/v1/items/i4").json()["explanation"] is None
    missing = client.get("/v1/items/nope")
    assert missing.status_code == 404 and "unknown item 'nope'" in missing.json()["error"]["message"]


def test_the_store_lists_its_users_and_items(setup):
    client, _, store, _ = setup
    users = client.get("/v1/users?limit=5").json()
    assert users == {"ids": store.ids("user")[:5], "total": store.count("user")}
    assert client.get("/v1/items?limit=1000").json()["ids"] == sorted(IDS)
    assert client.get("/v1/items?limit=0").status_code == 422


def test_the_page_and_the_docs_are_served_without_any_external_host(setup):
    client, _, _, _ = setup
    home = client.get("/", follow_redirects=False)
    assert home.status_code in (302, 307) and home.headers["location"] == "/ui/"
    for path in ("/ui/", "/docs"):
        html = client.get(path).text
        refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', html) + re.findall(r"url:\s*'([^']+)'", html)
        assert refs, path
        external = [r for r in refs if re.match(r"^(https?:)?//", r)]
        assert external == [], (path, external)
        for ref in refs:  # every asset the page names is served here
            if ref.startswith("/") and not ref.endswith(".json"):
                assert client.get(ref).status_code == 200, ref
    assert "swagger-ui-bundle.js" in client.get("/docs").text


def test_explanations_are_kept_replaced_and_refused_in_one_transaction(setup, tmp_path):
    _, engine, store, tiny = setup
    copy = store.backup(tmp_path / "copy.sqlite")
    columns = copy.get("item", ["i5"])["i5"].columns
    vectors = copy.get("item", ["i5"])["i5"].vectors
    record = item_record(engine, copy.layout, columns, dict(vectors), explanation={"outputs": {"M": 1.0}})
    copy.put("item", [record])
    assert copy.explanation("i5") == {"outputs": {"M": 1.0}}
    copy.put("item", [item_record(engine, copy.layout, columns, dict(vectors))])  # a new video: the old explanation goes
    assert copy.explanation("i5") is None
    generation = copy.generation()
    other = copy.get("item", ["i6"])["i6"]
    bad = item_record(engine, copy.layout, other.columns, dict(other.vectors), explanation={"x": float("nan")})
    with pytest.raises(StoreError, match=r"items\[1\].explanation: not JSON"):
        copy.put("item", [record, bad])
    assert copy.generation() == generation and copy.explanation("i5") is None  # nothing written


def test_a_schema_1_store_opens_without_explanations_and_refuses_to_keep_one(setup, tmp_path):
    _, engine, store, _ = setup
    old = store.backup(tmp_path / "old.sqlite")
    old.close()
    with sqlite3.connect(tmp_path / "old.sqlite") as conn:
        conn.execute("DROP TABLE explanation")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    conn.close()
    reopened = SQLiteStore(tmp_path / "old.sqlite")
    assert reopened.schema == 1 and reopened.explanation("i3") is None and reopened.count("item") == 30
    record = reopened.get("item", ["i5"])["i5"]
    record = item_record(engine, reopened.layout, record.columns, dict(record.vectors), explanation={"a": 1})
    with pytest.raises(StoreError, match="schema-1 store, made before explanations; rebuild it"):
        reopened.put("item", [record])
    with sqlite3.connect(tmp_path / "old.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '9' WHERE key = 'schema'")
    conn.close()
    with pytest.raises(StoreError, match="not an item/user store of schema 1 or 2"):
        SQLiteStore(tmp_path / "old.sqlite")
