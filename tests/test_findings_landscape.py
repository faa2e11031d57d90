"""Issue #12's landscape claims at small size: monotonic linear interpolation (claim 7) and mode
connectivity (claim 8), each asserted with the setting where the claim says it must not appear."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from optlab_jax import config, landscape, optim, train

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def digits():
  return config.build_problem({"name": "digits_mlp", "hidden": [32]})


def _bumps(problem, name, learning_rate):
  """Lucas et al.'s Δ of init → solution for each seed of `name` at `learning_rate` (one vmapped fit)."""
  histories = train.fit_vmapped(problem, optim.get(name), {"learning_rate": [learning_rate] * len(SEEDS)}, SEEDS,
                                steps=200, batch_size=128)
  metrics = lambda p, data: problem.metrics_fn(data, p)
  out = []
  for seed, h in zip(SEEDS, histories):
    init = problem.init_params(jax.random.split(jax.random.key(seed))[0])
    interp = landscape.interpolate(metrics, init, h.params, np.linspace(0.0, 1.0, 21), args=(problem.data,))
    loss = np.asarray(interp.values["loss"])
    # independent of max_bump: the largest rise of the loss above its lowest earlier value
    assert np.isclose(float(interp.max_bump), max(0.0, max(loss[j] - loss[:j].min() for j in range(1, len(loss)))),
                      atol=1e-6)
    assert loss[-1] < 0.15 * loss[0], (name, seed, loss)  # trained
    out.append(float(interp.max_bump))
  return out


def test_sgd_interpolates_monotonically_and_adam_at_a_large_lr_does_not(digits):
  """Claim 7: SGD's init → solution loss never rises (Δ = 0 for every seed); Adam at lr 0.1 ends
  past the line's minimum (Δ > 0 for every seed), as Lucas et al. report for adaptive optimizers."""
  assert _bumps(digits, "sgd", 0.5) == [0.0] * len(SEEDS)
  assert min(_bumps(digits, "adam", 0.1)) > 1e-3


def test_each_seed_pair_has_a_line_barrier_that_a_trained_bezier_curve_removes(digits):
  """Claim 8, for two seed pairs: the straight line between independent solutions rises above its
  ends (barrier > 0.1) and the trained Bézier curve stays within a fifth of that; with the curve
  untrained (one step from the line's midpoint) the barrier is still there, so training removes it."""
  histories = train.fit_vmapped(digits, optim.get("adam"), {"learning_rate": [1e-2] * 4}, (0, 1, 2, 3), steps=200,
                                batch_size=128)
  connect = lambda a, b, steps: landscape.connect(digits.loss, histories[a].params, histories[b].params, steps=steps,
                                                  num_points=21, args=(digits.data["train"],))
  for a, b in ((0, 1), (2, 3)):
    c = connect(a, b, 200)
    line = np.asarray(c.line)  # independent of barrier(): the rise above the chord of the ends
    assert np.isclose(float(c.line_barrier), np.max(line - np.linspace(line[0], line[-1], len(line))), atol=1e-6)
    assert float(c.line_barrier) > 0.1 and float(c.curve_barrier) < 0.2 * float(c.line_barrier), c[4:6]
  untrained = connect(0, 1, 1)
  assert float(untrained.curve_barrier) > 0.5 * float(untrained.line_barrier)
