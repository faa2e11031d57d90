"""The landscape claims' numbers, read off a results directory's landscape files (`landscape_runs`):
Lucas et al.'s max bump of each run's interpolation init → solution (`interp_max_bump`) and each
seed pair's line and Bézier-curve barriers (`connect_line_barrier`, `connect_curve_barrier`, in
the pair's second file). `findings.spread` summarises them over seeds.

  python -c "from optlab_jax import findings, landscape_findings as lf
  for k, v in lf.by_point('runs/mode_connectivity', lf.BARRIERS).items(): print(k, findings.spread(v))"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from optlab_jax import results

__all__ = ["BARRIERS", "BUMP", "by_point", "files"]

BUMP = ("interp_max_bump",)
BARRIERS = ("connect_line_barrier", "connect_curve_barrier")


def files(directory: str | Path) -> list[dict[str, Any]]:
  """The arrays of each finished run's landscape file, in record order, with the run's `label`,
  `seed` and `problem` (its name)."""
  directory, out = Path(directory), []
  for record in results.load_records(directory):
    path = directory / "landscape" / f"{record['point']}_seed{record['config']['seed']}.npz"
    if record["status"] == "ok" and path.exists():
      with np.load(path) as f:
        out.append({**dict(f), "label": record["label"], "seed": record["config"]["seed"],
                    "problem": record["config"]["problem"]["name"]})
  return out


def by_point(directory: str | Path, keys: tuple[str, ...]) -> dict[str, list[dict[str, float]]]:
  """Point label -> the scalars `keys` of each of its landscape files that has them."""
  out: dict[str, list[dict[str, float]]] = {}
  for run in files(directory):
    if all(k in run for k in keys):
      out.setdefault(run["label"], []).append({k: float(run[k]) for k in keys})
  return out
