"""Figures of a sweep directory (PNG, matplotlib): one curve per point, the median over seeds with
the band between the quartiles shaded lightly (so the bands of several points stay visible), for
the train loss, each eval metric and each monitor metric; a metric with a `<name>_stderr` companion
(`monitor.trace`) also gets a hatched band of ±2 standard errors of its estimate.

The λ_max figure draws each optimizer's stability edge (`monitor.stability_edge`: 2/lr for GD,
(2 + 2β)/lr for heavy-ball momentum) dashed in its point's colour and labelled in the legend, only
where one applies; points that share an edge share one grey line ("stability edge of 6 points").
`preconditioned_lambda_max` gets `monitor.preconditioned_stability_edge`. An edge far above the
curves would squash them, so the axis is logarithmic and clipped a decade above the data; a clipped
edge says so in its label. A legend of more than `_INSIDE_LEGEND` entries goes beside the axes, off
the curves, and the figure widens by the legend's width. Plots use matplotlib's object API
(`Figure`, no pyplot), so no GUI backend is touched.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from matplotlib.figure import Figure

from optlab_jax import grid_plots, landscape_plots, monitor, path_plots, results, time_plots, toy_plots

_TITLES = {"train_loss": "train loss (per step)", "monitor.eos_ratio": "λ_max / stability edge"}
_EDGES: dict[str, Callable[[dict], float | None]] = {
    "monitor.lambda_max": monitor.stability_edge,
    "monitor.preconditioned_lambda_max": monitor.preconditioned_stability_edge,
}
_BAND_ALPHA = 0.15
_HEADROOM = 10.0  # the axis ends at most this factor above the data (a decade on a log axis)
_INSIDE_LEGEND = 6  # a longer legend is drawn beside the axes


class Curve(NamedTuple):
  """One point's curve of a metric: x, the median over seeds, and the lower and upper quartiles."""

  label: str
  steps: np.ndarray
  median: np.ndarray
  low: np.ndarray   # 25th percentile over seeds
  high: np.ndarray  # 75th percentile over seeds
  config: dict      # the config of the point's first seed


def curves(directory: str | Path) -> dict[str, list[Curve]]:
  """Metric name ("train_loss", "eval.<name>", "monitor.<name>") -> one `Curve` per point.

  Non-finite values (diverged runs) are left out of the median and quartiles; seeds that stopped
  early are cut to the shortest.
  """
  points: dict[str, list[dict]] = {}
  for record in results.load_records(directory):
    points.setdefault(record["point"], []).append(record)
  out: dict[str, list[Curve]] = {}
  for runs in points.values():
    arrays = [results.load_metrics(directory, r["id"]) for r in runs]
    for name in arrays[0]:
      if name.endswith("_step") or arrays[0][name].ndim != 1:
        continue
      kind = name.split(".")[0]
      steps = np.arange(1, len(arrays[0][name]) + 1) if name == "train_loss" else arrays[0][f"{kind}_step"]
      n = min(len(a[name]) for a in arrays)
      stack = np.stack([np.asarray(a[name][:n], np.float64) for a in arrays])
      stack[~np.isfinite(stack)] = np.nan
      with warnings.catch_warnings():  # an all-NaN column (every seed diverged) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low, median, high = np.nanpercentile(stack, [25, 50, 75], axis=0)
      out.setdefault(name, []).append(Curve(runs[0]["label"], steps[:n], median, low, high, runs[0]["config"]))
  return out


def _edges(name: str, lines: list[Curve]) -> dict[float, list[int]]:
  """Stability edge -> the indices of the curves of `name` that have it (equal to rounding)."""
  edge_fn = _EDGES.get(name)
  found = [(i, edge_fn(c.config["optimizer"])) for i, c in enumerate(lines)] if edge_fn else []
  groups: dict[float, list[int]] = {}
  for i, edge in found:
    if edge is not None and np.isfinite(edge):
      same = [e for e in groups if np.isclose(e, edge, rtol=1e-9, atol=0.0)]
      groups.setdefault(same[0] if same else float(edge), []).append(i)
  return groups


def figure(name: str, lines: list[Curve], stderr: list[Curve] | None = None) -> Figure:
  """The figure of metric `name`: each point's median and quartile band, and its stability edge.

  `stderr` (the curves of `<name>_stderr`, e.g. `monitor.trace_stderr`) adds a hatched band of
  ±2 standard errors of the estimate around each point's median.
  """
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  errors = {e.label: e for e in stderr or []}
  for i, c in enumerate(lines):
    ax.plot(c.steps, c.median, color=f"C{i % 10}", label=c.label)
    ax.fill_between(c.steps, c.low, c.high, color=f"C{i % 10}", alpha=_BAND_ALPHA, linewidth=0)
    if c.label in errors:
      e = errors[c.label].median[: len(c.steps)]
      ax.fill_between(c.steps[: len(e)], c.median[: len(e)] - 2 * e, c.median[: len(e)] + 2 * e, facecolor="none",
                      edgecolor=f"C{i % 10}", hatch="///", linewidth=0, label=f"{c.label}: ±2 standard errors")
  data = np.concatenate([np.concatenate([c.low, c.high]) for c in lines])
  data = data[np.isfinite(data)]
  positive = data.size > 0 and bool(np.all(data > 0))
  edges = _edges(name, lines)
  if edges and data.size:
    top = min(max(data.max(), *edges) * 1.3, data.max() * _HEADROOM)
    if positive:
      ax.set_yscale("log")
      ax.set_ylim(data.min() / 1.3, top)
    else:
      ax.set_ylim(data.min() - 0.05 * (top - data.min()), top)
    for edge, (first, *rest) in edges.items():
      note = ", above the plot" if edge > top else ""
      owner, color = (f"{len(rest) + 1} points", "0.35") if rest else (lines[first].label, f"C{first % 10}")
      ax.axhline(edge, color=color, linestyle="--", linewidth=1, label=f"stability edge of {owner}: {edge:.3g}{note}")
  elif "loss" in name and positive:
    ax.set_yscale("log")
  if name == "monitor.eos_ratio":
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="stability edge (ratio 1)")
  ax.set(xlabel="step", ylabel=name.split(".")[-1], title=_TITLES.get(name, name.replace(".", ": ")))
  if len(ax.get_legend_handles_labels()[1]) > _INSIDE_LEGEND:
    legend = fig.legend(*ax.get_legend_handles_labels(), fontsize="small", loc="outside right upper")
    fig.set_figwidth(fig.get_figwidth() + legend.get_window_extent().width / fig.dpi)  # the axes keep their width
  else:
    ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  return fig


def plot(directory: str | Path, out: str | Path | None = None) -> list[Path]:
  """Writes `<metric>.png` (dots in metric names become `_`) under `out` (default: `directory`)."""
  out = Path(directory if out is None else out)
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  found = curves(directory)
  for name, lines in found.items():
    if name.endswith("_stderr") and name[: -len("_stderr")] in found:
      continue  # drawn as the band of its metric's figure
    path = out / f"{name.replace('.', '_')}.png"
    figure(name, lines, found.get(name + "_stderr")).savefig(path, dpi=120)
    paths.append(path)
  # spectral densities, landscape/*.npz; the toy landscapes' escape and basin figures
  return (paths + landscape_plots.plot_directory(directory, out) + toy_plots.plot_directory(directory, out)
          + time_plots.plot_directory(directory, out) + path_plots.plot_directory(directory, out)
          + grid_plots.plot_directory(directory, out))
