"""Lottery tickets: does iterative magnitude pruning with rewinding find sparse subnetworks that match the dense net?

  python experiments/lottery_tickets.py configs/lottery_tickets.yaml --figure docs/findings/lottery_tickets.png

For each problem of the config (its seeds vmapped), `pruning.imp` trains the dense network, prunes
`--rate` of the surviving weights per round (global magnitude, `--scope`), rewinds the survivors to
their values at step `--rewind-step` and retrains the remaining steps; the control trains each
round's mask from a fresh random init for all the steps. Prints per round the final test accuracy
of the ticket and of the control over the seeds (mean ± std [min, max]) beside the dense one, and
writes them to DIR/lottery_tickets.json. `--figure` draws test accuracy against density.
IMP's settings are flags because a config has no section for them.

References: Frankle & Carbin, 2019 (arXiv:1803.03635); Frankle et al., 2020 (arXiv:1912.05671).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import claim_runs  # experiments/claim_runs.py, beside this script
from optlab_jax import config, findings, optim, pruning, sweep

METRICS = ("test_accuracy", "test_loss")


def _finals(histories) -> list[dict[str, float]]:
  return [{k: h.final[k] for k in METRICS} for h in histories]


def lottery(runs: list[config.Run], args) -> dict:
  """`pruning.imp` on one problem point's runs (its seeds): per-seed final metrics per round."""
  cfg = runs[0].config
  problem = config.build_problem(cfg["problem"])
  kwargs = config.optimizer_kwargs(cfg["optimizer"])
  factory = optim.get(cfg["optimizer"]["name"])
  fit_kwargs = {k: v for k, v in sweep.fit_kwargs_of(cfg).items() if k in ("batch_size", "eval_every", "loop")}
  tic = time.perf_counter()
  show = lambda r: print(f"  density {r.density:.4f}: ticket {_cell(_finals(r.ticket))}  "
                         f"re-init {_cell(_finals(r.reinit))}  ({time.perf_counter() - tic:.0f} s)", flush=True)
  result = pruning.imp(problem, lambda: factory(**kwargs), {}, [r.config["seed"] for r in runs],
                       steps=cfg["train"]["steps"], rounds=args.rounds, rate=args.rate, rewind_step=args.rewind_step,
                       scope=args.scope, on_round=show, **fit_kwargs)
  return {
      "dense": _finals(result.dense),
      "rounds": [{"density": r.density, "ticket": _finals(r.ticket), "reinit": _finals(r.reinit)}
                 for r in result.rounds],
  }


def _cell(values: list[dict[str, float]], key: str = "test_accuracy") -> str:
  mean, std, lo, hi = findings.spread(values)[key]
  return f"{mean:.4f} ± {std:.4f} [{lo:.4f}, {hi:.4f}]"


def figure(rows: dict[str, dict]) -> Figure:
  fig = Figure(figsize=(5 * len(rows), 4), layout="constrained")
  for ax, (label, row) in zip(np.atleast_1d(fig.subplots(1, len(rows))), rows.items()):
    density = 100 * np.array([r["density"] for r in row["rounds"]])
    dense = np.array([d["test_accuracy"] for d in row["dense"]])
    ax.axhline(dense.mean(), color="k", label="dense (mean; band: min–max)")
    ax.axhspan(dense.min(), dense.max(), color="k", alpha=0.15)
    for i, (key, name) in enumerate((("ticket", "IMP, rewound to θ_k"), ("reinit", "same mask, random re-init"))):
      acc = np.array([[s["test_accuracy"] for s in r[key]] for r in row["rounds"]])
      ax.plot(density, acc.mean(1), marker="o", markersize=3, color=f"C{i}", label=name)
      ax.fill_between(density, acc.min(1), acc.max(1), color=f"C{i}", alpha=0.25)
    ax.axvline(20, color="grey", linestyle=":", linewidth=1)
    ax.set(xscale="log", xlabel="weight-matrix entries kept (%)", ylabel="final test accuracy (range over seeds)",
           title=label)
    ax.set_xticks([80, 50, 20, 10, 5], labels=["80", "50", "20", "10", "5"])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
  fig.axes[0].legend(fontsize="x-small", loc="lower left")
  return fig


def main(argv=None) -> None:
  parser = claim_runs.parser(__doc__)
  parser.add_argument("--rounds", type=int, default=15, help="pruning rounds")
  parser.add_argument("--rate", type=float, default=0.2, help="share of the surviving weights pruned per round")
  parser.add_argument("--rewind-step", type=int, default=50, help="step k whose params the survivors rewind to")
  parser.add_argument("--scope", default="global", choices=pruning.SCOPES)
  parser.add_argument("--figure", help="PNG path of the accuracy-vs-density figure")
  args = parser.parse_args(argv)
  experiment = config.load(args.config, args.set)
  out = Path(args.out or Path("runs") / Path(args.config).stem)
  out.mkdir(parents=True, exist_ok=True)
  rows = {}
  for runs in sweep.group(experiment.runs):
    label = sweep.group_label(runs)
    print(label, flush=True)
    rows[label] = lottery(runs, args)
    print(f"  dense {_cell(rows[label]['dense'])}", flush=True)
  (out / "lottery_tickets.json").write_text(json.dumps(rows, indent=1))
  if args.figure:
    figure(rows).savefig(args.figure, dpi=70)


if __name__ == "__main__":
  main()
