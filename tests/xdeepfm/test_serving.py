"""The in-process scoring engine: same inputs as FeaturePipeline.transform, ranking, OOV reports, record errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.serving_factory import ITEM_COLUMNS, USER_COLUMNS, records, tiny_ranking
from xdeepfm.model import stack_inputs
from xdeepfm.serving import RecordError, ScoringEngine


@pytest.fixture(scope="module")
def tiny():
    return tiny_ranking()


@pytest.fixture(scope="module")
def engine(tiny) -> ScoringEngine:
    return ScoringEngine.load(tiny.artifact, text_cache_dir=tiny.text_cache, batch_size=64)


def _columns(engine, rows):
    from xdeepfm.serving import _Column

    return {c: _Column(c, [r[c] for r in rows], "rows") for c in engine.columns}


def test_inputs_equal_the_pipeline_transform(engine, tiny):
    rows = records(tiny.frame)
    X, unknown = engine.encode(_columns(engine, rows), len(rows))
    pipeline = engine.artifact.pipeline
    np.testing.assert_array_equal(X, stack_inputs(pipeline.transform(tiny.frame), engine.model.columns))
    assert unknown == {}
    # unseen values, a null category, list-valued genres and repeated / over-long tokens
    odd = pd.DataFrame({"user_id": [999, 3], "gender": [None, "F"], "age": [70.0, 19.5], "item_id": ["new", "i3"],
                        "genres": ["Opera| Action |", "War|Drama|Comedy|Action"], "price": [1.0, 99.0],
                        "title": ["never seen", ""]})
    odd_rows = records(odd)
    odd_rows[1]["genres"] = ["War", "Drama", "Comedy", "Action"]
    X, unknown = engine.encode(_columns(engine, odd_rows), 2)
    np.testing.assert_array_equal(X, stack_inputs(pipeline.transform(odd), engine.model.columns))
    assert unknown == {"user_id": ["999"], "item_id": ["new"], "genres": ["Opera"], "semantics": ["new"]}


def test_rank_sorts_the_scores_of_the_merged_rows(engine, tiny):
    user = {"user_id": 7, "gender": "M", "age": 25.0}
    candidates = [{k: r[k] for k in ITEM_COLUMNS} for r in records(tiny.frame.drop_duplicates("item_id").head(12))]
    scores = engine.score([{**user, **c} for c in candidates]).scores
    ranking = engine.rank(user, candidates)
    assert sorted(ranking.order.tolist()) == list(range(12))
    np.testing.assert_allclose(ranking.scores, scores[ranking.order], rtol=0, atol=1e-6)
    assert np.all(np.diff(ranking.scores) <= 0)
    top = engine.rank(user, candidates, top_k=3)
    assert top.order.tolist() == ranking.order[:3].tolist()
    assert len(engine.rank(user, candidates, top_k=50).order) == 12


def test_unknown_categories_are_scored_as_oov_or_refused(engine, tiny):
    row = records(tiny.frame.head(1))[0]
    new = {**row, "item_id": "brand-new", "genres": "Action|Musical"}
    result = engine.score([row, new])
    assert result.unknown == {"item_id": ["brand-new"], "genres": ["Musical"], "semantics": ["brand-new"]}
    oov = {**row, "item_id": None, "genres": "Action"}  # null -> the OOV bucket too, not reported
    assert engine.score([oov]).scores[0] == pytest.approx(engine.score([{**new, "genres": "Action"}]).scores[0], abs=1e-6)
    with pytest.raises(RecordError, match=r"rows\[1\]\.item_id: unknown value\(s\) \['brand-new'\]"):
        engine.score([row, new], on_unknown="error")


def test_text_vectors_come_from_memory_after_the_first_request(engine, tiny):
    rows = records(tiny.frame.head(20))
    encoder = engine.artifact.pipeline.sentence_cache(engine.artifact.pipeline.spec.fields[6])
    engine.score(rows)
    calls = encoder.encoder_calls
    engine.score(rows)
    assert encoder.encoder_calls == calls
    engine.score([{**rows[0], "title": "a title nobody has seen before"}])
    assert encoder.encoder_calls == calls + 1


@pytest.mark.parametrize("change, path, message", [
    (lambda r: r.pop("price"), "rows[1].price", "missing; every input column is required"),
    (lambda r: r.update(colour="red"), "rows[1].colour", "unknown field"),
    (lambda r: r.update(price="cheap"), "rows[1].price", "expected a number, got str 'cheap'"),
    (lambda r: r.update(price=True), "rows[1].price", "expected a number, got bool"),
    (lambda r: r.update(age=None), "rows[1].age", "expected a number, got null"),
    (lambda r: r.update(price=float("inf")), "rows[1].price", "expected a finite number"),
    (lambda r: r.update(item_id={"id": 1}), "rows[1].item_id", "expected a string or number, got dict"),
    (lambda r: r.update(title=5), "rows[1].title", "expected a string, got int"),
    (lambda r: r.update(genres=[["Action"]]), "rows[1].genres", "expected a '|'-separated string or a list"),
])
def test_record_errors_name_the_field(engine, tiny, change, path, message):
    rows = records(tiny.frame.head(3))
    change(rows[1])
    with pytest.raises(RecordError, match=message) as info:
        engine.score(rows)
    assert info.value.path == path and str(info.value).startswith(f"{path}: ")


def test_rank_errors_name_user_or_candidate(engine, tiny):
    user = {"user_id": 7, "gender": "M", "age": 25.0}
    candidates = [{k: r[k] for k in ITEM_COLUMNS} for r in records(tiny.frame.head(3))]
    with pytest.raises(RecordError, match=r"^candidates\[1\]\.gender: also given in user"):
        engine.rank(user, [candidates[0], {**candidates[1], "gender": "F"}])
    with pytest.raises(RecordError, match=r"^user\.agee: unknown field"):
        engine.rank({**user, "agee": 3}, candidates)
    with pytest.raises(RecordError, match=r"^candidates\[0\]\.age: missing; .* or once in user"):
        engine.rank({k: v for k, v in user.items() if k != "age"}, candidates)
    with pytest.raises(RecordError, match=r"^user\.age: expected a number, got str"):
        engine.rank({**user, "age": "old"}, candidates)
    assert USER_COLUMNS == ["user_id", "gender", "age"]


def test_a_full_memo_starts_over_without_changing_scores(engine, tiny):
    small = ScoringEngine(engine.artifact, batch_size=7, memo=4)  # 4 distinct genre strings at most (texts: the LRU)
    rows = records(tiny.frame.head(40))
    expected = engine.score(rows).scores
    np.testing.assert_allclose(small.score(rows).scores, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(small.score(rows[::-1]).scores, expected[::-1], rtol=0, atol=1e-6)
    assert len(small._memo["genres"].row) <= max(4, len({r["genres"] for r in rows}))
