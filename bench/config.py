"""Typed, flat configuration: frozen dataclasses built strictly from plain dicts and flat YAML files.

An unknown key is an error that names it and suggests the closest field; values are checked against the
field's type. ``canonical`` and ``config_hash`` give a stable identity used for caches and run ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from bench.registry import suggest

C = TypeVar("C")


class ConfigError(ValueError):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any] | None, what: str | None = None) -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors naming the option."""
    data = dict(data or {})
    what = what or cls.__name__
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{what}: " + suggest(key, list(fields), "option"))
        kwargs[key] = _coerce(value, hints[key], f"{what}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise ConfigError(f"{what}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=list))


def canonical(obj: Any) -> str:
    """Stable JSON text of a dataclass or plain structure: sorted keys, no whitespace."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def config_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:length]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping (configs/ files hold scalars and lists only, no nesting or inheritance)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); config files are flat YAML") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    for k, v in data.items():
        if isinstance(v, dict):
            raise ConfigError(f"{path}: key {k!r} is nested; config files are flat")
    return data


def _yaml_problem(e: Exception) -> str:
    """``line L: problem`` from a YAML parse error (PyYAML's own text spans several lines and a caret)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = " ".join(str(getattr(e, "problem", None) or e).split())
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and getattr(e, "problem", None):
        started = ""
        if cmark is not None and mark is not None and cmark.line != mark.line:
            started = f" (from line {cmark.line + 1})"
        problem = f"{' '.join(str(context).split())}{started}: {problem}"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
