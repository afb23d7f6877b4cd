"""Typed, validated configuration: frozen dataclasses loaded from YAML with dotted overrides.

Every stage takes one frozen dataclass. ``load_config(FinetuneConfig, "ft.yaml", ["lr=1e-4"])`` builds
it from a YAML file (or a dict), applies ``key.sub=value`` overrides, and type-checks every field, so a
typo or a wrong type fails before any compute starts. ``to_dict`` gives the fully resolved config that
run directories save as ``config.json`` and hash into their name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")

_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
"""A finite decimal number, e.g. "2e-5" (which YAML 1.1 leaves a string)."""

__all__ = [
    "ConfigError",
    "config_hash",
    "deep_merge",
    "from_dict",
    "load_config",
    "parse_overrides",
    "read_yaml_mapping",
    "to_dict",
]


class ConfigError(ValueError):
    """A config file or override does not fit the config class."""


def to_dict(obj: Any) -> Any:
    """The JSON-ready form of a config: dataclasses to dicts, tuples to lists, paths to strings.

    A field declared with ``metadata={"omit_when_default": True}`` is left out while it holds its
    default, so adding such an option to a config keeps the run ids of configs that do not set it.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not (f.metadata.get("omit_when_default") and getattr(obj, f.name) == _field_default(f))
        }
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def _field_default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (a fresh one from its factory); a unique sentinel when it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default if f.default is not dataclasses.MISSING else object()


def config_hash(obj: Any, length: int = 12) -> str:
    """A short stable hash of a config (or any JSON-able value), independent of key order."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value {raw!r}: {exc}") from exc
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[parts[-1]] = value
    return nested


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, merging nested mappings key by key instead of replacing them."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``, converting the few lossless cases (int->float, list->tuple)."""
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # X | None: report X's own error (it names the nested key)
            return _coerce(options[0], value, where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(
                _coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        elem = args[0] if args else Any
        seq = [_coerce(elem, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is not list else seq
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "2e-5" (exponent, no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def _over_default(f: dataclasses.Field[Any], value: Any) -> Any:
    """A partial section for a nested config, completed from the field's own default, not its class's.

    ``eval: {n_per_domain: 8}`` keeps every other setting of the parent's default ``eval``, which may
    differ from ``EvalConfig()`` (a shorter answer length, say).
    """
    if not isinstance(value, Mapping):
        return value
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return value
    if not (dataclasses.is_dataclass(default) and not isinstance(default, type)):
        return value
    return deep_merge(to_dict(default), value)


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types with the key's path."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]} for {cls.__name__}; valid: {sorted(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], _over_default(fields[name], value), path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{cls.__name__}{' at ' + where if where else ''}: {exc}") from exc


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML config file's top-level mapping (empty for an empty file); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is not None and not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return dict(loaded or {})


def load_config(
    cls: type[T], source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()
) -> T:
    """Load ``cls`` from a YAML file or a dict (or its defaults when ``source`` is None), then apply overrides.

    Args:
        cls: a (possibly nested) frozen dataclass type.
        source: YAML path, dict, or None for the defaults.
        overrides: dotted ``key.sub=value`` strings, applied last.
    """
    data: dict[str, Any] = {}
    if isinstance(source, (str, Path)):
        data = read_yaml_mapping(source)
    elif source is not None:
        data = dict(source)
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)
