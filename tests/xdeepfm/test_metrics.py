"""xdeepfm.metrics against hand-computed values."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xdeepfm.metrics import auc, gauc, logloss, ranking_metrics, topk_metrics


def test_auc_hand_values_and_ties():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert auc([1, 1], [0.2, 0.3]) is None


def test_auc_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500), 2)  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_logloss_hand_value():
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    users = ["a", "a", "a", "b", "b", "c"]
    y = [1, 0, 1, 0, 1, 1]
    s = [0.9, 0.8, 0.1, 0.2, 0.7, 0.5]
    # user a: AUC 1/2 over 3 impressions; user b: AUC 1 over 2; user c has one class -> skipped
    assert gauc(y, s, users) == pytest.approx((3 * 0.5 + 2 * 1.0) / 5)
    assert gauc([1, 1], [0.1, 0.2], [7, 7]) is None


def test_gauc_with_ties_matches_per_user_sklearn():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 20, 400)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.random(400), 1)
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if len(np.unique(y[m])) == 2:
            num += m.sum() * roc_auc_score(y[m], s[m])
            den += m.sum()
    assert gauc(y, s, users) == pytest.approx(num / den)


def test_topk_hand_values():
    users = ["a"] * 3 + ["b"] * 2 + ["c"] + ["d"] * 2 + ["e"] * 3
    y = [1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 1]
    s = [0.9, 0.8, 0.1, 0.2, 0.7, 0.5, 0.3, 0.4, 0.9, 0.8, 0.1]
    out = topk_metrics(y, s, users, k=2)
    # a: top-2 relevance [1, 0], DCG 1, IDCG 1 + 1/log2(3); b: [1, 0] -> 1; c: [1] -> 1;
    # d: no relevant item -> skipped; e: [0, 0] -> 0.
    ndcg_a = 1 / (1 + 1 / math.log2(3))
    assert out["ndcg@2"] == pytest.approx((ndcg_a + 1 + 1 + 0) / 4)
    assert out["hr@2"] == pytest.approx(3 / 4)
    assert out["precision@2"] == pytest.approx((0.5 + 0.5 + 0.5 + 0) / 4)


def test_topk_second_position_discount_and_bad_input():
    out = topk_metrics([0, 1], [0.9, 0.1], [1, 1], k=10)
    assert out["ndcg@10"] == pytest.approx(1 / math.log2(3))
    with pytest.raises(ValueError, match="labels must be 0/1; row 1 is 2.0"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="groups and labels differ in length: 3 vs 2"):
        gauc([0, 1], [0.1, 0.2], [1, 1, 1])


def test_ranking_metrics_keys():
    out = ranking_metrics([0, 1, 1, 0], [0.2, 0.9, 0.6, 0.4], [1, 1, 2, 2], k=10)
    assert set(out) == {"auc", "logloss", "gauc", "ndcg@10", "hr@10", "precision@10"}
    assert out["auc"] == pytest.approx(1.0) and out["gauc"] == pytest.approx(1.0)
