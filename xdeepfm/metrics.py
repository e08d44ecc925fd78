"""Ranking metrics: AUC, logloss, GAUC and per-user top-K metrics (NDCG@K, HR@K, Precision@K).

All functions take flat arrays (one entry per impression) and are vectorised with numpy.

- AUC: probability that a random positive scores above a random negative (ties count 1/2),
  computed from average ranks (Mann-Whitney U): AUC = (sum of positive ranks - P(P+1)/2) / (P N).
- logloss: -mean(y log p + (1 - y) log(1 - p)), p clipped to [1e-7, 1 - 1e-7].
- GAUC: sum_u n_u AUC_u / sum_u n_u over users whose impressions contain both classes
  (n_u = the user's impressions); users with one class are skipped.
- Per-user lists: each user's impressions are ranked by score (descending; ties keep input
  order). With binary relevance r_i at rank i (1-based) and K:
  DCG@K = sum_{i<=K} r_i / log2(i + 1), IDCG@K = DCG of the ideal order, NDCG@K = DCG/IDCG;
  HR@K = 1 if any relevant item is in the top K; Precision@K = (relevant in top K) / K.
  Each is averaged over users with at least one relevant impression (others have IDCG = 0).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

EPS = 1e-7


def _check(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(f"labels and scores differ in length: {y_true.shape[0]} vs {y_score.shape[0]}")
    if not np.isin(y_true, (0.0, 1.0)).all():
        i = int(np.flatnonzero(~np.isin(y_true, (0.0, 1.0)))[0])
        raise ValueError(f"labels must be 0/1; row {i} is {float(y_true[i])!r}")
    if not np.isfinite(y_score).all():
        raise ValueError(f"scores must be finite; row {int(np.flatnonzero(~np.isfinite(y_score))[0])} is not")
    if groups is None:
        return y_true, y_score
    groups = np.asarray(groups).reshape(-1)
    if groups.shape != y_true.shape:
        raise ValueError(f"groups and labels differ in length: {groups.shape[0]} vs {y_true.shape[0]}")
    return y_true, y_score, groups


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """ROC AUC; None when only one class is present."""
    y_true, y_score = _check(y_true, y_score)
    n_pos = y_true.sum()
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(y_score)  # average ranks for ties
    return float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Binary cross-entropy of probabilities."""
    y_true, y_prob = _check(y_true, y_prob)
    p = np.clip(y_prob, EPS, 1 - EPS)
    return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))


def _group_codes(groups: np.ndarray) -> np.ndarray:
    return np.unique(groups, return_inverse=True)[1].reshape(-1)


def gauc(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray) -> float | None:
    """Impression-weighted mean of per-group AUC over groups with both classes; None if none."""
    y_true, y_score, groups = _check(y_true, y_score, groups)
    g = _group_codes(groups)
    # rank scores within each group: sort by (group, score) and average tied ranks per group
    order = np.lexsort((y_score, g))
    gs, ss, ys = g[order], y_score[order], y_true[order]
    n_groups = g.max() + 1 if len(g) else 0
    counts = np.bincount(gs, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos_in_group = np.arange(len(gs)) - starts[gs] + 1.0  # 1-based rank before tie averaging
    # average ranks over runs of equal (group, score)
    new_run = np.ones(len(gs), bool)
    new_run[1:] = (gs[1:] != gs[:-1]) | (ss[1:] != ss[:-1])
    run_id = np.cumsum(new_run) - 1
    run_mean = np.bincount(run_id, weights=pos_in_group) / np.bincount(run_id)
    ranks = run_mean[run_id]
    n_pos = np.bincount(gs, weights=ys, minlength=n_groups)
    n_neg = counts - n_pos
    pos_rank_sum = np.bincount(gs, weights=ranks * ys, minlength=n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return None
    per_group = (pos_rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    return float(np.sum(per_group * counts[valid]) / counts[valid].sum())


def topk_metrics(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray, k: int = 10) -> dict[str, float | None]:
    """``{"ndcg@k", "hr@k", "precision@k"}`` averaged over groups with a relevant impression."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y_true, y_score, groups = _check(y_true, y_score, groups)
    names = (f"ndcg@{k}", f"hr@{k}", f"precision@{k}")
    g = _group_codes(groups)
    if len(g) == 0:
        return dict.fromkeys(names)
    n_groups = g.max() + 1
    order = np.lexsort((np.arange(len(g)), -y_score, g))  # by group, score desc, input order
    gs, ys = g[order], y_true[order]
    counts = np.bincount(gs, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(gs)) - starts[gs] + 1  # 1-based rank within the group
    in_top = rank <= k
    discount = 1.0 / np.log2(rank + 1.0)
    dcg = np.bincount(gs, weights=ys * discount * in_top, minlength=n_groups)
    hits = np.bincount(gs, weights=ys * in_top, minlength=n_groups)
    n_rel = np.bincount(gs, weights=ys, minlength=n_groups)
    ideal_len = np.minimum(n_rel, k).astype(np.int64)
    cum_discount = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = cum_discount[ideal_len]
    valid = n_rel > 0
    if not valid.any():
        return dict.fromkeys(names)
    return {
        names[0]: float(np.mean(dcg[valid] / idcg[valid])),
        names[1]: float(np.mean(hits[valid] > 0)),
        names[2]: float(np.mean(hits[valid] / k)),
    }


def ranking_metrics(y_true: np.ndarray, y_prob: np.ndarray, users: np.ndarray, k: int = 10) -> dict[str, float | None]:
    """All metrics for one split: auc, logloss, gauc, ndcg@k, hr@k, precision@k."""
    return {
        "auc": auc(y_true, y_prob),
        "logloss": logloss(y_true, y_prob),
        "gauc": gauc(y_true, y_prob, users),
        **topk_metrics(y_true, y_prob, users, k),
    }
