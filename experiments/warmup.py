"""Warm-up: the largest peak learning rate that trains with and without warm-up, and the early λ_max.

  optlab run configs/warmup.yaml && python experiments/warmup.py runs/warmup --figure docs/findings/warmup.png

Reads a results directory of configs/warmup.yaml (`optlab run` trains it: constant learning rates and
the same peaks behind a `linear_warmup`) and prints, per warm-up length, each seed's largest peak lr
that trained (`findings.largest_stable_lr`: finite, final loss under `--loss-ratio` of the first), and
per point over its seeds (mean ± std [min, max]) the median λ_max over the warm-up's steps
(`findings.early_sharpness`) and the final training loss (mean of the last 20 steps). `--figure`
draws the final loss against the peak lr, and λ_max over the steps beside the stability edge
(2 + 2β)/lr_t of the schedule.

References: Gilmer et al., 2021 (arXiv:2110.04369); Kalra & Barkeshli, 2024 (arXiv:2406.09405).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

import claim_runs  # experiments/claim_runs.py, beside this script
from optlab_jax import findings, monitor, results, schedules


def peak(optimizer: dict) -> float:
  """The peak learning rate of a constant or `linear_warmup` learning rate."""
  lr = optimizer["learning_rate"]
  return float(lr["schedule"] if isinstance(lr, dict) else lr)


def warmup_steps(optimizer: dict) -> int:
  lr = optimizer["learning_rate"]
  return int(lr["warmup_steps"]) if isinstance(lr, dict) else 0


def lr_at(optimizer: dict, steps: np.ndarray) -> np.ndarray:
  """The learning rate at each (1-based) step."""
  w = warmup_steps(optimizer)
  schedule = schedules.linear_warmup(peak(optimizer), w) if w else (lambda t: peak(optimizer))
  return np.array([float(schedule(int(t) - 1)) for t in steps])


def final_loss(loss: np.ndarray) -> float:
  loss = np.asarray(loss, np.float64)[-20:]
  return float(np.mean(loss)) if np.all(np.isfinite(loss)) else float("inf")


def figure(directory: str, lrs_shown: list[float]) -> Figure:
  fig = Figure(figsize=(12, 4.5), layout="constrained")
  left, right = fig.subplots(1, 2)
  records = [r for r in results.load_records(directory)]
  runs = {(warmup_steps(r["config"]["optimizer"]), peak(r["config"]["optimizer"])): [] for r in records}
  for r in records:
    runs[warmup_steps(r["config"]["optimizer"]), peak(r["config"]["optimizer"])].append(
        (r["config"]["optimizer"], results.load_metrics(directory, r["id"])))
  for i, w in enumerate(sorted({w for w, _ in runs})):
    lrs = sorted(lr for v, lr in runs if v == w)
    finals = [[final_loss(m["train_loss"]) for _, m in runs[w, lr]] for lr in lrs]
    shown = [[min(f, 10.0) for f in fs] for fs in finals]  # a blown-up run drawn at the top, as ×
    label = f"warm-up {w} steps" if w else "no warm-up"
    left.plot(lrs, [np.median(s) for s in shown], "-" if w else ":", color="k" if w else "grey", label=label)
    for lr, fs in zip(lrs, finals):
      left.scatter([lr] * len(fs), [min(f, 10.0) for f in fs], color="k" if w else "grey",
                   marker="o" if np.all(np.isfinite(fs)) and max(fs) < 10 else "x")
    for j, lr in enumerate(lrs_shown):
      if (w, lr) not in runs:
        continue
      optimizer, _ = runs[w, lr][0]
      steps = runs[w, lr][0][1]["monitor_step"]
      lam = np.stack([np.where(np.isfinite(m["monitor.lambda_max"]), m["monitor.lambda_max"], np.nan)
                      for _, m in runs[w, lr]])
      style = "-" if w else ":"
      right.plot(steps, np.nanmedian(lam, 0), style, color=f"C{j}", label=f"lr {lr:g}, {label}")
      if w:
        edge = [monitor.stability_edge({**optimizer, "learning_rate": float(x)}) for x in lr_at(optimizer, steps)]
        right.plot(steps, edge, "--", color=f"C{j}", linewidth=1, label=f"(2 + 2β)/lr_t, lr {lr:g}, {label}")
  left.set(xscale="log", xlabel="peak learning rate (SGD, momentum 0.9)",
           ylabel="final train loss (× diverged, drawn at 10)", title="a larger peak lr trains with warm-up")
  right.set(yscale="log", ylim=(0.5, 200), xlabel="step", ylabel="λ_max (median over seeds)",
            title="early sharpness with and without warm-up")
  claim_runs.legends(left, right)
  return fig


def main() -> None:
  parser = claim_runs.results_parser(__doc__, "warmup")
  parser.add_argument("--loss-ratio", type=float, default=0.75,
                      help="a run trained if its final loss is under this share of its first (0.75: 3.5 nats)")
  parser.add_argument("--show", type=float, nargs="*", default=[0.1, 1.0], help="peak lrs whose λ_max is drawn")
  parser.add_argument("--until", type=int, default=100, help="the early steps (the config's warm-up)")
  args = parser.parse_args()
  largest = findings.largest_stable_lr(args.dir, warmup_steps, peak=peak, loss_ratio=args.loss_ratio)
  for w, per_seed in largest.items():
    print(f"warm-up {w:4d} steps: largest peak lr that trains, per seed: {per_seed}")
  until = args.until
  rows: dict[str, list[dict]] = {}
  for r in results.load_records(args.dir):  # diverged runs too (`findings.by_point` keeps the finished ones)
    run = results.load_metrics(args.dir, r["id"])
    rows.setdefault(r["label"], []).append({"early_lambda_max": findings.early_sharpness(run, until),
                                            "final_loss": final_loss(run["train_loss"])})
  for label, runs in rows.items():
    s = findings.spread(runs)
    cell = lambda k: findings.spread_text(s[k])
    print(f"{label:50s} λ_max over steps ≤ {until}: {cell('early_lambda_max'):30s} final loss {cell('final_loss')}"
          f"  ({len(runs)} seeds)")
  if args.figure:
    figure(args.dir, args.show).savefig(args.figure, dpi=80)
    print(args.figure)


if __name__ == "__main__":
  main()
