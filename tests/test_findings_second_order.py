"""Findings of issue #12 on AdaHessian's cost (claim 12; configs/adahessian_vs_adam.yaml), asserted
at a small size: the digits CNN with 4 and 8 channels, 120 steps, 3 seeds vmapped in one program.

Wall-clock is not asserted here (timings belong to benchmarks and the config's run); the steps
to a target are. AdaHessian at lr 0.1 reaches Adam's (lr 3e-3) final training loss in about 2/3 of
the steps, and the curvature is the reason: with hessian_power = 0 its denominator is 1, the same
program is bias-corrected momentum SGD at lr 0.1, and it does not. But Adam at a larger lr, 1e-2,
does as well as AdaHessian: at equal steps its win is over an Adam not tuned as far.
"""

from __future__ import annotations

import numpy as np
import pytest

from optlab_jax import findings, monitor, optim, problems, time_plots, train

SEEDS = np.tile(np.arange(3), 2)
STEPS = 120


@pytest.fixture(scope="module")
def cnn():
  return problems.build("digits_cnn", channels=(4, 8))


def _runs(problem, name, **hparams):
  """Each run's (eval steps, eval training loss): seeds 0-2 at the first value of each hparam, then at the
  second, all in one vmapped program."""
  values = {k: np.repeat(np.asarray(v, np.float32), 3) for k, v in hparams.items()}
  histories = train.fit_vmapped(problem, optim.get(name), values, SEEDS, steps=STEPS, batch_size=64, eval_every=20)
  return [(np.asarray(h.eval_steps), np.asarray(h.eval["loss"])) for h in histories]


@pytest.fixture(scope="module")
def adam(cnn):
  return _runs(cnn, "adam", learning_rate=[3e-3, 1e-2])


def test_adahessian_reaches_adams_final_loss_in_fewer_steps_because_of_its_curvature(cnn, adam):
  runs = _runs(cnn, "adahessian", learning_rate=[0.1, 0.1], hessian_power=[1.0, 0.0])
  target = np.median([loss[-1] for _, loss in adam[:3]])
  steps = np.array([findings.first_reach(s, loss, target) for s, loss in runs])
  # Measured here: AdaHessian reaches it at 60, 80 and 100 of 120 steps; without its Hessian
  # (hessian_power 0: momentum SGD at the same lr) at 120 or never.
  assert np.all(steps[:3] < STEPS) and np.mean(steps[:3]) <= 0.75 * STEPS, steps
  assert np.all(np.isnan(steps[3:]) | (steps[3:] >= STEPS)), steps


def test_adam_at_a_larger_lr_does_as_well_as_adahessian(cnn, adam):
  target = np.median([loss[-1] for _, loss in adam[:3]])
  steps = np.array([findings.first_reach(s, loss, target) for s, loss in adam[3:]])
  assert np.all(steps < STEPS) and np.mean(steps) <= 0.75 * STEPS, steps


def test_adams_updates_are_less_sharp_than_sgds_on_the_transformer():
  # Claim 6 (configs/directional_sharpness.yaml) at a smaller size (13 s on a quiet machine). The
  # control: the same function on a digits MLP 64-64 fails the bound (SGD 0.42-0.61, Adam 0.55-0.77),
  # as in the config's MLP.
  problem = problems.build("char_transformer", seq_len=16, width=16, num_layers=1, num_heads=2)
  mon = monitor.Monitor(["directional_sharpness"], problem.loss)

  def sharpness(name, **kwargs):
    histories = train.fit_vmapped(problem, lambda: optim.get(name)(**kwargs), {}, np.arange(3), steps=160,
                                  batch_size=32, monitor=mon, monitor_every=20)
    return np.array([np.median(findings.tail(h.monitor_steps, h.monitor["directional_sharpness"], 0.5))
                     for h in histories])

  sgd, adam = sharpness("sgd", learning_rate=0.1, momentum=0.9), sharpness("adam", learning_rate=3e-3)
  assert np.all(adam < 0.5 * sgd), (adam, sgd)


def test_first_reach_is_the_first_step_at_or_below_the_target():
  steps, values = np.array([10, 20, 30, 40]), np.array([3.0, 1.0, 2.0, 0.5])
  assert findings.first_reach(steps, values, 1.0) == 20
  assert findings.first_reach(steps, values, 0.5) == 40
  assert np.isnan(findings.first_reach(steps, values, 0.1))


def test_time_plots_keep_points_apart_that_differ_in_more_than_the_learning_rate():
  def record(label):
    return {"label": label, "config": {"optimizer": {"name": "adahessian", "learning_rate": 0.1}}}
  every = time_plots._label(record("digits_cnn(channels=[8, 16]) adahessian(lr=0.1)"))
  tenth = time_plots._label(record("digits_cnn(channels=[8, 16]) adahessian(lr=0.1, update_interval=10)"))
  assert (every, tenth) == ("adahessian(lr=0.1)", "adahessian(lr=0.1, update_interval=10)")
  assert time_plots._label(record("quadratic adahessian")) == "adahessian(lr=0.1)"
