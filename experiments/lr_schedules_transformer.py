"""Learning-rate schedules on a Transformer: the final test loss of each, and λ_max against its edge.

  optlab run configs/lr_schedules_transformer.yaml && python experiments/lr_schedules_transformer.py runs/lr_schedules_transformer --figure docs/findings/lr_schedules_transformer.png

Reads a results directory of configs/lr_schedules_transformer.yaml (`optlab run` trains it) and prints
per schedule, over its seeds (mean ± std [min, max]): the final test loss; λ_max over the last quarter
of training and from 1/4 to 0.6 of the steps (the peak lr for constant and step); and over the last quarter the
ratio of λ_max to the stability edge (2 + 2β)/lr_t of the learning rate the step ran at
(`monitor.stability_edge`, 1 on the edge). `--figure` draws lr_t, the test loss and λ_max with each
schedule's edge dashed.

References: Cohen et al., 2021 (arXiv:2103.00065), the edge of stability; Loshchilov & Hutter, 2017
(arXiv:1608.03983); Smith, 2017 (arXiv:1506.01186).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

import claim_runs  # experiments/claim_runs.py, beside this script
from optlab_jax import config, findings, monitor, results

_NAMES = {"exponential_decay": "step (×0.1 twice)", "warmup_cosine_decay_schedule": "cosine",
          "triangular": "triangular (cyclical)", "inverse_time_decay": "1/t", "float": "constant"}


def name(lr: dict | float) -> str:
  """A schedule's short name: the innermost schedule's (linear_warmup's `schedule`)."""
  while isinstance(lr, dict) and lr["name"] == "linear_warmup":
    lr = lr["schedule"]
  return _NAMES.get(lr["name"] if isinstance(lr, dict) else "float", str(lr))


def measure(optimizer: dict, run: dict, final: dict) -> dict[str, float]:
  schedule = config.optimizer_kwargs(optimizer)["learning_rate"]
  steps, lam = np.asarray(run["monitor_step"]), np.asarray(run["monitor.lambda_max"], np.float64)
  edge = np.array([monitor.stability_edge({**optimizer, "learning_rate": float(schedule(int(s) - 1))}) for s in steps])
  return {"test_loss": final["test_loss"],
          "lambda_max_end": float(np.mean(findings.tail(steps, lam, 1 / 4))),
          "lambda_max_peak": float(np.mean(lam[(steps >= 0.25 * steps[-1]) & (steps <= 0.6 * steps[-1])])),
          "ratio_end": float(np.mean(findings.tail(steps, lam / edge, 1 / 4)))}


def figure(directory: str) -> Figure:
  fig = Figure(figsize=(15, 4.5), layout="constrained")
  lr_ax, loss_ax, lam_ax = fig.subplots(1, 3)
  points: dict[str, list[dict]] = {}
  for r in results.load_records(directory):
    points.setdefault(r["point"], []).append(r)
  for i, runs in enumerate(points.values()):
    optimizer, color = runs[0]["config"]["optimizer"], f"C{i}"
    label = name(optimizer["learning_rate"])
    schedule = config.optimizer_kwargs(optimizer)["learning_rate"]
    metrics = [results.load_metrics(directory, r["id"]) for r in runs]
    t = np.arange(1, runs[0]["config"]["train"]["steps"] + 1)
    lr = np.array([float(schedule(int(s) - 1)) for s in t])
    lr_ax.plot(t, lr, color=color, label=label)
    evals = np.array([m["eval.test_loss"] for m in metrics])
    loss_ax.plot(metrics[0]["eval_step"], np.median(evals, 0), "o-", color=color, label=label)
    steps = metrics[0]["monitor_step"]
    lam = np.median([m["monitor.lambda_max"] for m in metrics], 0)
    lam_ax.plot(steps, lam, color=color, label=label)
    edge = [monitor.stability_edge({**optimizer, "learning_rate": float(x)}) for x in lr[steps - 1]]
    lam_ax.plot(steps, edge, "--", color=color, linewidth=1)
  lr_ax.set(xlabel="step", ylabel="learning rate", title="schedules (same peak, same steps)")
  loss_ax.set(xlabel="step", ylabel="test loss (nats/char, median over seeds)", title="test loss")
  lam_ax.set(yscale="log", ylim=(0.5, 400), xlabel="step", ylabel="λ_max (median over seeds)",
             title="λ_max; dashed: the edge (2 + 2β)/lr_t")
  claim_runs.legends(lr_ax, loss_ax, lam_ax)
  return fig


def main() -> None:
  parser = claim_runs.results_parser(__doc__, "lr_schedules_transformer")
  args = parser.parse_args()
  rows: dict[str, list[dict]] = {}
  for r in results.load_records(args.dir):
    optimizer = r["config"]["optimizer"]
    if r["status"] == "ok":
      rows.setdefault(name(optimizer["learning_rate"]), []).append(
          measure(optimizer, results.load_metrics(args.dir, r["id"]), r["final"]))
  for label, runs in rows.items():
    s = findings.spread(runs)
    cell = lambda k: findings.spread_text(s[k])
    print(f"{label:22s} test loss {cell('test_loss'):28s} λ_max at 1/4-0.6 {cell('lambda_max_peak'):26s} "
          f"last quarter {cell('lambda_max_end'):26s} λ_max/edge there {cell('ratio_end')}  ({len(runs)} seeds)")
  if args.figure:
    figure(args.dir).savefig(args.figure, dpi=80)
    print(args.figure)


if __name__ == "__main__":
  main()
