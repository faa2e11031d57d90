"""Optimizers compared at equal wall-clock time: eval metrics against training seconds.

A run's time axis is its measured training time per step, (wall_time − compile_time) / steps,
times the steps done: the record keeps one run's total, so the steps are taken to cost alike
(a line search's or a CG solve's varying cost is spread evenly; a vmapped group's time is split
equally among its runs, `train.History`). The budget of a problem is the shortest training time
among its points (the median over seeds), so every point has a value there: its last eval at or
before the budget.

`plot_directory` (called by `optlab plot`) draws, for a sweep that compares two or more
optimizers, one figure per eval metric (`eval_<name>_vs_time.png`): a panel per problem, the
median over seeds against the median time, log-scaled, the budget dashed.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

from optlab_jax import results

__all__ = ["TimedCurve", "seconds_per_step", "timed_curves", "at_equal_time", "figure", "plot_directory"]


class TimedCurve(NamedTuple):
  """One point's eval metric against training time."""
  label: str
  problem: str
  seconds: np.ndarray  # [k] median over seeds of the training seconds at each eval
  values: np.ndarray   # [seeds, k] the metric of each seed (NaN where it diverged)


def _label(record: dict) -> str:
  """The optimizer's part of the point's label (the arguments the sweep set, so points differing in
  another than the learning rate stay apart); its name and learning rate where the label has none."""
  optimizer = record["config"]["optimizer"]
  at = record["label"].rfind(f" {optimizer['name']}(")
  return record["label"][at + 1:] if at >= 0 else f"{optimizer['name']}(lr={optimizer.get('learning_rate')})"


def seconds_per_step(record: dict) -> float:
  """A run record's training seconds per step (compilation excluded)."""
  return (record["wall_time"] - record["compile_time"]) / record["config"]["train"]["steps"]


def timed_curves(directory: str | Path, metric: str) -> list[TimedCurve]:
  """Each point's `metric` (an eval metric's name, e.g. "relative_l2_error") against time."""
  points: dict[str, list[dict]] = {}
  for record in results.load_records(directory):
    points.setdefault(record["point"], []).append(record)
  out = []
  for runs in points.values():
    arrays = [results.load_metrics(directory, r["id"]) for r in runs]
    if f"eval.{metric}" not in arrays[0]:
      continue
    n = min(len(a[f"eval.{metric}"]) for a in arrays)
    steps = arrays[0]["eval_step"][:n]
    seconds = np.median([steps * seconds_per_step(r) for r in runs], axis=0)
    values = np.stack([np.asarray(a[f"eval.{metric}"][:n], np.float64) for a in arrays])
    values[~np.isfinite(values)] = np.nan
    out.append(TimedCurve(_label(runs[0]), runs[0]["config"]["problem"]["name"], seconds, values))
  return out


def at_equal_time(curves: list[TimedCurve]) -> dict[str, tuple[float, dict[str, np.ndarray]]]:
  """problem -> (budget in seconds, {label: each seed's value at its last eval within the budget})."""
  out = {}
  for problem in dict.fromkeys(c.problem for c in curves):
    mine = [c for c in curves if c.problem == problem]
    budget = min(c.seconds[-1] for c in mine)
    out[problem] = (float(budget), {c.label: c.values[:, np.searchsorted(c.seconds, budget * (1 + 1e-9), "right") - 1]
                                    for c in mine})
  return out


def figure(metric: str, curves: list[TimedCurve]) -> Figure:
  """A panel per problem: each point's median `metric` against training seconds, the budget dashed."""
  problems = list(dict.fromkeys(c.problem for c in curves))
  fig = Figure(figsize=(6.5 * len(problems), 5.5), layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(problems)))
  budgets = at_equal_time(curves)
  for ax, problem in zip(axes, problems):
    budget, at_budget = budgets[problem]
    for i, c in enumerate(c for c in curves if c.problem == problem):
      median = np.nanmedian(c.values, axis=0) if np.isfinite(c.values).any() else c.values[0]
      ax.plot(c.seconds, median, color=f"C{i % 10}", marker=".",
              label=f"{c.label}: {np.nanmedian(at_budget[c.label]):.3g} at the budget")
      ax.fill_between(c.seconds, np.nanmin(c.values, axis=0), np.nanmax(c.values, axis=0), color=f"C{i % 10}",
                      alpha=0.15, linewidth=0)
    ax.axvline(budget, color="k", linestyle="--", linewidth=1, label=f"equal time: {budget:.3g} s")
    values = np.concatenate([c.values.ravel() for c in curves if c.problem == problem])
    if np.all(values[np.isfinite(values)] > 0):
      ax.set_yscale("log")
    ax.set(xlabel="training seconds (compilation excluded)", ylabel=metric, title=f"{problem}: {metric}")
    ax.legend(fontsize="small", loc="lower left")
    ax.grid(alpha=0.3)
  return fig


def plot_directory(directory: str | Path, out: str | Path | None = None) -> list[Path]:
  """Writes `eval_<metric>_vs_time.png` under `out` (default: `directory`) for a sweep comparing
  two or more optimizers; nothing otherwise."""
  records = results.load_records(directory)
  if len({r["config"]["optimizer"]["name"] for r in records}) < 2:
    return []
  out = Path(directory if out is None else out)
  metrics = sorted({k.split(".", 1)[1] for r in records[:1] for k in results.load_metrics(directory, r["id"])
                    if k.startswith("eval.")})
  paths = []
  for metric in metrics:
    path = out / f"eval_{metric}_vs_time.png"
    figure(metric, timed_curves(directory, metric)).savefig(path, dpi=100)
    paths.append(path)
  return paths
