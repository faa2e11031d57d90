"""Scale-out benchmark: what checkpoints cost a run, and what Ray costs or gains a sweep.

Run:  python experiments/bench_scale_out.py            (digits-MLP, 600 steps; a 4-group sweep on Ray)
      python experiments/bench_scale_out.py --quick    (fewer steps: checks that it works)
      python experiments/bench_scale_out.py --only checkpoints | ray

Prints two tables of ratios measured in one run:
  checkpoints  digits-MLP 64-64 with Adam at batch 128, `train.checkpoint_every` K vs none (same
               chunks: eval every 20 steps): run time ratio (compilation excluded, best of 3), ms
               per save, MB per checkpoint on disk, and the wall seconds of a fit call, compilation
               included: a fresh run (none) or a resume from the last checkpoint (restore, final eval).
  ray          the same 4-group sweep (4 optimizers × 2 seeds on digits-MLP) in-process vs
               `--executor ray` on a local cluster of all CPUs: cold (cluster start and worker
               imports included) and warm (a second sweep on the running cluster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import textwrap
import time
from pathlib import Path

from optlab_jax import config, executors, optim, problems, sweep, train

SWEEP = """
problem: {{name: digits_mlp, hidden: [64, 64]}}
optimizer: {{name: sgd, learning_rate: 0.05}}
train: {{steps: {steps}, batch_size: 128, eval_every: 50}}
sweep: {{grid: {{optimizer: [{{name: sgd, learning_rate: 0.05, momentum: 0.9}}, {{name: adam, learning_rate: 0.001}},
                           {{name: adamw, learning_rate: 0.001}}, {{name: lion, learning_rate: 0.0001}}]}}}}
seeds: [0, 1]
"""


def _run_seconds(history: train.History) -> float:
  return history.wall_time - history.compile_time


def checkpoint_rows(steps: int, repeats: int, scratch: Path) -> list[tuple]:
  problem = problems.get("digits_mlp")(hidden=[64, 64])
  fit = lambda **kw: train.fit(problem, optim.adam(1e-3), steps=steps, batch_size=128, eval_every=20, **kw)
  best = lambda kw: min(_run_seconds(fit(**kw)) for _ in range(repeats))
  base = best({})
  tic = time.perf_counter()
  fit()
  rows = [("none", 1.0, 0.0, 0.0, time.perf_counter() - tic)]
  for every in (100, 20):
    directory = scratch / f"every{every}"
    seconds = []
    for _ in range(repeats):
      shutil.rmtree(directory, ignore_errors=True)
      seconds.append(_run_seconds(fit(checkpoint_every=every, checkpoint_dir=directory)))
    size = sum(p.stat().st_size for p in (directory / str(steps)).rglob("*") if p.is_file())
    tic = time.perf_counter()
    fit(checkpoint_every=every, checkpoint_dir=directory)  # from the last step: restore and final eval only
    rows.append((f"every {every}", min(seconds) / base, 1e3 * (min(seconds) - base) / (steps // every),
                 size / 1e6, time.perf_counter() - tic))
  return rows


def ray_rows(steps: int, scratch: Path) -> list[tuple]:
  import ray

  path = scratch / "sweep.yaml"
  path.write_text(textwrap.dedent(SWEEP.format(steps=steps)))
  run = lambda name, executor: sweep.run(config.load(str(path), []), str(scratch / name), progress=False,
                                         executor=executor)
  timed = []
  for name, executor in (("in-process", None), ("ray cold", executors.Ray())):
    tic = time.perf_counter()
    run(name, executor)
    timed.append((name, time.perf_counter() - tic))
  ray.init(num_cpus=os.cpu_count(), include_dashboard=False)  # the executor leaves a running cluster alone
  run("warm-up", executors.Ray())  # its workers have imported everything
  tic = time.perf_counter()
  run("ray warm", executors.Ray())
  timed.append(("ray warm", time.perf_counter() - tic))
  ray.shutdown()
  return [(name, seconds, seconds / timed[0][1]) for name, seconds in timed]


def print_checkpoints(steps: int, repeats: int, scratch: Path) -> None:
  rows = checkpoint_rows(steps, repeats, scratch)
  print(f"checkpoints: digits-MLP 64-64, Adam, batch 128, {steps} steps, best of {repeats}")
  print(f"{'checkpoint_every':<18}{'run/none':>10}{'ms/save':>10}{'MB/ckpt':>10}{'call s':>9}")
  for name, ratio, ms, mb, call in rows:
    print(f"{name:<18}{ratio:>10.2f}{ms:>10.1f}{mb:>10.3f}{call:>9.2f}")


def print_ray(steps: int, scratch: Path) -> None:
  rows = ray_rows(steps, scratch)
  print(f"ray: 4 groups × 2 seeds of digits-MLP, {steps} steps, {os.cpu_count()} CPUs")
  print(f"{'executor':<18}{'wall s':>10}{'/in-proc':>10}")
  for name, seconds, ratio in rows:
    print(f"{name:<18}{seconds:>10.1f}{ratio:>10.2f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--only", choices=["checkpoints", "ray"], help="print one of the two tables")
  args = parser.parse_args()
  steps, repeats = (100, 1) if args.quick else (600, 3)
  with tempfile.TemporaryDirectory() as scratch:
    if args.only != "ray":
      print_checkpoints(steps, repeats, Path(scratch))
    if args.only != "checkpoints":
      print_ray(steps, Path(scratch))


if __name__ == "__main__":
  main()
