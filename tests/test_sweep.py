"""Sweeps: labels, grouping into shared programs, vmapped = separate runs, divergence, resume."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from optlab_jax import config, executors, monitor, optim, results, sweep, train

def load(tmp_path, text, overrides=()):
  path = tmp_path / "sweep.yaml"
  path.write_text(textwrap.dedent(text))
  return config.load(str(path), overrides)


def test_labels_name_the_swept_values(tmp_path):
  e = load(tmp_path, """
      problem: {name: quadratic, dim: 2}
      train: {steps: 2}
      sweep: {grid: {optimizer: [{name: sgd, learning_rate: 0.1, momentum: 0.9}, {name: adam, learning_rate: 0.01}],
                     problem.dim: [2, 3]}}
      """)
  assert [sweep.label(r) for r in e.runs] == [
      "sgd(lr=0.1, momentum=0.9) dim=2", "sgd(lr=0.1, momentum=0.9) dim=3", "adam(lr=0.01) dim=2", "adam(lr=0.01) dim=3"]


def test_groups_share_a_program_only_across_seeds_and_float_hyperparameters(tmp_path):
  e = load(tmp_path, """
      problem: {name: quadratic, dim: 2}
      optimizer: {name: sgd, learning_rate: 0.1, momentum: 0.9}
      train: {steps: 2}
      sweep: {grid: {optimizer.learning_rate: [0.1, 0.2], optimizer.momentum: [0.5, 0.9], optimizer.nesterov: [false, true],
                     train.steps: [2, 3]}}
      seeds: [0, 1]
      """)
  groups = sweep.group(e.runs)
  # nesterov (a bool) and steps split the 32 runs into 4 programs of 2 lr × 2 momenta × 2 seeds.
  assert [len(g) for g in groups] == [8, 8, 8, 8]
  for g in groups:
    assert len({(r.config["optimizer"]["nesterov"], r.config["train"]["steps"]) for r in g}) == 1


def test_a_momentum_of_none_is_a_different_program_than_a_float_momentum(tmp_path):
  e = load(tmp_path, """
      problem: {name: quadratic, dim: 2}
      optimizer: {name: sgd, learning_rate: 0.1}
      train: {steps: 2}
      sweep: {grid: {optimizer.momentum: [null, 0.9]}}
      """)
  assert [len(g) for g in sweep.group(e.runs)] == [1, 1]


VMAP_CONFIG = """
problem: {name: quadratic, dim: 6, condition: 10.0, dtype: float64}
optimizer: {name: adam, learning_rate: 0.01}
train: {steps: 12, batch_size: 3, eval_every: 6}
monitor: {every: 4, metrics: [lambda_max, eos_ratio], lanczos_iters: 4, top_k: 1}
sweep: {grid: {optimizer.learning_rate: [0.01, 0.03]}}
seeds: [0, 1]
"""


def _spy(monkeypatch, vmap):
  calls = {"fit": 0, "fit_vmapped": 0}
  for name in calls:
    def wrapped(*args, _name=name, _fn=getattr(train, name), **kwargs):
      calls[_name] += 1
      return _fn(*args, **kwargs)
    monkeypatch.setattr(train, name, wrapped)
  monkeypatch.setattr(train, "should_vmap", lambda *a, **k: vmap)
  return calls


def test_vmapped_sweep_equals_separate_fits_per_seed(tmp_path, monkeypatch):
  experiment = load(tmp_path, VMAP_CONFIG)
  calls = _spy(monkeypatch, True)
  records = sweep.run(experiment, str(tmp_path / "out"), progress=False)
  assert calls == {"fit": 0, "fit_vmapped": 1}  # 2 learning rates × 2 seeds in one program
  monkeypatch.undo()
  assert len(records) == 4
  for run, record in zip(experiment.runs, records):
    lr, seed = run.config["optimizer"]["learning_rate"], run.config["seed"]
    problem = config.build_problem(run.config["problem"])
    probe = monitor.Monitor(["lambda_max", "eos_ratio"], problem.loss, learning_rate=lr, lanczos_iters=4, top_k=1)
    reference = train.fit(problem, optim.adam(lr), steps=12, batch_size=3, seed=seed, eval_every=6,
                          monitor=probe, monitor_every=4)
    arrays = results.load_metrics(tmp_path / "out", record["id"])
    np.testing.assert_allclose(arrays["train_loss"], reference.loss, rtol=1e-6)
    np.testing.assert_allclose(arrays["monitor.lambda_max"], reference.monitor["lambda_max"], rtol=1e-6)
    np.testing.assert_allclose(arrays["monitor.eos_ratio"], reference.monitor["eos_ratio"], rtol=1e-6)
    np.testing.assert_allclose(arrays["eval.loss"], reference.eval["loss"], rtol=1e-6)
    np.testing.assert_allclose(record["final"]["loss"], reference.final["loss"], rtol=1e-6)
    np.testing.assert_allclose(record["final"]["train_loss"], reference.loss[-1], rtol=1e-6)
    np.testing.assert_allclose(arrays["monitor.eos_ratio"], lr * arrays["monitor.lambda_max"] / 2, rtol=1e-12)
  # The two learning rates and two seeds really are four different runs.
  assert len({round(r["final"]["train_loss"], 12) for r in records}) == 4


def test_diverging_learning_rate_is_recorded_not_raised(tmp_path):
  experiment = load(tmp_path, """
      problem: {name: quadratic, dim: 4, condition: 10.0}
      optimizer: {name: sgd, learning_rate: 0.01}
      train: {steps: 60}
      sweep: {grid: {optimizer.learning_rate: [0.15, 1.0]}}
      """)
  records = sweep.run(experiment, str(tmp_path / "out"), progress=False)
  # Gradient descent on a quadratic is stable iff lr · λ_max < 2; here λ_max = 10.
  assert [r["status"] for r in records] == ["ok", "diverged"]
  assert records[0]["final"]["train_loss"] < 1e-3 and records[1]["final"]["train_loss"] is None
  assert isinstance(records[1]["diverged_at"], int)


def test_rerun_skips_finished_runs(tmp_path, monkeypatch):
  experiment = load(tmp_path, """
      problem: {name: quadratic, dim: 2}
      optimizer: {name: sgd, learning_rate: 0.1}
      train: {steps: 5}
      seeds: [0, 1]
      """)
  out = str(tmp_path / "out")
  first = sweep.run(config.Experiment(experiment.path, experiment.runs[:1]), out, progress=False)
  calls = _spy(monkeypatch, False)
  second = sweep.run(experiment, out, progress=False)
  assert calls == {"fit": 1, "fit_vmapped": 0}  # only seed 1 ran
  assert second[0] == first[0] and [r["config"]["seed"] for r in second] == [0, 1]
  sweep.run(experiment, out, progress=False)
  assert calls == {"fit": 1, "fit_vmapped": 0}
  assert len(results.load_records(out)) == 2


class FakeBar:
  """Stands in for tqdm: records the bar's position after every update, and its descriptions."""

  def __init__(self, total, **kwargs):
    self.total, self.n, self.positions, self.descriptions = total, 0, [], []
    FakeBar.last = self

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def update(self, k):
    self.n += k
    self.positions.append(self.n)

  def set_description(self, text):
    self.descriptions.append(text)


PROGRESS_CONFIG = """
problem: {name: quadratic, dim: 2}
optimizer: {name: sgd, learning_rate: 0.1, momentum: 0.5}
train: {steps: 20, eval_every: 5}
sweep: {grid: {optimizer.nesterov: [false, true], optimizer.learning_rate: [0.1, 0.2, 0.3]}}
seeds: [0, 1]
"""


@pytest.mark.parametrize("vmap, lrs, shown", [(True, "[0.1, 0.2, 0.3]", "{0.1, 0.2, 0.3}"), (False, "[0.1]", "0.1")])
def test_one_progress_bar_over_the_sweep_never_moves_back(tmp_path, monkeypatch, vmap, lrs, shown):
  experiment = load(tmp_path, PROGRESS_CONFIG, [f"sweep.grid.optimizer.learning_rate={lrs}"])
  monkeypatch.setattr(sweep, "tqdm", FakeBar)
  calls = _spy(monkeypatch, vmap)
  # One group after another (test_executors checks the bar of groups run in two threads).
  sweep.run(experiment, str(tmp_path / "out"), executor=executors.InProcess(threads=1))
  runs = len(experiment.runs)
  assert calls == ({"fit": 0, "fit_vmapped": 2} if vmap else {"fit": runs, "fit_vmapped": 0})
  bar = FakeBar.last
  assert bar.total == runs * 20
  # Vmapped groups report the steps summed over their runs; the bar used to go back at group ends.
  assert bar.positions == sorted(bar.positions) and bar.positions[-1] == bar.total
  assert len(bar.positions) >= 2 * 4  # it moved within groups (eval chunks), not only at their ends
  assert bar.descriptions == [f"nesterov=False learning_rate={shown} ×{runs // 2}",
                              f"nesterov=True learning_rate={shown} ×{runs // 2}"]


def test_group_label_names_each_swept_section_in_the_group(tmp_path):
  e = load(tmp_path, """
      problem: {name: quadratic, dim: 2}
      train: {steps: 2}
      sweep: {grid: {optimizer: [{name: sgd, learning_rate: 0.1}, {name: sgd, learning_rate: 0.2}]}}
      """)
  (runs,) = sweep.group(e.runs)
  assert sweep.group_label(runs) == "{sgd(lr=0.1), sgd(lr=0.2)} ×2"
  assert [sweep.label(r) for r in runs] == ["sgd(lr=0.1)", "sgd(lr=0.2)"]
