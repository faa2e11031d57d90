"""Sweeps: group the runs that can share one compiled program, run them, resume.

`config.load` expands the sweep axes (`config.expand`: grid axes crossed, zip axes together,
the runs of a point then repeated over `seeds:`). `group` puts together the runs that differ
only in their seed or in float hyperparameters of the optimizer, which `optax.inject_hyperparams`
carries as traced arrays: each such group is ONE compiled program vmapped over its runs
(`train.fit_vmapped`) when `train.should_vmap` says that beats running them one by one, else its
runs go through `train.fit` in turn. `run` skips the runs whose results are already on disk, so
re-running resumes; one progress bar counts the steps of the whole sweep.
"""

from __future__ import annotations

import functools
import inspect
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from optlab_jax import config, executors, optim, results, train


def _value(axis: config.Axis) -> str:
  """An axis value as a label shows it: a swept section by its name and keys."""
  if not isinstance(axis.value, dict):
    return str(axis.value)
  name = axis.value.get("name", axis.key)
  rest = ", ".join(f"{'lr' if k == 'learning_rate' else k}={v}" for k, v in axis.value.items() if k != "name")
  return f"{name}({rest})" if rest else str(name)


def _part(axis: config.Axis, values: list[str]) -> str:
  shown = values[0] if len(values) == 1 else "{" + ", ".join(values) + "}"
  return shown if isinstance(axis.value, dict) else f"{axis.key.rsplit('.', 1)[-1]}={shown}"


def label(run: config.Run) -> str:
  """A short name of a run's point: its sweep values (a swept section by its name and keys)."""
  if not run.axes:
    return run.config["optimizer"]["name"]
  return " ".join(_part(axis, [_value(axis)]) for axis in run.axes)


def group_label(runs: list[config.Run]) -> str:
  """A group's name: each axis's values in the group, e.g. "learning_rate={0.7, 0.85} ×4"."""
  if not runs[0].axes:
    return f"{label(runs[0])} ×{len(runs)}"
  parts = []
  for i, axis in enumerate(runs[0].axes):
    parts.append(_part(axis, list(dict.fromkeys(_value(r.axes[i]) for r in runs))))
  return f"{' '.join(parts)} ×{len(runs)}"


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


def fit_kwargs_of(cfg: dict) -> dict[str, Any]:
  """The `train.fit` keyword arguments of a run config's `train` section (steps, batch, eval, loop, ...)."""
  t = cfg["train"]
  batch_size = None if t["batch_size"] == "full" else t["batch_size"]
  return dict(steps=t["steps"], batch_size=batch_size, eval_every=t["eval_every"], loop=t["loop"],
              checkpoint_every=t["checkpoint_every"], mesh=t.get("mesh"))


def refit(cfg: dict, problem: Any = None, **kwargs: Any) -> train.History:
  """The run `cfg` trained again by `train.fit` (same seed, same data stream: the sweep's run, to
  rounding), for analyses that need its params; `kwargs` go to `fit` (a monitor, say)."""
  problem = config.build_problem(cfg["problem"]) if problem is None else problem
  tx = optim.get(cfg["optimizer"]["name"])(**config.optimizer_kwargs(cfg["optimizer"]))
  fit_kwargs = {k: v for k, v in fit_kwargs_of(cfg).items() if k != "checkpoint_every"}
  return train.fit(problem, tx, seed=cfg["seed"], **(fit_kwargs | kwargs))


class _Progress:
  """One monotone progress bar over a sweep's steps; `at(n)` never moves it back."""

  def __init__(self, bar: tqdm):
    self.bar, self.shown = bar, None

  def describe(self, groups: list[list[config.Run]]) -> None:
    """Names the groups running on the bar."""
    text = "; ".join(group_label(runs) for runs in groups)
    if text != self.shown:
      self.bar.set_description(text)
      self.shown = text

  def at(self, steps: int) -> None:
    if steps > self.bar.n:
      self.bar.update(steps - self.bar.n)

  def ticker(self, start: int) -> Callable[[int], None]:
    """An `on_progress(steps_done)` callback for a fit whose steps begin at `start`."""
    return lambda steps_done: self.at(start + steps_done)


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


def _fit_group(
    runs: list[config.Run], progress: _Progress, start: int, checkpoints: Path | None = None
) -> Iterator[tuple[config.Run, Any]]:
  """Fits a group's runs, vmapped as one program or one by one; yields (run, History) as done.

  `start` is the sweep's step count before the group (the bar's position); `fit_vmapped`
  reports the steps done summed over its runs, so both paths count the group's steps alike.
  A run checkpoints in `checkpoints/<run id>`, a vmapped program in `checkpoints/<id of its runs>`.
  """
  cfg = runs[0].config
  problem = config.build_problem(cfg["problem"])
  factory = optim.get(cfg["optimizer"]["name"])
  kwargs = [config.optimizer_kwargs(r.config["optimizer"]) for r in runs]
  fit_kwargs = fit_kwargs_of(cfg)
  tx = factory(**kwargs[0])
  if len(runs) > 1 and train.should_vmap(problem, len(runs), tx=tx, batch_size=fit_kwargs["batch_size"]):
    varying = [k for k in kwargs[0] if len({json.dumps(r.config["optimizer"][k]) for r in runs}) > 1]
    hparams = {k: np.asarray([r.config["optimizer"][k] for r in runs], np.float64) for k in varying}
    tx_factory = _factory_of(factory, {k: v for k, v in kwargs[0].items() if k not in varying}, varying)
    histories = train.fit_vmapped(
        problem, tx_factory, hparams, np.asarray([r.config["seed"] for r in runs]),
        **fit_kwargs, **_monitor(cfg, problem), on_progress=progress.ticker(start),
        checkpoint_dir=checkpoints and checkpoints / results.run_id([results.run_id(r.config) for r in runs]),
    )
    yield from zip(runs, histories)
    return
  for i, (run, kw) in enumerate(zip(runs, kwargs)):
    history = train.fit(
        problem, factory(**kw), seed=run.config["seed"], **fit_kwargs, **_monitor(run.config, problem),
        on_progress=progress.ticker(start + i * fit_kwargs["steps"]),
        checkpoint_dir=checkpoints and checkpoints / results.run_id(run.config),
    )
    yield run, history


def run(
    experiment: config.Experiment, out_dir: str, *, progress: bool = True, log: Callable[[str], None] | None = None,
    executor: executors.InProcess | executors.Ray | None = None,
) -> list[dict]:
  """Runs every run of `experiment` not yet finished in `out_dir`; returns all their records.

  The groups run on `executor` (default: `executors.InProcess()`); only this process writes
  results. Runs with `train.checkpoint_every` checkpoint in `out_dir/checkpoints/`, which a
  re-run resumes from and a finished sweep deletes. `log` (e.g. `print`) is told how many runs a
  resumed sweep skips, and what the executor reports (a retried task).
  """
  store = results.Store(out_dir)
  pending = [r for r in experiment.runs if results.run_id(r.config) not in store.finished()]
  skipped, n = len(experiment.runs) - len(pending), len(experiment.runs)
  if log is not None and skipped:
    log(f"all {n} runs already done" if not pending else f"{skipped} of {n} runs already done, running {len(pending)}")
  done, total = 0, sum(r.config["train"]["steps"] for r in pending)
  checkpoints = Path(out_dir).resolve() / "checkpoints"  # absolute: Ray workers have their own cwd
  fit_group = functools.partial(_fit_group, checkpoints=checkpoints)
  with tqdm(total=total, unit="step", disable=not progress or not pending) as bar:
    bar_progress = _Progress(bar)
    for run, history in (executor or executors.InProcess()).map(group(pending), fit_group, bar_progress, log):
      store.add(run.config, label(run), history)
      done += run.config["train"]["steps"]
      bar_progress.at(done)  # a run that stopped early (diverged) still fills its share
  shutil.rmtree(checkpoints, ignore_errors=True)  # every run is recorded
  return store.records([results.run_id(r.config) for r in experiment.runs])
