"""Typed, frozen configuration: defaults < file < command line, unknown keys and wrong types refused.

``build(cls, mapping, where)`` turns a plain mapping (from YAML, JSON or ``--set``) into a
frozen dataclass, naming the offending key (``where.key``) in every error. Numbers may be
written as fractions (``8/255``); they are parsed explicitly, never with ``eval``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from .errors import ConfigError

C = TypeVar("C")


MAX_FILE_BYTES = 1 << 20  # a study, cluster or paper-numbers file is a few KB


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (the last would silently win) and aliases (an
    alias bomb expands a small file into gigabytes; no file of ours needs them)."""

    aliases = False

    def compose_node(self, parent, index):
        if not self.aliases and self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _AliasLoader(_StrictLoader):
    aliases = True  # Ray's cluster files may share node settings through anchors


def load_yaml_file(path: str | Path, what: str = "", *, aliases: bool = False) -> Any:
    """A YAML file we read (study, cluster, paper numbers): at most 1 MiB, UTF-8, no duplicate
    keys, no aliases unless asked. Any problem is one ConfigError naming the file and, for
    YAML, the line."""
    p = Path(path)
    label = f"{what} {p}".strip()
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{label}: {size} bytes; expected at most {MAX_FILE_BYTES} (a study file is a few KB)")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{label}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{label}: cannot read ({e.strerror or e})") from None
    try:
        return yaml.load(text, Loader=_AliasLoader if aliases else _StrictLoader)  # noqa: S506 (SafeLoader subclasses)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{label}: malformed YAML{at}: {getattr(e, 'problem', e)}") from None


def parse_number(text: str, where: str) -> float:
    """Parse ``0.03``, ``1e-3`` or ``8/255`` (a fraction of two numbers) as a float."""
    s = text.strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = float(Fraction(num.strip())) / float(Fraction(den.strip()))
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{where}: expected a number such as 0.03 or 8/255, got {text!r}") from None
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is tuple:
        return "a list"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _union(value: Any, tp: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, where)
        except ConfigError:
            pass
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _literal(value: Any, tp: Any, where: str) -> Any:
    allowed = typing.get_args(tp)
    if value in allowed:
        return value
    raise ConfigError(f"{where}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")


def _tuple(value: Any, tp: Any, where: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):  # tuple[X, Y]: exactly one value per position
        raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
    return tuple(coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args)))


def _mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _float(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    elif isinstance(value, str):
        out = parse_number(value, where)
    else:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(out):  # no config value means anything at inf or nan
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return out


def _str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected a string, got {value!r}")


_PLAIN = {bool: _bool, int: _int, float: _float, str: _str}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where unambiguous."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _union(value, tp, where)
    if origin is Literal:
        return _literal(value, tp, where)
    if origin is tuple:
        return _tuple(value, tp, where)
    if origin is dict or tp is dict:
        return dict(_mapping(value, where))
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else build(tp, _mapping(value, where), where)
    if tp in _PLAIN:
        return _PLAIN[tp](value, where)
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def build(cls: type[C], data: Mapping[str, Any] | None, where: str) -> C:
    """Build the frozen dataclass ``cls`` from ``data``; then run its ``validate()`` if it has one."""
    if isinstance(data, cls):  # already typed (and validated when it was built)
        return data
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected one of: {', '.join(names)}")
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def check(cond: bool, where: str, field: str, expected: str, value: Any) -> None:
    """Raise a ConfigError naming ``where.field`` unless ``cond`` holds."""
    if not cond:
        name = f"{where}.{field}" if where else field
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain Python data, tuples as lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value). The value is read as YAML (numbers,
    booleans, lists); fractions like ``8/255`` stay strings and are parsed by the field's type."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_nested(d: dict, path: list[str], value: Any) -> None:
    for p in path[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            d[p] = nxt
        d = nxt
    d[path[-1]] = value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys (``method_args.alpha``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``override`` on top of ``base``; mappings merge recursively, everything else replaces."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
