"""Sections to objects: each sweep point checked in full, and the problem, optimizer and monitor built.

`validate_point` resolves one point's sections (defaults filled in) or raises `Errors` with every
mistake it finds: the sections are checked independently, each against its factory's signature
and then by building it, so our own `ValueError`s surface before any training. An optimizer
with a `likelihood` parameter (natural gradient, Sophia-G, K-FAC) gets the problem's.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import threading
from typing import Any

from pydantic import BaseModel, ValidationError

from optlab_jax import monitor, optim, problems, schedules
from optlab_jax.config.errors import Errors, Invalid, MISSING, from_pydantic, unknown_name
from optlab_jax.config.reflect import construct, validate_kwargs
from optlab_jax.config.schema import SECTIONS, Monitor, Named, Point, Train

# Arguments of monitor.Monitor that `build_monitor` derives from the problem and the optimizer.
_MONITOR_BUILT = ("metrics", "loss_fn", "model_fn", "output_loss_fn", "learning_rate", "optimizer",
                  "preconditioner")


def schedule_factories() -> dict[str, Any]:
  """Learning-rate schedules by name (`optlab_jax.schedules`: optax's and ours)."""
  return {n: getattr(schedules, n) for n in schedules.__all__ if inspect.isfunction(getattr(schedules, n))}


def _lookup(kind: str, name: str, known: collections.abc.Iterable[str], loc: tuple) -> None:
  known = sorted(known)
  if name not in known:
    raise Invalid(loc, unknown_name(kind, name, known))


def _validated(model: type[BaseModel], value: Any, loc: tuple) -> Any:
  try:
    return model.model_validate(value)
  except ValidationError as e:
    raise from_pydantic(e, model, loc) from None


def _problem(raw: dict) -> tuple[dict, Any]:
  """(resolved section, the built `Problem`) of a `problem` section."""
  section = _validated(Named, raw, ("problem",))
  _lookup("problem", section.name, problems.names(), ("problem", "name"))
  _, resolved = validate_kwargs(problems.get(section.name), section.model_extra, ("problem",))
  resolved = {"name": section.name, **resolved}
  return resolved, construct(lambda: build_problem(resolved), section.model_extra, ("problem",))


def _learning_rate(value: Any, loc: tuple) -> tuple[Any, Any]:
  """(value for the factory, resolved JSON) of a float or a schedule spec {name: ..., **kwargs}."""
  if not isinstance(value, dict):
    if type(value) not in (int, float):
      raise Invalid(loc, f"expected a number or a schedule {{name: ..., ...}}, got {value!r}")
    return float(value), float(value)
  options = dict(value)
  name = options.pop("name", None)
  if name is None:
    raise Invalid(loc + ("name",), f"{MISSING} (a schedule: {', '.join(schedule_factories())})")
  _lookup("schedule", name, schedule_factories(), loc + ("name",))
  factory = schedule_factories()[name]
  # A schedule's schedule argument (linear_warmup's) may itself be a spec: built first, the same way.
  nested = {k: _learning_rate(v, loc + (k,)) for k, v in options.items() if isinstance(v, dict) and "name" in v}
  py, resolved = validate_kwargs(factory, {k: v for k, v in options.items() if k not in nested}, loc, tuple(nested))
  py, resolved = py | {k: v[0] for k, v in nested.items()}, resolved | {k: v[1] for k, v in nested.items()}
  return construct(lambda: factory(**py), options, loc), {"name": name, **resolved}


def _likelihood(factory: Any, options: dict, problem: Any) -> None:
  """Gives `options` the problem's likelihood if the factory takes one; `Invalid` if they differ."""
  given, wanted = options.get("likelihood"), getattr(problem, "likelihood", None)
  if "likelihood" not in inspect.signature(factory).parameters or wanted is None:
    return
  if given is not None and given != wanted:
    raise Invalid(
        ("optimizer", "likelihood"),
        f"likelihood={given!r} contradicts problem {problem.name!r}, whose loss is a {wanted} "
        f"negative log-likelihood; leave it out and the problem's ({wanted!r}) is used",
    )
  options["likelihood"] = wanted


def _optimizer(raw: dict, problem: Any = None) -> tuple[dict, dict]:
  """(keyword arguments of the optimizer factory, resolved JSON) of an `optimizer` section."""
  section = _validated(Named, raw, ("optimizer",))
  _lookup("optimizer", section.name, optim.names(), ("optimizer", "name"))
  factory, options, errors = optim.get(section.name), dict(section.model_extra), Errors()
  with errors.catch():
    if "learning_rate" not in options:
      raise Invalid(("optimizer", "learning_rate"), MISSING)
    lr, lr_resolved = _learning_rate(options.pop("learning_rate"), ("optimizer", "learning_rate"))
  with errors.catch():
    _likelihood(factory, options, problem)
    py, resolved = validate_kwargs(factory, options, ("optimizer",), skip=("learning_rate",))
  errors.check()
  construct(lambda: factory(learning_rate=lr, **py), section.model_extra, ("optimizer",))
  return {"learning_rate": lr, **py}, {"name": section.name, "learning_rate": lr_resolved, **resolved}


def _monitor(raw: dict, resolved: dict, problem: Any) -> dict:
  """The resolved `monitor` section; built against the point's problem and optimizer if they are valid."""
  section, errors = _validated(Monitor, raw, ("monitor",)), Errors()
  for i, metric in enumerate(section.metrics):
    with errors.catch():
      _lookup("metric", metric, monitor.METRICS, ("monitor", "metrics", i))
  with errors.catch():
    _, options = validate_kwargs(monitor.Monitor, section.model_extra, ("monitor",), skip=_MONITOR_BUILT)
  errors.check()
  out = {"every": section.every, "metrics": section.metrics, **options}
  if problem is not None and "optimizer" in resolved:
    construct(lambda: build_monitor({**resolved, "monitor": out}, problem), section.model_extra, ("monitor",))
  return out


def validate_point(raw: dict[str, Any]) -> dict[str, Any]:
  """The resolved sections of one sweep point (defaults filled in); `Errors` with every mistake."""
  errors, resolved, problem = Errors(), {}, None
  with errors.catch():
    _validated(Point, raw, ())
  sections = {s: raw[s] for s in SECTIONS if isinstance(raw.get(s), dict)}
  if "problem" in sections:
    with errors.catch():
      resolved["problem"], problem = _problem(sections["problem"])
  if "optimizer" in sections:
    with errors.catch():
      resolved["optimizer"] = _optimizer(sections["optimizer"], problem)[1]
  if "train" in sections:
    with errors.catch():
      resolved["train"] = _validated(Train, sections["train"], ("train",)).model_dump(mode="json")
  resolved["monitor"] = None
  if "monitor" in sections:
    with errors.catch():
      resolved["monitor"] = _monitor(sections["monitor"], resolved, problem)
  errors.check()
  return resolved


def build_monitor(cfg: dict[str, Any], problem: Any) -> monitor.Monitor | None:
  """The monitor of a resolved run config (None without a `monitor` section).

  Its probes are seeded alike in every run (the section's `seed`), so a vmapped group measures
  each run as that run alone would; a swept learning rate reaches `eos_ratio` through the
  optimizer's `inject_hyperparams` state. The optimizer's config gives `eos_ratio` its own
  stability edge and the preconditioned metrics its diagonal preconditioner.
  """
  if cfg["monitor"] is None:
    return None
  opt = cfg["optimizer"]
  options = {k: v for k, v in cfg["monitor"].items() if k != "every"}
  return monitor.Monitor(
      **options, loss_fn=problem.loss, learning_rate=optimizer_kwargs(opt)["learning_rate"], optimizer=opt,
      model_fn=lambda params, batch: problem.model_fn(params, batch["x"]),
      output_loss_fn=problem.output_loss_fn,
  )


_PROBLEMS: dict[str, Any] = {}
_PROBLEMS_LOCK = threading.Lock()


def build_problem(section: dict[str, Any]) -> Any:
  """The problem of a resolved `problem` section (built once per distinct section)."""
  key = json.dumps(section, sort_keys=True)
  with _PROBLEMS_LOCK:   # groups running in threads build a shared problem once
    if key not in _PROBLEMS:
      options = {k: v for k, v in section.items() if k != "name"}
      kwargs, _ = validate_kwargs(problems.get(section["name"]), options, ("problem",))
      _PROBLEMS[key] = problems.build(section["name"], **kwargs)
    return _PROBLEMS[key]


def optimizer_kwargs(section: dict[str, Any]) -> dict[str, Any]:
  """Keyword arguments of `optim.get(section["name"])` for a resolved section (schedules built)."""
  return _optimizer(section)[0]
