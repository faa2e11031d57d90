"""Reading a config: YAML (with `1e-3` as a float), `--set` overrides, every sweep point validated.

`load` reports every mistake of a config at once: the file's own keys, then each sweep point's
sections, one line per distinct message (`<file>: <dotted path>: <what>`) in a `ConfigError`.
"""

from __future__ import annotations

import collections.abc
import copy
import re
from typing import Any

import yaml
from pydantic import ValidationError

from optlab_jax.config.axes import Axis, expand
from optlab_jax.config.build import validate_point
from optlab_jax.config.errors import ConfigError, Errors, Invalid, Source, from_pydantic, pruned
from optlab_jax.config.schema import SECTIONS, Experiment, File, Run


class _Loader(yaml.SafeLoader):
  """YAML's safe loader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
  """`yaml.safe_load`, except that `1e-3` is a float."""
  return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def parse_set(text: str) -> tuple[tuple[str, ...], Any]:
  """`"a.b=v"` -> (("a", "b"), v), v read as YAML; a sweep axis keeps its dotted key whole."""
  key, eq, value = text.partition("=")
  if not eq or not key.strip():
    raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set train.steps=100")
  parts = key.strip().split(".")
  if parts[0] == "sweep" and len(parts) > 3:
    parts = [*parts[:2], ".".join(parts[2:])]
  try:
    return tuple(parts), parse_yaml(value)
  except yaml.YAMLError as e:
    raise ConfigError(f"--set {text}: not a YAML value ({e})") from None


def _assign(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for i, part in enumerate(path[:-1]):
    if tree.get(part) is None:
      tree[part] = {}
    if not isinstance(tree[part], dict):
      raise Invalid(path[: i + 1], f"is {tree[part]!r}, not a mapping with a key {path[i + 1]!r}")
    tree = tree[part]
  tree[path[-1]] = value


def _file(raw: dict) -> tuple[File, list[Invalid]]:
  """The file's schema, and its errors; a key with an error is left out (its default is used)."""
  try:
    return File.model_validate(raw), []
  except ValidationError as e:
    errors = from_pydantic(e, File).errors
  rest = {k: v for k, v in raw.items() if k not in {err.loc[0] for err in errors if err.loc}}
  return File.model_validate(rest), errors


def _point(spec: File, axes: tuple[Axis, ...], sets: list) -> dict:
  """One sweep point's resolved sections: the file's, with its axis values, then the `--set`s."""
  point = copy.deepcopy({s: getattr(spec, s) for s in SECTIONS if getattr(spec, s) is not None})
  errors = Errors()
  for axis in sorted(axes, key=lambda a: len(a.path)):  # whole sections first, then their keys
    with errors.catch():
      if axis.path[0] not in SECTIONS:
        raise Invalid(axis.path, f"a sweep axis sets a key of {' / '.join(SECTIONS)}")
      _assign(point, axis.path, axis.value)
  for key, value in sets:
    if key[0] in SECTIONS:
      with errors.catch():
        _assign(point, key, value)
  with errors.catch():
    resolved = validate_point(point)
  errors.check()
  return resolved


def load(path: str, overrides: collections.abc.Sequence[str] = ()) -> Experiment:
  """Reads a config file, applies `--set` overrides, validates every run; `ConfigError` listing
  every mistake (one line each) if it is bad."""
  try:
    with open(path) as f:
      raw = parse_yaml(f.read())
  except (OSError, yaml.YAMLError) as e:
    raise ConfigError(f"{path}: {e}") from None
  if not isinstance(raw, dict):
    raise ConfigError(f"{path}: expected a mapping with the keys {', '.join(File.model_fields)}")
  sets = [parse_set(s) for s in overrides]
  found: list[tuple[Invalid, tuple[Axis, ...]]] = []  # each error, with the sweep values behind it
  for key, value in sets:  # the point sections' keys apply to every point; sweep, seeds, landscape to the file
    if key[0] not in SECTIONS:
      try:
        _assign(raw, key, value)
      except Invalid as e:
        found.append((e, ()))
  spec, file_errors = _file(raw)
  found += [(e, ()) for e in file_errors]
  if len(set(spec.seeds)) < len(spec.seeds):
    found.append((Invalid(("seeds",), f"seeds repeat: {spec.seeds}"), ()))
  try:
    points = expand(spec.sweep.grid, spec.sweep.zip)
  except Invalid as e:
    found.append((e, ()))
    points = []
  runs, bad_keys = [], {e.loc[0] for e, _ in found if e.loc}
  for axes in points:
    try:
      resolved = _point(spec, axes, sets)
    except Errors as e:
      found += [(err, axes) for err in e.errors if not (err.loc and err.loc[0] in bad_keys)]
      continue
    runs += [Run({**resolved, "seed": seed}, axes) for seed in spec.seeds]
  if found:
    source, kept = Source(path, sets), {id(e) for e in pruned([e for e, _ in found])}
    messages = [source.message(e, axes) for e, axes in found if id(e) in kept]
    raise ConfigError(list(dict.fromkeys(messages)))
  return Experiment(path, runs, None if spec.landscape is None else spec.landscape.model_dump())
