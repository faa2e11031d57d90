"""Loss landscape of a config's runs: PCA-of-trajectory contour, 1-D slice, interpolation, connectivity.

  python experiments/landscape.py configs/landscape_digits.yaml && optlab plot runs/landscape_digits

Runs the config's sweep first (`sweep.run`, resumable: curves and monitor metrics such as
`spectral_density` in runs/<config>/), then retrains each run with its parameters recorded every
`--record-every` steps (the same seed gives the same run) and writes `landscape/<point>_seed<s>.npz`
(`landscape_plots.save`): the loss and test metrics on a GRID × GRID slice spanned by the top-2
principal directions of the trajectory, with the trajectory projected onto them (Li et al., 2018);
a 1-D slice along a filter-normalised random direction; the interpolation from the initialisation to
the solution with its monotonicity statistics (Lucas et al., 2021); the Hessian's SLQ spectral
density at the solution, with the exact eigenvalues where the model has at most 2,000 parameters;
and, between the solutions of the first two seeds of each point, a trained Bézier curve and the
barriers along it and along the line (Garipov et al., 2018). `optlab plot` draws them all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optlab_jax import config, curvature, landscape, landscape_plots, optim, results, sweep, train

EXACT_MAX_PARAMS = 2000


def _trajectory(problem, cfg, record_every):
  """(init params, final params, trajectory stacked along axis 0) of the run `cfg`."""
  t = cfg["train"]
  record = jax.jit(lambda params, *rest: {"params": ravel_pytree(params)[0]})
  history = train.fit(problem, optim.get(cfg["optimizer"]["name"])(**config.optimizer_kwargs(cfg["optimizer"])),
                      steps=t["steps"], batch_size=None if t["batch_size"] == "full" else t["batch_size"],
                      seed=cfg["seed"], loop=t["loop"], monitor=record, monitor_every=record_every)
  init = problem.init_params(jax.random.split(jax.random.key(cfg["seed"]))[0])
  flat, unravel = ravel_pytree(init)
  snapshots = np.concatenate([np.asarray(flat)[None], history.monitor["params"]])
  return init, history.params, jax.vmap(unravel)(jnp.asarray(snapshots, flat.dtype))


def _spectrum(problem, params, key):
  obj = lambda p: problem.loss(p, problem.data["train"])
  nodes, weights = curvature.slq_quadrature(curvature.hvp_fn(obj, params), params, key, 80, 4)
  out = {"spectral_nodes": nodes, "spectral_weights": weights}
  flat, unravel = ravel_pytree(params)
  if flat.size <= EXACT_MAX_PARAMS:
    out["exact"] = np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(lambda x: obj(unravel(x))))(flat), np.float64))
  return out


def analyse(problem, cfg, args) -> dict:
  """The landscape arrays of one run (see the module docstring)."""
  metrics = lambda p, data: problem.metrics_fn(data, p)
  init, final, trajectory = _trajectory(problem, cfg, args.record_every)
  pca = landscape.pca_directions(trajectory)
  coords = np.asarray(pca.coords)
  lo, hi = coords.min(axis=0), coords.max(axis=0)
  pad = 0.25 * np.maximum(hi - lo, 1e-3)
  xs, ys = (np.linspace(lo[k] - pad[k], hi[k] + pad[k], args.grid) for k in range(2))
  kw = dict(args=(problem.data,), chunk_size=args.chunk or "auto")
  grid = landscape.slice_2d(metrics, pca.origin, *pca.directions, xs, ys, **kw)
  direction = landscape.random_direction(jax.random.key(cfg["seed"] + 1), final)
  alphas = np.linspace(-1.0, 1.0, 2 * args.grid + 1)
  line = landscape.slice_1d(metrics, final, direction, alphas, **kw)
  interp = landscape.interpolate(metrics, init, final, np.linspace(0.0, 1.0, args.grid), **kw)
  out = {"slice2d_xs": xs, "slice2d_ys": ys, "slice2d_loss": grid["loss"], "trajectory": coords,
         "explained": pca.explained_variance, "slice1d_alphas": alphas, "slice1d_loss": line["loss"],
         "interp_alphas": interp.alphas, "interp_loss": interp.values["loss"], "interp_max_bump": interp.max_bump,
         **{f"slice2d_{k}": v for k, v in grid.items() if k != "loss"}}
  out.update(_spectrum(problem, final, jax.random.key(cfg["seed"])))
  return {"final": final, "arrays": out}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("config")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--out", help="results directory (default: runs/<config stem>)")
  parser.add_argument("--grid", type=int, default=41, help="points per axis of the 2-D slice")
  parser.add_argument("--chunk", type=int, default=None, help="grid points evaluated at once (default: landscape.AUTO_CHUNK)")
  parser.add_argument("--record-every", type=int, default=10, help="steps between saved parameter snapshots")
  parser.add_argument("--connect-steps", type=int, default=300)
  parser.add_argument("--connect-optimizer", default="adam")
  parser.add_argument("--connect-lr", type=float, default=0.01)
  args = parser.parse_args(argv)
  experiment = config.load(args.config, args.set)
  out = args.out or str(Path("runs") / Path(args.config).stem)
  print(results.table(sweep.run(experiment, out)))
  solutions = {}
  for run in experiment.runs:
    cfg = run.config
    problem = config.build_problem(cfg["problem"])
    point, label = results.point_id(cfg), sweep.label(run)
    found = analyse(problem, cfg, args)
    arrays = found["arrays"]
    solutions.setdefault(point, []).append(found["final"])
    if len(solutions[point]) == 2:  # connect the first two seeds' solutions of this point
      loss = lambda p, data: problem.metrics_fn(data, p)["loss"]
      c = landscape.connect(loss, *solutions[point], optimizer=args.connect_optimizer, learning_rate=args.connect_lr,
                            steps=args.connect_steps, args=(problem.data,), chunk_size=args.chunk or "auto")
      arrays.update(connect_ts=c.ts, connect_line=c.line, connect_curve=c.curve,
                    connect_line_barrier=c.line_barrier, connect_curve_barrier=c.curve_barrier)
      print(f"{label}: barrier along the line {float(c.line_barrier):.4g}, along the Bézier curve {float(c.curve_barrier):.4g}")
    print(f"{label} seed {cfg['seed']}: PCA explains {100 * float(np.sum(arrays['explained'])):.1f}% of the trajectory; "
          f"interpolation init -> solution max bump {float(arrays['interp_max_bump']):.3g}")
    landscape_plots.save(out, f"{point}_seed{cfg['seed']}", label=f"{label} seed {cfg['seed']}", **arrays)
  print(f"\nfigures: optlab plot {out}")


if __name__ == "__main__":
  main()
