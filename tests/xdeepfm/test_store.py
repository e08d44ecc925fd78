"""The item/user store (SQLite) and ranking by id: round trips, layouts, all-or-nothing writes,
equivalence with the full-feature ranking, unknown ids, and concurrent readers and writers."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from tests.serving_factory import tiny_ranking
from xdeepfm.catalog import ItemRows, build_store, item_record, open_store, rank_by_id, record_events, store_layout
from xdeepfm.history import HistoryConfig, build_history
from xdeepfm.serving import RecordError, ScoringEngine
from xdeepfm.store import EntityLayout, Event, HistoryLayout, Record, SQLiteStore, StoreError, StoreLayout, partition_columns

LAYOUT = StoreLayout(item=EntityLayout("item_id", ("item_id", "title", "price"), (("sem", 3),)),
                     user=EntityLayout("user_id", ("user_id", "age"), ()), context=("hour",))


def item(i: int, price: float = 1.0) -> Record:
    return Record(f"v{i}", {"item_id": f"v{i}", "title": f"t{i}", "price": price}, {"sem": np.full(3, price, np.float32)})


@pytest.fixture(scope="module")
def engine():
    tiny = tiny_ranking()
    return ScoringEngine.load(tiny.artifact, tiny.text_cache)


@pytest.fixture(scope="module")
def frame():
    """The tiny impressions with each item's genres fixed (so genres belongs to the item; price stays context)."""
    frame = tiny_ranking().frame.copy()
    frame["genres"] = frame.groupby("item_id")["genres"].transform("first")
    return frame


@pytest.fixture(scope="module")
def store(engine, frame, tmp_path_factory):
    return build_store(engine, frame, tmp_path_factory.mktemp("store") / "store.sqlite")


def test_records_round_trip_and_each_write_moves_the_generation(tmp_path):
    store = SQLiteStore.create(tmp_path / "s.sqlite", LAYOUT)
    assert store.generation() == 0
    assert store.put("item", [item(1, 2.0), item(2, 3.0)]) == 1
    got = store.get("item", ["v2", "v1", "nope"])
    assert set(got) == {"v1", "v2"}
    assert got["v2"].columns == {"item_id": "v2", "title": "t2", "price": 3.0}
    np.testing.assert_array_equal(got["v2"].vectors["sem"], np.full(3, 3.0, np.float32))
    store.put("item", [item(1, 5.0)])  # an upsert replaces the row, and the cache sees it
    assert store.generation() == 2
    assert store.get("item", ["v1"])["v1"].columns["price"] == 5.0
    assert SQLiteStore(tmp_path / "s.sqlite").layout == LAYOUT  # the layout travels with the file


def test_a_batch_with_one_bad_record_writes_nothing(tmp_path):
    store = SQLiteStore.create(tmp_path / "s.sqlite", LAYOUT)
    store.put("item", [item(1)])
    bad = Record("v3", {"item_id": "v3", "title": "t", "price": 1.0}, {"sem": np.zeros(4, np.float32)})
    with pytest.raises(StoreError, match=r"items\[1\]: vector 'sem' has 4 values; expected 3"):
        store.put("item", [item(2), bad])
    with pytest.raises(StoreError, match=r"items\[1\]\.id: 'v2' also given as items\[0\]"):
        store.put("item", [item(2), item(2)])
    with pytest.raises(StoreError, match=r"column 'price' is missing"):
        store.put("item", [Record("v4", {"item_id": "v4", "title": "t"}, {"sem": np.zeros(3)})])
    with pytest.raises(StoreError, match=r"items\[0\]\.price: nan is not a finite number"):
        store.put("item", [item(5, float("nan"))])
    assert store.ids("item") == ["v1"] and store.generation() == 1


def test_opening_refuses_a_foreign_file_and_a_layout_that_does_not_fit(tmp_path):
    (tmp_path / "x.sqlite").write_bytes(b"not a database at all, just text" * 10)
    with pytest.raises(StoreError, match="not an item/user store"):
        SQLiteStore(tmp_path / "x.sqlite")
    with pytest.raises(FileNotFoundError, match="store not found"):
        SQLiteStore(tmp_path / "missing.sqlite")
    SQLiteStore.create(tmp_path / "s.sqlite", LAYOUT)
    other = StoreLayout(LAYOUT.item, EntityLayout("user_id", ("user_id",), ()), ("hour", "age"))
    with pytest.raises(StoreError, match=r"user columns are \['user_id', 'age'\], the artifact's are \['user_id'\]"):
        SQLiteStore(tmp_path / "s.sqlite", expect=other)
    with pytest.raises(FileExistsError):
        SQLiteStore.create(tmp_path / "s.sqlite", LAYOUT)


def test_columns_are_partitioned_by_what_is_constant_per_item_and_per_user(frame):
    item, user, context = partition_columns(frame, ["user_id", "item_id", "gender", "genres", "age", "price", "title"],
                                            "item_id", "user_id")
    assert (item, user, context) == (["item_id", "genres", "title"], ["user_id", "gender", "age"], ["price"])


def test_the_layout_keeps_title_vectors_and_semantics_with_the_item(engine, frame):
    layout = store_layout(engine, frame)
    assert layout.item.vectors == (("title", engine.field_width("title")), ("semantics", 3))
    assert layout.user.vectors == () and layout.context == ("price",)


def test_ranking_by_id_equals_ranking_the_full_feature_rows(engine, frame, store):
    ids = [f"i{k}" for k in range(1, 31)]
    by_id = rank_by_id(engine, store, "7", ids, top_k=10, context={"price": 12.5})
    row = frame[frame.user_id == 7].iloc[0]
    user = {"user_id": "7", "gender": row.gender, "age": float(row.age), "price": 12.5}
    firsts = frame.drop_duplicates("item_id").set_index("item_id")
    candidates = [{"item_id": i, "genres": firsts.loc[i, "genres"], "title": firsts.loc[i, "title"]} for i in ids]
    full = engine.rank(user, candidates, top_k=10)
    assert by_id.ids == [ids[i] for i in full.order]
    np.testing.assert_allclose(by_id.scores, full.scores, rtol=0, atol=1e-6)
    again = rank_by_id(engine, store, "7", ids, top_k=10, context={"price": 12.5})  # from the encoded-row cache
    assert again.ids == by_id.ids and np.array_equal(again.scores, by_id.scores)
    assert by_id.n_candidates == 30 and by_id.unknown_ids == {}


def test_unknown_ids_are_reported_or_refused(engine, store):
    ranked = rank_by_id(engine, store, "nobody", ["i1", "ghost", "i2"], context={"price": 3.0})
    assert sorted(ranked.ids) == ["i1", "i2"]
    assert ranked.unknown_ids == {"user_id": ["nobody"], "candidate_ids": ["ghost"]}
    with pytest.raises(RecordError, match=r"candidate_ids\[1\]: unknown item 'ghost'"):
        rank_by_id(engine, store, "7", ["i1", "ghost"], context={"price": 3.0}, on_unknown="error")
    with pytest.raises(RecordError, match=r"user_id: unknown user 'nobody'"):
        rank_by_id(engine, store, "nobody", ["i1"], context={"price": 3.0}, on_unknown="error")
    with pytest.raises(RecordError, match=r"context\.price: missing"):
        rank_by_id(engine, store, "7", ["i1"])
    with pytest.raises(RecordError, match=r"context\.title: a column of an item, read from the store"):
        rank_by_id(engine, store, "7", ["i1"], context={"price": 1.0, "title": "x"})
    with pytest.raises(RecordError, match=r"candidate_ids\[2\]: 'i1' is also candidate_ids\[0\]"):
        rank_by_id(engine, store, "7", ["i1", "i2", "i1"], context={"price": 1.0})


def test_a_new_item_is_ranked_from_its_stored_columns_without_retraining(engine, store):
    columns = {"item_id": "fresh", "genres": "Drama", "title": "a brand new drama product"}
    record = item_record(engine, store.layout, columns, {"semantics": [2.0, -1.0, 0.5]})
    np.testing.assert_allclose(record.vectors["title"], engine.field_inputs("title", [columns["title"]])[0])
    store.put("item", [record])
    ranked = rank_by_id(engine, store, "7", ["fresh", "i1"], context={"price": 4.0})
    full = engine.score([{"user_id": "7", "gender": "M", "age": 25.0, "price": 4.0, **columns}])  # vector row unknown -> 0
    assert "fresh" in ranked.ids and ranked.unknown_ids == {}
    assert not np.isclose(ranked.scores[ranked.ids.index("fresh")], full.scores[0], atol=1e-7)  # the semantics count
    with pytest.raises(RecordError, match=r"item\.vectors\.semantics: missing"):
        item_record(engine, store.layout, columns)
    with pytest.raises(RecordError, match=r"item\.price: not an item column"):
        item_record(engine, store.layout, {**columns, "price": 3.0}, {"semantics": [0, 0, 0]})
    with pytest.raises(RecordError, match=r"item\.genres: expected a '\|'-separated string"):
        item_record(engine, store.layout, {**columns, "genres": {"a": 1}}, {"semantics": [0, 0, 0]})


def test_open_store_checks_the_store_against_the_artifact(engine, tmp_path):
    SQLiteStore.create(tmp_path / "s.sqlite", LAYOUT)
    with pytest.raises(StoreError, match="item vector 'sem' is not a field of the artifact"):
        open_store(engine, tmp_path / "s.sqlite")


def test_readers_never_see_a_torn_item_while_a_writer_upserts(engine, frame, tmp_path):
    """Each write sets an item's title-vector marker and its genres together; readers check they agree."""
    store = build_store(engine, frame, tmp_path / "s.sqlite")
    path, errors, stop = store.path, [], threading.Event()
    width = engine.field_width("title")

    def writer():
        own = SQLiteStore(path)
        for version in range(60):
            recs = [Record(f"i{k}", {"item_id": f"i{k}", "genres": f"G{version}", "title": "t"},
                           {"title": np.full(width, version, np.float32), "semantics": np.full(3, version, np.float32)})
                    for k in range(1, 31)]
            own.put("item", recs)
        stop.set()

    def reader():
        own = SQLiteStore(path)
        try:
            while not stop.is_set():
                got = own.get("item", [f"i{k}" for k in range(1, 31)])
                versions = {r.columns["genres"] for r in got.values() if r.columns["genres"].startswith("G")}
                for r in got.values():
                    if r.columns["genres"].startswith("G"):
                        v = float(r.columns["genres"][1:])
                        assert (r.vectors["title"] == v).all() and (r.vectors["semantics"] == v).all()
                assert len(versions) <= 1, f"one snapshot mixes versions {versions}"
        except Exception as exc:  # noqa: BLE001 -- reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert store.generation() == 2 + 60


def test_backup_and_checkpoint_make_a_copy_that_holds_every_write(tmp_path):
    import shutil

    store = SQLiteStore.create(tmp_path / "s.sqlite", LAYOUT)
    store.put("item", [item(1), item(2)])
    copy = store.backup(tmp_path / "copy.sqlite")
    assert copy.ids("item") == ["v1", "v2"]
    store.checkpoint()
    shutil.copy(tmp_path / "s.sqlite", tmp_path / "plain.sqlite")  # without the -wal file
    assert SQLiteStore(tmp_path / "plain.sqlite").ids("item") == ["v1", "v2"]


HISTORY_LAYOUT = StoreLayout(item=LAYOUT.item, user=LAYOUT.user, context=LAYOUT.context,
                             history=HistoryLayout("history", max_len=3, sep="|", positive_min=1.0))


def test_the_event_log_gives_the_newest_positive_items_and_every_seen_item(tmp_path):
    store = SQLiteStore.create(tmp_path / "s.sqlite", HISTORY_LAYOUT)
    logged = store.add_events([Event("u1", "a", 1.0, 10.0), Event("u1", "b", 0.0, 20.0), Event("u1", "c", 1.0, 30.0),
                               Event("u2", "a", 1.0, 5.0), Event("u1", "d", 1.0, 5.0),  # logged late, but older
                               Event("u1", "e", 1.0, 40.0), Event("u1", "f", 1.0, 40.0)])  # one second: f logged last
    assert logged == 7
    assert store.history("u1") == ["f", "e", "c"]  # max_len 3, newest first, b is a negative
    assert store.history("u1", limit=10) == ["f", "e", "c", "a", "d"]
    assert store.history("u1", limit=10, positive_min=0.0) == ["f", "e", "c", "b", "a", "d"]
    assert store.history("nobody") == [] and store.seen("u1") == {"a", "b", "c", "d", "e", "f"}
    assert store.generation() == 0  # no cached row changed
    assert SQLiteStore(tmp_path / "s.sqlite").layout == HISTORY_LAYOUT  # the history rule travels with the file


def test_the_log_equals_the_offline_history_of_a_row_after_every_event(tmp_path):
    """What the service reads equals ``xdeepfm.history.build_history`` for an impression after the last event."""
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"user_id": rng.choice(["u1", "u2", "u3"], 60), "item_id": [f"i{k}" for k in rng.integers(0, 20, 60)],
                           "label": rng.integers(0, 2, 60).astype(float), "timestamp": rng.permutation(60).astype(float)})
    store = SQLiteStore.create(tmp_path / "s.sqlite", HISTORY_LAYOUT)
    store.add_events([Event(u, i, lab, t) for u, i, lab, t in events.itertuples(index=False)])
    rows = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "timestamp": [1e9] * 3})
    offline = build_history(rows, events, HistoryConfig(max_len=3))
    assert [store.history(u) for u in rows["user_id"]] == [h.split("|") if h else [] for h in offline]


def test_a_bad_event_writes_nothing_and_is_named(tmp_path):
    store = SQLiteStore.create(tmp_path / "s.sqlite", HISTORY_LAYOUT)
    with pytest.raises(StoreError, match=r"events\[1\]\.time: expected a finite number, got nan"):
        store.add_events([Event("u1", "a", 1.0, 1.0), Event("u1", "b", 1.0, float("nan"))])
    with pytest.raises(StoreError, match=r"events\[0\]\.item_id: expected a non-empty printable string"):
        store.add_events([Event("u1", "", 1.0, 1.0)])
    assert store.count_events() == 0


def test_an_event_of_a_new_user_adds_the_user_in_the_same_write(engine, frame, tmp_path):
    store = build_store(engine, frame, tmp_path / "s.sqlite")
    before = store.count("user")
    assert record_events(engine, store, [Event("newcomer", "i1", 1.0, 1.0), Event("7", "i2", 1.0, 2.0)]) == 2
    assert store.count("user") == before + 1 and "newcomer" in store.get("user", ["newcomer"])
    assert store.seen("newcomer") == {"i1"}


def test_the_item_row_matrix_evicts_the_least_recent_item_and_reencodes_an_upsert(engine, store):
    """``ItemRows`` with room for 4 items, over 30: every gather equals encoding the records afresh,
    the least recently used rows are the ones given up, and a new version of an item is re-encoded."""
    rows = ItemRows(engine, store.layout, capacity=4)
    fresh = ItemRows(engine, store.layout, capacity=100)
    records = store.get("item", [f"i{k}" for k in range(1, 31)])
    first, _ = ItemRows(engine, store.layout, capacity=2).gather([records["i1"], records["i2"], records["i3"]])
    np.testing.assert_array_equal(first, fresh._encode([records["i1"], records["i2"], records["i3"]])[0])
    for batch in (["i1", "i2", "i3"], ["i4", "i1"], ["i5", "i6"], ["i1", "i7", "i8", "i9"]):
        got, _ = rows.gather([records[i] for i in batch])
        want, _ = fresh._encode([records[i] for i in batch])
        np.testing.assert_array_equal(got, want)
        assert len(rows._slots) <= 4
    assert list(rows._slots) == ["i1", "i7", "i8", "i9"]  # i1 was used again, so i5, i6 left first
    upserted = Record("i7", {**records["i7"].columns, "genres": records["i30"].columns["genres"]}, records["i7"].vectors)
    got, _ = rows.gather([upserted, records["i8"]])
    np.testing.assert_array_equal(got, fresh._encode([upserted, records["i8"]])[0])
    assert rows._slots["i7"][0] is upserted
    too_many, _ = rows.gather([records[f"i{k}"] for k in range(10, 16)])  # more than its room: encoded, not kept
    np.testing.assert_array_equal(too_many, fresh._encode([records[f"i{k}"] for k in range(10, 16)])[0])
