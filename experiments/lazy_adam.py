"""LazyAdam vs Adam on sparse embeddings: test loss, rows moved without a gradient, cost per step.

  python experiments/lazy_adam.py configs/lazy_adam.yaml --figure docs/findings/lazy_adam.png

Runs the config's sweep (`sweep.run`, resumable; `optlab plot runs/lazy_adam` draws the losses), then
trains each run again (`sweep.refit`, the same run) with the `findings.idle_rows` monitor: per point
over its seeds (mean ± std [min, max]) the final test loss, the rows a batch did not index that the
update moved anyway (mean per monitored step), the share of rows absent from the training data that
end bit-identical to their init (`findings.frozen_rows`), and the seconds per step (compilation
excluded) with LazyAdam's over Adam's, measured in this one process. `--figure` draws the test loss
and the moved idle rows against the step.

References: Kingma & Ba, 2015, Adam (arXiv:1412.6980); TensorFlow Addons, `tfa.optimizers.LazyAdam`.
"""

from __future__ import annotations

import json

import numpy as np
from matplotlib.figure import Figure

import claim_runs  # experiments/claim_runs.py, beside this script
from optlab_jax import config, findings, optim, sweep, train


def analyse(run: config.Run, every: int) -> dict:
  cfg = run.config
  problem = config.build_problem(cfg["problem"])
  history = sweep.refit(cfg, problem, monitor=findings.idle_rows, monitor_every=every)
  # The init as fit's own init program computes it (a separately jitted init differs in the last bit).
  initial = train.fit(problem, optim.get("sgd")(learning_rate=0.0), steps=1, seed=cfg["seed"]).params
  frozen = findings.frozen_rows(initial, history.params, problem.data["train"]["x"])
  steps = cfg["train"]["steps"]
  return {
      "test_loss": history.final["test_loss"],
      "idle_moved": float(np.mean(history.monitor["idle_rows_moved"])),
      "idle": float(np.mean(history.monitor["idle_rows"])),
      "unseen_frozen": frozen["unseen_frozen"], "seen_frozen": frozen["seen_frozen"], "unseen": frozen["unseen"],
      "ms_per_step": 1e3 * (history.wall_time - history.compile_time) / steps,
      "curves": (history.eval_steps, history.eval["test_loss"], history.monitor_steps, history.monitor["idle_rows_moved"]),
  }


def figure(rows: dict[str, list[dict]]) -> Figure:
  fig = Figure(figsize=(10, 4), layout="constrained")
  loss_ax, moved_ax = fig.subplots(1, 2)
  for i, (label, runs) in enumerate(rows.items()):
    style = {"color": f"C{i}", "label": label}
    for ax, (x, y) in ((loss_ax, (0, 1)), (moved_ax, (2, 3))):
      values = np.array([r["curves"][y] for r in runs], np.float64)
      ax.plot(runs[0]["curves"][x], values.mean(0), marker="o", markersize=3, **style)
      ax.fill_between(runs[0]["curves"][x], values.min(0), values.max(0), color=style["color"], alpha=0.2)
  loss_ax.set(yscale="log", xlabel="step", ylabel="test loss (range over seeds)", title="same quality")
  moved_ax.set(xlabel="step", ylabel="rows not in the batch that the update moved",
               title="LazyAdam leaves unindexed rows alone")
  for ax in (loss_ax, moved_ax):
    ax.grid(alpha=0.3)
  loss_ax.legend(fontsize="x-small")
  return fig


def main(argv=None) -> None:
  parser = claim_runs.parser(__doc__)
  parser.add_argument("--every", type=int, default=100, help="monitor the idle rows every this many steps")
  parser.add_argument("--figure", help="PNG path of the test-loss and moved-rows figure")
  args = parser.parse_args(argv)
  experiment, out = claim_runs.run_sweep(args)
  rows: dict[str, list[dict]] = {}
  settings: dict[str, dict[str, str]] = {}  # problem config -> optimizer name -> point label
  for run in experiment.runs:
    rows.setdefault(sweep.label(run), []).append(analyse(run, args.every))
    settings.setdefault(json.dumps(run.config["problem"], sort_keys=True), {})[run.config["optimizer"]["name"]] = sweep.label(run)
  for label, runs in rows.items():
    numbers = [{k: v for k, v in r.items() if k != "curves"} for r in runs]
    cells = "  ".join(f"{k} {m:.4g} ± {s:.2g} [{lo:.4g}, {hi:.4g}]" for k, (m, s, lo, hi) in findings.spread(numbers).items())
    print(f"{label} ({len(runs)} seeds): {cells}")
  for names in settings.values():
    adam, lazy = names["adam"], names["lazy_adam"]
    ratio = [b["ms_per_step"] / a["ms_per_step"] for a, b in zip(rows[adam], rows[lazy])]
    loss = [b["test_loss"] / a["test_loss"] for a, b in zip(rows[adam], rows[lazy])]
    print(f"{lazy} / {adam}: time per step {np.mean(ratio):.3f} [{min(ratio):.3f}, {max(ratio):.3f}], "
          f"test loss {np.mean(loss):.3f} [{min(loss):.3f}, {max(loss):.3f}]")
  if args.figure:
    figure(rows).savefig(args.figure, dpi=70)


if __name__ == "__main__":
  main()
