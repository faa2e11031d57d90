"""How long a new user waits: `optlab run configs/quickstart.yaml --set train.steps=50`, cold and warm.

  python experiments/bench_runner.py [--steps 50] [--repeats 1]

Each row is a fresh `optlab` process (imports, config validation, compilation and training all
counted), as a user runs it:
  cold         a new results directory: nothing compiled yet (the persistent cache starts empty);
  warm         the same command again after deleting the results (a changed hyperparameter
               reruns every run): compiled programs come from DIR/compile_cache;
  no cache     `--no-compile-cache` in a new directory: what a run cost before the cache;
  cold, 2 threads  `--threads 2` in a new directory: two groups at a time (the default runs them
               one after another).
Targets on the 2-core CPU machine (issue 9): cold <= 15 s, warm <= 8 s. Each row also shows the
process's CPU seconds (user + system), printed with the load average: on a machine shared with
other work the wall time grows with the load, the CPU time much less; on a quiet machine the wall
time is about the CPU time (compilation runs on one thread) or a little under it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _optlab(*args: str) -> tuple[float, float]:
  """(wall seconds, CPU seconds) of one fresh `optlab run` process."""
  tic, cpu = time.perf_counter(), _cpu_seconds()
  subprocess.run([sys.executable, "-m", "optlab_jax.cli", "run", str(CONFIG), "--quiet", *args],
                 check=True, capture_output=True, cwd=CONFIG.parents[1])
  return time.perf_counter() - tic, _cpu_seconds() - cpu


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=1, help="best of this many of each row")
  args = parser.parse_args()
  rows = {"cold": [], "warm": [], "no cache": [], "cold, 2 threads": []}
  for _ in range(args.repeats):
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / "qs"
      common = ("--set", f"train.steps={args.steps}", "--out", str(out))
      rows["cold"].append(_optlab(*common))
      for name in ("runs.jsonl", "summary.csv", "metrics"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
      rows["warm"].append(_optlab(*common))
      rows["no cache"].append(_optlab("--set", f"train.steps={args.steps}", "--out", str(out) + "_nc",
                                      "--no-compile-cache"))
      rows["cold, 2 threads"].append(_optlab("--set", f"train.steps={args.steps}", "--out", str(out) + "_t2",
                                            "--threads", "2"))
  targets = {"cold": "<= 15", "warm": "<= 8", "no cache": "", "cold, 2 threads": ""}
  print(f"optlab run configs/quickstart.yaml --set train.steps={args.steps}, best of {args.repeats}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
  print(f"{'row':14s} | {'seconds':>8s} | {'CPU s':>8s} | target")
  for name, times in rows.items():
    wall, cpu = min(times)
    print(f"{name:14s} | {wall:8.1f} | {cpu:8.1f} | {targets[name]}")


if __name__ == "__main__":
  main()
