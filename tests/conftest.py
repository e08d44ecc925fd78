"""Shared pytest fixtures: small valid MMSA data (see ``tests/mmsa_factory.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
for _name in ("MMFUSION_SIGNING_KEY", "MMFUSION_SIGNING_KEY_FILE"):  # tests that sign set their own key
    os.environ.pop(_name, None)

from tests.mmsa_factory import make_mmsa_dict, write_mmsa_pickle  # noqa: E402 - after the offline settings


@pytest.fixture
def mmsa_dict_factory() -> Callable[..., dict[str, dict[str, Any]]]:
    """``make_mmsa_dict`` itself: call it with keyword options (aligned, text, sizes, ...)."""
    return make_mmsa_dict


@pytest.fixture
def mmsa_pickle_factory(tmp_path: Path) -> Callable[..., Path]:
    """Write ``make_mmsa_dict(**options)`` (or the ``data`` given) to a pickle under tmp_path."""
    counter = iter(range(1_000_000))

    def write(data: Any = None, name: str | None = None, **options: Any) -> Path:
        if data is None:
            data = make_mmsa_dict(**options)
        return write_mmsa_pickle(data, tmp_path / (name or f"mmsa_{next(counter)}.pkl"))

    return write


@pytest.fixture
def mmsa_pickle(mmsa_pickle_factory: Callable[..., Path]) -> Path:
    """A default unaligned MMSA pickle (text_bert, audio/vision lengths) in tmp_path."""
    return mmsa_pickle_factory(name="mmsa_unaligned.pkl")


@pytest.fixture(scope="session")
def tiny_synthmosi(tmp_path_factory) -> Path:
    """The tiny SynthMOSI preset (seed 0) with precomputed MiniLM text features, written once per session."""
    from mmfusion.data.synthetic import generate, write_pickle

    path = tmp_path_factory.mktemp("synthmosi") / "synthmosi_tiny_s0.pkl"
    write_pickle(generate("tiny", 0, text_features=True), path)
    return path


@pytest.fixture(scope="session")
def tiny_sentiment_run(tiny_synthmosi, tmp_path_factory) -> Path:
    """A run directory: one epoch of configs/synthmosi_tiny.yaml on precomputed text features (no BERT
    in the loop), trained once per session for the tests that need a trained sentiment model."""
    from mmfusion.experiment import load_experiment
    from mmfusion.train import train

    out = tmp_path_factory.mktemp("tiny_sentiment") / "run"
    overrides = [f"data.path={tiny_synthmosi}", "data.synthetic=null", "model.text.source=features",
                 "train.epochs=1", "train.attention_clips=0"]
    train(load_experiment(Path(__file__).resolve().parents[1] / "configs" / "synthmosi_tiny.yaml", overrides), out)
    return out
