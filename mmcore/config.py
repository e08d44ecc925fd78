"""Typed configuration: dataclasses built from YAML with errors that name the offending key.

``build(Cls, mapping, where)`` fills a (possibly nested) dataclass from a plain mapping, checks
every value against the field's annotation, and rejects unknown keys, so a typo in a YAML file
fails at load time with ``configs/x.yaml: model.n_layrs: unknown key (expected one of ...)``.

``load_yaml`` reads one file; a top-level ``base: other.yaml`` (relative to the file) is read
first and the file's own keys are merged over it, so a variant states only what differs (an empty
mapping, ``key: {}``, clears the base's mapping rather than keeping it).
``apply_overrides`` sets dotted keys from ``--set key=value`` (the value read as YAML:
``--set train.lr=3e-4 --set model.use_slgm=false``); ``build`` then checks them like any other key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


# What yaml.safe_load raises besides YAMLError: its constructors fail with plain exceptions
# ("!!float abc", "!!timestamp x", the date 2020-13-45) and deep nesting exhausts the stack.
_YAML_FAILURES = (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError,
                  RecursionError)


def _yaml_problem(exc: BaseException) -> str:
    """One line saying why YAML text could not be read."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = " ".join(str(exc).split())
    return text if isinstance(exc, yaml.YAMLError) else f"{type(exc).__name__}: {text}"


def _check(value: Any, annotation: Any, where: str) -> Any:
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = {}
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, where)
            except ConfigError as exc:
                errors[option] = str(exc)
        raise ConfigError(next(iter(errors.values())) if len(errors) == 1 else _union_error(value, errors, where))
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_type, *rest) = get_args(annotation) or (Any,)
        items = [_check(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        _, value_type = get_args(annotation) or (Any, Any)
        return {k: _check(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}: expected a number, got an integer too large for a float") from None
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def _kinds(cls: type) -> tuple:
    """The values a dataclass's ``kind`` field allows (its ``Literal``), else ()."""
    hint = get_type_hints(cls).get("kind")
    return get_args(hint) if get_origin(hint) is Literal else ()


def _union_error(value: Any, errors: dict[Any, str], where: str) -> str:
    """Why ``value`` fits none of a union's alternatives. For a mapping of dataclass alternatives:
    the error of the one its ``kind:`` names, else one line per alternative with its allowed keys
    and what failed."""
    names = " | ".join(getattr(option, "__name__", str(option)) for option in errors)
    classes = [option for option in errors if dataclasses.is_dataclass(option)]
    if not isinstance(value, dict) or not classes:
        return f"{where}: {value!r} matches none of {names}"
    named = [option for option in classes if "kind" in value and value["kind"] in _kinds(option)]
    if len(named) == 1:
        return errors[named[0]]
    lines = [f"{where}: matches none of {names}" + (f" (kind {value['kind']!r} is none of theirs)" if "kind" in value else "")]
    for option in classes:
        kinds = _kinds(option)
        keys = sorted(f.name for f in dataclasses.fields(option) if f.init)
        tag = f"kind: {kinds[0]}" if len(kinds) == 1 else "no kind" if not kinds else f"kind: one of {list(kinds)}"
        failed = errors[option].removesuffix(f" (expected one of {keys})")  # the keys are listed already
        failed = failed[len(where) + 1:] if failed.startswith(f"{where}.") else failed
        lines.append(f"  - {option.__name__} ({tag}): keys {keys}; failed: {failed}")
    return "\n".join(lines)


def check_range(key: str, value: float | int | None, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """Refuse ``value`` outside [low, high] (``(low, high]`` with ``low_open``); None passes (an unset option).

    Config dataclasses call it from ``__post_init__`` with the field's own name (``"lr"``); ``build``
    reports it under the full key: ``configs/x.yaml.train.lr=-0.1: must be > 0.0``.
    """
    if value is None:
        return
    if isinstance(value, float) and value != value:
        raise ConfigError(f"{key}={value}: expected a number, got NaN")
    if isinstance(value, float) and math.isinf(value):
        raise ConfigError(f"{key}={value}: expected a finite number")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{key}={value}: must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ConfigError(f"{key}={value}: must be <= {high}")


def build(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data`` (a mapping), validating names and types."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known), key=str)  # YAML keys need not be strings (1:, null:, true:)
    if unknown:
        name = unknown[0]  # a key that is not a plain name ('', 'lr ', 1, None) is shown quoted
        at = f"{where}.{name}" if isinstance(name, str) and name.isidentifier() else f"{where}[{name!r}]"
        raise ConfigError(f"{at}: unknown key (expected one of {sorted(known)})")
    kwargs = {}
    for name, field in known.items():
        if name in data:
            kwargs[name] = _check(data[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}: required key is missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if isinstance(exc, ConfigError) and message.split("=", 1)[0] in known:  # check_range names its field
            raise ConfigError(f"{where}.{message}") from exc
        raise ConfigError(f"{where}: {message}") from exc


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def merge(base: dict, delta: dict) -> dict:
    """``delta``'s keys over ``base``'s, recursively for mappings (neither is modified); an empty
    mapping in ``delta`` replaces the base's (``oov_dropout: {}`` in a variant clears the base's rates)."""
    merged = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except _YAML_FAILURES as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping, merged over its ``base:`` file when it names one; errors name the file."""
    path = Path(path)
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {type(base).__name__} {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"{path}: base: {base!r} refers back to itself")
    return merge(load_yaml(base_path, (*_seen, path.resolve())), data)


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], where: str = "--set") -> dict:
    """``raw`` with each ``key.sub=value`` of ``overrides`` set (values parsed as YAML scalars/lists).

    The keys are not checked here: ``build`` refuses an unknown key or a wrong type with its name.
    """
    result = merge(raw, {})
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where} {item!r}: expected key=value with a dotted key, e.g. train.lr=0.001")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except _YAML_FAILURES as exc:
            raise ConfigError(f"{where} {item!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{where} {item!r}: {'.'.join(parts[: depth + 1])} is a value, not a section")
            else:
                child = node[part] = dict(child)
            node = child
        node[parts[-1]] = value
    return result


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain JSON/YAML-ready data."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
