"""mmcore.config: the typed builder, ``base:`` files and ``--set`` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mmcore.config import ConfigError, apply_overrides, build, load_yaml, merge


@dataclass
class Inner:
    lr: float = 1e-3
    epochs: int = 10
    device: str = "auto"
    kind: Literal["a", "b"] = "a"
    units: list[int] = field(default_factory=lambda: [8, 8])


@dataclass
class Outer:
    name: str
    train: Inner = field(default_factory=Inner)
    clip: float | None = None


def test_overrides_set_dotted_keys_with_yaml_values():
    raw = {"name": "x", "train": {"lr": 0.1}}
    out = apply_overrides(raw, ["train.epochs=3", "train.units=[4, 2]", "clip=null", "train.kind=b", "train.lr=3e-4"])
    cfg = build(Outer, out, "x.yaml")
    assert cfg.train == Inner(lr=3e-4, epochs=3, units=[4, 2], kind="b") and cfg.clip is None
    assert raw == {"name": "x", "train": {"lr": 0.1}}  # the input mapping is not modified


@pytest.mark.parametrize("override, message", [
    ("train.n_epochs=3", "x.yaml.train.n_epochs: unknown key (expected one of ['device', 'epochs', 'kind', 'lr', 'units'])"),
    ("train.epochs=three", "x.yaml.train.epochs: expected an integer, got str 'three'"),
    ("train.lr=true", "x.yaml.train.lr: expected a number, got bool True"),
    ("train.kind=c", "x.yaml.train.kind: 'c' is not one of ['a', 'b']"),
    ("train.units=[1, x]", "x.yaml.train.units[1]: expected an integer, got str 'x'"),
    ("colour=red", "x.yaml.colour: unknown key"),
])
def test_a_bad_override_is_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        build(Outer, apply_overrides({"name": "x"}, [override]), "x.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("train.lr", "expected key=value"),
    ("=3", "expected key=value"),
    ("train..lr=3", "expected key=value"),
    ("name.first=3", "name is a value, not a section"),
    ("train.units=[1,", "the value is not valid YAML"),
])
def test_a_malformed_override_is_refused(override, message):
    with pytest.raises(ConfigError, match="--set") as err:
        apply_overrides({"name": "x", "train": {}}, [override])
    assert message in str(err.value)


def test_base_file_is_merged_under_the_variant(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ntrain: {lr: 0.1, epochs: 4}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "variant.yaml").write_text("base: ../base.yaml\ntrain: {epochs: 8}\nclip: 1.0\n")
    assert load_yaml(tmp_path / "sub" / "variant.yaml") == {"name": "base", "train": {"lr": 0.1, "epochs": 8}, "clip": 1.0}
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loop.yaml: base: 'loop.yaml' refers back to itself"):
        load_yaml(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml: config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_merge_is_deep_and_pure():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    assert merge(base, {"a": {"c": 3}, "d": [2]}) == {"a": {"b": 1, "c": 3}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}
    # an empty mapping clears the base's (a variant turning a per-field option off), at any depth
    assert merge(base, {"a": {}}) == {"a": {}, "d": [1]}
    assert merge({"t": {"oov": {"item": 0.3}, "lr": 1}}, {"t": {"oov": {}}}) == {"t": {"oov": {}, "lr": 1}}


def test_a_variant_clears_a_mapping_of_its_base_with_an_empty_one(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {lr: 0.1, oov_dropout: {item_id: 0.3}}\n")
    (tmp_path / "variant.yaml").write_text("base: base.yaml\ntrain: {oov_dropout: {}}\n")
    assert load_yaml(tmp_path / "variant.yaml") == {"train": {"lr": 0.1, "oov_dropout": {}}}
