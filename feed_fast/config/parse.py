"""Nested mappings (YAML, Python dicts) with `--set key=value` overrides applied, into the frozen dataclasses of
schema.py, checked against the dataclasses' own type hints: unknown keys, wrong types, values outside a
`Literal` or an `Annotated` bound all raise `ConfigError` naming the dotted key. Nothing here knows a particular
key: the schema is the dataclasses."""
from __future__ import annotations

import copy
import math
import types
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config mistake, named by its dotted key (for example `optim.lr`). `feed-fast` prints it and exits 2."""


class WrongKind(ConfigError):
    """The value is not of the kind the key takes (as opposed to the right kind with a value out of bounds)."""


@dataclass(frozen=True)
class AtLeast:
    bound: float

    def holds(self, value) -> bool:
        return value >= self.bound

    def __str__(self) -> str:
        return f">= {self.bound}"


@dataclass(frozen=True)
class Above:
    bound: float

    def holds(self, value) -> bool:
        return value > self.bound

    def __str__(self) -> str:
        return f"> {self.bound}"


@dataclass(frozen=True)
class Below:
    bound: float

    def holds(self, value) -> bool:
        return value < self.bound

    def __str__(self) -> str:
        return f"< {self.bound}"


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. optim.lr=0.05), got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """A copy of `raw` with each `a.b.c=value` set. A list entry is named by its index (`teachers.0.checkpoint=FILE`);
    the index one past the end adds an entry (`teachers.1.name=resnet56` on a config with one teacher), and a
    missing list followed by index 0 is made (`teachers.0.name=...` on a config without teachers)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for i, k in enumerate(keys):
            where = ".".join(keys[:i]) or "the config"
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not k.isdigit() or int(k) > len(node):
                    raise ConfigError(f"--set {text!r}: {where} has {len(node)} entries, got index {k!r} (index "
                                      f"{len(node)} adds one)")
                k = int(k)
                if k == len(node):
                    node.append(None if last else {})
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {where} is {node!r}, not a mapping")
            if last:
                node[k] = value
            elif isinstance(node, dict):
                if node.get(k) is None:  # absent, or an empty YAML entry (`teachers:`)
                    node[k] = [] if keys[i + 1].isdigit() else {}
                node = node[k]
            else:
                node = node[k]
    return raw


def join(prefix: str, name) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def from_mapping(cls: type, given: Any, key: str = ""):
    """An instance of dataclass `cls` from `given`: its defaults where a key is absent, every given value checked."""
    if not isinstance(given, Mapping):
        raise WrongKind(f"{key or 'the config'} must be {describe(cls)}, got {given!r}")
    names = [f.name for f in fields(cls)]
    unknown = sorted((k for k in given if k not in names), key=str)
    if unknown:
        raise ConfigError(f"unknown key {join(key, unknown[0])!r}; {key or 'the config'} takes {names}")
    hints = get_type_hints(cls, include_extras=True)
    values = {}
    for f in fields(cls):
        name = join(key, f.name)
        if f.name in given:
            values[f.name] = convert(hints[f.name], given[f.name], name)
        elif f.default is MISSING and f.default_factory is MISSING:
            hint = f" ({f.metadata['example']})" if "example" in f.metadata else ""
            raise ConfigError(f"{name} is missing{hint}")
    return cls(**values)


def convert(tp: Any, value: Any, key: str) -> Any:
    """`value` checked as type `tp` (ints are taken where floats are expected); raises ConfigError naming `key`."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *rules = get_args(tp)
        value = convert(base, value, key)
        for rule in rules:
            if not rule.holds(value):
                raise ConfigError(f"{key} must be {rule}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        members = get_args(tp)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return convert(member, value, key)
            except WrongKind:
                continue  # not this member's kind; the right kind with a bad value raises its own message
        raise WrongKind(f"{key} must be {describe(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(choice) for choice in get_args(tp)}:
            return value
        raise WrongKind(f"{key} must be {describe(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise WrongKind(f"{key} must be {describe(tp)}, got {value!r}")
        (item,) = get_args(tp)
        return [convert(item, v, join(key, i)) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise WrongKind(f"{key} must be {describe(tp)}, got {value!r}")
        return dict(value)
    if is_dataclass(tp):
        return from_mapping(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WrongKind(f"{key} must be float, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise WrongKind(f"{key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"the config schema uses a type the parser does not know: {tp!r} (at {key})")


def describe(tp: Any) -> str:
    """What a key takes, in words: `float`, `one of ['a', 'b', 'c']`, `1 or 3`, `true, false or 'auto'`."""
    origin = get_origin(tp)
    if origin is Annotated:
        return describe(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        parts = []
        for member in get_args(tp):
            if member is type(None):
                parts.append("null")
            elif member is bool:
                parts.append("true, false")
            elif get_origin(member) is Literal:
                parts += [repr(choice) for choice in get_args(member)]
            else:
                parts.append(describe(member))
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is Literal:
        choices = get_args(tp)
        return f"{choices[0]!r} or {choices[1]!r}" if len(choices) == 2 else f"one of {list(choices)}"
    if origin is list:
        (item,) = get_args(tp)
        return f"a list of {'mappings {' + ', '.join(f.name for f in fields(item)) + '}' if is_dataclass(item) else describe(item)}"
    if tp is dict or origin is dict:
        return "a mapping of keyword arguments"
    if is_dataclass(tp):
        return "a mapping {" + ", ".join(f.name for f in fields(tp)) + "}"
    return getattr(tp, "__name__", repr(tp))
