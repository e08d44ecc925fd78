"""Ranking attributions (xdeepfm/explain.py): completeness, the exact linear part, Shapley's axioms, groups."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from xdeepfm.explain import attribute, baseline_row, field_groups
from xdeepfm.features import FieldSpec, FittedField
from xdeepfm.model import RankerConfig, XDeepFMRanker, stack_inputs


def fitted_fields() -> list[FittedField]:
    return [
        FittedField(FieldSpec("user", "categorical"), vocabulary=["a", "b", "c", "d"]),
        FittedField(FieldSpec("genres", "multi_valued", max_len=3), vocabulary=["x", "y", "z"]),
        FittedField(FieldSpec("age", "numeric"), mean=0.0, std=1.0),
        FittedField(FieldSpec("title", "text"), dim=6),
        FittedField(FieldSpec("semantics_sentiment", "vector", path="s.npz", key_column="video"), dim=4),
        FittedField(FieldSpec("semantics_embedding", "vector", path="s.npz", key_column="video"), dim=5),
    ]


def model_and_rows(n: int = 12) -> tuple[XDeepFMRanker, torch.Tensor]:
    config = RankerConfig(embedding_dim=4, cin_layer_sizes=[6, 4], dnn_hidden_units=[16, 8], init_std=0.3)
    model = XDeepFMRanker(fitted_fields(), config, seed=0)
    with torch.no_grad():  # a trained-looking model: weights well away from the tiny initial values
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    rng = np.random.default_rng(2)
    encoded = {
        "user": rng.integers(0, 5, n),
        "genres": np.stack([rng.permutation([0, 1, 2, 3])[:3] for _ in range(n)]),
        "age": rng.normal(size=n).astype(np.float32),
        "title": rng.normal(size=(n, 6)).astype(np.float32),
        "semantics_sentiment": rng.normal(size=(n, 4)).astype(np.float32),
        "semantics_embedding": rng.normal(size=(n, 5)).astype(np.float32),
    }
    return model, torch.from_numpy(stack_inputs(encoded, model.columns))


def brute_force_shapley(value, n_players: int) -> np.ndarray:
    """phi_i = sum over orders of the marginal contribution of i, / n! (the definition, no shortcuts)."""
    phi = np.zeros(n_players)
    orders = list(itertools.permutations(range(n_players)))
    for order in orders:
        members: set[int] = set()
        for i in order:
            before = value(frozenset(members))
            members.add(i)
            phi[i] += value(frozenset(members)) - before
    return phi / math.factorial(n_players)


def test_completeness_and_exact_linear_part():
    model, X = model_and_rows()
    result = attribute(model, X)
    assert result.method == "exact" and result.groups == list(model.feature_index)
    with torch.no_grad():
        np.testing.assert_allclose(result.logit, model(X).double().numpy(), rtol=0, atol=1e-6)
        base = baseline_row(model, X)
        assert result.baseline_logit == pytest.approx(float(model(base[None])), abs=1e-6)
        # the linear part: exact, and its shares sum to linear(x) - linear(b)
        linear_total = (model.linear(X) - model.linear(base[None])).double().squeeze(1).numpy()
    np.testing.assert_allclose(result.linear.sum(1), linear_total, rtol=0, atol=1e-5)
    assert result.completeness_error() < 1e-4  # logit(b) + sum phi = logit(x)
    assert np.abs(result.interaction).max() > 1e-3  # the CIN + DNN part is not empty


def test_exact_shapley_matches_the_definition_for_one_row():
    model, X = model_and_rows(3)
    groups = {"video semantics": ["semantics_*"], "ids": ["user", "genres"]}
    result = attribute(model, X, groups)
    assert result.groups == ["video semantics", "ids", "age", "title"]
    assert result.members["video semantics"] == ["semantics_sentiment", "semantics_embedding"]
    base = baseline_row(model, X)
    columns = [torch.cat([torch.arange(*model.feature_index[f]) for f in result.members[g]]) for g in result.groups]
    for row in range(len(X)):
        def value(coalition, row=row):
            x = base.clone()
            for g in coalition:
                x[columns[g]] = X[row, columns[g]]
            with torch.no_grad():
                return float(model(x[None]).double())
        np.testing.assert_allclose(result.values[row], brute_force_shapley(value, len(columns)), rtol=0, atol=1e-5)


def test_dummy_field_gets_zero_and_sampled_keeps_completeness():
    model, X = model_and_rows()
    start, end = model.feature_index["user"]
    X[:, start:end] = 0  # every row's user is the OOV bucket: the baseline's value, so it changes nothing
    exact = attribute(model, X)
    assert np.abs(exact.values[:, exact.groups.index("user")]).max() < 1e-9
    sampled = attribute(model, X, max_exact=2, permutations=200, seed=1)
    assert sampled.method == "sampled (200 permutations)"
    assert sampled.completeness_error() < 1e-4  # exact by telescoping, whatever the sample
    np.testing.assert_allclose(sampled.values, exact.values, rtol=0, atol=0.15 * np.abs(exact.values).max())
    assert np.abs(sampled.values[:, sampled.groups.index("user")]).max() < 1e-9


def test_mean_and_explicit_baselines_and_bad_groups():
    model, X = model_and_rows()
    mean = attribute(model, X, baseline="mean")
    assert mean.completeness_error() < 1e-4
    row = baseline_row(model, X, "mean")
    start, end = model.feature_index["title"]
    np.testing.assert_allclose(row[start:end].numpy(), X[:, start:end].mean(0).numpy(), rtol=0, atol=1e-6)
    assert float(row[slice(*model.feature_index["user"])].abs().max()) == 0.0  # ids stay at the OOV bucket
    explicit = attribute(model, X, baseline=row.numpy())
    np.testing.assert_allclose(explicit.values, mean.values, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="match no field"):
        field_groups(model, {"nothing": ["video_*"]})
    with pytest.raises(ValueError, match="already in another group"):
        field_groups(model, {"a": ["user"], "b": ["user", "age"]})
    with pytest.raises(ValueError, match="baseline has 3 values"):
        attribute(model, X, baseline=np.zeros(3))
