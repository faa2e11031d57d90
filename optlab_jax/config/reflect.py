"""A factory's signature as a strict pydantic model: its options, typed as YAML can give them.

`validate_kwargs(factory, options, loc)` checks a section's options against the factory's
keyword parameters (their annotations and defaults) and returns both the Python arguments and
their resolved JSON form; `construct` calls the factory and locates the `ValueError` it raises
(ours name the argument: `b1=1.5 is out of range ...`) at that option.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import json
import re
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Strict, ValidationError, create_model

from optlab_jax.config.errors import Invalid, from_pydantic
from optlab_jax.config.schema import STRICT

_NOT_YAML = object()  # an annotation no YAML value can satisfy (arrays, callables, transforms)


def _yaml_type(tp: Any) -> Any:
  """The part of a factory's annotation a YAML value can take; `Any` where it cannot be checked."""
  if tp in (bool, int, float, str, type(None)) or typing.get_origin(tp) is Literal:
    return tp
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    kept = [t for t in map(_yaml_type, args) if t is not _NOT_YAML and t is not complex]
    if Any in kept or not kept:
      return Any
    if float in kept:  # chex.Numeric-like unions: a number is a float
      kept = [t for t in kept if t not in (int, bool)]
    return functools.reduce(lambda a, b: a | b, kept)
  if origin in (list, collections.abc.Sequence) or tp is list:
    return list[_checkable(args[0]) if args else Any]
  if origin is tuple or tp is tuple:
    inner = tuple(a if a is Ellipsis else _checkable(a) for a in args) or (Any, ...)
    return Annotated[tuple[inner], Strict(False)]  # YAML lists become tuples
  if origin is dict or tp is dict:
    if not args:
      return dict
    key = _checkable(args[0])  # JSON writes every key as a string: a resolved config's {"5": 0.1} is {5: 0.1}
    return dict[key if key in (str, Any) else Annotated[key, Strict(False)], _checkable(args[1])]
  if tp is Any or tp is inspect.Parameter.empty:
    return Any
  return _NOT_YAML


def _checkable(tp: Any) -> Any:
  tp = _yaml_type(tp)
  return Any if tp is _NOT_YAML else tp


def _annotation(factory: Any, param: inspect.Parameter) -> Any:
  ann = param.annotation
  if isinstance(ann, str):
    try:
      ann = eval(ann, getattr(factory, "__globals__", {}))  # noqa: S307 (the factory's own annotation)
    except Exception:  # an annotation naming what its module does not import cannot be checked
      return Any
  return _checkable(ann)


def _jsonable(value: Any) -> bool:
  try:
    json.dumps(value)
  except (TypeError, ValueError):
    return False
  return True


@functools.cache
def options_model(factory: Any, skip: tuple[str, ...] = ()) -> tuple[type[BaseModel], frozenset[str]]:
  """A strict pydantic model of `factory`'s keyword options, and the names whose default is JSON."""
  fields, json_defaults = {}, set()
  for name, p in inspect.signature(factory).parameters.items():
    if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
      continue
    default = ... if p.default is p.empty else p.default
    fields[name] = (_annotation(factory, p), default)
    if default is not ... and _jsonable(default):
      json_defaults.add(name)
  model = create_model(f"{getattr(factory, '__name__', 'factory')}_options", __config__=STRICT, **fields)
  return model, frozenset(json_defaults)


def validate_kwargs(factory: Any, options: dict, loc: tuple, skip: tuple[str, ...] = ()) -> tuple[dict, dict]:
  """(keyword arguments for `factory`, their resolved JSON form with JSON-able defaults filled in).

  Raises `Errors` with every bad option at once.
  """
  model, json_defaults = options_model(factory, skip)
  try:
    validated = model.model_validate(options)
  except ValidationError as e:
    raise from_pydantic(e, model, loc) from None
  py = {k: getattr(validated, k) for k in model.model_fields if k in options or k in json_defaults}
  return py, validated.model_dump(mode="json", include=set(py))


def construct(build: collections.abc.Callable[[], Any], options: dict, loc: tuple) -> Any:
  """`build()`; its ValueError/TypeError (which name the argument: `b1=1.5 is ...`) located."""
  try:
    return build()
  except (ValueError, TypeError) as e:
    arg = re.match(r"\W*(\w+)\W*=", str(e))
    raise Invalid(loc + ((arg[1],) if arg and arg[1] in options else ()), str(e)) from None
