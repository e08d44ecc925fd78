"""The two-stage evaluation of ``xdeepfm.recall_eval``: the full list built from the merged candidates and
the ranker, its full-sort metrics with positives outside the merge, the fusion, and the pair scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmcore.config import to_dict
from tests.serving_factory import USER_COLUMNS, tiny_ranking
from tests.xdeepfm.test_history import tiny_frame, tiny_spec
from xdeepfm.checkpoint import load_ranking_checkpoint, save_ranking_checkpoint
from xdeepfm.features import FeaturePipeline, load_spec
from xdeepfm.history import HistoryConfig, add_history
from xdeepfm.metrics import full_sort_ranks, metrics_from_ranks
from xdeepfm.model import RankerConfig, XDeepFMRanker, stack_inputs
from xdeepfm.recall import Columns
from xdeepfm.recall_eval import (
    PairScorer,
    TwoStageConfig,
    catalogue,
    channel_orders,
    choose,
    fusion_channels,
    load_recall_experiment,
    merge_lists,
    rrf,
    two_stage_ranks,
    two_stage_scores,
    user_frame,
    users_as_of,
)
from xdeepfm.recall_eval import TestSet as EvalUsers

ROOT = Path(__file__).resolve().parents[2]


def order_of(scores: np.ndarray) -> list[int]:
    """Items best first (ties by position), as the full sort reads a dense score row."""
    return np.lexsort((np.arange(len(scores)), -scores)).tolist()


def test_candidates_come_first_in_their_own_order_then_the_rest():
    # 7 items; the merge proposed 4, 1, 2; the ranker prefers 1 > 2 > 4; the rest go by the fallback score
    rest = np.array([0.9, 0.0, 0.0, 0.1, 0.0, 0.5, 0.3])
    dense = two_stage_scores(np.array([4, 1, 2]), np.array([0.1, 0.9, 0.5]), rest)
    assert order_of(dense) == [1, 2, 4, 0, 5, 6, 3]
    # a candidate with the worst possible fallback still ranks above every non-candidate
    assert dense[[1, 2, 4]].min() > dense[[0, 3, 5, 6]].max()


def test_full_list_metrics_with_a_positive_outside_the_merge():
    rest = np.array([0.9, 0.0, 0.0, 0.1, 0.0, 0.5, 0.3])
    dense = two_stage_scores(np.array([4, 1, 2]), np.array([0.1, 0.9, 0.5]), rest)[None, :]
    # positives: item 2 (a candidate, 2nd) and item 5 (outside the merge: 3 candidates + item 0 before it -> 5th);
    # item 6 is excluded (seen in training), so it takes no place
    ranks, dropped = full_sort_ranks(dense, [np.array([2, 5])], [np.array([6])])
    assert dropped == 0
    np.testing.assert_array_equal(ranks[0], [2, 5])
    m = metrics_from_ranks(ranks, (1, 3, 5))
    assert m["recall@3"] == 0.5 and m["recall@5"] == 1.0 and m["mrr@5"] == 0.5
    ideal = 1 + 1 / np.log2(3)
    assert m["ndcg@5"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(6)) / ideal)
    # excluding a candidate item that is before the outside positive moves it up one place
    ranks, _ = full_sort_ranks(dense, [np.array([5])], [np.array([0])])
    np.testing.assert_array_equal(ranks[0], [4])


def test_ties_among_candidates_stay_ties_and_count_pessimistically():
    dense = two_stage_scores(np.array([0, 1]), np.array([0.5, 0.5]), np.zeros(4))[None, :]
    ranks, _ = full_sort_ranks(dense, [np.array([0])])
    assert ranks[0][0] == 2  # tied with candidate 1, a non-positive: ranks below it


def test_two_stage_scores_refuses_repeated_candidates():
    with pytest.raises(ValueError, match="distinct"):
        two_stage_scores(np.array([1, 1]), np.array([0.1, 0.2]), np.zeros(3))


def test_channel_orders_put_excluded_items_last_and_break_ties_by_position():
    scores = np.array([[0.2, 0.9, 0.2, 0.5], [1.0, 1.0, 1.0, 1.0]])
    ranks = channel_orders(scores, [np.array([1]), np.array([], dtype=np.int64)])
    np.testing.assert_array_equal(ranks[0], [2, 4, 3, 1])
    np.testing.assert_array_equal(ranks[1], [1, 2, 3, 4])
    fused = rrf([ranks, ranks[::-1]], 1.0)
    np.testing.assert_allclose(fused[0], 1 / (1 + ranks[0]) + 1 / (1 + ranks[1]))


def test_two_stage_config_checks_its_values():
    with pytest.raises(ValueError, match="select"):
        TwoStageConfig(select="ndcg")
    with pytest.raises(ValueError, match="alphas"):
        TwoStageConfig(alphas=[])


def test_the_pair_scorer_equals_the_ranker_on_the_pipelines_rows():
    tiny = tiny_ranking()
    frame = tiny.frame.copy()
    for column in ("genres", "price", "title"):  # one value per item, as a catalogue has
        frame[column] = frame.groupby("item_id")[column].transform("first")
    users = frame.drop_duplicates("user_id").set_index("user_id", drop=False)
    items = frame.drop_duplicates("item_id").sort_values("item_id").reset_index(drop=True)
    scorer = PairScorer(tiny.checkpoint, users, items, [c for c in USER_COLUMNS])
    some = users.index.to_numpy()[:3]
    got = scorer.score(some, batch_rows=7)
    assert got.shape == (3, len(items))
    # the reference: the cross product written out as rows and encoded by the checkpoint's pipeline
    cross = pd.concat([items.drop(columns=USER_COLUMNS).assign(**users.loc[u, USER_COLUMNS].to_dict()) for u in some])
    ckpt = load_ranking_checkpoint(tiny.checkpoint)
    model = XDeepFMRanker([ckpt.features.fitted[f.name] for f in ckpt.features.spec.fields], RankerConfig(**ckpt.config["model"]))
    model.load_state_dict(ckpt.model_state)
    model.eval()
    with torch.no_grad():
        want = torch.sigmoid(model(torch.from_numpy(stack_inputs(ckpt.features.transform(cross), model.columns)))).numpy()
    np.testing.assert_allclose(got.reshape(-1), want, atol=1e-5)
    pairs = scorer.score_pairs(some, [np.array([3, 0]), np.array([], dtype=np.int64), np.array([5])])
    np.testing.assert_allclose(pairs[0], got[0, [3, 0]], atol=1e-6)
    assert len(pairs[1]) == 0
    np.testing.assert_allclose(pairs[2], got[2, [5]], atol=1e-6)
    with pytest.raises(KeyError, match="without a feature row"):
        scorer.score(np.array([12345]))


def test_the_pair_scorer_refuses_unknown_user_fields():
    tiny = tiny_ranking()
    users = tiny.frame.drop_duplicates("user_id").set_index("user_id", drop=False)
    items = tiny.frame.drop_duplicates("item_id")
    with pytest.raises(ValueError, match="user_fields"):
        PairScorer(tiny.checkpoint, users, items, ["user_id", "nope"])


class FixedChannel:
    """A channel with given dense scores per user (catalogue = item ids 0..n-1)."""

    def __init__(self, scores: dict):
        self.scores = scores
        self.index = pd.Index(np.arange(len(next(iter(scores.values())))))

    def score(self, users):
        return np.stack([self.scores[u] for u in users])

    def item_positions(self, ids):
        return self.index.get_indexer(ids)


class FixedScorer:
    def __init__(self, probs: dict):
        self.probs = probs

    def score(self, users, batch_rows=None):
        return np.stack([self.probs[u] for u in users]).astype(np.float32)

    def score_pairs(self, users, items, batch_rows=None):
        return [self.probs[u][i].astype(np.float32) for u, i in zip(users, items)]


def test_two_stage_ranks_on_a_hand_made_case():
    # one user, 6 items; item 5 was seen (excluded); the merge proposed 0, 1, 2; positives 2 and 4 (4 is outside the merge)
    data = EvalUsers(
        users=np.array(["u"]), positives=[np.array([2, 4])], exclude=[np.array([5])], cold_items=set(), skipped_users=0
    )
    channel = FixedChannel({"u": np.array([0.9, 0.8, 0.7, 0.1, 0.6, 1.0])})  # its order without 5: 0, 1, 2, 4, 3
    scorer = FixedScorer({"u": np.array([0.1, 0.2, 0.9, 0.5, 0.3, 0.4])})
    cfg = TwoStageConfig(alphas=[0.0, 100.0], rrf_k=0.0)
    for alone in (True, False):
        ranks = two_stage_ranks(
            data.users, data, [np.array([0, 1, 2])], {"m": {"c": channel}}, scorer, np.arange(6), cfg, [10], 8, ranker_alone=alone
        )
        # alpha 0: the candidates by the ranker (2, 1, 0), then the rest by the channel (4, 3)
        np.testing.assert_array_equal(ranks["m/alpha=0"][0], [1, 4])
        # alpha 100 and the fusion: the candidates by the channel (0, 1, 2), then 4
        np.testing.assert_array_equal(ranks["m/alpha=100"][0], [3, 4])
        np.testing.assert_array_equal(ranks["m/fusion"][0], [3, 4])
        np.testing.assert_array_equal(ranks["m/channel=c"][0], [3, 4])
        assert ("ranker" in ranks) == alone
    # the ranker alone over the catalogue without item 5: 2 (0.9), 3, 4 (0.3) ...
    alone = two_stage_ranks(data.users, data, [np.array([0, 1, 2])], {"m": {"c": channel}}, scorer, np.arange(6), cfg, [10], 8)
    np.testing.assert_array_equal(alone["ranker"][0], [1, 3])


def test_a_fusion_channel_outside_the_channels_is_refused():
    with pytest.raises(ValueError, match=r"ranker.fusion or ranker.quota_options names \['bpr'\]"):
        load_recall_experiment(
            ROOT / "configs" / "recall_ml100k.yaml",
            ["channels=[popularity,itemcf]", "merge.quotas={itemcf: 10}", "ranker.fusion=[bpr]"],
        )


def test_the_quota_option_and_alpha_are_chosen_on_valid_with_ties_to_the_earlier_and_smaller():
    on_valid = {(0, 0.0): 0.20, (0, 1.0): 0.25, (1, 0.0): 0.25, (1, 2.0): 0.24, (2, 4.0): 0.25}
    assert choose(on_valid) == (0, 1.0)  # three tie at 0.25: option 0 first
    on_valid[(2, 8.0)] = 0.30
    assert choose(on_valid) == (2, 8.0)
    assert choose({(0, 2.0): 0.1, (0, 0.5): 0.1}) == (0, 0.5)


def test_merge_lists_follows_each_options_quotas():
    lists = {"a": [np.array([1, 2, 3, 4])], "b": [np.array([3, 5, 6, 7])]}
    (items, names), = merge_lists(lists, ["a", "b"], 1, 4, {"b": 3, "a": 1})
    assert items.tolist() == [3, 5, 6, 1] and names.tolist() == ["b", "b", "b", "a"]
    (items, names), = merge_lists(lists, ["a", "b"], 1, 4, {"a": 4})
    assert items.tolist() == [1, 2, 3, 4] and set(names) == {"a"}


def test_quota_options_are_checked_against_the_channels_and_their_values():
    path = ROOT / "configs" / "recall_ml100k.yaml"
    cfg = load_recall_experiment(path, ["ranker.quota_options=[{two_tower: 150, bpr: 50}, {itemcf: 200}]"])
    assert cfg.ranker.quota_options == [{"two_tower": 150, "bpr": 50}, {"itemcf": 200}]
    assert fusion_channels(cfg, {"two_tower": 150, "bpr": 50, "itemcf": 0}) == ["two_tower", "bpr"]
    assert fusion_channels(cfg) == ["two_tower", "itemcf", "popularity"]  # merge.quotas
    with pytest.raises(ValueError, match=r"ranker.quota_options names \['nope'\]"):
        load_recall_experiment(path, ["ranker.run=runs/x", "ranker.quota_options=[{nope: 10}]"])
    # without a ranker the options are not read: a recall-only run with fewer channels loads
    assert load_recall_experiment(path, ["channels=[popularity,itemcf]", "merge.quotas={itemcf: 10}"]).ranker.run is None
    with pytest.raises(ValueError, match=r"quota_options\[0\].*ints >= 0, one > 0"):
        load_recall_experiment(path, ["ranker.quota_options=[{itemcf: -1}]"])
    with pytest.raises(ValueError, match=r"quota_options\[1\]"):
        load_recall_experiment(path, ["ranker.quota_options=[{itemcf: 10}, {itemcf: 0}]"])


def test_a_history_ranker_reads_each_users_history_as_of_their_first_row_of_the_split(tmp_path):
    frame = tiny_frame(seed=3)
    frame["brand"] = frame.groupby("item_id")["brand"].transform("first")  # one catalogue row per item
    cut = frame["timestamp"] >= 40
    splits = {"train": frame[~cut].reset_index(drop=True), "valid": frame.iloc[:0], "test": frame[cut].reset_index(drop=True)}
    history = HistoryConfig(max_len=4)
    spec = load_spec(tiny_spec(tmp_path))
    pipeline = FeaturePipeline(spec).fit(add_history({"train": splits["train"]}, history)["train"])
    config = RankerConfig(embedding_dim=4, cin_layer_sizes=[4], dnn_hidden_units=[8], attention_hidden_units=[4], init_std=0.3)
    model = XDeepFMRanker([pipeline.fitted[f.name] for f in spec.fields], config, seed=0)
    model.eval()
    path = tmp_path / "best.safetensors"
    save_ranking_checkpoint(path, config={"task": "ranking", "train": {"seed": 0}, "model": to_dict(config),
                                          "history": to_dict(history)},
                            features=pipeline, model=model, metrics={}, state={"epoch": 0})
    columns = Columns(user="user_id", item="item_id", label="label", time="timestamp")
    assert PairScorer.history_of(path) == history
    users = users_as_of(splits, columns, "test", history)
    # a user's history: their positives strictly before their first test row, newest first (ties by item id)
    for user in users.index[:5]:
        first = splits["test"].loc[splits["test"].user_id == user, "timestamp"].min()
        earlier = frame[(frame.user_id == user) & (frame.timestamp < first) & (frame.label == 1)]
        want = earlier.sort_values(["timestamp", "item_id"], ascending=False)["item_id"].tolist()[:4]
        assert users.loc[user, "history"] == "|".join(want)
    items = catalogue(splits, columns)
    with pytest.raises(ValueError, match=r"no column \['history'\].*users_as_of"):
        PairScorer(path, user_frame(splits, columns), items, ["user_id", "age"])
    scorer = PairScorer(path, users, items, ["user_id", "age"])
    some = users.index.to_numpy()[:3]
    got = scorer.score(some)
    # the reference: every (user, item) row written out with the user's history string, encoded by the pipeline
    cross = pd.concat([items.assign(user_id=u, age=users.loc[u, "age"], history=users.loc[u, "history"]) for u in some])
    with torch.no_grad():
        want = torch.sigmoid(model(torch.from_numpy(stack_inputs(pipeline.transform(cross), model.columns)))).numpy()
    np.testing.assert_allclose(got.reshape(-1), want, atol=1e-5)
    assert np.ptp(got) > 1e-3  # the scores do differ between users and items
