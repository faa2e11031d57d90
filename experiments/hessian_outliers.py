"""Hessian outliers ≈ number of classes C, the GGN's top C beside the Hessian's, and the gradient in their span.

  python experiments/hessian_outliers.py configs/hessian_outliers.yaml && optlab plot runs/hessian_outliers

Runs the config's sweep (`sweep.run`, resumable: the monitor records `top_k_gradient_fraction` with
top_k = C along training, Gur-Ari et al., 2018), then trains each run again (the same seed gives the
same run) and at its final params, on the full training set: the top `--top` Lanczos eigenvalues of
the Hessian and of the Gauss-Newton matrix (`findings.outliers`: where the spectrum's largest gap
lies, and how far the gap after the C-th value stands out), the share of the full-batch gradient in
the top-C Hessian eigenvectors and in C random directions (expected C/n), and the Hessian's SLQ
density, saved as `landscape/<point>_seed<s>.npz` (`optlab plot` draws it). Prints one row per point
over its seeds; `--figure` writes the top eigenvalues of every point's first seed, H and GGN.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from matplotlib.figure import Figure

import claim_runs  # experiments/claim_runs.py, beside this script
from optlab_jax import config, curvature, findings, landscape_plots, results, sweep


def spectra(problem, params, key, top: int, iters: int) -> dict:
  """Top Ritz values and vectors of H, top values of the GGN, and the SLQ quadrature of H, on the training set."""
  data = problem.data["train"]
  hess = curvature.hvp_fn(lambda p: problem.loss(p, data), params)
  ggn = curvature.ggn_fn(lambda p: problem.model_fn(p, data["x"]), lambda o: problem.output_loss_fn(o, data), params)
  h = curvature.lanczos_eigs(hess, params, key, iters, top)
  g = curvature.lanczos_eigs(ggn, params, key, iters, top)
  nodes, weights = curvature.slq_quadrature(hess, params, jax.random.fold_in(key, 1), iters, 2)
  return {"hessian": np.asarray(h.top_values), "ggn": np.asarray(g.top_values), "vectors": h.top_vectors,
          "spectral_nodes": nodes, "spectral_weights": weights}


def analyse(run: config.Run, top: int, iters: int) -> tuple[dict, dict]:
  """The numbers of one run at its final params (see the module docstring) and its spectra."""
  cfg = run.config
  problem = config.build_problem(cfg["problem"])
  history = sweep.refit(cfg, problem)
  params = history.params
  c = cfg["monitor"]["top_k"]
  s = spectra(problem, params, jax.random.key(cfg["seed"]), top, iters)
  grad = jax.grad(problem.loss)(params, problem.data["train"])
  coeffs = jax.vmap(lambda v: optax.tree.vdot(v, grad))(jax.tree.map(lambda v: v[:c], s["vectors"]))
  flat = np.asarray(ravel_pytree(grad)[0])
  row = {**{f"hessian_{k}": v for k, v in findings.outliers(s["hessian"], c).items()},
         **{f"ggn_{k}": v for k, v in findings.outliers(s["ggn"], c).items()},
         "ggn_over_hessian_top_c": float(np.max(np.abs(s["ggn"][:c] / s["hessian"][:c] - 1))),
         "top_c_gradient_fraction": float(np.sum(np.asarray(coeffs) ** 2) / np.sum(flat**2)),
         "random_c_gradient_fraction": findings.random_subspace_fraction(flat, c, cfg["seed"]),
         "c_over_n": c / flat.size}
  return row, s


def figure(tops: dict[str, tuple[np.ndarray, np.ndarray, int]]) -> Figure:
  """Top eigenvalues of H (solid) and the GGN (dashed) per point; a dotted line after the C-th."""
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  for i, (label, (hess, ggn, c)) in enumerate(tops.items()):
    k = np.arange(1, len(hess) + 1)
    ax.semilogy(k, hess, "o-", color=f"C{i}", markersize=3, label=f"{label}: Hessian")
    ax.semilogy(k, ggn, "x--", color=f"C{i}", markersize=4, label=f"{label}: Gauss-Newton")
    ax.axvline(c + 0.5, color=f"C{i}", linestyle=":", linewidth=1, label=f"C = {c}")
  ax.set(xlabel="rank k", ylabel="λ_k", title="top of the Hessian spectrum after training")
  ax.legend(fontsize="x-small")
  ax.grid(alpha=0.3)
  return fig


def main(argv=None) -> None:
  parser = claim_runs.parser(__doc__)
  parser.add_argument("--top", type=int, default=25, help="top eigenvalues computed (more than C)")
  parser.add_argument("--iters", type=int, default=60, help="Lanczos steps")
  parser.add_argument("--figure", help="PNG path of the top-eigenvalue figure")
  args = parser.parse_args(argv)
  experiment, out = claim_runs.run_sweep(args)
  rows, tops = {}, {}
  for run in experiment.runs:
    label = sweep.label(run)
    row, s = analyse(run, args.top, args.iters)
    rows.setdefault(label, []).append(row)
    tops.setdefault(label, (s["hessian"], s["ggn"], run.config["monitor"]["top_k"]))
    landscape_plots.save(out, f"{results.point_id(run.config)}_seed{run.config['seed']}", label=f"{label} seed {run.config['seed']}",
                         spectral_nodes=s["spectral_nodes"], spectral_weights=s["spectral_weights"])
  for label, runs in rows.items():
    print(f"\n{label} ({len(runs)} seeds): mean ± std [min, max]")
    for name, (mean, std, lo, hi) in findings.spread(runs).items():
      print(f"  {name:28s} {mean:.4g} ± {std:.2g} [{lo:.4g}, {hi:.4g}]")
  if args.figure:
    figure(tops).savefig(args.figure, dpi=80)
  print(f"\nfigures: optlab plot {out}")


if __name__ == "__main__":
  main()
