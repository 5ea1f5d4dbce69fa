"""Settings declared once: a dataclass field made by :func:`setting` carries its default, type, range,
choices, help and whether a resume may change it; :func:`from_dict` builds a config from plain data and
checks every value against those declarations, raising :class:`ConfigError` with one line that names the
value and what is allowed. rl.config declares the package's configs with it; rl.cli builds flags from it."""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import field, fields
from typing import Any


class ConfigError(ValueError):
    """Bad user input; the message is one line naming the value and what is allowed."""


def setting(default, help: str, *, low=None, high=None, low_open=False, choices=None, factory=None,
            resumable: bool = False, session: bool = False):
    """A config field: ``help`` becomes ``--help`` text; ``low``/``high`` bound numbers (inclusive
    unless ``low_open``); ``choices`` is a tuple or a callable returning one; ``resumable`` settings
    may change on ``rl-train --resume`` (they do not alter what has been learned so far). A resume writes
    its changes into the run's config.toml, so later resumes keep them, except for ``session`` settings:
    those describe the machine a session runs on (device, threads) and hold for that session only."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "choices": choices,
            "resumable": resumable or session, "session": session}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def field_specs(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls)}


def _choices(f: dataclasses.Field) -> tuple | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


# What a value of each setting type must be: one value; the items of a list[T] setting, and such a list.
_WANTED = {bool: ("true or false", "true or false values", "[true, false]"),
           int: ("a whole number", "whole numbers", "[64, 64]"),
           float: ("a finite number", "finite numbers", "[0.5, 1.0]"),
           str: ("a string", "strings", '["my_package"]'),
           dict: ("a table such as {eps = 1e-5}", "tables", "[{eps = 1e-5}]")}


def _coerce(kind: type, value: Any) -> tuple[bool, Any]:
    """(True, ``value`` as ``kind``) when it is one (a whole float counts as an int, an int as a float),
    else (False, None)."""
    if kind is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):                         # bool is an int subclass, never a number here
        return False, None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return isinstance(value, int), value
    if kind is float:
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        return ok, float(value) if ok else None
    if kind in (str, dict):
        return isinstance(value, kind), value
    raise TypeError(f"settings of type {kind!r} are not supported")


def _bounds(f: dataclasses.Field) -> str:
    low, high, low_open = f.metadata.get("low"), f.metadata.get("high"), f.metadata.get("low_open")
    parts = ([f"> {low}" if low_open else f">= {low}"] if low is not None else []) + \
            ([f"<= {high}"] if high is not None else [])
    return " and ".join(parts)


def _in_bounds(f: dataclasses.Field, value: Any) -> bool:
    low, high, low_open = f.metadata.get("low"), f.metadata.get("high"), f.metadata.get("low_open")
    return not ((low is not None and (value < low or (low_open and value == low)))
                or (high is not None and value > high))


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``T | None`` -> (T, True); any other hint -> (hint, False)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


def field_kind(cls, name: str) -> type:
    """The plain type a setting's values have (int, float, str, bool, list, dict), ``T | None`` unwrapped:
    what the command line parses its flag as."""
    hint, _ = _unwrap_optional(typing.get_type_hints(cls)[name])
    return typing.get_origin(hint) or hint


def _check_value(cls, f: dataclasses.Field, value: Any) -> Any:
    """Coerce ``value`` to the field's type and check its bounds and choices; raise ConfigError otherwise.
    A ``list[T]`` setting checks every item as a ``T`` against the field's bounds (``hidden_sizes``: whole
    numbers >= 1; ``gym_packages``: strings)."""
    name, (hint, optional) = f.name, _unwrap_optional(typing.get_type_hints(cls)[f.name])
    if value is None and optional:
        return None                               # "unset": the setting's help says what that means
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        coerced = [_coerce(item, v) for v in value] if isinstance(value, list) else [(False, None)]
        if not all(ok for ok, _ in coerced):
            raise ConfigError(f"{name} = {value!r} is not allowed: use a list of {_WANTED[item][1]} "
                              f"such as {_WANTED[item][2]}")
        items = [v for _, v in coerced]
        if not all(_in_bounds(f, v) for v in items):
            raise ConfigError(f"{name} = {value!r} is not allowed: every item must be {_bounds(f)}")
        return items
    ok, value_as = _coerce(hint, value)
    if not ok:
        raise ConfigError(f"{name} = {value!r} is not allowed: use {_WANTED[hint][0]}")
    value = value_as
    if not _in_bounds(f, value):
        raise ConfigError(f"{name} = {value!r} is not allowed: must be {_bounds(f)}")
    choices = _choices(f)
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        shown = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{name} = {value!r} is not allowed{hint}; choose one of: {shown}")
    return value


def from_dict(cls, data: Mapping[str, Any], base=None):
    """Build ``cls`` from plain data over ``base`` (or defaults), checking every key and value."""
    specs = field_specs(cls)
    values = dataclasses.asdict(base) if base is not None else {}
    for key, value in data.items():
        if key not in specs:
            close = difflib.get_close_matches(key, list(specs), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see --help for the valid keys"
            raise ConfigError(f"unknown config key {key!r}{hint}")
        values[key] = _check_value(cls, specs[key], value)
    return cls(**values)
