"""Behaviour histories (xdeepfm.history), the ``sequence`` feature kind and DIN target attention.

Histories: hand cases, and a property test against a brute-force reference that also checks that no
impression ever sees its own item at its own time or anything later. The sequence field: encoding,
content tables, save/load. The model: empty history -> zero interest, padding masked, FastRanker and
the exported ScoringEngine equal to the model, explain's completeness with the history as one group.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcore.config import to_dict
from xdeepfm.data.movielens import default_root
from xdeepfm.explain import attribute
from xdeepfm.features import FeaturePipeline, load_spec
from xdeepfm.history import HistoryConfig, StatConfig, add_history, build_history
from xdeepfm.inference import FastRanker
from xdeepfm.model import RankerConfig, XDeepFMRanker, stack_inputs

# ------------------------------------------------------------------------------------------ histories


def events(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"])


def test_hand_made_histories_newest_first_strictly_earlier_positives_only():
    frame = events([
        (1, "a", 10, 1), (1, "b", 20, 1), (1, "c", 30, 0),  # c: a negative, never in a history
        (1, "d", 30, 1), (1, "e", 40, 1), (1, "f", 40, 1),  # e, f: the same second
        (2, "a", 5, 1), (2, "z", 50, 1),
    ])
    history = build_history(frame, frame, HistoryConfig(max_len=3))
    assert history.tolist() == [
        "",  # (1, a, 10): nothing earlier
        "a",
        "b|a",  # (1, c, 30): d has the same second -> excluded
        "b|a",
        "d|b|a",  # (1, e, 40): f is in the same second
        "d|b|a",
        "",  # user 2 sees nothing of user 1
        "a",
    ]
    assert build_history(frame, frame, HistoryConfig(max_len=1)).tolist()[4] == "d"  # truncated to the newest


def test_history_from_train_uses_only_training_interactions():
    train = events([(1, "a", 10, 1), (1, "b", 30, 1)])
    test = events([(1, "t", 20, 1), (1, "u", 40, 0)])
    streamed = add_history({"train": train, "test": test}, HistoryConfig(history_from="all"))
    assert streamed["test"]["history"].tolist() == ["a", "b|t|a"]  # the earlier test event t is known at 40
    assert streamed["train"]["history"].tolist() == ["", "t|a"]
    train_only = add_history({"train": train, "test": test}, HistoryConfig(history_from="train"))
    assert train_only["test"]["history"].tolist() == ["a", "b|a"]
    assert train_only["train"]["history"].tolist() == ["", "a"]


def test_history_config_errors_name_the_column():
    with pytest.raises(ValueError, match=r"history needs columns \['timestamp'\]"):
        build_history(pd.DataFrame({"user_id": [1]}), events([]), HistoryConfig())
    with pytest.raises(ValueError, match="max_len"):
        HistoryConfig(max_len=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(0, 8), st.integers(0, 1)),
                min_size=1, max_size=40),
       st.integers(1, 4))
def test_no_leakage_property_equals_brute_force(rows, max_len):
    frame = events([(u, f"i{i}", t, y) for u, i, t, y in rows])
    history = build_history(frame, frame, HistoryConfig(max_len=max_len)).tolist()
    for k, (user, item, time, _) in enumerate(frame.itertuples(index=False)):
        earlier = frame[(frame.user_id == user) & (frame.timestamp < time) & (frame.label >= 1)]
        earlier = earlier.sort_values(["timestamp", "item_id"], ascending=False, kind="stable")
        assert history[k] == "|".join(earlier.item_id.tolist()[:max_len])
        seen = set(history[k].split("|")) - {""}
        later_or_now = frame[(frame.user_id == user) & (frame.timestamp >= time)]
        # no item of the history is explained only by an event at or after the row's time
        for past in seen:
            assert ((frame.user_id == user) & (frame.item_id == past) & (frame.timestamp < time)).any()
        if item in seen:  # the row's own item may appear only through an earlier interaction with it
            assert ((frame.user_id == user) & (frame.item_id == item) & (frame.timestamp < time)).any()
        assert len(later_or_now) >= 1


# ------------------------------------------------------------------------------------------ the sequence field

GENRES = ["Action", "Comedy", "Drama", "War"]


def tiny_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users, items = rng.integers(1, 13, n), rng.integers(1, 16, n)
    frame = pd.DataFrame({
        "user_id": users, "item_id": [f"i{i}" for i in items], "timestamp": rng.integers(0, 50, n),
        "genres": ["|".join(GENRES[j] for j in range(4) if (i >> j) & 1) or "Drama" for i in items],
        "brand": [f"b{i % 3}" for i in items], "age": (18 + users).astype(float),
    })
    frame["label"] = (rng.random(n) < 0.5).astype(np.float32)
    return frame


def tiny_spec(tmp_path, content=("genres", "brand", "sem"), max_len=4) -> dict:
    np.savez(tmp_path / "sem.npz", ids=np.array([f"i{i}" for i in range(1, 16)]),
             vectors=np.random.default_rng(1).normal(size=(15, 3)).astype(np.float32))
    return {"fields": [
        {"name": "user_id", "kind": "categorical"},
        {"name": "item_id", "kind": "categorical"},
        {"name": "genres", "kind": "multi_valued", "max_len": 3},
        {"name": "brand", "kind": "categorical"},
        {"name": "age", "kind": "numeric"},
        {"name": "sem", "kind": "vector", "path": str(tmp_path / "sem.npz"), "key_column": "item_id"},
        {"name": "history", "kind": "sequence", "target": "item_id", "content": list(content), "max_len": max_len},
    ]}


@pytest.fixture
def fitted(tmp_path):
    frame = add_history({"train": tiny_frame()}, HistoryConfig(max_len=4))["train"]
    pipeline = FeaturePipeline(load_spec(tiny_spec(tmp_path))).fit(frame)
    return pipeline, frame


def test_sequence_codes_share_the_target_vocabulary_and_content_tables(fitted):
    pipeline, frame = fitted
    encoded = pipeline.transform(pd.DataFrame({**frame.iloc[:2].to_dict("list"), "history": ["i3|i1|new", ["i2"]]}))
    vocabulary = pipeline.fitted["item_id"].vocabulary
    code = {v: i + 1 for i, v in enumerate(vocabulary)}
    assert encoded["history"].tolist() == [[code["i3"], code["i1"], 0, 0], [code["i2"], 0, 0, 0]]  # "new" -> 0
    tables = pipeline.fitted["history"].content
    assert sorted(tables) == ["brand", "genres", "sem"] and tables["sem"].shape == (len(vocabulary) + 1, 3)
    assert not tables["genres"][0].any() and not tables["sem"][0].any()  # row 0: OOV / padding
    row = frame[frame.item_id == "i5"].iloc[[0]]
    for name in ("genres", "brand", "sem"):  # the item's content is its own encoding
        np.testing.assert_array_equal(tables[name][code["i5"]].reshape(-1), pipeline.transform(row)[name].reshape(-1))


def test_sequence_pipeline_save_load_round_trip(fitted, tmp_path):
    pipeline, frame = fitted
    pipeline.save(tmp_path / "saved")
    loaded = FeaturePipeline.load(tmp_path / "saved")
    for name, table in pipeline.fitted["history"].content.items():
        np.testing.assert_array_equal(loaded.fitted["history"].content[name], table)
        assert loaded.fitted["history"].content[name].dtype == table.dtype
    for name, value in pipeline.transform(frame).items():
        np.testing.assert_array_equal(loaded.transform(frame)[name], value)


def test_sequence_spec_errors(tmp_path):
    spec = tiny_spec(tmp_path)
    spec["fields"][-1]["target"] = "genres"
    with pytest.raises(ValueError, match="target 'genres' must name a categorical field"):
        load_spec(spec)
    spec = tiny_spec(tmp_path, content=("age",))
    with pytest.raises(ValueError, match="content field 'age' must name a field of kind"):
        load_spec(spec)


# ------------------------------------------------------------------------------------------ the model

CONFIG = RankerConfig(embedding_dim=4, fields_per_vector=2, cin_layer_sizes=[6, 4], dnn_hidden_units=[8],
                      attention_hidden_units=[6, 3])


def scaled_model(pipeline, config=CONFIG, seed=0) -> XDeepFMRanker:
    """A model with weights at a realistic scale (the 1e-4 init leaves every logit at the bias)."""
    model = XDeepFMRanker([pipeline.fitted[f.name] for f in pipeline.spec.fields], config, seed=seed)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model.eval()


def inputs(pipeline, frame, model) -> torch.Tensor:
    return torch.from_numpy(stack_inputs(pipeline.transform(frame), model.columns))


def test_empty_history_gives_zero_interest_and_padding_is_masked(fitted):
    pipeline, frame = fitted
    model = scaled_model(pipeline)
    X = inputs(pipeline, frame, model)
    start, end = model.feature_index["history"]
    assert model.n_fields == 2 + 1 + 1 + 2 + 4  # user, item, brand; genres; sem x 2; history 1 + 3 content
    empty = X.clone()
    empty[:, start:end] = 0
    with torch.no_grad():
        assert model.interest_fields(empty, "history").abs().max() == 0
        nonzero = model.interest_fields(X, "history").abs().amax((1, 2)) > 0
        assert torch.equal(nonzero, X[:, start] != 0)  # zero exactly where the history is empty
        before = model(X)
        # code 0 is padding: what its table row holds must not matter (rows whose candidate is not OOV)
        model.embedding_dict["item_id"].weight[0] += 100.0
        assert torch.allclose(model(X), before, atol=1e-6)
        # nor where the padding sits: [x, y, 0, 0] and [x, 0, 0, y] pool the same interest
        two = X[X[:, start + 1] != 0][:, :].clone()
        two[:, start + 2:end] = 0
        moved = two.clone()
        moved[:, start + 1] = 0
        moved[:, end - 1] = two[:, start + 1]
        assert len(two) > 10
        np.testing.assert_allclose(model.interest_fields(moved, "history").numpy(),
                                   model.interest_fields(two, "history").numpy(), atol=1e-6)
        one = two.clone()
        one[:, start + 1] = 0
        assert not torch.allclose(model(one), model(two))  # the second item is used


def attention_model_and_inputs(fitted, softmax: bool):
    """A scaled model with (softmax: True) or without softmax attention, and inputs whose first 5 histories are empty."""
    pipeline, frame = fitted
    config = RankerConfig(**{**to_dict(CONFIG), "attention_softmax": softmax, "attention_activation": "relu"
                             if softmax else "sigmoid"})
    model = scaled_model(pipeline, config)
    X = inputs(pipeline, frame, model)
    X[:5, slice(*model.feature_index["history"])] = 0  # empty histories
    return model, X


@pytest.mark.parametrize("softmax", [False, True])
def test_fast_ranker_equals_the_model_with_a_sequence_field(fitted, softmax):
    model, X = attention_model_and_inputs(fitted, softmax)
    with torch.no_grad():
        expected = model(X)
        got = FastRanker.from_model(model, chunk_rows=64)(X)
    assert expected.std() > 0.1
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_explain_completeness_with_the_history_as_one_group(fitted):
    pipeline, frame = fitted
    model = scaled_model(pipeline)
    X = inputs(pipeline, frame.iloc[:20], model)
    result = attribute(model, X)
    assert "history" in result.groups and result.members["history"] == ["history"]
    assert result.method == "exact" and result.completeness_error() < 1e-4
    assert np.abs(result.values[:, result.groups.index("history")]).max() > 1e-3  # the history gets credit
    empty = X.clone()
    empty[:, slice(*model.feature_index["history"])] = 0
    assert np.abs(attribute(model, empty).values[:, result.groups.index("history")]).max() < 1e-6  # = the baseline


def test_exported_engine_encodes_a_history_string_or_list_like_the_model(fitted, tmp_path):
    from xdeepfm.checkpoint import save_ranking_checkpoint
    from xdeepfm.export import export_checkpoint
    from xdeepfm.serving import ScoringEngine

    pipeline, frame = fitted
    model = scaled_model(pipeline)
    ckpt = tmp_path / "best.safetensors"
    save_ranking_checkpoint(ckpt, config={"task": "ranking", "train": {"seed": 0}, "model": to_dict(CONFIG)},
                            features=pipeline, model=model, metrics={"valid": {"auc": 0.5}, "best_epoch": 1},
                            state={"epoch": 1})
    engine = ScoringEngine.load(export_checkpoint(ckpt, tmp_path / "artifact"))
    rows = frame.iloc[:30]
    records = [{"user_id": int(r.user_id), "item_id": r.item_id, "genres": r.genres, "brand": r.brand,
                "age": float(r.age), "history": r.history} for r in rows.itertuples()]
    with torch.no_grad():
        expected = torch.sigmoid(model(inputs(pipeline, rows, model))).numpy()
    np.testing.assert_allclose(engine.score(records).scores, expected, atol=1e-6)
    as_lists = [{**r, "history": [t for t in r["history"].split("|") if t]} for r in records]
    np.testing.assert_allclose(engine.score(as_lists).scores, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------ the trainer


def tiny_history_experiment(tmp_path) -> dict:
    """A ranking config with a DIN history over 3,000 ML-100K rows, small enough to train in seconds."""
    return {
        "task": "ranking",
        "data": {"root": str(default_root()), "split": "random", "max_rows": 3000},
        "features": {"fields": [
            {"name": "user_id", "kind": "categorical"}, {"name": "item_id", "kind": "categorical"},
            {"name": "genres", "kind": "multi_valued", "max_len": 4},
            {"name": "history", "kind": "sequence", "target": "item_id", "content": ["genres"], "max_len": 5}],
            "text_cache_dir": str(tmp_path / "cache")},
        "history": {"max_len": 5},
        "model": {"embedding_dim": 4, "cin_layer_sizes": [4, 4], "dnn_hidden_units": [8], "attention_hidden_units": [4]},
        "train": {"epochs": 1, "batch_size": 256, "progress": False},
    }


@pytest.mark.slow  # ~10 s: reads all of ML-100K
def test_trainer_adds_the_history_and_trains_a_sequence_field(tmp_path):
    from mmcore.config import build
    from xdeepfm.checkpoint import load_ranking_checkpoint
    from xdeepfm.experiment import RankingExperiment
    from xdeepfm.train import train

    raw = tiny_history_experiment(tmp_path)
    result = train(build(RankingExperiment, raw), tmp_path / "run")
    assert 0.0 <= result["test"]["auc"] <= 1.0
    ckpt = load_ranking_checkpoint(tmp_path / "run" / "best.safetensors")
    assert ckpt.features.fitted["history"].content["genres"].shape[1] == 4
    with pytest.raises(ValueError, match="history.column 'recent' is read by no feature field"):
        build(RankingExperiment, {**raw, "history": {"column": "recent"}})


def test_negative_history_column_holds_the_earlier_negatives():
    frame = events([(1, "a", 10, 1), (1, "b", 20, 0), (1, "c", 30, 0), (1, "d", 40, 1)])
    out = add_history({"train": frame}, HistoryConfig(negative_column="skipped"))["train"]
    assert out["history"].tolist() == ["", "a", "a", "a"]
    assert out["skipped"].tolist() == ["", "", "b", "c|b"]


def test_engine_rank_takes_the_history_from_the_user_record(fitted, tmp_path):
    from xdeepfm.checkpoint import save_ranking_checkpoint
    from xdeepfm.export import export_checkpoint
    from xdeepfm.serving import ScoringEngine

    pipeline, frame = fitted
    model = scaled_model(pipeline)
    ckpt = tmp_path / "best.safetensors"
    save_ranking_checkpoint(ckpt, config={"task": "ranking", "train": {"seed": 0}, "model": to_dict(CONFIG)},
                            features=pipeline, model=model, metrics={"valid": {"auc": 0.5}, "best_epoch": 1},
                            state={"epoch": 1})
    engine = ScoringEngine.load(export_checkpoint(ckpt, tmp_path / "artifact"))
    items = frame.drop_duplicates("item_id").iloc[:8]
    candidates = [{"item_id": r.item_id, "genres": r.genres, "brand": r.brand} for r in items.itertuples()]
    user = {"user_id": 3, "age": 21.0, "history": ["i2", "i7", "i9"]}  # the user record's column, as a JSON list
    ranking = engine.rank(user, candidates)
    rows = items.assign(user_id=3, age=21.0, history="i2|i7|i9")
    with torch.no_grad():
        expected = torch.sigmoid(model(inputs(pipeline, rows, model))).numpy()
    np.testing.assert_allclose(ranking.scores, expected[ranking.order], atol=1e-6)
    assert ranking.scores.tolist() != engine.rank({**user, "history": ""}, candidates).scores.tolist()


# ------------------------------------------------------------------------------------------ as-of-time statistics


def test_stats_hand_made_strictly_earlier_and_shrunk_to_the_training_mean():
    frame = events([(1, "a", 10, 1), (1, "b", 20, 0), (1, "c", 20, 1), (1, "d", 30, 1), (2, "a", 40, 0)])
    config = HistoryConfig(column=None, stats=[StatConfig(key="user_id", column="u", prior=0.0),
                                               StatConfig(key="item_id", column="i", prior=1.0),
                                               StatConfig(key="user_id", column="w", window=1, prior=0.0)])
    out = add_history({"train": frame}, config)["train"]
    m = 0.6  # the training split's positive rate
    # (1, b, 20) and (1, c, 20) share a second: neither sees the other; (1, d, 30) sees a, b, c
    np.testing.assert_allclose(out["u_mean"], [m, 1.0, 1.0, 2 / 3, m])
    np.testing.assert_allclose(out["u_count"], np.log1p([0, 1, 1, 3, 0]))
    np.testing.assert_allclose(out["i_mean"], [m, m, m, m, (1 + m) / 2])  # item a: one earlier positive
    assert out["w_mean"].tolist()[:2] == [m, 1.0]
    assert out["w_mean"].tolist()[3] in (0.0, 1.0)  # the newest one of b, c (same second: either)
    np.testing.assert_allclose(out["w_count"], out["u_count"])  # the count is never windowed
    assert "history" not in out.columns


def test_stats_value_column_and_config_errors():
    frame = events([(1, "a", 10, 1), (1, "b", 20, 0)]).assign(rating=[5.0, 2.0])
    out = add_history({"train": frame}, HistoryConfig(column=None, stats=[
        StatConfig(key="user_id", column="r", value_column="rating", prior=0.0)]))["train"]
    assert out["r_mean"].tolist() == [3.5, 5.0]  # nothing earlier: the training mean rating
    with pytest.raises(ValueError, match="repeat"):
        HistoryConfig(stats=[StatConfig(key="user_id", column="u"), StatConfig(key="item_id", column="u")])
    with pytest.raises(ValueError, match="window"):
        StatConfig(key="user_id", column="u", window=0)
    with pytest.raises(ValueError, match="already has a column 'r_mean'"):
        add_history({"train": out}, HistoryConfig(column=None, stats=[StatConfig(key="user_id", column="r")]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(0, 8), st.integers(0, 5)),
                min_size=1, max_size=40),
       st.sampled_from(["user_id", "item_id"]), st.one_of(st.none(), st.integers(1, 3)),
       st.sampled_from([0.0, 2.0]), st.booleans())
def test_stats_no_leakage_property_equals_brute_force(rows, key, window, prior, split):
    """Every statistic equals a brute force over the key's interactions with time < the row's (from
    every split, streaming; the mean over the newest ``window`` of them, ties in source order)."""
    frame = events([(u, f"i{i}", t, float(r >= 3)) for u, i, t, r in rows]).assign(rating=[float(r) for *_, r in rows])
    splits = {"train": frame.iloc[::2].reset_index(drop=True), "test": frame.iloc[1::2].reset_index(drop=True)}
    if split and len(splits["test"]) == 0:
        return
    stat = StatConfig(key=key, column="s", value_column="rating", window=window, prior=prior)
    out = add_history(splits, HistoryConfig(column=None, stats=[stat]))
    source = pd.concat(list(splits.values()), ignore_index=True)
    m = splits["train"].rating.mean()
    for name, frame_out in out.items():
        for row in frame_out.itertuples(index=False):
            earlier = source[(source[key] == getattr(row, key)) & (source.timestamp < row.timestamp)]
            earlier = earlier.sort_values("timestamp", kind="stable")
            assert row.s_count == pytest.approx(np.log1p(len(earlier)))
            used = earlier.rating.to_numpy()[-window:] if window else earlier.rating.to_numpy()
            times = earlier.timestamp.to_numpy()
            if window and len(times) > window and times[-window - 1] == times[-window]:
                continue  # the window's edge splits one second: which of its interactions are inside is not specified
            expected = (used.sum() + prior * m) / (len(used) + prior) if len(used) else m
            assert row.s_mean == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ the fast attention


@pytest.mark.parametrize("softmax", [False, True])
def test_fast_attention_equals_deepctrs_layer_values_and_gradients(fitted, softmax):
    model, X = attention_model_and_inputs(fitted, softmax)
    module, codes = model.interest["history"], model._slice(X, "history")
    results = []
    for forward in (module.forward, module.reference_forward):
        model.zero_grad()
        u = forward(model.embedding_dict, codes, model.candidate(X, "history"))
        (u * torch.linspace(-1, 1, u.numel()).view_as(u)).sum().backward()
        results.append((u.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (fast, fast_grads), (ref, ref_grads) = results
    assert ref.abs().max() > 0.1 and torch.equal(fast[:5], torch.zeros_like(fast[:5]))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == ref_grads.keys() and len(ref_grads) > 5
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)
