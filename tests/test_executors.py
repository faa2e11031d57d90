"""Executors: groups in two threads and Ray tasks give the one-after-another in-process runs; a dead
worker's group is retried and recorded once; a killed driver resumes losing and recomputing nothing
that was recorded."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from optlab_jax import cli, config, executors, results, sweep
from tests.test_sweep import FakeBar as Bar

ray = pytest.importorskip("ray")
ROOT = pathlib.Path(__file__).resolve().parents[1]

# Two groups (the optimizers differ in program), two seeds each. The adam group is long enough
# for a test to kill its worker or its driver while it runs.
CONFIG = """
problem: {name: quadratic, dim: 4, condition: 10.0, dtype: float64}  # float64: the driver's x64 reaches the workers
optimizer: {name: sgd, learning_rate: 0.05}
train: {steps: 30, eval_every: 10, loop: python, checkpoint_every: 100}
sweep: {zip: {optimizer: [{name: sgd, learning_rate: 0.05}, {name: adam, learning_rate: 0.01}], train.steps: [30, 3000]}}
seeds: [0, 1]
"""


@pytest.fixture(scope="module")
def cluster():
  """One local Ray cluster of 2 CPUs for the module; its address."""
  context = ray.init(num_cpus=2, include_dashboard=False)
  yield context.address_info["address"]
  ray.shutdown()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
  path = tmp_path_factory.mktemp("config") / "sweep.yaml"
  path.write_text(CONFIG)
  return config.load(str(path), [])


@pytest.fixture(scope="module")
def in_process(experiment, tmp_path_factory):
  """The sweep run in this process, one group after another, its directory: what every other
  executor's run must equal."""
  out = tmp_path_factory.mktemp("in_process")
  sweep.run(experiment, str(out), progress=False, executor=executors.InProcess(threads=1))
  return out


def _comparable(records: list[dict]) -> list[dict]:
  """Records by id, timings aside."""
  drop = ("wall_time", "compile_time")
  return sorted(({k: v for k, v in r.items() if k not in drop} for r in records), key=lambda r: r["id"])


def _assert_same_runs(out: pathlib.Path, reference: pathlib.Path) -> None:
  """Each run recorded once, with the reference's record (timings aside) and per-step metrics."""
  lines = (out / "runs.jsonl").read_text().splitlines()
  want = results.load_records(reference)
  assert len(lines) == len({json.loads(line)["id"] for line in lines}) == len(want)
  assert _comparable(results.load_records(out)) == _comparable(want)
  for record in want:
    got = results.load_metrics(out, record["id"])
    for name, values in results.load_metrics(reference, record["id"]).items():
      np.testing.assert_array_equal(got[name], values)


def test_two_threads_record_the_one_after_another_runs(experiment, in_process, tmp_path, monkeypatch):
  out = tmp_path / "threads"
  monkeypatch.setattr(sweep, "tqdm", Bar)
  records = sweep.run(experiment, str(out), executor=executors.InProcess(threads=2))
  assert len(records) == 4
  _assert_same_runs(out, in_process)
  positions = Bar.last.positions
  assert positions == sorted(positions) and positions[-1] == Bar.last.total == 2 * 30 + 2 * 3000
  assert set(positions) - {2 * 30, Bar.last.total}, positions   # moved while the long group trained


def _groups_that_meet(fail: int | None = None):
  """Two fake groups whose fits wait for each other (a barrier): only concurrent threads finish them."""
  barrier = threading.Barrier(2, timeout=20)

  def fit_group(runs, progress, start):
    barrier.wait()
    if runs[0] == fail:
      raise ValueError(f"group {fail} failed")
    progress.ticker(start)(1)
    yield runs[0], f"history {runs[0]}"

  class Progress:
    def describe(self, groups): pass
    def at(self, steps): self.steps = steps

  return [[0], [1]], fit_group, Progress()


def test_in_process_threads_run_groups_at_once_and_raise_a_groups_error(monkeypatch):
  monkeypatch.setattr(executors, "_steps", len)
  groups, fit_group, progress = _groups_that_meet()
  assert sorted(executors.InProcess(threads=2).map(groups, fit_group, progress)) == [(0, "history 0"), (1, "history 1")]
  assert progress.steps == 2
  groups, fit_group, progress = _groups_that_meet(fail=1)
  with pytest.raises(ValueError, match="group 1 failed"):
    list(executors.InProcess(threads=2).map(groups, fit_group, progress))
  with pytest.raises(ValueError, match="threads=0"):
    executors.InProcess(threads=0)


def test_ray_tasks_record_the_in_process_runs(cluster, experiment, in_process, tmp_path, monkeypatch):
  out = tmp_path / "ray"
  logged = []
  monkeypatch.setattr(sweep, "tqdm", Bar)
  records = sweep.run(experiment, str(out), log=logged.append, executor=executors.Ray())
  assert len(records) == 4
  _assert_same_runs(out, in_process)
  assert not logged and not (out / "checkpoints").exists()
  # The tasks' reports moved the bar while they ran, not only when a group's runs came back.
  positions = Bar.last.positions
  assert positions == sorted(positions) and positions[-1] == Bar.last.total == 2 * 30 + 2 * 3000
  assert set(positions) - {2 * 30, Bar.last.total}, positions
  assert ray.is_initialized()  # a cluster the executor did not start is left running


def _training_worker(group: int, deadline: float) -> int:
  """The pid of the worker of `group` once it has reported steps, read from the sweep's progress actor."""
  while time.monotonic() < deadline:
    names = [n for n in ray.util.list_named_actors() if n.startswith(executors.TRACKER_PREFIX)]
    if names:
      steps, attempts = ray.get(ray.get_actor(names[0]).snapshot.remote())
      if steps.get(group, 0) > 0:
        return attempts[group][-1]
    time.sleep(0.05)
  raise AssertionError(f"group {group} reported no progress")


def test_a_killed_worker_has_its_group_retried_and_recorded_once(cluster, experiment, in_process, tmp_path):
  out, logged, failed = tmp_path / "ray", [], []

  def run():
    try:
      sweep.run(experiment, str(out), progress=False, log=logged.append, executor=executors.Ray())
    except BaseException as e:  # shown by the assertion below
      failed.append(e)

  thread = threading.Thread(target=run)
  thread.start()
  pid = _training_worker(1, deadline=time.monotonic() + 90)  # the long group, mid-way
  os.kill(pid, signal.SIGKILL)
  thread.join(timeout=120)
  assert not failed, failed
  assert any("died; retried" in line for line in logged), logged
  _assert_same_runs(out, in_process)


# -m slow (half the Ray tests' time): the driver's resume is sweep.run's own, which
# test_cli's SIGKILL-mid-sweep test covers in-process; the killed-worker test covers Ray's retry.
@pytest.mark.slow
def test_a_killed_driver_resumes_losing_and_recomputing_nothing_recorded(cluster, experiment, in_process, tmp_path):
  out = tmp_path / "ray"
  env = os.environ | {"PYTHONPATH": str(ROOT), "JAX_ENABLE_X64": "1", "JAX_NUMPY_RANK_PROMOTION": "raise"}
  driver = subprocess.Popen(
      [sys.executable, "-m", "optlab_jax.cli", "run", experiment.path, "--out", str(out), "--quiet",
       "--executor", "ray", "--address", cluster], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 90
  while len(results.load_records(out)) < 2 and time.monotonic() < deadline and driver.poll() is None:
    time.sleep(0.05)
  driver.send_signal(signal.SIGKILL)
  assert driver.wait(timeout=30) == -signal.SIGKILL
  before = (out / "runs.jsonl").read_text().splitlines()
  assert len(before) == 2  # the short group's runs; the long group was in flight
  logged = []
  sweep.run(config.load(experiment.path, []), str(out), progress=False, log=logged.append,
            executor=executors.Ray())
  assert logged[0] == "2 of 4 runs already done, running 2"
  assert (out / "runs.jsonl").read_text().splitlines()[:2] == before  # timings included: not run again
  _assert_same_runs(out, in_process)


def test_without_ray_the_command_exits_2_naming_the_extra(tmp_path, monkeypatch, capsys, experiment):
  monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
  out = tmp_path / "out"
  assert cli.main(["run", experiment.path, "--out", str(out), "--executor", "ray"]) == 2
  assert "pip install -e '.[ray]'" in capsys.readouterr().err
  assert not out.exists()


def test_cluster_flags_without_ray_or_with_each_other_are_refused(tmp_path, capsys, experiment):
  out = str(tmp_path / "out")
  assert cli.main(["run", experiment.path, "--out", out, "--address", "auto"]) == 2
  assert "--address is an option of --executor ray" in capsys.readouterr().err
  assert cli.main(["run", experiment.path, "--out", out, "--executor", "ray", "--address", "auto",
                   "--num-cpus", "2"]) == 2
  assert "num_cpus=2" in capsys.readouterr().err
  assert cli.main(["run", experiment.path, "--out", out, "--executor", "ray", "--threads", "2"]) == 2
  assert "--threads is an option of --executor inprocess" in capsys.readouterr().err
  assert cli.main(["run", experiment.path, "--out", out, "--threads", "0"]) == 2
  assert "threads=0" in capsys.readouterr().err
  assert not pathlib.Path(out).exists()
