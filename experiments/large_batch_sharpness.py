"""Large batch, sharper minimum: λ_max and the trace of the full-batch Hessian at each run's final point.

  python experiments/large_batch_sharpness.py configs/large_batch_sharpness.yaml

Runs the config's sweep (`sweep.run`, resumable; `optlab plot runs/large_batch_sharpness` draws the
losses), then trains each run again (the same seed gives the same run) and at its final params, on the
full training set, computes λ_max (Lanczos) and tr(H) (Hutchinson, with its standard error); prints
per point over its seeds (mean ± std [min, max]) those and the generalisation gap test_loss − loss.
`--figure` draws λ_max, tr(H)/100 and the gap against the batch size (mean and range over seeds).

References: Keskar et al., 2017, On large-batch training for deep learning: generalization gap and
sharp minima (arXiv:1609.04836).
"""

from __future__ import annotations

import jax
import numpy as np
from matplotlib.figure import Figure

import claim_runs  # experiments/claim_runs.py, beside this script
from optlab_jax import config, curvature, findings, sweep


def analyse(run: config.Run, iters: int, probes: int) -> dict[str, float]:
  cfg = run.config
  problem = config.build_problem(cfg["problem"])
  history = sweep.refit(cfg, problem)
  data, key = problem.data["train"], jax.random.key(cfg["seed"])
  hess = curvature.hvp_fn(lambda p: problem.loss(p, data), history.params)
  top = curvature.lanczos_eigs(hess, history.params, key, iters, 1).top_values[0]
  trace = curvature.hutchinson_trace(hess, history.params, jax.random.fold_in(key, 1), probes)
  return {"lambda_max": float(top), "trace": float(trace[0]), "trace_stderr": float(trace[1]),
          "gap": history.final["test_loss"] - history.final["loss"], "loss": history.final["loss"]}


def figure(batch_sizes: list[int], rows: list[list[dict]]) -> Figure:
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  gap_ax = ax.twinx()
  for i, (name, scale, axis) in enumerate([("lambda_max", 1, ax), ("trace", 0.01, ax), ("gap", 1, gap_ax)]):
    values = np.array([[r[name] * scale for r in runs] for runs in rows])
    label = {"lambda_max": "λ_max", "trace": "tr(H) / 100", "gap": "test − train loss (right axis)"}[name]
    axis.errorbar(batch_sizes, values.mean(1), yerr=[values.mean(1) - values.min(1), values.max(1) - values.mean(1)],
                  marker="o", color=f"C{i}", capsize=3, label=label)
  ax.set(xscale="log", xlabel="batch size (equal lr and epochs)", ylabel="sharpness at the final point",
         title="large batch → sharper final point (Keskar et al., 2017)")
  gap_ax.set_ylabel("test − train loss")
  fig.legend(loc="upper left", fontsize="small")
  ax.grid(alpha=0.3)
  return fig


def main(argv=None) -> None:
  parser = claim_runs.parser(__doc__)
  parser.add_argument("--iters", type=int, default=30, help="Lanczos steps for λ_max")
  parser.add_argument("--probes", type=int, default=30, help="Hutchinson probes for the trace")
  parser.add_argument("--figure", help="PNG path of the sharpness-against-batch-size figure")
  args = parser.parse_args(argv)
  experiment, out = claim_runs.run_sweep(args)
  rows: dict[str, list] = {}
  batch_sizes: dict[str, int] = {}
  for run in experiment.runs:
    rows.setdefault(sweep.label(run), []).append(analyse(run, args.iters, args.probes))
    size = run.config["train"]["batch_size"]
    batch_sizes[sweep.label(run)] = size if size != "full" else len(config.build_problem(run.config["problem"]).data["train"]["y"])
  for label, runs in rows.items():
    cells = "  ".join(f"{k} {m:.4g} ± {s:.2g} [{lo:.4g}, {hi:.4g}]" for k, (m, s, lo, hi) in findings.spread(runs).items())
    print(f"{label} ({len(runs)} seeds): {cells}")
  if args.figure:
    figure(list(batch_sizes.values()), list(rows.values())).savefig(args.figure, dpi=80)


if __name__ == "__main__":
  main()
