"""Figures of the landscape tools (PNG, matplotlib's object API, no pyplot): a 2-D slice's contour
with the projected trajectory, 1-D curves (slices, interpolation), mode-connectivity curves, and
the Hessian's spectral density from SLQ nodes and weights.

The spectral density is drawn on a log scale, as in Ghorbani et al. (2019), where the bulk near 0
and the outliers are both visible; where the exact eigenvalues are known (a test-size model) they
are overlaid as ticks, with their density broadened by the same Gaussian as a dashed reference.

`plot_directory` draws every figure a results directory holds: each point's last recorded
`monitor.spectral_density` and its `monitor.layer_lambda_max` curves (first seed), and the files `landscape/<name>.npz` that `save` writes (keys as
`save` documents).

References: Ghorbani, Krishnan & Xiao, 2019, An investigation into neural net optimization via
Hessian eigenvalue density (arXiv:1901.10159), figure 1; Li et al., 2018 (arXiv:1712.09913).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from optlab_jax import curvature, results

__all__ = ["connectivity", "contour", "curves", "plot_directory", "save", "spectral_density", "spectral_grid"]

_FLOOR = 1e-12  # log-scale densities: values below this are drawn at it


def contour(xs: Any, ys: Any, values: Any, *, trajectory: Any = None, title: str = "", metric: str = "loss",
            levels: int = 30, labels: tuple[str, str] = ("direction 1", "direction 2")) -> Figure:
  """Filled contours of `values` (len(ys), len(xs)) on a log scale where positive; `trajectory`
  (T, 2) coordinates drawn as a line from its start (circle) to its end (star)."""
  values = np.asarray(values, np.float64)
  fig = Figure(figsize=(6, 5), layout="constrained")
  ax = fig.subplots()
  positive = np.all(values > 0)
  z = np.log10(values) if positive else values
  filled = ax.contourf(xs, ys, z, levels=levels, cmap="viridis")
  ax.contour(xs, ys, z, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
  fig.colorbar(filled, ax=ax, label=f"log10 {metric}" if positive else metric)
  if trajectory is not None:
    t = np.asarray(trajectory)
    ax.plot(t[:, 0], t[:, 1], "-", color="w", linewidth=1.5)
    ax.plot(t[0, 0], t[0, 1], "o", color="w", label="start")
    ax.plot(t[-1, 0], t[-1, 1], "*", color="r", markersize=12, label="end")
    ax.legend(fontsize="small")
  ax.set(xlabel=labels[0], ylabel=labels[1], title=title or metric)
  return fig


def curves(xs: Any, lines: dict[str, Any], *, xlabel: str, ylabel: str = "loss", title: str = "",
           log: bool = False) -> Figure:
  """One line per entry of `lines` (label -> values at `xs`)."""
  fig = Figure(figsize=(6.5, 4.2), layout="constrained")
  ax = fig.subplots()
  for label, values in lines.items():
    ax.plot(xs, np.asarray(values, np.float64), label=label)
  if log:
    ax.set_yscale("log")
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  return fig


def connectivity(ts: Any, line: Any, curve: Any, line_barrier: float, curve_barrier: float,
                 title: str = "mode connectivity") -> Figure:
  """The loss along the straight line and along the trained Bézier curve, barriers in the legend."""
  return curves(ts, {f"line (barrier {float(line_barrier):.3g})": line,
                     f"Bézier curve (barrier {float(curve_barrier):.3g})": curve},
                xlabel="t (0: first minimum, 1: second)", title=title)


def spectral_grid(nodes: Any, weights: Any, *, exact: Any = None, sigma: float | None = None,
                  num_points: int = 1000) -> tuple[np.ndarray, np.ndarray, float]:
  """(grid, φ(grid), σ) of the SLQ density: σ defaults to 1% of the span of the nodes (and of the
  exact eigenvalues, if given); the grid pads that span by 5σ."""
  nodes = np.asarray(nodes, np.float64).reshape(-1, np.shape(nodes)[-1])
  points = nodes if exact is None else np.concatenate([nodes.ravel(), np.ravel(exact)])
  lo, hi = float(np.min(points)), float(np.max(points))
  sigma = max(0.01 * (hi - lo), 1e-12) if sigma is None else sigma
  grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
  density = curvature.gaussian_density(nodes, np.asarray(weights, np.float64).reshape(nodes.shape), grid, sigma)
  return grid, np.asarray(density), sigma


def spectral_density(nodes: Any, weights: Any, *, exact: Any = None, sigma: float | None = None,
                     title: str = "Hessian spectral density (SLQ)") -> Figure:
  """The SLQ density (log scale, Ghorbani et al., 2019) of nodes and weights of shape (probes, m);
  `exact` eigenvalues, if given, as ticks and as a dashed density broadened by the same σ."""
  grid, density, sigma = spectral_grid(nodes, weights, exact=exact, sigma=sigma)
  fig = Figure(figsize=(6.5, 4.2), layout="constrained")
  ax = fig.subplots()
  ax.semilogy(grid, np.maximum(density, _FLOOR), label=f"SLQ, σ = {sigma:.3g}")
  if exact is not None:
    exact = np.asarray(exact, np.float64).ravel()
    reference = curvature.gaussian_density(exact[None], np.full((1, exact.size), 1.0 / exact.size), grid, sigma)
    ax.semilogy(grid, np.maximum(np.asarray(reference), _FLOOR), "--", color="k", linewidth=1,
                label="exact eigenvalues, same σ")
    ax.plot(exact, np.full(exact.size, _FLOOR * 10), "|", color="r", markersize=10, label="exact eigenvalues")
  ax.set_ylim(bottom=_FLOOR)
  ax.set(xlabel="eigenvalue", ylabel="density", title=title)
  ax.legend(fontsize="small")
  return fig


def save(directory: str | Path, name: str, **arrays: Any) -> Path:
  """Writes `<directory>/landscape/<name>.npz` atomically. `plot_directory` reads the keys
  slice2d_{xs,ys,loss} (+ trajectory, explained), slice1d_{alphas,loss}, interp_{alphas,loss},
  connect_{ts,line,curve,line_barrier,curve_barrier}, spectral_{nodes,weights} (+ exact) and a
  `label` for the titles."""
  path = Path(directory) / "landscape" / f"{name}.npz"
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
  results.write_atomic(path, buffer.getvalue())
  return path


def _landscape_figures(name: str, a: dict[str, np.ndarray]) -> dict[str, Figure]:
  figures = {}
  if "slice2d_loss" in a:
    explained = a.get("explained")
    labels = (tuple(f"PC{k + 1} ({100 * float(e):.1f}% of variance)" for k, e in enumerate(explained))
              if explained is not None else ("direction 1", "direction 2"))
    figures["slice2d"] = contour(a["slice2d_xs"], a["slice2d_ys"], a["slice2d_loss"], trajectory=a.get("trajectory"),
                                 title=f"{name}: loss", labels=labels)
  if "slice1d_loss" in a:
    figures["slice1d"] = curves(a["slice1d_alphas"], {"filter-normalised random direction": a["slice1d_loss"]},
                                xlabel="α (θ + α d)", title=f"{name}: 1-D slice", log=bool(np.all(a["slice1d_loss"] > 0)))
  if "interp_loss" in a:
    figures["interpolation"] = curves(a["interp_alphas"], {"loss": a["interp_loss"]},
                                      xlabel="α (0: initialisation, 1: solution)", title=f"{name}: linear interpolation")
  if "connect_curve" in a:
    figures["connectivity"] = connectivity(a["connect_ts"], a["connect_line"], a["connect_curve"],
                                           a["connect_line_barrier"], a["connect_curve_barrier"], title=f"{name}: mode connectivity")
  if "spectral_nodes" in a:
    figures["spectral_density"] = spectral_density(a["spectral_nodes"], a["spectral_weights"], exact=a.get("exact"),
                                                   title=f"{name}: Hessian spectral density")
  return figures


def plot_directory(directory: str | Path, out: str | Path | None = None) -> list[Path]:
  """Writes the landscape figures of a results directory under `out` (default: `directory`)."""
  directory = Path(directory)
  out = Path(directory if out is None else out)
  figures: dict[str, Figure] = {}
  seen = set()
  for record in results.load_records(directory):
    metrics = results.load_metrics(directory, record["id"])
    if "monitor.spectral_density" in metrics and record["point"] not in seen:
      seen.add(record["point"])
      nodes, weights = metrics["monitor.spectral_density"][-1]
      step = int(metrics["monitor_step"][-1])
      figures[f"spectral_density_{record['point']}"] = spectral_density(
          nodes, weights, title=f"{record['label']}: Hessian spectral density at step {step}")
    if "monitor.layer_lambda_max" in metrics and f"layers {record['point']}" not in seen:
      seen.add(f"layers {record['point']}")
      values = metrics["monitor.layer_lambda_max"]
      figures[f"layer_lambda_max_{record['point']}"] = curves(
          metrics["monitor_step"], {f"layer {k}": values[:, k] for k in range(values.shape[1])}, xlabel="step",
          ylabel="λ_max of the layer's Hessian block", title=f"{record['label']}: per-layer λ_max (monitor.layer_names order)",
          log=bool(np.all(values > 0)))
  for path in sorted((directory / "landscape").glob("*.npz")):
    with np.load(path) as f:
      arrays = dict(f)
    title = str(arrays.pop("label", path.stem))
    figures.update({f"landscape_{path.stem}_{k}": fig for k, fig in _landscape_figures(title, arrays).items()})
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, fig in figures.items():
    fig.savefig(out / f"{name}.png", dpi=120)
    paths.append(out / f"{name}.png")
  return paths
