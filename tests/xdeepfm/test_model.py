"""xdeepfm.model and the deepctr wrapper: CIN against a numpy eq. 6, shapes, quiet import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from xdeepfm._deepctr import CIN
from xdeepfm.features import FieldSpec, FittedField
from xdeepfm.model import RankerConfig, XDeepFMRanker, cin_output_size, stack_inputs

REPO = Path(__file__).resolve().parents[2]


def numpy_cin(x0: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray], split_half: bool) -> np.ndarray:
    """Lian et al. 2018 eq. 6 with explicit sums: X^k_h = relu(sum_ij W^k_{h,i,j} X^{k-1}_i * X^0_j + b_h),
    p^+ = concatenated sum-pooling over D of the direct-connected maps."""
    batch, m, dim = x0.shape
    hidden, pooled = x0, []
    for layer, (w, b) in enumerate(zip(weights, biases)):
        h_prev = hidden.shape[1]
        out = np.zeros((batch, w.shape[0], dim))
        for h in range(w.shape[0]):
            for i in range(h_prev):
                for j in range(m):
                    out[:, h] += w[h, i * m + j] * hidden[:, i] * x0[:, j]
            out[:, h] += b[h]
        out = np.maximum(out, 0)
        if split_half and layer < len(weights) - 1:
            hidden, direct = out[:, : w.shape[0] // 2], out[:, w.shape[0] // 2 :]
        else:
            hidden, direct = out, out
        pooled.append(direct.sum(-1))
    return np.concatenate(pooled, axis=1)


def test_cin_single_field_hand_value():
    cin = CIN(1, [1], activation="linear", split_half=False)
    with torch.no_grad():
        cin.conv1ds[0].weight.fill_(1.0)
        cin.conv1ds[0].bias.zero_()
    # X^1 = X^0 o X^0 = [1, 4]; p = 1 + 4
    assert cin(torch.tensor([[[1.0, 2.0]]])).item() == pytest.approx(5.0)


@pytest.mark.parametrize("split_half", [False, True])
def test_cin_matches_numpy_equation(split_half):
    rng = np.random.default_rng(0)
    m, dim, sizes = 3, 4, [4, 3]
    cin = CIN(m, sizes, activation="relu", split_half=split_half)
    weights, biases = [], []
    with torch.no_grad():
        for conv in cin.conv1ds:
            w = rng.normal(size=conv.weight.shape[:2])
            b = rng.normal(size=conv.weight.shape[0]) * 0.1
            conv.weight.copy_(torch.from_numpy(w)[:, :, None])
            conv.bias.copy_(torch.from_numpy(b))
            weights.append(w)
            biases.append(b)
    x0 = rng.normal(size=(2, m, dim))
    out = cin(torch.from_numpy(x0).float()).detach().numpy()
    assert out.shape == (2, cin_output_size(sizes, split_half))
    np.testing.assert_allclose(out, numpy_cin(x0, weights, biases, split_half), rtol=1e-4, atol=1e-4)


def fitted_fields() -> list[FittedField]:
    return [
        FittedField(FieldSpec("user", "categorical"), vocabulary=["a", "b", "c"]),
        FittedField(FieldSpec("genres", "multi_valued", max_len=3), vocabulary=["x", "y"]),
        FittedField(FieldSpec("age", "numeric"), mean=0.0, std=1.0),
        FittedField(FieldSpec("title", "text"), dim=6),
    ]


def encoded(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "user": rng.integers(0, 4, n),
        "genres": np.array([[1, 2, 0]] * n),
        "age": rng.normal(size=n).astype(np.float32),
        "title": rng.normal(size=(n, 6)).astype(np.float32),
    }


def test_ranker_fields_shapes_and_text_projection():
    config = RankerConfig(embedding_dim=4, fields_per_vector=2, cin_layer_sizes=[4, 2], dnn_hidden_units=[8])
    model = XDeepFMRanker(fitted_fields(), config)
    X = torch.from_numpy(stack_inputs(encoded(), model.columns))
    assert X.shape == (5, 1 + 3 + 1 + 6)
    assert model.n_fields == 1 + 1 + 2  # user, genres, two projected title fields
    assert model.field_embeddings(X).shape == (5, 4, 4)
    logits = model(X)
    assert logits.shape == (5,)
    # the title vector reaches the logit: changing it changes the output
    other = encoded()
    other["title"] = other["title"] + 1.0
    assert not torch.allclose(model(torch.from_numpy(stack_inputs(other, model.columns))), logits)


def test_regularization_loss_is_the_weighted_squared_norm():
    config = RankerConfig(embedding_dim=4, cin_layer_sizes=[], dnn_hidden_units=[], l2_linear=0.0, l2_embedding=0.5)
    model = XDeepFMRanker(fitted_fields(), config)
    expected = 0.5 * sum((p * p).sum() for p in [*model.embedding_dict.parameters(), model.projections["title"].weight])
    assert model.regularization_loss().item() == pytest.approx(expected.item())


def test_model_config_validation():
    with pytest.raises(ValueError, match="all but the last must be even"):
        RankerConfig(cin_layer_sizes=[3, 2])
    with pytest.raises(ValueError, match="dnn_dropout 1.5"):
        RankerConfig(dnn_dropout=1.5)


def test_deepctr_import_is_silent_and_offline():
    code = textwrap.dedent(
        """
        import sys, threading, socket
        sys.path.insert(0, %r)
        events = []
        start = threading.Thread.start
        threading.Thread.start = lambda self, *a, **k: (events.append("thread"), start(self, *a, **k))[1]
        connect = socket.socket.connect
        socket.socket.connect = lambda self, *a: (events.append("connect"), connect(self, *a))[1]
        import requests
        requests.get = lambda *a, **k: events.append("requests.get")
        import xdeepfm._deepctr
        import deepctr_torch
        deepctr_torch.utils.check_version("0.0.1")
        sys.stderr.write("EVENTS=%%s" %% events)
        """ % str(REPO)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().endswith("EVENTS=[]")
