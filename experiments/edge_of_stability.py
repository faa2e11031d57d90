"""Edge of stability: how close each run's sharpness sits to its optimizer's edge, and the loss beside it.

  optlab run configs/edge_of_stability.yaml && python experiments/edge_of_stability.py runs/edge_of_stability

Reads a results directory of configs/edge_of_stability.yaml (`optlab run` trains it) and prints, per
point, over its seeds (mean ± std [min, max]): the mean ratio of λ_max to the stability edge over
the last third of training (`findings.edge_of_stability`; Adam's preconditioned sharpness to its
adaptive edge), the share of those steps whose training loss rose, and how far the loss fell over
them. `--figure` writes every run's ratio to its edge in one panel (median and quartiles over seeds).
"""

from __future__ import annotations

import argparse

from optlab_jax import findings, plots


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("dir", help="a results directory of configs/edge_of_stability.yaml")
  parser.add_argument("--figure", help="PNG path for the ratio-to-edge figure of every point")
  args = parser.parse_args()
  print(f"{'point':62s} {'λ/edge, last third':26s} {'loss rises':18s} loss end/start")
  for label, runs in findings.by_point(args.dir, findings.edge_of_stability).items():
    s = findings.spread(runs)
    cell = lambda k, f=".3f": f"{s[k][0]:{f}} ± {s[k][1]:{f}} [{s[k][2]:{f}}, {s[k][3]:{f}}]"
    print(f"{label[:62]:62s} {cell('ratio', '.2f'):26s} {cell('loss_rises', '.2f'):18s} {cell('loss_drop', '.2f')}"
          f"  ({len(runs)} seeds)")
  if args.figure:
    found = plots.curves(args.dir)
    lines = found.get("monitor.eos_ratio", []) + found.get("monitor.preconditioned_eos_ratio", [])
    plots.figure("monitor.eos_ratio", lines).savefig(args.figure, dpi=80)
    print(args.figure)


if __name__ == "__main__":
  main()
