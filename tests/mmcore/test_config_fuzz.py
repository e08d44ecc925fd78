"""Property-based fuzzing of the typed config builder (Hypothesis).

``mmcore.config.build`` with the sentiment schema (``mmfusion.experiment.SentimentExperiment``)
and ``mmcore.config.apply_overrides`` get random nested mappings and random ``--set`` strings
(YAML tags that fail to construct, dates that do not exist, huge integers, NaN/inf, deep
nesting, non-string keys, values of every wrong type). The property: a ``ConfigError`` (a
``ValueError``) whose one-line message names the key (``fuzz.yaml.train.lr...`` or the ``--set``
item), or a built ``SentimentExperiment`` that survives a round trip through ``to_dict``. Never
another exception type (TypeError, AttributeError, OverflowError, RecursionError, ...).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mmcore.config import ConfigError, apply_overrides, build, load_yaml, to_dict
from mmfusion.experiment import SentimentExperiment

WHERE = "fuzz.yaml"
VALID = {"task": "sentiment", "data": {"path": "datasets/x.pkl", "batch_size": 4},
         "model": {"d_model": 32, "n_heads": 4, "text": {"source": "features"}}, "train": {"epochs": 2}}
SECTIONS = {
    (): ["task", "data", "model", "train", "base", "seed"],
    ("data",): ["path", "synthetic", "batch_size", "eval_batch_size", "normalize", "nonfinite", "paht"],
    ("data", "synthetic"): ["size", "seed", "aligned", "text_features"],
    ("model",): ["d_model", "n_heads", "n_layers", "dropout", "fusion", "modalities", "sm_hidden", "text",
                 "audio_dim", "conv_kernel", "fusion_dim", "n_layrs"],
    ("model", "text"): ["source", "model_path", "finetune", "top_layers", "feature_dim"],
    ("train",): ["epochs", "lr", "lr_text", "weight_decay", "grad_clip", "early_stop_key", "patience", "threads",
                 "device", "seed"],
}
KEYS = sorted({k for names in SECTIONS.values() for k in names})
PATHS = sorted(".".join((*section, key)) for section, names in SECTIONS.items() for key in names)

scalars = st.one_of(
    st.integers(1, 8), st.floats(0.0, 0.9), st.none(), st.booleans(),
    st.integers(-(10**6), 10**6), st.sampled_from([0, -1, 2**63, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["", "sentiment", "bert", "features", "MAE", "auto", "tiny", "1e-3", "none"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(-3, 3), st.none(), st.booleans(),
                 st.floats(allow_nan=True))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(keys, inner, max_size=3)), max_leaves=12)


def copy(data):
    return {k: copy(v) for k, v in data.items()} if isinstance(data, dict) else data


@st.composite
def mappings(draw: st.DrawFn):
    """The valid experiment with 1-4 random keys set (or deleted), or a random mapping outright."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(values, st.dictionaries(keys, values, max_size=4)))
    data = copy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(SECTIONS)))
        node = data
        for part in section:
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                child = {}
                if isinstance(node, dict):
                    node[part] = child
            node = child
        key = draw(st.one_of(st.sampled_from(SECTIONS[section]), keys))
        if draw(st.integers(0, 5)) == 0:
            node.pop(key, None)
        else:
            node[key] = draw(values)
    return data


yaml_texts = st.one_of(
    st.sampled_from(["1", "2", "4", "0.5", "1e-3", "3e-4", "true", "false", "bert", "features", "MAE", "cpu", "[audio, vision]"]),
    st.sampled_from([
        "!!float abc", "!!int abc", "!!timestamp foo", "!!bool maybe", "!!float", "!!binary xyz", "2020-13-45",
        "2020-01-01", "1" + "0" * 400, "-" + "9" * 30, ".inf", "-.inf", ".nan", "1e400", "3e-4", "&a [*a]",
        "&a {x: *a}", "{a: 1}", "[1, 2]", "[text, audio]", "null", "~", "yes", "no", "'quoted'", "\"x", "[", "{",
        "!!set {a, b}", "!!python/name:os.system", "*x", "? [1]\n: 2", "a: b: c", "\t", "%YAML 1.1", "---", "...",
        "[" * 3000 + "]" * 3000, "{a: " * 1000 + "1" + "}" * 1000, "0x1F", "0o17", "1_000", "+1", "-0.0", "0.",
    ]),
    st.text(max_size=12),
    scalars.map(str),
)
override_keys = st.one_of(
    st.sampled_from(PATHS), st.sampled_from(PATHS),
    st.lists(st.one_of(st.sampled_from(KEYS), st.text(max_size=4)), min_size=1, max_size=4).map(".".join),
    st.sampled_from(["", ".", "train.", ".lr", "train..lr", " train.lr ", "model.text.source.x", "data.path.x",
                     "model.modalities.0", "train.lr=1"]),
)
overrides = st.lists(
    st.one_of(st.tuples(override_keys, yaml_texts).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=10)),
    min_size=1, max_size=3,
)


NAMES_KEY = re.compile(rf"^{re.escape(WHERE)}(\.[^\s:]+|\[.+\]: unknown key|: [\w.\[\]]+(=|:| is |\b))")


def check_built(cfg) -> None:
    assert isinstance(cfg, SentimentExperiment)
    for value in (cfg.train.lr, cfg.train.lr_text, cfg.train.weight_decay, cfg.model.dropout):
        assert math.isfinite(value), cfg  # a NaN/inf rate or dropout must not pass
    assert build(SentimentExperiment, to_dict(cfg), WHERE) == cfg  # a built config round-trips


def check_config_error(exc: BaseException, data, context) -> None:
    message = str(exc)
    assert isinstance(exc, ConfigError), f"{context}: {type(exc).__name__}: {message[:300]}"
    assert "\n" not in message.strip(), f"{context}: not one line: {message[:300]!r}"
    if data is None or isinstance(data, dict):  # build reads None as an empty mapping
        assert NAMES_KEY.match(message), f"{context}: names no key: {message[:300]}"
    else:
        assert message.startswith(f"{WHERE}: expected a mapping"), f"{context}: {message[:300]}"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mappings())
def test_random_mappings_build_or_name_the_key(data) -> None:
    try:
        cfg = build(SentimentExperiment, data, WHERE)
    except Exception as exc:  # noqa: BLE001 -- the property is about which exceptions
        check_config_error(exc, data, data)
        event("refused")
        return
    event("built")
    check_built(cfg)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(items=overrides)
def test_random_overrides_build_or_name_the_key(items) -> None:
    try:
        raw = apply_overrides(copy(VALID), items)
    except Exception as exc:  # noqa: BLE001
        message = str(exc)
        assert isinstance(exc, ConfigError), f"{items}: {type(exc).__name__}: {message[:300]}"
        assert message.startswith("--set ") and any(repr(i) in message for i in items), (items, message[:300])
        assert "\n" not in message.strip(), (items, message[:300])
        event("override refused")
        return
    try:
        cfg = build(SentimentExperiment, raw, WHERE)
    except Exception as exc:  # noqa: BLE001
        check_config_error(exc, raw, items)
        event("build refused")
        return
    event("built")
    check_built(cfg)


@pytest.mark.parametrize("text, message", [
    ("!!float abc", "--set 'train.lr=!!float abc': the value is not valid YAML"),
    ("!!timestamp foo", "--set 'train.lr=!!timestamp foo': the value is not valid YAML"),
    ("2020-13-45", "--set 'train.lr=2020-13-45': the value is not valid YAML"),
    ("[" * 3000 + "]" * 3000, "the value is not valid YAML (nested too deeply)"),
])
def test_override_values_yaml_cannot_construct_are_config_errors(text, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(copy(VALID), [f"train.lr={text}"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=" + "1" * 400, "fuzz.yaml.train.lr: expected a number, got an integer too large for a float"),
    ("train.lr=.inf", "fuzz.yaml.train.lr=inf: expected a finite number"),
    ("train.weight_decay=.inf", "fuzz.yaml.train.weight_decay=inf: expected a finite number"),
])
def test_overflowing_and_infinite_numbers_name_the_key(override, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build(SentimentExperiment, apply_overrides(copy(VALID), [override]), WHERE)


def test_mixed_type_unknown_keys_name_a_key() -> None:
    with pytest.raises(ConfigError, match=r"^fuzz\.yaml\.train\[1\]: unknown key"):
        build(SentimentExperiment, {**VALID, "train": {1: 2, "x": 3}}, WHERE)
    with pytest.raises(ConfigError, match=r"^fuzz\.yaml\.train\['lr '\]: unknown key"):
        build(SentimentExperiment, {**VALID, "train": {"lr ": 0.1}}, WHERE)


def test_yaml_file_that_cannot_construct_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("task: sentiment\ntrain:\n  lr: !!float abc\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r": not valid YAML"):
        load_yaml(path)
