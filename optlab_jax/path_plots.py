"""Figures over all of a results directory's landscape files (`landscape_runs`), one panel per
problem: every run's interpolation init → solution (`interpolation_paths.png`, the monotonic
linear interpolation claim) and every seed pair's line and Bézier curve
(`connectivity_pairs.png`, the mode-connectivity claim). `landscape_plots` draws each file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from optlab_jax import landscape_findings

__all__ = ["plot_directory"]


def _panels(items: list[dict], title: str, ylabel: str, draw) -> Figure:
  problems = list(dict.fromkeys(r["problem"] for r in items))
  fig = Figure(figsize=(6 * len(problems), 4.5), layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(problems)))
  for ax, problem in zip(axes, problems):
    colors: dict[str, Any] = {}
    for r in (r for r in items if r["problem"] == problem):
      first = r["label"] not in colors
      colors.setdefault(r["label"], f"C{len(colors) % 10}")
      draw(ax, r, colors[r["label"]], r["label"] if first else None)
    ax.set(title=f"{problem}: {title}", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
  return fig


def _interpolation(ax, r, color, label):
  ax.plot(r["interp_alphas"], r["interp_loss"], color=color, alpha=0.8, label=label)
  ax.set(xlabel="α (0: initialisation, 1: solution)", yscale="log")


def _connectivity(ax, r, color, label):
  ax.plot(r["connect_ts"], r["connect_line"], "--", color=color, alpha=0.8,
          label=None if label is None else f"{label}: line (dashed), Bézier (solid)")
  ax.plot(r["connect_ts"], r["connect_curve"], "-", color=color, alpha=0.8)
  ax.set(xlabel="t (0: first seed's solution, 1: second's)", yscale="log")


def plot_directory(directory: str | Path, out: str | Path | None = None) -> list[Path]:
  """Writes the figures over two or more landscape files of `directory` under `out` (default: it)."""
  items, out = landscape_findings.files(directory), Path(directory if out is None else out)
  figures = {}
  interp = [r for r in items if "interp_loss" in r]
  if len(interp) >= 2:
    figures["interpolation_paths"] = _panels(interp, "linear interpolation of each run", "loss", _interpolation)
  pairs = [r for r in items if "connect_curve" in r]
  if len(pairs) >= 2:
    figures["connectivity_pairs"] = _panels(pairs, "each seed pair's paths", "loss", _connectivity)
  paths = []
  for name, fig in figures.items():
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=80)
    paths.append(out / f"{name}.png")
  return paths
