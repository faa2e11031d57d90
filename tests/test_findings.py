"""The curvature phenomena of issue #12 on small MLPs, each asserted at test size next to a control
run where the claim says it must not appear (so each test fails when the phenomenon is absent).

Each phenomenon's runs train once (one vmapped program per group, cached for the module). The full
versions are configs/edge_of_stability.yaml, configs/hessian_outliers.yaml, … (README, Findings).
"""

from __future__ import annotations

import functools

import numpy as np
import optax
import pytest

from optlab_jax import findings, monitor, optim, problems, train

# Square loss on one-hot targets, as Cohen et al. (2021) train; five digit classes keep it small.
_EOS_PROBLEM = dict(hidden=(16,), activation="tanh", loss="mse", classes=(0, 1, 2, 3, 4))
_EOS_STEPS, _EOS_EVERY = 400, 20


def _float32(hparams):
  """Hyperparameters in the params' dtype (x64 is on in tests; a float64 β would promote the state)."""
  return {k: np.asarray(v, np.float32) for k, v in hparams.items()}


@functools.cache
def _eos_problem():
  return problems.build("digits_mlp", **_EOS_PROBLEM)


@functools.cache
def _gd_runs():
  """Full-batch GD at lr 0.1 (control), 0.5 and 0.6 (two seeds each), and heavy ball (lr 0.6, β 0.5)."""
  problem = _eos_problem()
  mon = monitor.Monitor(["lambda_max", "eos_ratio"], problem.loss, optimizer={"name": "sgd"}, lanczos_iters=10)
  hparams = {"learning_rate": [0.1, 0.5, 0.5, 0.6, 0.6, 0.6], "momentum": [0.0, 0.0, 0.0, 0.0, 0.0, 0.5]}
  histories = train.fit_vmapped(problem, optax.sgd, _float32(hparams), [0, 0, 1, 0, 1, 0], steps=_EOS_STEPS,
                                monitor=mon, monitor_every=_EOS_EVERY)
  return [(h, lr, beta) for h, lr, beta in zip(histories, hparams["learning_rate"], hparams["momentum"])]


def test_gd_sharpness_settles_at_two_over_lr_while_the_loss_falls_non_monotonically():
  (control, lr, _), *edge_runs = [r for r in _gd_runs() if r[2] == 0.0]
  for history, lr, _ in edge_runs:
    m = findings.edge_of_stability(findings.arrays(history))
    tail = findings.tail(history.monitor_steps, history.monitor["lambda_max"], 1 / 3)
    assert np.all(np.abs(tail * lr / 2 - 1) < 0.15), (lr, tail * lr / 2)  # λ_max hovers at 2/lr ± 15%
    assert m["loss_rises"] > 0.02 and m["loss_drop"] < 0.9, (lr, m)     # non-monotone, yet falling
  m = findings.edge_of_stability(findings.arrays(control))
  # Below the edge GD descends monotonically: λ_max has not reached 2/lr within the budget.
  assert m["ratio_max"] < 0.85 and np.all(np.diff(control.loss[_EOS_STEPS // 10:]) <= 0), m


def test_heavy_ball_sharpness_settles_at_its_own_edge_not_at_gds():
  history, lr, beta = next(r for r in _gd_runs() if r[2] > 0)
  ratio = findings.edge_of_stability(findings.arrays(history))["ratio"]  # λ_max / ((2 + 2β)/lr)
  assert abs(ratio - 1) < 0.15, ratio
  gd_ratio = findings.tail(history.monitor_steps, history.monitor["lambda_max"], 1 / 3).mean() * lr / 2
  assert gd_ratio > 1.15 * 1.15, gd_ratio  # 1 + β = 1.5 past GD's 2/lr: the momentum edge is the one that holds
  np.testing.assert_allclose(monitor.stability_edge({"name": "sgd", "learning_rate": lr, "momentum": beta}),
                             (2 + 2 * beta) / lr)


@functools.cache
def _adam_runs():
  """Full-batch Adam at lr 1e-3 (control), 0.05 and 0.1."""
  problem = _eos_problem()
  mon = monitor.Monitor(["preconditioned_eos_ratio"], problem.loss, optimizer={"name": "adam"}, lanczos_iters=10)
  lrs = [1e-3, 0.05, 0.1]
  histories = train.fit_vmapped(problem, optim.get("adam"), _float32({"learning_rate": lrs}), [0, 0, 0], steps=_EOS_STEPS,
                                monitor=mon, monitor_every=_EOS_EVERY)
  return list(zip(histories, lrs))


def test_adam_preconditioned_sharpness_settles_at_its_adaptive_edge():
  (control, _), *edge_runs = _adam_runs()
  for history, lr in edge_runs:
    m = findings.edge_of_stability(findings.arrays(history))  # λ_max(P⁻¹H) / ((2 + 2β1)/((1 − β1) lr))
    assert abs(m["ratio"] - 1) < 0.15 and m["loss_rises"] > 0.02 and m["loss_drop"] < 0.9, (lr, m)
  m = findings.edge_of_stability(findings.arrays(control))
  assert m["ratio_max"] < 0.5 and np.all(np.diff(control.loss[_EOS_STEPS // 10:]) <= 0), m
