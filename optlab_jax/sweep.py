"""Sweeps: expand the axes, group the runs that can share one compiled program, run and resume.

`expand` crosses the grid axes and advances the zip axes together (the runs of a point then
repeat over `seeds:`). `group` puts together the runs that differ only in their seed or in float
hyperparameters of the optimizer, which `optax.inject_hyperparams` carries as traced arrays: each
such group is ONE compiled program vmapped over its runs (`train.fit_vmapped`) when
`train.should_vmap` says that beats running them one by one, else its runs go through `train.fit`
in turn. `run` skips the runs whose results are already on disk, so re-running resumes.
"""

from __future__ import annotations

import inspect
import itertools
import json
from typing import Any, Iterator, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from optlab_jax import config, optim, results, train


class Axis(NamedTuple):
  """One sweep axis's value at a point."""

  key: str    # the dotted key as written in `sweep:`, e.g. "optimizer.learning_rate"
  kind: str   # "grid" or "zip"
  index: int  # position of `value` in the axis's list
  value: Any

  @property
  def path(self) -> tuple[str, ...]:
    return tuple(self.key.split("."))


def expand(grid: dict[str, list], zipped: dict[str, list]) -> list[tuple[Axis, ...]]:
  """The sweep's points: the product of the grid axes (first axis outermost), each crossed with
  the zip axes taken together. `config.Invalid` if zip axes differ in length or repeat a key."""
  lengths = {key: len(values) for key, values in zipped.items()}
  if len(set(lengths.values())) > 1:
    raise config.Invalid(("sweep", "zip"), f"zip axes need lists of one length, got {lengths}")
  for key in zipped:
    if key in grid:
      raise config.Invalid(("sweep", "zip", key), "is also a grid axis")
  grid_axes = [[Axis(k, "grid", i, v) for i, v in enumerate(vs)] for k, vs in grid.items()]
  size = max(lengths.values(), default=1)
  zip_points = [tuple(Axis(k, "zip", i, vs[i]) for k, vs in zipped.items()) for i in range(size)]
  return [tuple(g) + z for g in itertools.product(*grid_axes) for z in zip_points]


def label(run: config.Run) -> str:
  """A short name of a run's point: its sweep values (a swept section by its name and keys)."""
  if not run.axes:
    return run.config["optimizer"]["name"]
  parts = []
  for axis in run.axes:
    if isinstance(axis.value, dict):
      name = axis.value.get("name", axis.key)
      rest = ", ".join(f"{'lr' if k == 'learning_rate' else k}={v}" for k, v in axis.value.items() if k != "name")
      parts.append(f"{name}({rest})" if rest else str(name))
    else:
      parts.append(f"{axis.key.rsplit('.', 1)[-1]}={axis.value}")
  return " ".join(parts)


def _carried(value: Any) -> bool:
  """Whether a hyperparameter can vary inside one vmapped program (a float, traced there)."""
  return isinstance(value, float)


def _program(cfg: dict) -> str:
  optimizer = {k: v for k, v in cfg["optimizer"].items() if not _carried(v)}
  return json.dumps({**cfg, "seed": None, "optimizer": optimizer}, sort_keys=True)


def group(runs: list[config.Run]) -> list[list[config.Run]]:
  """The runs that can share one compiled program, groups in order of first appearance."""
  groups: dict[str, list[config.Run]] = {}
  for run in runs:
    groups.setdefault(_program(run.config), []).append(run)
  return list(groups.values())


def _monitor(cfg: dict, problem: Any) -> dict[str, Any]:
  """The `monitor` / `monitor_every` arguments of `train.fit` for a run's config."""
  if cfg["monitor"] is None:
    return {}
  return {"monitor": config.build_monitor(cfg, problem), "monitor_every": cfg["monitor"]["every"]}


def _fit_kwargs(cfg: dict) -> dict[str, Any]:
  t = cfg["train"]
  batch_size = None if t["batch_size"] == "full" else t["batch_size"]
  return dict(steps=t["steps"], batch_size=batch_size, eval_every=t["eval_every"], loop=t["loop"])


def _ticker(bar: tqdm):
  """An `on_progress(steps_done)` callback moving `bar` to where it was plus `steps_done`."""
  start = bar.n
  return lambda steps_done: bar.update(start + steps_done - bar.n)


def _factory_of(factory: Any, fixed: dict[str, Any], varying: list[str]) -> Any:
  """`factory` with `fixed` bound, as a function of exactly the `varying` hyperparameters.

  `optax.inject_hyperparams` traces every numeric argument its factory's signature shows, and
  an integer one (an update interval, a seed, a block size) must stay a Python int, so the
  signature shows only the floats that vary across the group.
  """

  def tx_factory(**hparams):
    return factory(**fixed, **hparams)

  keyword = inspect.Parameter.KEYWORD_ONLY
  tx_factory.__signature__ = inspect.Signature([inspect.Parameter(k, keyword) for k in varying])
  return tx_factory


def _fit_group(runs: list[config.Run], bar: tqdm) -> Iterator[tuple[config.Run, Any]]:
  """Fits a group's runs, vmapped as one program or one by one; yields (run, History) as done."""
  cfg = runs[0].config
  problem = config.build_problem(cfg["problem"])
  factory = optim.get(cfg["optimizer"]["name"])
  kwargs = [config.optimizer_kwargs(r.config["optimizer"]) for r in runs]
  fit_kwargs = _fit_kwargs(cfg)
  tx = factory(**kwargs[0])
  if len(runs) > 1 and train.should_vmap(problem, len(runs), tx=tx, batch_size=fit_kwargs["batch_size"]):
    varying = [k for k in kwargs[0] if len({json.dumps(r.config["optimizer"][k]) for r in runs}) > 1]
    hparams = {k: np.asarray([r.config["optimizer"][k] for r in runs], np.float64) for k in varying}
    tx_factory = _factory_of(factory, {k: v for k, v in kwargs[0].items() if k not in varying}, varying)
    histories = train.fit_vmapped(
        problem, tx_factory, hparams, np.asarray([r.config["seed"] for r in runs]),
        **fit_kwargs, **_monitor(cfg, problem), on_progress=_ticker(bar),
    )
    yield from zip(runs, histories)
    return
  for run, kw in zip(runs, kwargs):
    history = train.fit(
        problem, factory(**kw), seed=run.config["seed"],
        **fit_kwargs, **_monitor(run.config, problem), on_progress=_ticker(bar),
    )
    yield run, history


def run(experiment: config.Experiment, out_dir: str, *, progress: bool = True) -> list[dict]:
  """Runs every run of `experiment` not yet finished in `out_dir`; returns all their records."""
  store = results.Store(out_dir)
  pending = [r for r in experiment.runs if results.run_id(r.config) not in store.finished()]
  done, total = 0, sum(r.config["train"]["steps"] for r in pending)
  with tqdm(total=total, unit="step", disable=not progress or not pending) as bar:
    for runs in group(pending):
      bar.set_description(f"{label(runs[0])} ×{len(runs)}")
      for run, history in _fit_group(runs, bar):
        store.add(run.config, label(run), history)
        done += run.config["train"]["steps"]
        bar.update(done - bar.n)  # a run that stopped early (diverged) still fills its share
  return store.records([results.run_id(r.config) for r in experiment.runs])
