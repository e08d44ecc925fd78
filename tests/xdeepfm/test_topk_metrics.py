"""Full-catalogue top-K metrics (xdeepfm.metrics: full_sort_topk) on hand-computed cases."""

import math

import numpy as np
import pytest

from xdeepfm.metrics import full_sort_ranks, full_sort_topk, metrics_from_ranks, ranks_in_lists


def test_hand_case_one_user():
    # 6 items, scores descending by index except item 4; positives {1, 4}; item 0 excluded
    scores = np.array([[9.0, 5.0, 4.0, 3.0, 8.0, 1.0]])
    ranks, dropped = full_sort_ranks(scores, [np.array([1, 4])], [np.array([0])])
    assert dropped == 0
    # candidates 1..5 ordered: 4 (8), 1 (5), 2, 3, 5 -> item 4 rank 1, item 1 rank 2
    assert ranks[0].tolist() == [2.0, 1.0]
    m = metrics_from_ranks(ranks, ks=(1, 2))
    assert m["recall@1"] == 0.5 and m["hr@1"] == 1.0 and m["mrr@1"] == 1.0 and m["precision@1"] == 1.0
    assert m["recall@2"] == 1.0 and m["ndcg@2"] == pytest.approx(1.0) and m["precision@2"] == 1.0
    assert m["ndcg@1"] == pytest.approx(1.0)


def test_excluded_item_that_would_rank_first():
    scores = np.array([[10.0, 1.0, 2.0, 3.0]])
    with_exclusion = full_sort_topk(lambda rows: scores[rows], [np.array([3])], [np.array([0])], ks=(1,))
    without = full_sort_topk(lambda rows: scores[rows], [np.array([3])], None, ks=(1,))
    assert with_exclusion["hr@1"] == 1.0 and with_exclusion["mrr@1"] == 1.0
    assert without["hr@1"] == 0.0 and without["mrr@1"] == 0.0


def test_ties_are_pessimistic_then_by_index():
    # all equal: positives go below the 3 tied negatives; tied positives by index (2 before 4)
    scores = np.zeros((1, 5))
    ranks, _ = full_sort_ranks(scores, [np.array([4, 2])])
    assert ranks[0].tolist() == [4.0, 5.0]  # sorted positives [2, 4]
    m = metrics_from_ranks(ranks, ks=(4,))
    assert m["recall@4"] == 0.5 and m["mrr@4"] == 0.25
    assert m["ndcg@4"] == pytest.approx((1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    # one tie with a negative above: item 1 ties item 0 (a negative) -> rank 2
    ranks, _ = full_sort_ranks(np.array([[3.0, 3.0, 1.0]]), [np.array([1])])
    assert ranks[0].tolist() == [2.0]


def test_users_without_positive_are_skipped_and_counted():
    scores = np.array([[1.0, 2.0], [2.0, 1.0], [0.0, 1.0]])
    positives = [np.array([1]), np.array([], dtype=np.int64), np.array([0])]
    m = full_sort_topk(lambda rows: scores[rows], positives, ks=(1,), batch_size=2)
    assert m["users"] == 2 and m["skipped_users"] == 1
    assert m["hr@1"] == 0.5 and m["recall@1"] == 0.5


def test_excluded_positive_is_dropped_and_counted():
    scores = np.array([[1.0, 2.0, 3.0]])
    m = full_sort_topk(lambda rows: scores[rows], [np.array([2])], [np.array([2])], ks=(1,))
    assert m["excluded_positives"] == 1 and m["users"] == 0 and m["skipped_users"] == 1 and m["hr@1"] is None


def test_k_larger_than_catalogue():
    scores = np.array([[0.3, 0.1, 0.2]])
    m = full_sort_topk(lambda rows: scores[rows], [np.array([1, 2])], [np.array([0])], ks=(50,))
    # 2 candidates, both positive: ranks 1, 2
    assert m["recall@50"] == 1.0 and m["ndcg@50"] == pytest.approx(1.0) and m["precision@50"] == pytest.approx(2 / 50)


def test_max_rank_skips_only_ranks_beyond_it():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 300)).round(1)  # rounding makes ties
    positives = [rng.choice(300, size=5, replace=False) for _ in range(20)]
    exact, _ = full_sort_ranks(scores, positives)
    capped, _ = full_sort_ranks(scores, positives, max_rank=20)
    for e, c in zip(exact, capped):
        assert np.array_equal(np.where(e > 20, np.inf, e), c)
    assert metrics_from_ranks(exact, (10, 20)) == metrics_from_ranks(capped, (10, 20))


def test_ranked_lists_give_the_same_ranks_as_a_full_sort():
    scores = np.array([[0.9, 0.1, 0.5, 0.7]])
    ranked = [np.argsort(-scores[0])]
    assert ranks_in_lists(ranked, [np.array([2, 9])])[0].tolist() == [3.0, math.inf]
    assert ranks_in_lists(ranked, [np.array([2])])[0].tolist() == full_sort_ranks(scores, [np.array([2])])[0][0].tolist()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="finite"):
        full_sort_ranks(np.array([[np.inf, 0.0]]), [np.array([0])])
    with pytest.raises(ValueError, match="outside"):
        full_sort_ranks(np.zeros((1, 2)), [np.array([5])])
    with pytest.raises(ValueError, match="ks must be"):
        metrics_from_ranks([np.array([1.0])], ks=(0,))
