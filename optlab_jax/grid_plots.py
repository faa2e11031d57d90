"""Heat maps of a final metric over a two-hyperparameter sweep grid (learning rate × weight decay).

`grids` reads, for each optimizer of a results directory, every seed's final metric on the grid of
two swept float hyperparameters; `figure` draws a panel per optimizer: the median over seeds as a
colour map on log–log axes, the best weight decay of each learning rate marked and the fitted line
of `findings.best_decay` through them. `stability_figure` draws the largest stable learning rate
of a learning-rate × `tau` sweep of `optim.delayed` against τ. `plot_directory` (called by
`optlab plot`) writes whichever the sweep is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from optlab_jax import findings, results
from optlab_jax.optim.delayed import stability_edge

__all__ = ["grids", "figure", "stability_figure", "plot_directory"]

_MIN_AXIS = 3  # values per axis below which a grid is no heat map
_CLIP = 4.0  # colours span the best value to this factor above it: the good region stays legible


def _final(final: dict, metric: str) -> float:
  """A run's final `metric`; "test_error" is 1 − test_accuracy (the paper's heat maps show error)."""
  if metric == "test_error":
    return 1.0 - final.get("test_accuracy", np.nan)
  return final.get(metric, np.nan)


def grids(directory: str | Path, metric: str = "test_loss", x: str = "learning_rate",
          y: str = "weight_decay") -> dict[str, findings.Grid]:
  """Optimizer name -> its `Grid` of the final `metric` (or "test_error") over optimizer
  hyperparameters `x` × `y` (NaN where a run diverged, is not finite or is missing)."""
  records = [r for r in results.load_records(directory) if isinstance(r["config"]["optimizer"].get(x), float)
             and isinstance(r["config"]["optimizer"].get(y), float)]
  out = {}
  for name in dict.fromkeys(r["config"]["optimizer"]["name"] for r in records):
    mine = [r for r in records if r["config"]["optimizer"]["name"] == name]
    xs = np.array(sorted({r["config"]["optimizer"][x] for r in mine}))
    ys = np.array(sorted({r["config"]["optimizer"][y] for r in mine}))
    seeds = sorted({r["config"]["seed"] for r in mine})
    values = np.full((len(seeds), len(ys), len(xs)), np.nan)
    for r in mine:
      if r["status"] == "ok":
        values[seeds.index(r["config"]["seed"]), np.searchsorted(ys, r["config"]["optimizer"][y]),
               np.searchsorted(xs, r["config"]["optimizer"][x])] = _final(r["final"], metric)
    values[~np.isfinite(values)] = np.nan
    out[name] = findings.Grid(xs, ys, values)
  return out


def _edges(values: np.ndarray) -> np.ndarray:
  """Cell edges on a log axis: midway (geometrically) between neighbouring grid values."""
  logs = np.log10(values)
  inner = (logs[1:] + logs[:-1]) / 2
  return 10 ** np.concatenate([[2 * logs[0] - inner[0]], inner, [2 * logs[-1] - inner[-1]]])


def figure(found: dict[str, findings.Grid], metric: str = "test_loss", problem: str = "") -> Figure:
  """A panel per optimizer: the median `metric` over seeds, the best y of each x and its fit."""
  fig = Figure(figsize=(5.2 * len(found), 4.6), layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(found), sharey=True))
  finite = np.concatenate([g.values[np.isfinite(g.values)] for g in found.values()])
  low = np.min(finite) if finite.size else 1.0
  norm = colors.LogNorm(low, _CLIP * low)
  for ax, (name, grid) in zip(axes, found.items()):
    median = np.nanmedian(grid.values, axis=0) if np.isfinite(grid.values).any() else grid.values[0]
    mesh = ax.pcolormesh(_edges(grid.x), _edges(grid.y), np.clip(median, None, _CLIP * low), cmap="viridis_r", norm=norm)
    of_median = findings.Grid(grid.x, grid.y, median[None])
    (row,), (keep,) = findings.best_index(of_median)
    fit = findings.best_decay(of_median)[0]
    stats = findings.spread(findings.best_decay(grid))["slope"]
    ax.plot(grid.x[keep], grid.y[row[keep]], "wo", markeredgecolor="k", label="best weight decay (good lr)")
    ax.plot(grid.x[keep], 10 ** (fit["intercept"] + fit["slope"] * np.log10(grid.x[keep])), "w--",
            label=f"slope {stats[0]:.2f} ± {stats[1]:.2f} (seeds)")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", title=f"{name} {problem}".strip())
    ax.legend(fontsize="small", loc="lower left")
  axes[0].set_ylabel("weight_decay (as the optimizer takes it)")
  fig.colorbar(mesh, ax=list(axes), label=f"{metric}, median over seeds (clipped at {_CLIP:g}× the best)")
  return fig


def plot_directory(directory: str | Path, out: str | Path | None = None) -> list[Path]:
  """Writes `heatmap_test_loss.png` and `heatmap_test_error.png` for a learning-rate × weight-decay
  sweep and
  `stable_lr_vs_tau.png` for a learning-rate × tau sweep of `delayed`, under `out` (default:
  `directory`); nothing for any other sweep."""
  out = Path(directory if out is None else out)
  records = results.load_records(directory)
  paths = []
  for metric in ("test_loss", "test_error"):
    found = {k: g for k, g in grids(directory, metric).items()
             if len(g.x) >= _MIN_AXIS and len(g.y) >= _MIN_AXIS and np.isfinite(g.values).any()}
    if found:
      paths.append(out / f"heatmap_{metric}.png")
      figure(found, metric, records[0]["config"]["problem"]["name"]).savefig(paths[-1], dpi=90)
  if len({r["config"]["optimizer"].get("tau") for r in records if r["config"]["optimizer"]["name"] == "delayed"}) >= 2:
    paths.append(out / "stable_lr_vs_tau.png")
    stability_figure(directory).savefig(paths[-1], dpi=90)
  return paths


def stability_figure(directory: str | Path, axis: str = "tau") -> Figure:
  """The largest stable learning rate (`findings.largest_stable_lr`) against the integer optimizer
  hyperparameter `axis`, each seed a dot, with the closed-form edge of delayed GD on the quadratic
  (`optim.delayed.stability_edge`, its λ_max = the problem's `condition`) where that is the problem."""
  edges = findings.largest_stable_lr(directory, axis)
  problem = results.load_records(directory)[0]["config"]["problem"]
  fig = Figure(figsize=(6, 4.5), layout="constrained")
  ax = fig.subplots()
  values = np.array(list(edges))
  for value, lrs in edges.items():
    ax.plot([value] * len(lrs), lrs, "o", color="C0", alpha=0.6)
  ax.plot(values, [np.nanmedian(v) for v in edges.values()], "-", color="C0", label="largest stable lr (seeds: dots)")
  if problem["name"] == "quadratic":
    fine = np.arange(values.min(), values.max() + 1)
    ax.plot(fine, [stability_edge(int(t), problem["condition"]) for t in fine], "k--",
            label="closed form 2 sin(π/(2(2τ+1))) / λ_max")
  ax.set(yscale="log", xlabel=axis, ylabel="learning rate", title=f"stale gradients: {problem['name']}")
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  return fig
