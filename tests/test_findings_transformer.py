"""Findings of issue #12 on the PINNs and the second-order methods, each asserted at a small size.

Claim 13 (L-BFGS beats Adam on a PINN at equal wall-clock time; configs/pinn.yaml): here Adam gets
3× L-BFGS's steps, more than the time ratio measured by the config's run (an L-BFGS step of
Burgers costs 1.5–2 Adam steps on this CPU), so "more accurate with fewer steps" is "more accurate
at equal time" without a timed test. At this size the gap is 3× (a ratio of 0.33 of the mean
errors over 3 seeds); the config's larger Burgers shows 3-4× at equal wall-clock.
"""

from __future__ import annotations

import numpy as np
import pytest

from optlab_jax import optim, problems, time_plots, train

SEEDS = np.arange(3)


@pytest.fixture(scope="module")
def burgers():
  return problems.build("pinn_burgers", hidden=(16, 16, 16), num_interior=128, num_boundary=32, num_test=300)


def _errors(problem, name, steps, **kwargs):
  """Each seed's final relative L2 error, the seeds vmapped in one program."""
  histories = train.fit_vmapped(problem, lambda: optim.get(name)(**kwargs), {}, SEEDS, steps=steps)
  return np.array([h.final["relative_l2_error"] for h in histories])


@pytest.fixture(scope="module")
def adam_errors(burgers):
  # lr 3e-3: its final error is stable to rounding (the same to 4 digits with boundary_weight moved
  # by one float32 ulp); at lr 1e-2 Adam ends in loss spikes and the error moves 2x with rounding.
  return _errors(burgers, "adam", 600, learning_rate=3e-3)


def test_lbfgs_beats_adam_given_three_times_the_steps_on_burgers(burgers, adam_errors):
  lbfgs = _errors(burgers, "lbfgs", 200, learning_rate=1.0)
  short = _errors(burgers, "lbfgs", 40, learning_rate=1.0)
  # Measured here: L-BFGS 0.0046 (0.0019-0.0070), Adam 0.0139 (0.0067-0.023), a ratio of 0.33 of the
  # means (0.20 with boundary_weight one ulp off). The control: L-BFGS stopped at 40 steps has not
  # got there (0.088, 6x Adam's), so the bound measures the optimisation, not a saturated error.
  assert lbfgs.mean() < 0.5 * adam_errors.mean(), (lbfgs, adam_errors)
  assert short.mean() > adam_errors.mean(), (short, adam_errors)


def test_equal_time_reads_each_point_at_the_shortest_runs_end():
  # Two points: B's run is the shorter (4 s), so A is read at its last eval within 4 s.
  a = time_plots.TimedCurve("A", "p", np.array([1.0, 3.0, 5.0]), np.array([[3.0, 2.0, 1.0], [5.0, 4.0, 3.0]]))
  b = time_plots.TimedCurve("B", "p", np.array([2.0, 4.0]), np.array([[9.0, 8.0], [7.0, 6.0]]))
  c = time_plots.TimedCurve("C", "q", np.array([1.0]), np.array([[1.0]]))
  budgets = time_plots.at_equal_time([a, b, c])
  assert budgets["p"][0] == 4.0 and budgets["q"][0] == 1.0
  np.testing.assert_array_equal(budgets["p"][1]["A"], [2.0, 4.0])
  np.testing.assert_array_equal(budgets["p"][1]["B"], [8.0, 6.0])
