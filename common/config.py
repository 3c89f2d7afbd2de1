"""Typed configs from ``params.yaml``: each stage reads only its own section into a dataclass.

``build(cls, mapping)`` checks, at load time, that every key is known, every required key is
present and every value has the declared type, so a typo in params.yaml fails in
milliseconds with the offending key named. Dataclasses add their own range checks in
``__post_init__`` and raise ``TierHpoError``.

Hand-written rather than pydantic: the stack already pins many packages and the checks we
need (unknown keys, basic types, nesting) fit in this module.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from common import paths
from common.errors import TierHpoError, shorten

T = TypeVar("T")


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else paths.params_file()
    if not path.is_file():
        raise TierHpoError(f"params file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TierHpoError(
            f"{path} is not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset {exc.start} cannot be "
            f"decoded; save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise TierHpoError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TierHpoError(_yaml_error(path, exc)) from None
    if not isinstance(data, dict):
        raise TierHpoError(f"{path} must hold a mapping of sections")
    return data


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: the file, the line and column of the problem (1-based) and what is wrong."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    what = f"{context}: {problem}" if context and problem else problem
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    what = " ".join(str(what).split())
    what = what if len(what) <= 120 else what[:117] + "..."
    return f"{where}: invalid YAML ({what}); fix the syntax there"


def section(name: str, path: str | Path | None = None) -> dict[str, Any]:
    params = load_params(path)
    if name not in params:
        raise TierHpoError(f"params.yaml has no '{name}' section")
    return params[name] or {}


def load(cls: type[T], name: str, path: str | Path | None = None, **overrides: Any) -> T:
    """Read section ``name`` into ``cls``; ``overrides`` (e.g. CLI flags that are not None) win."""
    raw = dict(section(name, path))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return build(cls, raw, where=name)


def build(cls: type[T], raw: Mapping[str, Any], where: str = "") -> T:
    if not isinstance(raw, Mapping):
        raise TierHpoError(f"{where or cls.__name__}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        shown = ", ".join(shorten(k) for k in unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise TierHpoError(f"{where}: unknown key(s) {shown}; known: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        key = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TierHpoError(f"{key}: required key is missing")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except TierHpoError as exc:
                errors.append(str(exc))
        raise TierHpoError(errors[0] if errors else f"{key}: invalid value {shorten(value)}")
    if origin is Literal:
        if value not in args:
            raise TierHpoError(f"{key}: {shorten(value)} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where=key)
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, (list, tuple)):
            raise TierHpoError(f"{key}: expected a list, got {shorten(value)}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return origin(items) if origin is not list else items
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise TierHpoError(f"{key}: expected a mapping, got {shorten(value)}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TierHpoError(f"{key}: expected a number, got {shorten(value)}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TierHpoError(f"{key}: expected an integer, got {shorten(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TierHpoError(f"{key}: expected true/false, got {shorten(value)}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TierHpoError(f"{key}: expected a string, got {shorten(value)}")
        return str(value)
    return value
