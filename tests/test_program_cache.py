"""A program's cost is lowered once: later calls, and later processes sharing the cache, read it."""

from __future__ import annotations

import pathlib
import subprocess
import sys

_STEP_FLOPS = """
import sys, jax, optax
from optlab_jax import problems, train
train.use_compilation_cache(sys.argv[1])
if sys.argv[2] == "refuse-to-lower":
  def refuse(*args, **kwargs):
    raise AssertionError("lowered a program whose cost is on disk")
  jax.stages.Traced.lower = refuse
problem = problems.build("quadratic", dim=3)
print(train.step_flops(problem, optax.sgd(0.1), 2), train.step_flops(problem, optax.adam(0.1), 2))
"""


def test_a_second_process_reads_step_flops_without_lowering(tmp_path):
  run = lambda mode: subprocess.run(
      [sys.executable, "-c", _STEP_FLOPS, str(tmp_path / "cache"), mode], capture_output=True, text=True,
      check=True, cwd=pathlib.Path(__file__).resolve().parents[1]).stdout.split()
  sgd, adam = map(float, run("lower"))
  assert 0 < sgd < adam  # two programs, two entries: Adam's update costs more than SGD's
  assert len(list((tmp_path / "cache" / "optlab_costs").iterdir())) == 2
  assert list(map(float, run("refuse-to-lower"))) == [sgd, adam]
