"""AdaHessian vs Adam: each point's training seconds per step, and the steps and seconds it takes
to reach a target loss, from a results directory of configs/adahessian_vs_adam.yaml.

  optlab run configs/adahessian_vs_adam.yaml
  python experiments/adahessian_vs_adam.py runs/adahessian_vs_adam [--metric loss] [--reference adam]

The target of a problem is the reference optimizer's final eval `metric` (the median over its
seeds): how many steps, and how many seconds, does each optimizer need to reach what the
reference reaches at the end? A run's seconds are its steps times its measured seconds per step
(`time_plots`: training time with compilation excluded, evaluation included, a vmapped group's
time split among its seeds). Printed per point over its seeds: mean ± std [min, max]; a run that
never reaches the target counts as NaN (the count that did is shown).

References: Yao et al., 2020, ADAHESSIAN (arXiv:2006.00719).
"""

from __future__ import annotations

import argparse

import numpy as np

from optlab_jax import findings, results, time_plots


def _stats(values: list[float]) -> str:
  v = np.asarray(values, np.float64)
  ok = v[np.isfinite(v)]
  if not len(ok):
    return f"never (0/{len(v)})"
  return f"{ok.mean():.4g} ± {ok.std():.2g} [{ok.min():.4g}, {ok.max():.4g}] ({len(ok)}/{len(v)})"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("dir", help="a results directory of configs/adahessian_vs_adam.yaml")
  parser.add_argument("--metric", default="loss", help="the eval metric to reach (default: loss, on training data)")
  parser.add_argument("--reference", default="adam", help="the optimizer whose final value is the target")
  args = parser.parse_args(argv)
  records = [r for r in results.load_records(args.dir) if r["status"] == "ok"]
  points: dict[str, list[dict]] = {}
  for record in records:
    points.setdefault(record["point"], []).append(record)
  by_problem: dict[str, list[list[dict]]] = {}
  for runs in points.values():
    by_problem.setdefault(runs[0]["config"]["problem"]["name"], []).append(runs)
  for problem, groups in by_problem.items():
    metrics = [[results.load_metrics(args.dir, r["id"]) for r in runs] for runs in groups]
    seconds = [[time_plots.seconds_per_step(r) for r in runs] for runs in groups]
    reference = [i for i, runs in enumerate(groups) if runs[0]["config"]["optimizer"]["name"] == args.reference]
    target = float(np.median([m[f"eval.{args.metric}"][-1] for m in metrics[reference[0]]]))
    base = float(np.median(seconds[reference[0]]))
    print(f"\n{problem}: target {args.metric} = {target:.4g} ({args.reference}'s final, median over seeds)")
    for runs, ms, secs in zip(groups, metrics, seconds):
      steps = [findings.first_reach(m["eval_step"], m[f"eval.{args.metric}"], target) for m in ms]
      print(f"  {runs[0]['label']}")
      print(f"    s/step {np.median(secs):.4g} (×{np.median(secs) / base:.2f} {args.reference}); "
            f"final {args.metric} {_stats([m[f'eval.{args.metric}'][-1] for m in ms])}")
      print(f"    steps to target {_stats(steps)}; seconds {_stats([n * s for n, s in zip(steps, secs)])}")


if __name__ == "__main__":
  main()
