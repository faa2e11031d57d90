"""Figures of a sweep directory (PNG, matplotlib): one curve per point, mean over seeds with the
min-max spread over seeds shaded, for the train loss, each eval metric and each monitor metric.

λ_max plots draw SGD's stability edge (`stability_edge`) dashed in each SGD point's colour.
Plots use matplotlib's object API (`Figure`, no pyplot), so no GUI backend is touched.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

from optlab_jax import results

_TITLES = {"train_loss": "train loss (per step)", "monitor.eos_ratio": "lr · λ_max / 2"}


class Curve(NamedTuple):
  """One point's curve of a metric: x, mean over seeds, and the min and max over seeds."""

  label: str
  steps: np.ndarray
  mean: np.ndarray
  low: np.ndarray
  high: np.ndarray
  config: dict  # the config of the point's first seed


def curves(directory: str | Path) -> dict[str, list[Curve]]:
  """Metric name ("train_loss", "eval.<name>", "monitor.<name>") -> one `Curve` per point.

  Non-finite values (diverged runs) are left out of the mean, min and max; seeds that stopped
  early are cut to the shortest.
  """
  points: dict[str, list[dict]] = {}
  for record in results.load_records(directory):
    points.setdefault(record["point"], []).append(record)
  out: dict[str, list[Curve]] = {}
  for runs in points.values():
    arrays = [results.load_metrics(directory, r["id"]) for r in runs]
    for name in arrays[0]:
      if name.endswith("_step"):
        continue
      kind = name.split(".")[0]
      steps = np.arange(1, len(arrays[0][name]) + 1) if name == "train_loss" else arrays[0][f"{kind}_step"]
      n = min(len(a[name]) for a in arrays)
      stack = np.stack([np.asarray(a[name][:n], np.float64) for a in arrays])
      stack[~np.isfinite(stack)] = np.nan
      with warnings.catch_warnings():  # an all-NaN column (every seed diverged) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, low, high = np.nanmean(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)
      curve = Curve(runs[0]["label"], steps[:n], mean, low, high, runs[0]["config"])
      out.setdefault(name, []).append(curve)
  return out


def stability_edge(optimizer: dict) -> float | None:
  """The sharpness above which SGD at a constant learning rate η is unstable on a quadratic:
  2/η for gradient descent, (2 + 2β)/η with heavy-ball momentum β, (2 + 2β)/(η(1 + 2β)) with
  Nesterov's; None for other optimizers and for schedules.

  References: Cohen et al., 2021, Gradient descent on neural networks typically occurs at the
  edge of stability (arXiv:2103.00065), section 2 and appendix B.
  """
  lr, beta = optimizer["learning_rate"], optimizer.get("momentum") or 0.0
  if optimizer["name"] != "sgd" or not isinstance(lr, float) or lr <= 0:
    return None
  return (2 + 2 * beta) / (lr * (1 + 2 * beta) if optimizer.get("nesterov") else lr)


def _figure(name: str, lines: list[Curve]) -> Figure:
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  for i, c in enumerate(lines):
    color = f"C{i % 10}"
    ax.plot(c.steps, c.mean, color=color, label=c.label)
    ax.fill_between(c.steps, c.low, c.high, color=color, alpha=0.2, linewidth=0)
    edge = stability_edge(c.config["optimizer"])
    if name == "monitor.lambda_max" and edge is not None:
      ax.axhline(edge, color=color, linestyle="--", linewidth=1)
  if name == "monitor.eos_ratio":
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
  values = np.concatenate([c.high for c in lines])
  if "loss" in name and np.all(values[np.isfinite(values)] > 0):
    ax.set_yscale("log")
  ax.set(xlabel="step", ylabel=name.split(".")[-1], title=_TITLES.get(name, name.replace(".", ": ")))
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  return fig


def plot(directory: str | Path, out: str | Path | None = None) -> list[Path]:
  """Writes `<metric>.png` (dots in metric names become `_`) under `out` (default: `directory`)."""
  out = Path(directory if out is None else out)
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, lines in curves(directory).items():
    path = out / f"{name.replace('.', '_')}.png"
    _figure(name, lines).savefig(path, dpi=120)
    paths.append(path)
  return paths
