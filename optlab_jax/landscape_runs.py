"""A config's `landscape:` section: after the sweep, the loss landscape of each of its runs.

  optlab run configs/landscape_digits.yaml && optlab plot runs/landscape_digits

For every run, the run is trained again with its parameters recorded every `record_every` steps
(the same seed gives the same run), and `landscape/<point>_seed<s>.npz` (`landscape_plots.save`)
holds: the loss and test metrics on a `grid` × `grid` slice spanned by the top-2 principal
directions of the trajectory, with the trajectory projected onto them (Li et al., 2018); a 1-D
slice along a filter-normalised random direction; the interpolation from the initialisation to
the solution with its monotonicity statistics (Lucas et al., 2021); the Hessian's SLQ spectral
density at the solution, with the exact eigenvalues where the model has at most
`EXACT_MAX_PARAMS` parameters; and, between the solutions of each pair of a point's seeds (1st and
2nd, 3rd and 4th, ...; in the pair's second file), a trained Bézier curve and the barriers along it
and along the line (Garipov et al., 2018).
A run whose file exists is skipped, so a killed analysis resumes. `optlab plot` draws them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optlab_jax import config, curvature, landscape, landscape_plots, results, sweep

EXACT_MAX_PARAMS = 2000


def _trajectory(problem, cfg: dict, record_every: int) -> tuple[Any, Any, Any]:
  """(init params, final params, the trajectory stacked along axis 0) of the run `cfg`: the
  initialisation, the params every `record_every` steps, and the final params."""
  record = jax.jit(lambda params, *rest: {"params": ravel_pytree(params)[0]})
  history = sweep.refit(cfg, problem, monitor=record, monitor_every=record_every)
  init = problem.init_params(jax.random.split(jax.random.key(cfg["seed"]))[0])
  flat, unravel = ravel_pytree(init)
  recorded = list(history.monitor.get("params", []))
  if not len(history.monitor_steps) or history.monitor_steps[-1] != cfg["train"]["steps"]:
    recorded.append(ravel_pytree(history.params)[0])  # the run ended between two records
  snapshots = np.stack([np.asarray(flat), *map(np.asarray, recorded)])
  return init, history.params, jax.vmap(unravel)(jnp.asarray(snapshots, flat.dtype))


def _spectrum(problem, params, key: jax.Array, spec: dict) -> dict[str, Any]:
  obj = lambda p: problem.loss(p, problem.data["train"])
  nodes, weights = curvature.slq_quadrature(curvature.hvp_fn(obj, params), params, key, spec["spectrum_iters"],
                                            spec["spectrum_probes"])
  out = {"spectral_nodes": nodes, "spectral_weights": weights}
  flat, unravel = ravel_pytree(params)
  if flat.size <= EXACT_MAX_PARAMS:
    out["exact"] = np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(lambda x: obj(unravel(x))))(flat), np.float64))
  return out


def analyse(problem, cfg: dict, spec: dict) -> tuple[Any, dict[str, Any]]:
  """(final params, the landscape arrays) of one run; `spec` is the config's `landscape:` section."""
  metrics = lambda p, data: problem.metrics_fn(data, p)
  init, final, trajectory = _trajectory(problem, cfg, spec["record_every"])
  pca = landscape.pca_directions(trajectory)
  coords = np.asarray(pca.coords)
  lo, hi = coords.min(axis=0), coords.max(axis=0)
  pad = spec["pad"] * np.maximum(hi - lo, 1e-3)
  xs, ys = (np.linspace(lo[k] - pad[k], hi[k] + pad[k], spec["grid"]) for k in range(2))
  kw = dict(args=(problem.data,), chunk_size=spec["chunk"] or "auto")
  grid = landscape.slice_2d(metrics, pca.origin, *pca.directions, xs, ys, **kw)
  direction = landscape.random_direction(jax.random.key(cfg["seed"] + 1), final)
  alphas = np.linspace(-1.0, 1.0, 2 * spec["grid"] + 1)
  line = landscape.slice_1d(metrics, final, direction, alphas, **kw)
  interp = landscape.interpolate(metrics, init, final, np.linspace(0.0, 1.0, spec["grid"]), **kw)
  out = {"slice2d_xs": xs, "slice2d_ys": ys, "slice2d_loss": grid["loss"], "trajectory": coords,
         "explained": pca.explained_variance, "slice1d_alphas": alphas, "slice1d_loss": line["loss"],
         "interp_alphas": interp.alphas, "interp_loss": interp.values["loss"], "interp_max_bump": interp.max_bump,
         **{f"slice2d_{k}": v for k, v in grid.items() if k != "loss"}}
  out.update(_spectrum(problem, final, jax.random.key(cfg["seed"]), spec))
  return final, out


def _connect(problem, solutions: list, spec: dict) -> dict[str, Any]:
  loss = lambda p, data: problem.metrics_fn(data, p)["loss"]
  c = landscape.connect(loss, *solutions, optimizer=spec["connect_optimizer"],
                        learning_rate=spec["connect_learning_rate"], steps=spec["connect_steps"],
                        args=(problem.data,), chunk_size=spec["chunk"] or "auto")
  return dict(connect_ts=c.ts, connect_line=c.line, connect_curve=c.curve, connect_line_barrier=c.line_barrier,
              connect_curve_barrier=c.curve_barrier)


def run(experiment: config.Experiment, out: str | Path, echo: Callable[[str], None] = print) -> list[Path]:
  """Writes the landscape file of every run of `experiment` under `out`/landscape; returns the new
  ones. Existing files are kept; a seed pair's Bézier connection is in the pair's second file."""
  spec, written = experiment.landscape, []
  points: dict[str, list] = {}
  for r in experiment.runs:
    points.setdefault(results.point_id(r.config), []).append(r)
  for point, runs in points.items():
    paths = [Path(out) / "landscape" / f"{point}_seed{r.config['seed']}.npz" for r in runs]
    # Seeds are connected in pairs (1st-2nd, 3rd-4th, ...); the pair's second run's file holds it.
    paired = lambda i: spec["connect_steps"] > 0 and (i % 2 == 1 or i + 1 < len(runs))
    solutions = {}
    for i, (r, path) in enumerate(zip(runs, paths)):
      cfg, label = r.config, f"{sweep.label(r)} seed {r.config['seed']}"
      if path.exists():
        if paired(i) and i % 2 == 0 and not paths[i + 1].exists():  # one end of a connection to rebuild
          solutions[i] = sweep.refit(cfg).params
        continue
      problem = config.build_problem(cfg["problem"])
      final, arrays = analyse(problem, cfg, spec)
      solutions[i] = final
      if paired(i) and i % 2 == 1:
        arrays.update(_connect(problem, [solutions.pop(i - 1), solutions.pop(i)], spec))
        echo(f"{label}: barrier to seed {runs[i - 1].config['seed']} along the line "
             f"{float(arrays['connect_line_barrier']):.4g}, along the Bézier curve "
             f"{float(arrays['connect_curve_barrier']):.4g}")
      echo(f"{label}: PCA explains {100 * float(np.sum(arrays['explained'])):.1f}% of the trajectory; "
           f"interpolation init -> solution max bump {float(arrays['interp_max_bump']):.3g}")
      written.append(landscape_plots.save(out, path.stem, label=label, **arrays))
    # A point's programs close over its problem, so the next point cannot reuse them, yet JAX's jit
    # caches would keep them all (about 900 memory mappings a run: a 60-run config exhausted the
    # kernel's 65,530 and crashed). The seeds of one point share them; they go when the point is done.
    jax.clear_caches()
  return written
