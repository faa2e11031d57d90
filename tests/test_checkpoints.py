"""Checkpoints: a killed run resumes bit for bit; a damaged checkpoint gives way to the one before."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from optlab_jax import checkpoints, config, monitor, optim, results, sweep, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 40, 10


def _problem():
  return config.build_problem({"name": "quadratic", "dim": 4, "condition": 10.0})


def _kwargs(problem, with_monitor=True):
  probe = with_monitor and monitor.Monitor(["lambda_max"], problem.loss, lanczos_iters=3, top_k=1)
  return dict(steps=STEPS, seed=3, eval_every=EVERY, monitor_every=5) | ({"monitor": probe} if probe else {})


def _assert_same_history(got: train.History, want: train.History) -> None:
  """Bit for bit: losses, eval and monitor records, final metrics and params."""
  np.testing.assert_array_equal(got.loss, want.loss)
  for kind in ("eval", "monitor"):
    np.testing.assert_array_equal(getattr(got, f"{kind}_steps"), getattr(want, f"{kind}_steps"))
    assert getattr(got, kind).keys() == getattr(want, kind).keys()
    for name, values in getattr(want, kind).items():
      np.testing.assert_array_equal(getattr(got, kind)[name], values)
  assert got.final == want.final and got.status == want.status
  jax.tree.map(np.testing.assert_array_equal, got.params, want.params)


@pytest.fixture(scope="module")
def uninterrupted():
  """A run without checkpoints: the reference every resumed run must equal."""
  problem = _problem()
  return train.fit(problem, optim.adam(0.01), **_kwargs(problem))


@pytest.fixture(scope="module")
def uninterrupted_unmonitored():
  problem = _problem()
  return train.fit(problem, optim.adam(0.01), **_kwargs(problem, with_monitor=False))


_KILLED = textwrap.dedent("""
    import sys, time
    import jax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, sys.argv[2])
    from tests.test_checkpoints import _kwargs, _problem
    from optlab_jax import optim, train
    def report(step):
      print(step, flush=True)
      time.sleep(0.5)  # gives the test time to kill the run between chunks
    problem = _problem()
    train.fit(problem, optim.adam(0.01), **_kwargs(problem), checkpoint_every=10, checkpoint_dir=sys.argv[1],
              on_progress=report)
""")


def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_numbers(tmp_path, uninterrupted):
  directory = tmp_path / "ckpt"
  proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(directory), str(ROOT)], stdout=subprocess.PIPE,
                          text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
  for line in proc.stdout:
    if int(line) >= 25:  # the checkpoint at step 20 is committed (the save of 30 may be in flight)
      proc.send_signal(signal.SIGKILL)
      break
  assert proc.wait(timeout=60) == -signal.SIGKILL
  saved = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  assert saved and max(saved) < STEPS  # killed mid-way, with something to resume from
  done = []
  problem = _problem()
  resumed = train.fit(problem, optim.adam(0.01), **_kwargs(problem), checkpoint_every=EVERY,
                      checkpoint_dir=directory, on_progress=done.append)
  assert done[0] > max(saved) - EVERY  # it did not start again from step 0
  _assert_same_history(resumed, uninterrupted)


def _truncate_arrays(step_dir: pathlib.Path) -> None:
  """Cuts every array file of a checkpoint to 2 bytes."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for path in files:
    path.write_bytes(path.read_bytes()[:2])


@pytest.fixture(scope="module")
def finished_checkpoints(tmp_path_factory):
  """The checkpoints (steps 30 and 40: the last 2 are kept) of a finished run."""
  directory = tmp_path_factory.mktemp("finished") / "ckpt"
  problem = _problem()
  train.fit(problem, optim.adam(0.01), **_kwargs(problem, with_monitor=False), checkpoint_every=EVERY,
            checkpoint_dir=directory)
  assert sorted(p.name for p in directory.iterdir()) == ["30", "40"]
  return directory


@pytest.mark.parametrize("damage", ["truncated", "arrays of another step", "partial"])
def test_a_damaged_latest_checkpoint_gives_way_to_the_one_before(tmp_path, finished_checkpoints,
                                                                 uninterrupted_unmonitored, damage):
  directory = tmp_path / "ckpt"
  shutil.copytree(finished_checkpoints, directory)
  if damage == "partial":  # a save killed before Orbax renamed its temporary directory into place
    (directory / "40").rename(directory / "40.orbax-checkpoint-tmp-1764612000")
  elif damage == "truncated":
    _truncate_arrays(directory / "40")
  else:  # readable, but not what was saved at step 40: only the digest tells
    shutil.rmtree(directory / "40" / "state")
    shutil.copytree(directory / "30" / "state", directory / "40" / "state")
  done = []
  problem = _problem()
  with pytest.warns(UserWarning, match="damaged") if damage != "partial" else contextlib.nullcontext():
    resumed = train.fit(problem, optim.adam(0.01), **_kwargs(problem, with_monitor=False), checkpoint_every=EVERY,
                        checkpoint_dir=directory, on_progress=done.append)
  assert done == [40]  # from step 30: only the last chunk ran again
  _assert_same_history(resumed, uninterrupted_unmonitored)
  assert (directory / "40").is_dir()  # saved again
  assert len(list(directory.glob("40.unusable-*"))) == (damage != "partial")  # kept aside, out of Orbax's sight


def test_a_vmapped_group_resumes_to_the_uninterrupted_numbers(tmp_path):
  problem = _problem()
  kwargs = dict(steps=12, batch_size=2, eval_every=4, loop="python")
  make = lambda learning_rate: optim.adam(learning_rate)
  hparams, seeds = {"learning_rate": np.array([0.01, 0.03])}, np.array([0, 1])
  want = train.fit_vmapped(problem, make, hparams, seeds, **kwargs)

  def stop(steps_done):
    if steps_done >= 16:  # summed over the 2 runs: after step 8
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    train.fit_vmapped(problem, make, hparams, seeds, **kwargs, checkpoint_every=4, checkpoint_dir=tmp_path,
                      on_progress=stop)
  done = []
  got = train.fit_vmapped(problem, make, hparams, seeds, **kwargs, checkpoint_every=4, checkpoint_dir=tmp_path,
                          on_progress=done.append)
  assert done[0] in (2 * 8, 2 * 12)  # resumed after step 4 or 8 (the save of 8 may have been in flight)
  for g, w in zip(got, want, strict=True):
    _assert_same_history(g, w)


def test_a_killed_sweep_resumes_its_unfinished_run_and_then_deletes_the_checkpoints(tmp_path, monkeypatch):
  path = tmp_path / "sweep.yaml"
  path.write_text(textwrap.dedent("""
      problem: {name: quadratic, dim: 4, condition: 10.0}
      optimizer: {name: sgd, learning_rate: 0.05}
      train: {steps: 20, eval_every: 5, checkpoint_every: 5}
      """))
  experiment = config.load(str(path), [])
  want = sweep.run(experiment, str(tmp_path / "uninterrupted"), progress=False)
  out = tmp_path / "out"
  real_at = sweep._Progress.at

  def at(self, steps):
    real_at(self, steps)
    if steps >= 15:
      raise KeyboardInterrupt

  monkeypatch.setattr(sweep._Progress, "at", at)
  with pytest.raises(KeyboardInterrupt):
    sweep.run(experiment, str(out), progress=False)
  monkeypatch.undo()
  (rid,) = [results.run_id(r.config) for r in experiment.runs]
  assert (out / "checkpoints" / rid).is_dir() and not results.load_records(out)
  got = sweep.run(experiment, str(out), progress=False)
  assert not (out / "checkpoints").exists()
  strip = lambda records: [{k: v for k, v in r.items() if k not in ("wall_time", "compile_time")} for r in records]
  assert strip(got) == strip(want)
  for name, values in results.load_metrics(tmp_path / "uninterrupted", rid).items():
    np.testing.assert_array_equal(results.load_metrics(out, rid)[name], values)


def test_bad_settings_name_themselves(tmp_path):
  with pytest.raises(ValueError, match="checkpoint_every=5 needs checkpoint_dir"):
    checkpoints.Checkpoints(None, 5)
  with pytest.raises(ValueError, match="checkpoint_every"):
    checkpoints.Checkpoints(tmp_path, -1)
  path = tmp_path / "bad.yaml"
  path.write_text("problem: {name: quadratic}\noptimizer: {name: sgd, learning_rate: 0.1}\n"
                  "train: {steps: 4, checkpoint_every: -2}\n")
  with pytest.raises(config.ConfigError, match=r"train\.checkpoint_every"):
    config.load(str(path), [])
