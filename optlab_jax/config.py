"""Experiment configs: the typed schema, YAML loading, `--set` overrides, path-qualified errors.

A config file has the sections `problem` (a problem name + its options), `optimizer` (a registry
name + hyperparameters; `learning_rate` a float or a schedule spec `{name: ..., **kwargs}`),
`train`, `monitor`, `sweep` (`grid` and `zip` axes over dotted keys) and `seeds`. Every sweep
point is validated in full: options and hyperparameters against their factory's signature (its
type annotations and defaults), then by building the problem and the optimizer, so our own
`ValueError`s surface before any training. The first error raises `ConfigError` with one message
naming the source (the file, or the `--set` that caused it), the dotted path and, for unknown
names, the closest valid one: `configs/x.yaml: optimizer.betas: unknown key; did you mean 'b1'?`.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import functools
import inspect
import json
import re
import types
import typing
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeInt, PositiveInt, Strict
from pydantic import ValidationError, create_model

from optlab_jax import monitor, optim, problems, schedules, sweep
from optlab_jax.checks import did_you_mean

SECTIONS = ("problem", "optimizer", "train", "monitor")
_STRICT = ConfigDict(strict=True, extra="forbid")


class ConfigError(ValueError):
  """A bad config; the message names the source, the dotted path and what is wrong."""


class Invalid(Exception):
  """An error at a path of the config (a tuple of keys and list indices), before attribution."""

  def __init__(self, loc: tuple, msg: str):
    super().__init__(msg)
    self.loc, self.msg = tuple(loc), msg


def _batch_size(value: Any) -> Any:
  if value == "full" or (type(value) is int and value >= 1):
    return value
  raise ValueError(f"expected a positive integer or 'full', got {value!r}")


class Train(BaseModel):
  """How long and on what batches to train."""

  model_config = _STRICT
  steps: PositiveInt
  batch_size: Annotated[Any, BeforeValidator(_batch_size)] = "full"
  eval_every: NonNegativeInt = 0  # 0: evaluate at the end only
  loop: Literal["auto", "scan", "python"] = "auto"


class Monitor(BaseModel):
  """Which in-training curvature diagnostics to record, every how many steps; other keys are
  options of `optlab_jax.monitor.Monitor` (lanczos_iters, top_k, trace_samples, seed, loop)."""

  model_config = ConfigDict(strict=True, extra="allow")
  every: PositiveInt = 50
  metrics: list[str] = Field(min_length=1)


class Sweep(BaseModel):
  """Axes over dotted keys: grid axes are crossed; zip axes advance together."""

  model_config = _STRICT
  grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}
  zip: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}


class _File(BaseModel):
  model_config = _STRICT
  problem: dict[str, Any] | None = None
  optimizer: dict[str, Any] | None = None
  train: dict[str, Any] | None = None
  monitor: dict[str, Any] | None = None
  sweep: Sweep = Sweep()
  seeds: list[int] = Field(default=[0], min_length=1)


class _Named(BaseModel):
  model_config = ConfigDict(strict=True, extra="allow")
  name: str


class _Point(BaseModel):
  model_config = _STRICT
  problem: _Named
  optimizer: _Named
  train: Train
  monitor: Monitor | None = None


@dataclasses.dataclass(frozen=True)
class Run:
  """One run: its resolved, JSON-able config (sections + seed) and the sweep values behind it."""

  config: dict[str, Any]
  axes: tuple[sweep.Axis, ...]


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A loaded config file: every run of its sweep, in order (seeds innermost)."""

  path: str
  runs: list[Run]


# ---------------------------------------------------------------- errors and paths


def dotted(loc: tuple) -> str:
  """("a", "b", 0, "c") -> "a.b[0].c"."""
  out = ""
  for part in loc:
    out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
  return out


def _unknown(kind: str, name: Any, known: list[str]) -> str:
  return f"unknown {kind} {name!r}{did_you_mean(str(name), known)} (known: {', '.join(known)})"


# Union members are tagged in pydantic's error locations ("float", "list[int]"): not config keys.
_UNION_TAG = re.compile(r"^(int|float|str|bool|none|[\w-]+\[.*\])$")


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
  """The keys the schema allows at `loc` (for did-you-mean), walking nested models."""
  for part in loc:
    field = model.model_fields.get(part) if isinstance(part, str) else None
    types_ = (*typing.get_args(field.annotation), field.annotation) if field else ()
    models = [t for t in types_ if isinstance(t, type) and issubclass(t, BaseModel)]
    if not models:
      return []
    model = models[0]
  return list(model.model_fields)


def _from_pydantic(error: ValidationError, model: type[BaseModel], prefix: tuple = ()) -> Invalid:
  """The first error of a pydantic validation, as an `Invalid` with a readable message."""
  errors = error.errors(include_url=False)  # a misspelt key also reads as a missing one: name the typo
  first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
  loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
  if first["type"] == "extra_forbidden":
    msg = "unknown key" + did_you_mean(str(loc[-1]), _keys_at(model, loc[:-1]))
  elif first["type"] == "missing":
    msg = "required key is missing"
  else:
    msg = re.sub(r" or instance of \w+", "", first["msg"].removeprefix("Value error, "))
    msg += "" if "got" in msg else f", got {first['input']!r}"
  return Invalid(prefix + loc, msg)


# ---------------------------------------------------------------- factories' signatures

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
    return dict[tuple(map(_checkable, args))] if args else dict
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
def _options_model(factory: Any, skip: tuple[str, ...]) -> tuple[type[BaseModel], frozenset[str]]:
  """A strict pydantic model of `factory`'s keyword options, and the names whose default is JSON."""
  fields, json_defaults = {}, set()
  for name, p in inspect.signature(factory).parameters.items():
    if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
      continue
    default = ... if p.default is p.empty else p.default
    fields[name] = (_annotation(factory, p), default)
    if default is not ... and _jsonable(default):
      json_defaults.add(name)
  model = create_model(f"{getattr(factory, '__name__', 'factory')}_options", __config__=_STRICT, **fields)
  return model, frozenset(json_defaults)


def validate_kwargs(factory: Any, options: dict, loc: tuple, skip: tuple[str, ...] = ()) -> tuple[dict, dict]:
  """(keyword arguments for `factory`, their resolved JSON form with JSON-able defaults filled in)."""
  model, json_defaults = _options_model(factory, skip)
  try:
    validated = model.model_validate(options)
  except ValidationError as e:
    raise _from_pydantic(e, model, loc) from None
  py = {k: getattr(validated, k) for k in model.model_fields if k in options or k in json_defaults}
  return py, validated.model_dump(mode="json", include=set(py))


def _construct(build: collections.abc.Callable[[], Any], options: dict, loc: tuple) -> Any:
  """`build()`; its ValueError/TypeError (which name the argument: `b1=1.5 is ...`) located."""
  try:
    return build()
  except (ValueError, TypeError) as e:
    arg = re.match(r"\W*(\w+)\W*=", str(e))
    raise Invalid(loc + ((arg[1],) if arg and arg[1] in options else ()), str(e)) from None


# ---------------------------------------------------------------- sections


def schedule_factories() -> dict[str, Any]:
  """Learning-rate schedules by name (`optlab_jax.schedules`: optax's and ours)."""
  return {n: getattr(schedules, n) for n in schedules.__all__ if inspect.isfunction(getattr(schedules, n))}


def _lookup(kind: str, name: str, known: collections.abc.Iterable[str], loc: tuple) -> None:
  known = sorted(known)
  if name not in known:
    raise Invalid(loc, _unknown(kind, name, known))


def _problem(section: _Named) -> dict:
  _lookup("problem", section.name, problems.names(), ("problem", "name"))
  _, resolved = validate_kwargs(problems.get(section.name), section.model_extra, ("problem",))
  resolved = {"name": section.name, **resolved}
  _construct(lambda: build_problem(resolved), section.model_extra, ("problem",))
  return resolved


def _learning_rate(value: Any, loc: tuple) -> tuple[Any, Any]:
  """(value for the factory, resolved JSON) of a float or a schedule spec {name: ..., **kwargs}."""
  if not isinstance(value, dict):
    if type(value) not in (int, float):
      raise Invalid(loc, f"expected a number or a schedule {{name: ..., ...}}, got {value!r}")
    return float(value), float(value)
  options = dict(value)
  name = options.pop("name", None)
  if name is None:
    raise Invalid(loc + ("name",), f"required key is missing (a schedule: {', '.join(schedule_factories())})")
  _lookup("schedule", name, schedule_factories(), loc + ("name",))
  factory = schedule_factories()[name]
  py, resolved = validate_kwargs(factory, options, loc)
  return _construct(lambda: factory(**py), options, loc), {"name": name, **resolved}


def _optimizer(section: _Named) -> tuple[dict, dict]:
  """(keyword arguments of the optimizer factory, resolved JSON) of an `optimizer` section."""
  _lookup("optimizer", section.name, optim.names(), ("optimizer", "name"))
  factory, options = optim.get(section.name), dict(section.model_extra)
  if "learning_rate" not in options:
    raise Invalid(("optimizer", "learning_rate"), "required key is missing")
  lr, lr_resolved = _learning_rate(options.pop("learning_rate"), ("optimizer", "learning_rate"))
  py, resolved = validate_kwargs(factory, options, ("optimizer",), skip=("learning_rate",))
  _construct(lambda: factory(learning_rate=lr, **py), section.model_extra, ("optimizer",))
  return {"learning_rate": lr, **py}, {"name": section.name, "learning_rate": lr_resolved, **resolved}


def validate_point(raw: dict[str, Any]) -> dict[str, Any]:
  """The resolved sections of one sweep point (defaults filled in); `Invalid` at the first error."""
  try:
    point = _Point.model_validate(raw)
  except ValidationError as e:
    raise _from_pydantic(e, _Point) from None
  resolved = {"problem": _problem(point.problem), "optimizer": _optimizer(point.optimizer)[1]}
  resolved["train"] = point.train.model_dump(mode="json")
  resolved["monitor"] = None
  if point.monitor is not None:
    for i, metric in enumerate(point.monitor.metrics):
      _lookup("metric", metric, monitor.METRICS, ("monitor", "metrics", i))
    options = point.monitor.model_extra
    _, resolved_options = validate_kwargs(monitor.Monitor, options, ("monitor",), skip=_MONITOR_BUILT)
    resolved["monitor"] = {"every": point.monitor.every, "metrics": point.monitor.metrics, **resolved_options}
    _construct(lambda: build_monitor(resolved, build_problem(resolved["problem"])), options, ("monitor",))
  return resolved


# Arguments of monitor.Monitor that `build_monitor` derives from the problem and the optimizer.
_MONITOR_BUILT = ("metrics", "loss_fn", "model_fn", "output_loss_fn", "learning_rate", "preconditioner")


def build_monitor(cfg: dict[str, Any], problem: Any) -> monitor.Monitor | None:
  """The monitor of a resolved run config (None without a `monitor` section).

  Its probes are seeded alike in every run (the section's `seed`), so a vmapped group measures
  each run as that run alone would; a swept learning rate reaches `eos_ratio` through the
  optimizer's `inject_hyperparams` state. An Adam-family optimizer's b2 and eps set the diagonal
  preconditioner of `preconditioned_lambda_max`.
  """
  if cfg["monitor"] is None:
    return None
  opt, extra = cfg["optimizer"], {}
  if isinstance(opt.get("b2"), float) and isinstance(opt.get("eps"), float):
    extra["preconditioner"] = monitor.adam_preconditioner(opt["b2"], opt["eps"])
  options = {k: v for k, v in cfg["monitor"].items() if k != "every"}
  return monitor.Monitor(
      **options, loss_fn=problem.loss, learning_rate=optimizer_kwargs(opt)["learning_rate"],
      model_fn=lambda params, batch: problem.model_fn(params, batch["x"]),
      output_loss_fn=problem.output_loss_fn, **extra,
  )


_PROBLEMS: dict[str, Any] = {}


def build_problem(section: dict[str, Any]) -> Any:
  """The problem of a resolved `problem` section (built once per distinct section)."""
  key = json.dumps(section, sort_keys=True)
  if key not in _PROBLEMS:
    options = {k: v for k, v in section.items() if k != "name"}
    kwargs, _ = validate_kwargs(problems.get(section["name"]), options, ("problem",))
    _PROBLEMS[key] = problems.build(section["name"], **kwargs)
  return _PROBLEMS[key]


def optimizer_kwargs(section: dict[str, Any]) -> dict[str, Any]:
  """Keyword arguments of `optim.get(section["name"])` for a resolved section (schedules built)."""
  return _optimizer(_Named(**section))[0]


# ---------------------------------------------------------------- files and overrides


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


@dataclasses.dataclass
class _Source:
  """Formats an error as `<file>: <where>: <what>`, naming the `--set` or sweep value behind it."""

  path: str
  sets: list[tuple[tuple[str, ...], Any]]

  def error(self, e: Invalid, axes: tuple[sweep.Axis, ...] = ()) -> ConfigError:
    where = dotted(e.loc)
    if any(e.loc[: len(key)] == key for key, _ in self.sets):
      where = f"--set {where}"
    else:
      for axis in sorted(axes, key=lambda a: -len(a.path)):
        if e.loc[: len(axis.path)] == axis.path:
          rest = dotted(e.loc[len(axis.path):])
          where = f"sweep.{axis.kind}.{axis.key}[{axis.index}]" + (f".{rest}" if rest else "")
          axis_key = ("sweep", axis.kind, axis.key)
          if any(axis_key[: len(key)] == key for key, _ in self.sets):
            where = f"--set {where}"
          break
    return ConfigError(f"{self.path}: {where}: {e.msg}")


def load(path: str, overrides: collections.abc.Sequence[str] = ()) -> Experiment:
  """Reads a config file, applies `--set` overrides, validates every run; `ConfigError` if bad."""
  try:
    with open(path) as f:
      raw = parse_yaml(f.read())
  except (OSError, yaml.YAMLError) as e:
    raise ConfigError(f"{path}: {e}") from None
  if not isinstance(raw, dict):
    raise ConfigError(f"{path}: expected a mapping with the keys {', '.join(_File.model_fields)}")
  sets = [parse_set(s) for s in overrides]
  source = _Source(path, sets)
  try:
    for key, value in sets:  # sweep and seeds apply to the file; the others to every point
      if key[0] in ("sweep", "seeds"):
        _assign(raw, key, value)
    try:
      spec = _File.model_validate(raw)
    except ValidationError as e:
      raise _from_pydantic(e, _File) from None
    if len(set(spec.seeds)) < len(spec.seeds):
      raise Invalid(("seeds",), f"seeds repeat: {spec.seeds}")
    points = sweep.expand(spec.sweep.grid, spec.sweep.zip)
  except Invalid as e:
    raise source.error(e) from None
  runs = []
  for axes in points:
    point = copy.deepcopy({s: getattr(spec, s) for s in SECTIONS if getattr(spec, s) is not None})
    try:
      for axis in sorted(axes, key=lambda a: len(a.path)):  # whole sections first, then their keys
        if axis.path[0] not in SECTIONS:
          raise Invalid(axis.path, f"a sweep axis sets a key of {' / '.join(SECTIONS)}")
        _assign(point, axis.path, axis.value)
      for key, value in sets:
        if key[0] not in ("sweep", "seeds"):
          _assign(point, key, value)
      resolved = validate_point(point)
    except Invalid as e:
      raise source.error(e, axes) from None
    runs += [Run({**resolved, "seed": seed}, axes) for seed in spec.seeds]
  return Experiment(path, runs)
