"""Recall channels (popularity, ItemCF, BPR), the candidate merge and the FAISS index."""

import numpy as np
import pandas as pd
import pytest
import torch

from xdeepfm.index import IndexConfig, VectorIndex
from xdeepfm.recall import (
    BPRChannel,
    BPRConfig,
    Columns,
    ItemCFChannel,
    ItemCFConfig,
    MergeConfig,
    PopularityChannel,
    merge_candidates,
    recall_candidates,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train faster on one thread than on two contended ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def hand_frame():
    # positives: a {1, 2}, b {1, 2, 3}, c {3}; (a, 4) is a negative
    rows = [("a", 1, 1, 10), ("a", 2, 1, 11), ("b", 1, 1, 5), ("b", 2, 1, 6), ("b", 3, 1, 7), ("c", 3, 1, 1), ("a", 4, 0, 12)]
    return pd.DataFrame(rows, columns=["u", "i", "y", "t"])


COLUMNS = Columns(user="u", item="i", label="y", time="t")


def test_popularity_counts_positives_only():
    channel = PopularityChannel(COLUMNS).fit(hand_frame())
    assert channel.item_ids.tolist() == [1, 2, 3, 4]
    assert channel.score(["a"]).tolist() == [[2.0, 2.0, 2.0, 0.0]]
    (items, scores), = channel.recall(["zz"], n=2, exclude=[[1]])  # unknown user: the global list
    assert items.tolist() == [2, 3] and scores.tolist() == [2.0, 2.0]


def test_itemcf_cosine_scores_by_hand():
    channel = ItemCFChannel(columns=COLUMNS).fit(hand_frame())
    # C12 = 2, C13 = C23 = 1, C_ii = 2 -> S12 = 1, S13 = S23 = 0.5
    expected = np.array([[0, 1, .5, 0], [1, 0, .5, 0], [.5, .5, 0, 0], [0, 0, 0, 0]])
    assert np.allclose(channel.similarity.toarray(), expected)
    assert np.allclose(channel.score(["c", "a"]), [[.5, .5, 0, 0], [1, 1, 1, 0]])
    (items, scores), = channel.recall(["a"], n=2, exclude=[[1, 2]])
    assert items.tolist() == [3, 4] and np.allclose(scores, [1.0, 0.0])
    # a history passed at request time replaces the training one
    assert np.allclose(channel.score(["a"], histories={"a": [3]}), [[.5, .5, 0, 0]])
    top1 = ItemCFChannel(ItemCFConfig(neighbors=1), COLUMNS).fit(hand_frame())
    assert (top1.similarity.getnnz(axis=1) <= 1).all()


def test_missing_column_is_named():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['y'\]"):
        PopularityChannel(COLUMNS).fit(hand_frame().drop(columns="y"))


def test_bpr_loss_falls_and_ranks_cooccurring_item_first():
    rng = np.random.default_rng(0)
    # two taste groups of 20 users: group g likes items 10g..10g+9; hold out one item per user
    rows = []
    for user in range(40):
        group = user // 20
        liked = rng.permutation(np.arange(10 * group, 10 * group + 10))
        rows += [(user, int(item), 1, t) for t, item in enumerate(liked[:-1])]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "label", "timestamp"])
    channel = BPRChannel(BPRConfig(dim=8, epochs=15, batch_size=128, lr=0.1, l2=0.0, seed=0)).fit(frame)
    assert channel.losses[-1] < 0.5 * channel.losses[0]
    scores = channel.score([0, 39])
    assert scores[0, :10].mean() > scores[0, 10:].mean() and scores[1, 10:].mean() > scores[1, :10].mean()


def test_merge_quotas_dedupe_and_fill():
    lists = {"a": np.array([1, 2, 3, 4]), "b": np.array([2, 5, 6]), "c": np.array([7])}
    items, channels = merge_candidates(lists, n=6, quotas={"a": 2, "b": 2})
    # quotas: a takes 1, 2; b skips 2 (taken) and takes 5, 6; fill round-robin a, b, c: 3, (b empty), 7
    assert items.tolist() == [1, 2, 5, 6, 3, 7]
    assert channels.tolist() == ["a", "a", "b", "b", "a", "c"]
    items, channels = merge_candidates(lists, n=3, quotas={"b": 5})
    assert items.tolist() == [2, 5, 6] and set(channels) == {"b"}
    with pytest.raises(ValueError, match="no list"):
        merge_candidates(lists, n=3, quotas={"z": 1})


def test_recall_candidates_merges_fitted_channels():
    frame = hand_frame()
    channels = [ItemCFChannel(columns=COLUMNS).fit(frame), PopularityChannel(COLUMNS).fit(frame)]
    (items, names), = recall_candidates(channels, ["c"], MergeConfig(n=3, quotas={"itemcf": 1, "popularity": 2}), exclude=[[3]])
    # itemcf for c (history {3}): 1 (0.5), 2 (0.5), 4 (0); popularity: 1, 2 (2 each), 4 (0)
    assert items.tolist() == [1, 2, 4] and names.tolist() == ["itemcf", "popularity", "popularity"]


def test_flat_index_equals_brute_force_and_honours_exclusions():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    ids = np.arange(1000, 1300)
    index = VectorIndex(16).build(ids, vectors)
    found = index.search(queries, 10)
    exact = queries @ vectors.T
    for q, (items, scores) in enumerate(found):
        top = np.argsort(-exact[q])[:10]
        assert items.tolist() == ids[top].tolist() and np.allclose(scores, exact[q, top], atol=1e-4)
    first = found[0][0][0]
    (items, _), = index.search(queries[:1], 10, exclude=[[first]])
    assert first not in items and len(items) == 10 and items[0] == found[0][0][1]


def test_index_update_and_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    index = VectorIndex(8).build(np.arange(50), vectors)
    query = rng.normal(size=(1, 8)).astype(np.float32)
    index.add([7, 99], np.stack([query[0] * 10, -query[0]]))  # item 7 replaced, 99 new
    (items, _), = index.search(query, 3)
    assert items[0] == 7 and len(index) == 51 and index.dead == 1
    assert (items == 7).sum() == 1  # the old row of 7 is never returned
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.search(query, 5)[0][0].tolist() == index.search(query, 5)[0][0].tolist()
    loaded.rebuild()
    assert loaded.dead == 0 and loaded.search(query, 5)[0][0].tolist() == index.search(query, 5)[0][0].tolist()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_near_duplicates(kind):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    index = VectorIndex(16, IndexConfig(kind=kind, nlist=16, nprobe=16)).build(np.arange(2000), vectors)
    assert index.kind == kind
    (items, _), = index.search(vectors[42:43] * 5, 1)
    assert items.tolist() == [42]
    assert IndexConfig(kind="auto", auto_threshold=100).resolved_kind(101) == "hnsw"
    assert IndexConfig(kind="auto", auto_threshold=100).resolved_kind(100) == "flat"


def test_recall_eval_protocol_on_a_hand_split():
    from xdeepfm.recall_eval import catalogue, evaluate_channel, recall_at_n, test_set

    frame = lambda rows: pd.DataFrame(rows, columns=["user_id", "item_id", "label", "timestamp"])  # noqa: E731
    splits = {
        "train": frame([("a", 1, 1, 0), ("b", 1, 1, 0), ("b", 2, 1, 1), ("c", 2, 1, 0), ("c", 3, 0, 1)]),
        "valid": frame([("a", 2, 1, 2)]),
        # a: 3 positive, 9 cold positive; b: 2 is in train (dropped) -> no positive, skipped; c: 4 cold negative only
        "test": frame([("a", 3, 1, 3), ("a", 9, 1, 4), ("b", 2, 1, 2), ("c", 4, 0, 2)]),
    }
    data = test_set(splits, Columns(), exclude_valid=True)
    assert data.users.tolist() == ["a"] and data.skipped_users == 2
    assert data.positives[0].tolist() == [3, 9] and data.exclude[0].tolist() == [1, 2]
    assert data.cold_items == {4, 9}
    items = catalogue(splits, Columns())
    assert sorted(items.item_id) == [1, 2, 3, 4, 9]
    channel = PopularityChannel().fit(splits["train"], items)
    metrics, lists = evaluate_channel(channel, data, ks=[1, 2], n=2, batch_size=8)
    # a's candidates: 3, 4, 9 all with 0 positives in train: pessimistic ties -> 4 first, then 3, 9
    assert lists[0].tolist() == [3, 4]  # the list itself breaks ties by catalogue position
    assert metrics["recall@1"] == 0.0 and metrics["recall@2"] == 0.5 and metrics["mrr@2"] == 0.5
    assert metrics["list_recall@2"] == 0.5 and metrics["cold_recall@2"] == 0.0 and metrics["cold_users"] == 1
    assert recall_at_n([np.array([9, 3])], data, 2)["cold_recall@2"] == 1.0
