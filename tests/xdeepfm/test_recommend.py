"""Recall -> rank: the recommender's candidates, its files, and POST /v1/recommend with /v1/events.

The tiny ranking artifact of ``tests.serving_factory`` (40 users x 30 items, every field kind)
gets a recommender fitted on its impressions (popularity, ItemCF, BPR, a small two-tower model) and a
store holding its items, users and the impressions as events.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from tests.serving_factory import tiny_ranking
from xdeepfm.catalog import build_store, rank_by_id, record_events
from xdeepfm.index import IndexConfig
from xdeepfm.recall import BPRConfig, Columns, ItemCFConfig, MergeConfig
from xdeepfm.recommend import Recommender, recommend
from xdeepfm.server import RankingServer
from xdeepfm.serving import ScoringEngine
from xdeepfm.store import Event, SQLiteStore
from xdeepfm.two_tower import TwoTowerConfig

COLUMNS = Columns(user="user_id", item="item_id", label="label", time="timestamp")


class RecallConfig:
    """The part of a recall YAML (``RecallExperiment``) that ``Recommender.fit`` reads."""

    columns = COLUMNS
    channels = ["popularity", "itemcf", "bpr", "two_tower"]
    itemcf = ItemCFConfig()
    bpr = BPRConfig(dim=8, epochs=5, batch_size=64)
    two_tower = TwoTowerConfig(user_fields=["user_id", "gender", "age"], item_fields=["item_id", "genres", "title"],
                               item_id_field="item_id", history_len=5, embedding_dim=8, hidden_units=[16], out_dim=8,
                               epochs=2, batch_size=64, index=IndexConfig(kind="flat"))
    merge = MergeConfig(n=12, quotas={"two_tower": 5, "itemcf": 3, "bpr": 2, "popularity": 2})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tiny = tiny_ranking()
    engine = ScoringEngine.load(tiny.artifact, tiny.text_cache)
    frame = tiny.frame.copy()
    frame["genres"] = frame.groupby("item_id")["genres"].transform("first")
    frame["timestamp"] = np.arange(len(frame), dtype=float)
    root = tmp_path_factory.mktemp("recommend")
    store = build_store(engine, frame, root / "store.sqlite")
    recommender = Recommender.fit(RecallConfig, engine.artifact.pipeline, frame)
    recommender.save(root / "recall")
    return engine, frame, store, recommender, root


def test_candidates_leave_out_the_seen_items_and_name_their_channel(setup):
    engine, frame, store, recommender, _ = setup
    assert set(recommender.channels) == {"popularity", "itemcf", "bpr", "two_tower"}
    seen = store.seen("7")
    assert seen == set(frame.loc[frame["user_id"] == 7, "item_id"])
    ids, channels = recommender.candidates("7", store.history("7", limit=50, positive_min=1.0), seen)
    assert len(ids) == min(12, 30 - len(seen)) and len(set(ids)) == len(ids)
    assert not set(ids) & seen
    assert set(channels) <= {"popularity", "itemcf", "bpr", "two_tower"}
    # popularity's share is its quota's worth of the most-clicked unseen items
    popular = [i for i in recommender._popular if i not in seen]
    assert [i for i, c in zip(ids, channels) if c == "popularity"] == [i for i in popular if i in ids and
                                                                      dict(zip(ids, channels))[i] == "popularity"]


def test_itemcf_scores_are_the_summed_similarity_of_the_history(setup):
    _, _, store, recommender, _ = setup
    history = store.history("7", limit=50, positive_min=1.0)
    cf = recommender.channels["itemcf"]
    rows = [recommender._cf_position[h] for h in set(history)]
    want = np.asarray(cf.similarity[rows].sum(axis=0)).ravel()
    got = recommender._itemcf(history, 30, set())
    order = [recommender._cf_position[i] for i in got]
    assert np.all(np.diff(want[order]) <= 1e-7) and np.all(want[order] > 0)  # best first, only items reached
    assert len(got) == int((want > 0).sum())


def test_bprs_serving_list_is_its_recall_without_the_seen_items(setup):
    engine, _, store, recommender, root = setup
    bpr = recommender.channels["bpr"]
    seen = store.seen("7")
    (want, _), = bpr.recall(["7"], 10, [sorted(seen)])  # the evaluation's form: dense scores, exclusions
    assert recommender._bpr("7", 10, seen).tolist() == [str(i) for i in want]
    assert not set(recommender._bpr("7", 30, seen)) & seen
    assert recommender._bpr("no such user", 10, set()).tolist() == []  # no factor without training rows
    loaded = Recommender.load(root / "recall", engine.artifact.pipeline)
    np.testing.assert_array_equal(loaded.channels["bpr"].user_vectors, bpr.user_vectors)
    assert loaded._bpr("7", 10, seen).tolist() == recommender._bpr("7", 10, seen).tolist()


def test_recommend_ranks_the_candidates_with_the_ranker(setup):
    engine, _, store, recommender, _ = setup
    result = recommend(engine, store, recommender, "7", k=5, context={"price": 9.0})
    ids, _ = recommender.candidates("7", result.history, store.seen("7"))
    want = rank_by_id(engine, store, "7", ids, top_k=5, context={"price": 9.0})
    assert result.ids == want.ids and result.n_candidates == len(ids)
    np.testing.assert_allclose(result.scores, want.scores, rtol=1e-6)
    assert result.scores == sorted(result.scores, reverse=True)


def test_the_recommender_files_round_trip(setup):
    engine, _, store, recommender, root = setup
    loaded = Recommender.load(root / "recall", engine.artifact.pipeline)
    seen, history = store.seen("3"), store.history("3", limit=50, positive_min=1.0)
    assert loaded.candidates("3", history, seen) == recommender.candidates("3", history, seen)
    with pytest.raises(FileNotFoundError, match="recommender.json: recommender not found"):
        Recommender.load(root / "nothing", engine.artifact.pipeline)


def test_a_new_item_in_the_store_reaches_the_two_tower_index(setup, tmp_path):
    engine, frame, store, _, root = setup
    copy = store.backup(tmp_path / "store.sqlite")
    recommender = Recommender.load(root / "recall", engine.artifact.pipeline)
    assert recommender.sync(copy) == 0  # the first sync: every stored item is already indexed
    record = copy.get("item", ["i3"])["i3"]
    record.id, record.columns = "fresh", {**record.columns, "item_id": "fresh"}
    copy.put("item", [record])
    assert recommender.sync(copy) == 1
    two_tower = recommender.channels["two_tower"]
    assert "fresh" in set(two_tower.item_ids.tolist()) and "fresh" in set(two_tower.index.ids.tolist())
    row = two_tower.item_positions(np.array(["fresh"]))[0]  # the stored title vector is used as it is, not encoded again
    np.testing.assert_array_equal(two_tower._items["title"][row].numpy(), record.vectors["title"])


@pytest.fixture(scope="module")
def server(setup, tmp_path_factory):
    engine, _, store, _, root = setup
    path = tmp_path_factory.mktemp("served") / "store.sqlite"
    store.backup(path)
    tiny = tiny_ranking()
    srv = RankingServer(tiny.artifact, startup_timeout=120,
                        args=["--text-cache", str(tiny.text_cache), "--store", str(path), "--recommender", str(root / "recall"),
                              "--ingest"])
    try:
        yield srv.start(), path
    finally:
        srv.stop()


def test_an_event_changes_the_next_recommendation(server):
    srv, path = server
    body = {"user_id": "7", "k": 3, "context": {"price": 9.0}}
    before = requests.post(f"{srv.url}/v1/recommend", json=body, timeout=30).json()
    top = before["items"][0]["id"]
    assert len(before["items"]) == 3 and {i["channel"] for i in before["items"]} <= {"popularity", "itemcf", "two_tower"}
    logged = requests.post(f"{srv.url}/v1/events", timeout=30,
                           json={"events": [{"user_id": "7", "item_id": top, "label": 1, "time": 1e9}]}).json()
    assert logged["logged"] == 1 and logged["new_users"] == 0
    after = requests.post(f"{srv.url}/v1/recommend", json=body, timeout=30).json()
    assert after["history"][0] == top  # the newest positive
    assert top not in [i["id"] for i in after["items"]] and after["n_seen"] == before["n_seen"] + 1
    assert SQLiteStore(path).history("7", limit=1, positive_min=1.0) == [top]


def test_events_and_recommend_mistakes_are_named(server):
    srv, _ = server
    bad = requests.post(f"{srv.url}/v1/events", timeout=30, json={"events": [{"user_id": "7", "item_id": "i1", "label": 1}]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "events[0].time"
    bad = requests.post(f"{srv.url}/v1/recommend", timeout=30, json={"user_id": "7", "k": 0})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "k"
    new = requests.post(f"{srv.url}/v1/events", timeout=30,
                        json={"events": [{"user_id": "newcomer", "item_id": "i1", "label": 1, "time": 5.0}]}).json()
    assert new["new_users"] == 1
    got = requests.post(f"{srv.url}/v1/recommend", timeout=30, json={"user_id": "newcomer", "k": 2, "context": {"price": 1.0}})
    assert got.status_code == 200 and "i1" not in [i["id"] for i in got.json()["items"]]


def test_an_event_of_an_unknown_item_is_still_logged(setup, tmp_path):
    engine, _, store, _, _ = setup
    copy = store.backup(tmp_path / "store.sqlite")
    assert record_events(engine, copy, [Event("7", "not-in-the-store", 1.0, 2e9)]) == 1
    assert copy.history("7", limit=1, positive_min=1.0) == ["not-in-the-store"]
