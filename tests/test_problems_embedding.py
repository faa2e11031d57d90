"""embedding_regression: the gradient is zero on untouched rows and the hand-derived sum on touched ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import problems


def test_gradient_rows_match_hand_derivation():
  problem = problems.build("embedding_regression", num_users=50, num_items=40, dim=3, num_train=500,
                           num_test=100, dtype="float64")
  params = jax.jit(problem.init_params)(jax.random.key(0))
  x = jnp.asarray([[3, 7], [3, 9], [10, 7], [0, 0], [49, 39], [3, 7]], jnp.int32)  # repeats on purpose
  y = jnp.asarray(np.random.default_rng(0).normal(size=(6, 1)))
  grads = jax.jit(jax.grad(problem.loss))(params, {"x": x, "y": y})
  u, v = np.asarray(params["users"]), np.asarray(params["items"])
  xs, ys = np.asarray(x), np.asarray(y)[:, 0]
  error = np.sum(u[xs[:, 0]] * v[xs[:, 1]], axis=1) - ys
  expected_u, expected_v = np.zeros_like(u), np.zeros_like(v)
  for (user, item), e in zip(xs, error):
    expected_u[user] += e * v[item] / 6
    expected_v[item] += e * u[user] / 6
  np.testing.assert_allclose(grads["users"], expected_u, rtol=1e-12, atol=0)
  np.testing.assert_allclose(grads["items"], expected_v, rtol=1e-12, atol=0)
  touched = np.flatnonzero(np.any(np.asarray(grads["users"]) != 0, axis=1))
  np.testing.assert_array_equal(touched, [0, 3, 10, 49])
  np.testing.assert_allclose(jax.jit(problem.loss)(params, {"x": x, "y": y}), 0.5 * np.mean(error**2), rtol=1e-12)


def test_data_popularity_and_targets():
  problem = problems.build("embedding_regression", num_users=1000, num_items=1000, num_train=20000,
                           num_test=5000, noise=0.0, dtype="float64")
  assert problem.likelihood == "gaussian"
  x = np.concatenate([np.asarray(problem.data[s]["x"]) for s in ("train", "test")])
  harmonic = np.sum(1.0 / np.arange(1, 1001))
  np.testing.assert_allclose(np.mean(x[:, 0] == 0), 1 / harmonic, rtol=0.05)  # Zipf: P(row 0) = 1/H_n
  np.testing.assert_allclose(np.mean(x[:, 1] == 9), 1 / (10 * harmonic), rtol=0.15)
  y = np.asarray(problem.data["train"]["y"])
  np.testing.assert_allclose(y.var(), 1.0, rtol=0.25)  # rank-4 teacher with N(0, 1/√rank) factors
  # Noise-free targets are a rank-4 function of (user, item): equal pairs have equal targets.
  pairs, index = np.unique(np.asarray(problem.data["train"]["x"]), axis=0, return_inverse=True)
  assert len(pairs) < len(y)
  for k in range(5):
    np.testing.assert_array_equal(np.unique(y[index.ravel() == k]).size, 1)
