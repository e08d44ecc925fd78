"""Hypothesis against the real FastAPI app in-process (``TestClient``, the tiny artifact of
``tests/serving_factory.py``): random JSON values, random bytes and mutated valid requests (wrong
types, huge integer literals, NaN/Infinity, lone surrogates, deep nesting, extra and missing keys,
unicode, empty lists, too many candidates). Whatever the body: a 2xx with a valid body, or a 4xx
JSON error with a message, never a 5xx. Bounded to run in well under 30 s on 2 cores.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving_factory import ITEM_COLUMNS, USER_COLUMNS, rank_body, records, tiny_ranking
from xdeepfm.app import Limits, create_app
from xdeepfm.serving import ScoringEngine

MAX_CANDIDATES = 40
FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def tiny():
    return tiny_ranking()


@pytest.fixture(scope="module")
def client(tiny):
    engine = ScoringEngine.load(tiny.artifact, text_cache_dir=tiny.text_cache, text_lru=64)
    app = create_app(engine, Limits(max_candidates=MAX_CANDIDATES, max_body_bytes=300_000), warm_up=False)
    return TestClient(app, raise_server_exceptions=False)


# --------------------------------------------------------------------------------------------
# Bodies: JSON text written by hand, so that it can hold what json.dumps never writes
# --------------------------------------------------------------------------------------------


class Raw:
    """A JSON literal written as is (a huge integer, NaN, a lone surrogate escape, deep nesting, ...)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:60]!r}{'...' if len(self.text) > 60 else ''})"


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{to_json(k) if isinstance(k, Raw) else json.dumps(k)}: {to_json(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(to_json, value)) + "]"
    return json.dumps(value)  # NaN/Infinity floats come out as the (invalid) NaN/Infinity literals


# text of any code point, surrogates included (json.dumps writes those as \udXXX escapes)
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
raw_literals = st.one_of(
    st.integers(90, 5000).map(lambda n: Raw("9" * n)),
    st.integers(90, 5000).map(lambda n: Raw("-" + "1" * n)),
    st.sampled_from(["1e999", "-1e999", "1E400", "NaN", "Infinity", "-Infinity", "1.5e300", "-0", "0.0", "true",
                     "false", "null", '"\\ud800"', '"\\udfff x"', '"a\\ud83d\\ude00b"', '"\\u0000"', '""', "[]", "{}",
                     '"' + "x" * 5000 + '"', '"' + "Drama|" * 300 + '"']).map(Raw),
    st.sampled_from([5, 400, 3000, 50_000]).map(lambda d: Raw("[" * d + "]" * d)),
    st.sampled_from([5, 400, 3000]).map(lambda d: Raw('{"a": ' * d + "1" + "}" * d)),
)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10**40), 10**40),
                        st.floats(allow_nan=True, allow_infinity=True), any_text)
json_values = st.recursive(json_leaves | raw_literals,
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
                           max_leaves=12)


def _valid_score_body(tiny, n: int) -> dict:
    return {"rows": records(tiny.frame.head(n))}


@st.composite
def mutated_requests(draw, tiny):
    """(path, raw body): a valid rank or score request, then 1-4 mutations."""
    kind = draw(st.sampled_from(["rank", "score"]))
    n = draw(st.integers(1, 6))
    body = rank_body(tiny.frame, n, top_k=draw(st.integers(1, 8))) if kind == "rank" else _valid_score_body(tiny, n)
    records_key = "candidates" if kind == "rank" else "rows"
    columns = USER_COLUMNS + ITEM_COLUMNS
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set field", "set top", "delete field", "delete top", "extra key", "empty list",
                                       "too many", "new title", "replace record", "unicode field name"]))
        items = body.get(records_key)
        target = None
        if isinstance(items, list) and items and isinstance(items[0], dict):
            target = items[draw(st.integers(0, len(items) - 1))]
        if kind == "rank" and isinstance(body.get("user"), dict) and draw(st.booleans()):
            target = body["user"]
        if action == "set field" and isinstance(target, dict):
            target[draw(st.sampled_from(columns))] = draw(json_values)
        elif action == "set top":
            body[draw(st.sampled_from(["user", "candidates", "rows", "top_k", "unknown"]))] = draw(json_values)
        elif action == "delete field" and isinstance(target, dict) and target:
            target.pop(draw(st.sampled_from(sorted(map(str, target)))), None)
        elif action == "delete top" and body:
            body.pop(draw(st.sampled_from(sorted(body))), None)
        elif action == "extra key":
            (target if isinstance(target, dict) and draw(st.booleans()) else body)[draw(any_text)] = draw(json_values)
        elif action == "empty list":
            body[records_key] = []
        elif action == "too many" and isinstance(items, list) and items:
            body[records_key] = [items[i % len(items)] for i in range(MAX_CANDIDATES + 1)]
        elif action == "new title" and isinstance(target, dict):
            target["title"] = draw(any_text)
        elif action == "replace record" and isinstance(items, list) and items:
            items[draw(st.integers(0, len(items) - 1))] = draw(json_values)
        elif action == "unicode field name" and isinstance(target, dict):
            target[Raw('"\\ud800"') if draw(st.booleans()) else draw(any_text)] = 1
    return f"/v1/{kind}", to_json(body).encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------------------------


def _probability(x: Any) -> bool:
    return isinstance(x, float) and math.isfinite(x) and 0.0 <= x <= 1.0


def check(response, path: str) -> None:
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = json.loads(response.content.decode("utf-8"))  # strict UTF-8, valid JSON
    if 200 <= status < 300:
        if path == "/v1/rank":
            assert set(body) == {"items", "n_candidates", "unknown"}
            assert 1 <= body["n_candidates"] <= MAX_CANDIDATES and len(body["items"]) <= body["n_candidates"]
            assert all(set(i) == {"index", "id", "score"} and _probability(i["score"]) for i in body["items"])
            assert sorted(i["index"] for i in body["items"]) == sorted({i["index"] for i in body["items"]})
        else:
            assert set(body) == {"scores", "unknown"} and all(map(_probability, body["scores"]))
        assert isinstance(body["unknown"], dict)
    else:
        assert 400 <= status < 500, status
        error = body["error"]
        assert set(error) == {"status", "field", "message"} and error["status"] == status
        assert isinstance(error["message"], str) and error["message"]
        assert error["field"] is None or isinstance(error["field"], str)


@FUZZ
@given(data=st.data())
def test_mutated_valid_requests_never_get_a_5xx(client, tiny, data):
    path, raw = data.draw(mutated_requests(tiny))
    check(client.post(path, content=raw, headers={"Content-Type": "application/json"}), path)


@FUZZ
@given(path=st.sampled_from(["/v1/rank", "/v1/score"]), value=json_values)
def test_random_json_values_never_get_a_5xx(client, path, value):
    raw = to_json(value).encode("utf-8", "surrogatepass")
    check(client.post(path, content=raw, headers={"Content-Type": "application/json"}), path)


@settings(FUZZ, max_examples=60)
@given(path=st.sampled_from(["/v1/rank", "/v1/score"]), raw=st.binary(max_size=200))
def test_random_bytes_never_get_a_5xx(client, path, raw):
    check(client.post(path, content=raw, headers={"Content-Type": "application/json"}), path)
