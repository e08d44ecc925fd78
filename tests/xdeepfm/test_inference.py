"""xdeepfm.inference: FastRanker gives the trained XDeepFMRanker's logits and probabilities over many configs.

Equivalence, not speed (speed: bench/xdeepfm_forward.py). Tolerances: probabilities to 1e-6
absolute; logits to 1e-5 relative (|fast - model| <= 1e-5 * max(|model|, 1): float32 rounding of
sums reordered). The weights are drawn at a realistic scale (the init's 1e-4 would leave every
logit at the bias), and the inputs hold OOV codes, padded multi-valued rows and unnormalised vectors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.serving_factory import tiny_ranking
from xdeepfm.features import FieldSpec, FittedField
from xdeepfm.inference import DEFAULT_CHUNK_ROWS, FastRanker, forward_flops
from xdeepfm.model import RankerConfig, XDeepFMRanker, feature_columns, stack_inputs
from xdeepfm.serving import ScoringEngine

ROWS = 300  # more than DEFAULT_CHUNK_ROWS: the chunked path is exercised


def fields(text: bool = True, multi: bool = True, vector: bool = True) -> list[FittedField]:
    out = [
        FittedField(FieldSpec("user", "categorical"), vocabulary=[f"u{i}" for i in range(40)]),
        FittedField(FieldSpec("item", "categorical"), vocabulary=[f"i{i}" for i in range(25)]),
        FittedField(FieldSpec("age", "numeric"), mean=30.0, std=8.0),
        FittedField(FieldSpec("gender", "categorical"), vocabulary=["F", "M"]),
    ]
    if multi:
        out.append(FittedField(FieldSpec("genres", "multi_valued", max_len=4), vocabulary=list("abcdef")))
    out.append(FittedField(FieldSpec("price", "numeric"), mean=20.0, std=5.0))
    if text:
        out.append(FittedField(FieldSpec("title", "text"), dim=12))
    if vector:
        out.append(FittedField(FieldSpec("sem", "vector", path="unused.npz", key_column="item"), dim=5))
    return out


def encoded(fitted: list[FittedField], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for fit in fitted:
        spec = fit.spec
        if spec.kind == "categorical":
            out[spec.name] = rng.integers(0, fit.vocabulary_size, n)  # 0: OOV
        elif spec.kind == "multi_valued":
            codes = rng.integers(1, fit.vocabulary_size, (n, spec.max_len))
            length = rng.integers(0, spec.max_len + 1, n)  # 0 tokens: an all-padding row
            codes[np.arange(spec.max_len)[None, :] >= length[:, None]] = 0
            out[spec.name] = codes
        elif spec.kind == "numeric":
            out[spec.name] = rng.normal(size=n).astype(np.float32)
        else:
            out[spec.name] = (rng.normal(size=(n, fit.dim)) * 2).astype(np.float32)
    return out


def trained_like(fitted: list[FittedField], config: RankerConfig, X: torch.Tensor, seed: int = 0) -> XDeepFMRanker:
    """A ranker with every weight (and BatchNorm statistic) drawn at random, scaled so that each part of the
    logit (linear, CIN, DNN) has a root mean square of 0.7 over the rows of X, and the bias centring the logits."""
    model = XDeepFMRanker(fitted, config, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.dim() >= 2 and "embedding_dict" not in name and name != "linear.weight" else 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if fan_in == 1 else fan_in ** -0.5))
            if ".bn." in name and name.endswith("weight"):  # BatchNorm scale around 1
                p.add_(1.0)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        fields = model.field_embeddings(X)
        parts = [(model.linear(X), [*model.linear.parameters()])]
        if model.cin is not None:
            parts.append((model.cin_linear(model.cin(fields)), [model.cin_linear.weight]))
        if model.dnn is not None:
            numeric = [model._slice(X, c.name) for c in model.numeric]
            parts.append((model.dnn_linear(model.dnn(torch.cat([fields.flatten(1), *numeric], 1))), [model.dnn_linear.weight]))
        for logit, weights in parts:
            for w in weights:
                w.mul_(0.7 / logit.pow(2).mean().sqrt().clamp_min(1e-12))
        model.bias.sub_(model(X).mean())  # probabilities around 0.5, where they are most sensitive
    return model


def assert_same(model: XDeepFMRanker, fast: FastRanker, X: torch.Tensor) -> None:
    with torch.inference_mode():
        want, got = model(X), fast(X)
    assert got.shape == want.shape == (len(X),)
    assert got.dtype == want.dtype == torch.float32
    scale = want.abs().clamp_min(1.0)
    assert ((got - want).abs() / scale).max().item() <= 1e-5, "logits"
    np.testing.assert_allclose(torch.sigmoid(got).numpy(), torch.sigmoid(want).numpy(), rtol=0, atol=1e-6)


CONFIGS = {
    "default sizes": ({}, {}),
    "no split_half": (dict(cin_split_half=False, cin_layer_sizes=[8, 6, 4]), {}),
    "split_half, 3 layers, odd last": (dict(cin_layer_sizes=[10, 6, 3]), {}),
    "one CIN layer": (dict(cin_layer_sizes=[7], cin_split_half=False), {}),
    "no CIN": (dict(cin_layer_sizes=[]), {}),
    "no DNN": (dict(dnn_hidden_units=[]), {}),
    "linear only": (dict(cin_layer_sizes=[], dnn_hidden_units=[]), {}),
    "no text, no vector": ({}, dict(text=False, vector=False)),
    "no multi-valued": ({}, dict(multi=False)),
    "no text": ({}, dict(text=False)),
    "two fields per vector": (dict(fields_per_vector=2, embedding_dim=6), {}),
    "DNN with BatchNorm": (dict(dnn_use_bn=True, dnn_hidden_units=[16, 8, 4]), {}),
    "linear CIN, sigmoid DNN": (dict(cin_activation="linear", dnn_activation="sigmoid"), {}),
    "prelu": (dict(cin_activation="prelu", dnn_activation="prelu"), {}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_ranker_equals_model(name):
    changes, field_kinds = CONFIGS[name]
    config = RankerConfig(**{"embedding_dim": 8, "cin_layer_sizes": [16, 12], "dnn_hidden_units": [32, 16], **changes})
    fitted = fields(**field_kinds)
    X = torch.from_numpy(stack_inputs(encoded(fitted, ROWS), feature_columns(fitted, config.embedding_dim)))
    model = trained_like(fitted, config, X)
    for options in ({}, {"symmetric_first_layer": False}, {"chunk_rows": 7}):
        assert_same(model, FastRanker.from_model(model, **options), X)
    assert_same(model, FastRanker.from_model(model), X[:1])  # one row


def test_only_vector_fields_and_wide_embeddings():
    fitted = [FittedField(FieldSpec("title", "text"), dim=20), FittedField(FieldSpec("age", "numeric"), mean=0.0, std=1.0)]
    config = RankerConfig(embedding_dim=32, fields_per_vector=3, cin_layer_sizes=[6, 4], dnn_hidden_units=[8])
    X = torch.from_numpy(stack_inputs(encoded(fitted, 50), feature_columns(fitted, 32)))
    assert_same(trained_like(fitted, config, X), FastRanker.from_model(trained_like(fitted, config, X)), X)


@pytest.mark.parametrize("activation", ["relu", "prelu"])
def test_fields_match_and_weights_are_copies(activation):
    fitted = fields()
    X = torch.from_numpy(stack_inputs(encoded(fitted, 20), feature_columns(fitted, 8)))
    config = RankerConfig(embedding_dim=8, cin_layer_sizes=[16, 12], dnn_hidden_units=[32], cin_activation=activation,
                          dnn_activation=activation)
    model = trained_like(fitted, config, X)
    fast = FastRanker.from_model(model)
    with torch.inference_mode():
        np.testing.assert_allclose(fast.fields_and_linear(X)[0].numpy(), model.field_embeddings(X).numpy(), rtol=1e-6, atol=1e-6)
        before = fast(X).clone()
    assert all(not t.requires_grad for t in [*fast.parameters(), *fast.buffers()])
    assert activation == "prelu" or not list(fast.parameters())  # only a PReLU slope is a parameter
    with torch.no_grad():  # later changes to the model (more training) do not reach the copy
        for p in model.parameters():
            p.add_(0.5)
    with torch.inference_mode():
        assert torch.equal(fast(X), before)


def test_chunk_rows_is_checked_and_default():
    model = XDeepFMRanker(fields(), RankerConfig(embedding_dim=4, cin_layer_sizes=[4], dnn_hidden_units=[4]))
    assert FastRanker.from_model(model).chunk_rows == DEFAULT_CHUNK_ROWS
    with pytest.raises(ValueError, match="chunk_rows 0"):
        FastRanker.from_model(model, chunk_rows=0)


def test_forward_flops_by_hand():
    # m = 3 fields (user, item, title) of D = 4; CIN [4, 2] split_half; DNN [5] on 3*4 + 1 numeric inputs
    fitted = [FittedField(FieldSpec("user", "categorical"), vocabulary=["a"]),
              FittedField(FieldSpec("item", "categorical"), vocabulary=["b"]),
              FittedField(FieldSpec("age", "numeric"), mean=0.0, std=1.0),
              FittedField(FieldSpec("title", "text"), dim=6)]
    model = XDeepFMRanker(fitted, RankerConfig(embedding_dim=4, cin_layer_sizes=[4, 2], dnn_hidden_units=[5]))
    flops = forward_flops(model, symmetric_first_layer=False)
    assert flops["linear"] == 2 * (1 + 6) + 2 * 2
    assert flops["projections"] == 2 * 6 * 4 + 4
    # layer 1: 9 channels x D products, conv 2 * 9 * 4 * D, bias 4 * D, 2 direct maps pooled into the output
    assert flops["cin layer 1"] == 9 * 4 + 2 * 9 * 4 * 4 + 4 * 4 + 2 * 2 * 4
    # layer 2: 2 kept maps x 3 fields
    assert flops["cin layer 2"] == 6 * 4 + 2 * 6 * 2 * 4 + 2 * 4 + 2 * 2 * 4
    assert flops["dnn"] == 2 * 13 * 5 + 5 + 2 * 5
    symmetric = forward_flops(model)
    assert flops["cin layer 1"] - symmetric["cin layer 1"] == (9 - 6) * (4 + 2 * 4 * 4)


def test_engine_scores_through_the_fast_ranker_and_sets_threads():
    tiny = tiny_ranking()  # a trained, exported artifact with every field kind
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        default = ScoringEngine.load(tiny.artifact, tiny.text_cache)
        assert torch.get_num_threads() == 2  # threads=None leaves the process's setting
        engine = ScoringEngine.load(tiny.artifact, tiny.text_cache, threads=1, batch_size=64)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
    assert isinstance(engine.forward, FastRanker) and isinstance(default.forward, FastRanker)
    X = stack_inputs(engine.artifact.pipeline.transform(tiny.frame), engine.model.columns)
    with torch.inference_mode():
        expected = torch.sigmoid(engine.model(torch.from_numpy(X))).numpy()
    np.testing.assert_allclose(engine.score_matrix(X), expected, rtol=0, atol=1e-6)
