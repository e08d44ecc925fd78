"""Ranking metrics: AUC, logloss, GAUC, per-user top-K metrics (NDCG@K, HR@K, Precision@K) and the
full-catalogue top-K protocol (Recall@K, NDCG@K, HR@K, MRR@K; `full_sort_topk`, block comment below).

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


# --------------------------------------------------------------------------- full-catalogue top-K
#
# RecBole's "full sort" protocol: every evaluated user ranks the whole catalogue except the items
# excluded for them (their training interactions; for the test split also their validation ones,
# as RecBole does), and the positives are the user's held-out items with label 1.
#
# For a user u with positives P_u (|P_u| >= 1) and the rank r_p (1-based) of each positive:
#   Recall@K = |{p: r_p <= K}| / |P_u|                 (RecBole: hits over all positives)
#   HR@K     = 1 if some r_p <= K else 0
#   NDCG@K   = sum_{p: r_p <= K} 1/log2(r_p + 1) / sum_{i=1}^{min(|P_u|, K)} 1/log2(i + 1)
#   MRR@K    = 1 / min_p r_p if min_p r_p <= K else 0
#   Precision@K = |{p: r_p <= K}| / K
# each averaged over the users with at least one positive; users without one are skipped and
# counted (``skipped_users``). A positive that is also excluded is dropped from P_u (counted in
# ``excluded_positives``). K larger than the catalogue is allowed: the list is then every candidate.
#
# Tie rule (pessimistic): candidates are ordered by score descending; a positive ranks below every
# non-positive candidate with the same score, and tied positives are ordered by item index. So
#   r_p = 1 + #{j candidate: s_j > s_p} + #{j candidate, j not in P_u: s_j = s_p}
#           + #{q in P_u: s_q = s_p, q < p}
# and a model that gives every item the same score gets no credit for the order of the catalogue.

DEFAULT_KS = (10, 20, 50)


def metrics_from_ranks(ranks: list[np.ndarray], ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float | int | None]:
    """Recall/NDCG/HR/MRR/Precision@K from each user's positive ranks (1-based; ``np.inf`` = not ranked).

    ``ranks[u]`` holds one entry per positive of user u; users with an empty array are skipped.
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be >= 1, got {list(ks)}")
    kept = [np.asarray(r, dtype=np.float64) for r in ranks if len(r)]
    out: dict[str, float | int | None] = {"users": len(kept), "skipped_users": len(ranks) - len(kept)}
    for k in ks:
        if not kept:
            out.update({f"{m}@{k}": None for m in ("recall", "ndcg", "hr", "mrr", "precision")})
            continue
        discount = 1.0 / np.log2(np.arange(2, k + 2))
        recall, ndcg, hr, mrr, precision = [], [], [], [], []
        for r in kept:
            hit = r[r <= k]
            recall.append(len(hit) / len(r))
            ndcg.append(float(np.sum(1.0 / np.log2(hit + 1.0))) / discount[: min(len(r), k)].sum())
            hr.append(float(len(hit) > 0))
            mrr.append(1.0 / hit.min() if len(hit) else 0.0)
            precision.append(len(hit) / k)
        out.update({f"recall@{k}": float(np.mean(recall)), f"ndcg@{k}": float(np.mean(ndcg)), f"hr@{k}": float(np.mean(hr)),
                    f"mrr@{k}": float(np.mean(mrr)), f"precision@{k}": float(np.mean(precision))})
    return out


def ranks_in_lists(lists: list[np.ndarray], positives: list[np.ndarray]) -> list[np.ndarray]:
    """Each positive's 1-based position in its user's ranked list (``np.inf`` when absent)."""
    if len(lists) != len(positives):
        raise ValueError(f"{len(lists)} ranked lists but {len(positives)} positive sets")
    out = []
    for ranked, pos in zip(lists, positives):
        position = {item: i + 1 for i, item in enumerate(np.asarray(ranked).tolist())}
        out.append(np.array([position.get(p, np.inf) for p in np.unique(np.asarray(pos)).tolist()], dtype=np.float64))
    return out


def full_sort_ranks(scores: np.ndarray, positives: list[np.ndarray], exclude: list[np.ndarray] | None = None,
                    max_rank: int | None = None) -> tuple[list[np.ndarray], int]:
    """Pessimistic ranks (see the tie rule above) of each user's positives among the non-excluded items.

    ``scores`` is (B, n_items); ``positives[b]`` / ``exclude[b]`` are item column indices of row b.
    With ``max_rank``, ranks above it are reported as ``np.inf`` without being counted exactly
    (a positive scoring below the ``max_rank``-th best candidate is skipped by one ``np.partition``).
    Returns (ranks per row, positives dropped because they were excluded).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(positives):
        raise ValueError(f"scores must be (users, items) with one row per positive set; got {scores.shape} for {len(positives)} users")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (exclusions are passed as `exclude`, not as -inf)")
    n_items = scores.shape[1]
    ranks, dropped = [], 0
    for b, pos in enumerate(positives):
        pos = np.unique(np.asarray(pos, dtype=np.int64))
        candidate = np.ones(n_items, bool)
        if exclude is not None and len(exclude[b]):
            candidate[np.asarray(exclude[b], dtype=np.int64)] = False
        if len(pos) and (pos.min() < 0 or pos.max() >= n_items):
            raise ValueError(f"row {b}: positive item index outside 0..{n_items - 1}")
        dropped += int((~candidate[pos]).sum())
        pos = pos[candidate[pos]]
        if not len(pos):
            ranks.append(np.zeros(0))
            continue
        row = scores[b, candidate]
        is_pos = np.zeros(n_items, bool)
        is_pos[pos] = True
        neg = row[~is_pos[candidate]]
        s = scores[b, pos]  # (P,), pos sorted by index so "q < p" is "earlier in pos"
        rank = np.full(len(pos), np.inf)
        live = np.ones(len(pos), bool)
        if max_rank is not None and max_rank < len(row):
            live = s >= np.partition(row, len(row) - max_rank)[len(row) - max_rank]  # the max_rank-th best score
        sl = s[live]
        greater = (row[None, :] > sl[:, None]).sum(1)
        tied_neg = (neg[None, :] == sl[:, None]).sum(1)
        tied_pos_before = (np.tril(s[None, :] == s[:, None], k=-1).sum(1))[live]
        rank[live] = 1 + greater + tied_neg + tied_pos_before
        if max_rank is not None:
            rank[rank > max_rank] = np.inf
        ranks.append(rank)
    return ranks, dropped


def full_sort_topk(score_fn, positives: list[np.ndarray], exclude: list[np.ndarray] | None = None,
                   ks: tuple[int, ...] = DEFAULT_KS, batch_size: int = 256) -> dict[str, float | int | None]:
    """The full-catalogue top-K metrics of ``score_fn`` (RecBole's full sort; see the block comment above).

    ``score_fn(rows)`` returns the (len(rows), n_items) scores of the users at positions ``rows``
    (0..len(positives)-1), called in batches of ``batch_size``; ``positives`` / ``exclude`` hold
    item column indices per user. Adds ``excluded_positives`` to the metrics.
    """
    if exclude is not None and len(exclude) != len(positives):
        raise ValueError(f"{len(positives)} positive sets but {len(exclude)} exclusion sets")
    ranks, dropped = [], 0
    for start in range(0, len(positives), batch_size):
        rows = np.arange(start, min(start + batch_size, len(positives)))
        scores = np.asarray(score_fn(rows))
        if scores.shape[0] != len(rows):
            raise ValueError(f"score_fn returned {scores.shape[0]} rows for {len(rows)} users")
        r, d = full_sort_ranks(scores, [positives[i] for i in rows], None if exclude is None else [exclude[i] for i in rows],
                               max_rank=max(ks))
        ranks.extend(r)
        dropped += d
    return {**metrics_from_ranks(ranks, ks), "excluded_positives": dropped}
