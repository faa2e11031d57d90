"""Figures: the curves' numbers (mean, min, max over seeds), SGD's stability edge, the PNGs."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from optlab_jax import plots, results, train


def config(seed, lr=0.1, name="sgd", **extra):
  return {"problem": {"name": "quadratic"}, "optimizer": {"name": name, "learning_rate": lr, **extra},
          "train": {"steps": 4}, "monitor": None, "seed": seed}


def history(loss, lam, status="ok"):
  return train.History(
      loss=np.asarray(loss, np.float64), eval_steps=np.array([2, 4]), eval={"test_loss": np.array([loss[1], loss[3]])},
      monitor_steps=np.array([1, 3]), monitor={"lambda_max": np.asarray(lam, np.float64)}, final={"test_loss": loss[3]},
      status=status, diverged_at=None, params=None, loop="scan", wall_time=1.0, compile_time=0.1,
  )


@pytest.fixture
def sweep_dir(tmp_path):
  store = results.Store(tmp_path)
  store.add(config(0), "sgd", history([4.0, 3.0, 2.0, 1.0], [5.0, 7.0]))
  store.add(config(1), "sgd", history([6.0, 5.0, 2.0, 3.0], [9.0, 11.0]))
  store.add(config(2), "sgd", history([5.0, np.inf, np.nan, np.nan], [1.0, np.nan], status="diverged"))
  store.add(config(0, lr=0.01, name="adam"), "adam", history([1.0, 0.5, 0.25, 0.125], [2.0, 2.5]))
  return tmp_path


def test_curves_are_mean_min_max_over_seeds_of_finite_values(sweep_dir):
  curves = plots.curves(sweep_dir)
  assert sorted(curves) == ["eval.test_loss", "monitor.lambda_max", "train_loss"]
  sgd, adam = curves["train_loss"]
  assert (sgd.label, adam.label) == ("sgd", "adam")
  np.testing.assert_array_equal(sgd.steps, [1, 2, 3, 4])
  np.testing.assert_allclose(sgd.mean, [5.0, 4.0, 2.0, 2.0])
  np.testing.assert_allclose(sgd.low, [4.0, 3.0, 2.0, 1.0])
  np.testing.assert_allclose(sgd.high, [6.0, 5.0, 2.0, 3.0])
  np.testing.assert_allclose(adam.mean, [1.0, 0.5, 0.25, 0.125])
  lam = curves["monitor.lambda_max"][0]
  np.testing.assert_array_equal(lam.steps, [1, 3])
  np.testing.assert_allclose(lam.mean, [5.0, 9.0])
  np.testing.assert_allclose((lam.low, lam.high), ([1.0, 7.0], [9.0, 11.0]))
  np.testing.assert_array_equal(curves["eval.test_loss"][0].steps, [2, 4])


def spectral_radius(eta, lam, beta, nesterov):
  """Of SGD's iteration on ½λx², state (x_t, m_{t-1}): m_t = βm_{t-1} + λx_t, x_{t+1} = x_t − η d_t
  with d_t = m_t (heavy ball) or λx_t + βm_t (Nesterov)."""
  if nesterov:
    a = [[1 - eta * lam * (1 + beta), -eta * beta**2], [lam, beta]]
  else:
    a = [[1 - eta * lam, -eta * beta], [lam, beta]]
  return np.max(np.abs(np.linalg.eigvals(np.array(a))))


@pytest.mark.parametrize("momentum, nesterov", [(None, False), (0.9, False), (0.5, True)])
def test_stability_edge_is_where_sgd_on_a_quadratic_turns_unstable(momentum, nesterov):
  optimizer = {"name": "sgd", "learning_rate": 0.1, "momentum": momentum, "nesterov": nesterov}
  edge = plots.stability_edge(optimizer)
  assert spectral_radius(0.1, 0.999 * edge, momentum or 0.0, nesterov) < 1 < spectral_radius(0.1, 1.001 * edge, momentum or 0.0, nesterov)


def test_stability_edge_is_none_where_undefined():
  assert plots.stability_edge({"name": "adam", "learning_rate": 0.1}) is None
  assert plots.stability_edge({"name": "sgd", "learning_rate": {"name": "constant_schedule", "value": 0.1}}) is None


def test_plot_writes_one_png_per_metric(sweep_dir, tmp_path):
  paths = plots.plot(sweep_dir, tmp_path / "figs")
  assert sorted(p.name for p in paths) == ["eval_test_loss.png", "monitor_lambda_max.png", "train_loss.png"]
  for path in paths:
    image = matplotlib.image.imread(path)
    assert image.shape == (540, 840, 4) and image.std() > 0  # 7 × 4.5 inches at 120 dpi, not blank
