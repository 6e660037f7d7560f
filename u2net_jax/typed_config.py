"""Mappings → frozen dataclasses, each value cast to its field's declared type.

The machinery behind `config.parse`: a (nested) mapping or ConfigDict
becomes an instance of a frozen dataclass; an unknown key, or a value that
cannot be cast to the field's type (bool, int, float, str, tuples of them,
a nested dataclass, a string-keyed mapping), is a `ConfigError` naming the
key as `config.<section>.<key>`. Command-line text is accepted for tuples
('a,b,c' or 'AxBxC'). Defaults are the dataclasses' own.

Core module: imports nothing of u2net_jax but `errors`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Mapping

from u2net_jax.errors import ConfigError


@functools.cache
def _hints(cls) -> dict:
  return typing.get_type_hints(cls)


def as_mapping(value, where: str) -> Mapping:
  """`value` (None, a mapping or a ConfigDict) as a mapping; `where` names it in errors."""
  if value is None:
    return {}
  if hasattr(value, "to_dict") and not isinstance(value, Mapping):
    value = value.to_dict()
  if not isinstance(value, Mapping):
    raise ConfigError(f"config{'.' + where if where else ''} must be a section (mapping), "
                      f"got {value!r}.")
  return value


def parse_dataclass(cls, values: Mapping, prefix: str):
  """An instance of dataclass `cls` from `values` (keys under config.`prefix`), cast and checked."""
  hints = _hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    where = f"config.{prefix}" if prefix else "config"
    raise ConfigError(f"Unknown key(s) {unknown} in {where}; known: {sorted(names)}.")
  kwargs = {}
  for name in names & set(values):
    key = f"{prefix}.{name}" if prefix else name
    kwargs[name] = _cast(hints[name], values[name], key)
  return cls(**kwargs)


def _cast(kind, value, key: str):
  if dataclasses.is_dataclass(kind):
    return parse_dataclass(kind, as_mapping(value, key), key)
  origin = typing.get_origin(kind)
  if origin is tuple:
    return _cast_tuple(typing.get_args(kind)[0], value, key)
  if kind is Mapping[str, Any] or origin is Mapping or origin is typing.Mapping:
    return types.MappingProxyType({k: tuple(v) if isinstance(v, list) else v
                                   for k, v in as_mapping(value, key).items()})
  if kind is bool:
    if isinstance(value, bool):
      return value
    raise ConfigError(f"config.{key} must be true or false, got {value!r}.")
  if kind is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    raise ConfigError(f"config.{key} must be an integer, got {value!r}.")
  if kind is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    raise ConfigError(f"config.{key} must be a number, got {value!r}.")
  if kind is str:
    if isinstance(value, str):
      return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
      return ",".join(value)  # e.g. data.tasks given as a sequence of names
    if value is None:
      return ""
    raise ConfigError(f"config.{key} must be a string, got {value!r}.")
  raise TypeError(f"config field {key}: unsupported type {kind!r}")  # a bug in this module


def _cast_tuple(elem, value, key: str) -> tuple:
  """A tuple of `elem`: from a sequence, or 'a,b,c' / 'AxBxC' text (command line)."""
  if isinstance(value, str):
    value = [v.strip() for v in value.replace("x", ",").split(",") if v.strip()]
  if not isinstance(value, (list, tuple)):
    raise ConfigError(f"config.{key} must be a sequence, got {value!r}.")
  try:
    return tuple(elem(v) if isinstance(v, str) else _cast(elem, v, key) for v in value)
  except (TypeError, ValueError):
    raise ConfigError(f"config.{key} must be numbers, got {value!r}.") from None
