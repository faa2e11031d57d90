"""Gauss-Newton (LM) against scipy.optimize.least_squares and gradient descent; natural gradient
against the dense closed-form Fisher of softmax regression."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

from optlab_jax import optim

# Exponential decay y = a·exp(−b t) + c + noise observed on a short window t ∈ [0, 1], where
# a and c are nearly collinear: the Hessian's eigenvalues at the fit are ≈ 0.09, 3.5 and 65.
_T = jnp.linspace(0.0, 1.0, 40)
_Y = jnp.asarray(3.0 * np.exp(-1.3 * np.linspace(0.0, 1.0, 40)) + 0.5
                 + 0.05 * np.random.default_rng(0).normal(size=40))
_START = {"a": jnp.asarray([1.0]), "b": jnp.asarray([0.3]), "c": jnp.asarray([0.0])}


def _residuals(p):
  return p["a"][0] * jnp.exp(-p["b"][0] * _T) + p["c"][0] - _Y


def _half_sum_of_squares(r):
  return 0.5 * jnp.sum(r * r)


def _fit_loss(p):
  return _half_sum_of_squares(_residuals(p))


def _gauss_newton_steps(tx, tol, max_steps):
  params, state = _START, tx.init(_START)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, model_fn=_residuals, output_loss_fn=_half_sum_of_squares))
  for k in range(max_steps):
    grad = jax.grad(_fit_loss)(params)
    if float(optax.tree.norm(grad)) <= tol:
      return k, params
    updates, state = step(grad, state, params)
    params = optax.apply_updates(params, updates)
  return max_steps, params


def test_curve_fit_converges_in_far_fewer_steps_than_gradient_descent():
  steps, params = _gauss_newton_steps(optim.get("gauss_newton")(1.0), 1e-8, 50)
  reference = scipy.optimize.least_squares(
      lambda v: np.asarray(_residuals({"a": v[:1], "b": v[1:2], "c": v[2:]})), np.array([1.0, 0.3, 0.0]),
      xtol=1e-15, ftol=1e-15, gtol=1e-15).x
  np.testing.assert_allclose(ravel_pytree(params)[0], reference, rtol=1e-7)

  # Gradient descent at its best fixed step (1.9/L, L the largest Hessian eigenvalue at the fit).
  flat, unravel = ravel_pytree(_START)
  f = lambda v: _fit_loss(unravel(v))
  lr = 1.9 / float(np.linalg.eigvalsh(jax.hessian(f)(jnp.asarray(reference)))[-1])
  gd = jax.jit(lambda x: jax.lax.while_loop(
      lambda c: (jnp.linalg.norm(jax.grad(f)(c[0])) > 1e-8) & (c[1] < 100_000),
      lambda c: (c[0] - lr * jax.grad(f)(c[0]), c[1] + 1), (x, 0)))
  gd_params, gd_steps = gd(flat)
  np.testing.assert_allclose(gd_params, reference, rtol=1e-6)
  # Measured: Gauss-Newton (LM) 13 steps, gradient descent 6,018 steps.
  assert steps <= 20 and int(gd_steps) >= 3_000, (steps, int(gd_steps))


def test_first_step_is_the_damped_gauss_newton_step():
  mu = 0.5
  tx = optim.scale_by_gauss_newton(damping=mu, cg_tol=0.0, max_cg_iters=10)
  g = jax.grad(_fit_loss)(_START)
  d, state = tx.update(g, tx.init(_START), _START, model_fn=_residuals, output_loss_fn=_half_sum_of_squares)
  flat, unravel = ravel_pytree(_START)
  jac = np.asarray(jax.jacobian(lambda v: _residuals(unravel(v)))(flat))
  g_flat = np.asarray(ravel_pytree(g)[0])
  expected = np.linalg.solve(jac.T @ jac + mu * np.linalg.norm(g_flat) * np.eye(3), g_flat)
  np.testing.assert_allclose(ravel_pytree(d)[0], expected, rtol=1e-9)
  f0, f1 = float(_fit_loss(_START)), float(_fit_loss(unravel(flat - expected)))
  rho = (f0 - f1) / (g_flat @ expected - 0.5 * expected @ jac.T @ jac @ expected)
  assert rho > 0.75
  np.testing.assert_allclose(state.damping, mu / 2, rtol=1e-12)


def test_undamped_step_would_diverge_where_lm_rejects_it():
  # From this start the plain Gauss-Newton step raises the loss; LM's ratio test rejects it.
  flat, unravel = ravel_pytree(_START)
  jac = np.asarray(jax.jacobian(lambda v: _residuals(unravel(v)))(flat))
  g = jac.T @ np.asarray(_residuals(_START))
  plain = np.linalg.solve(jac.T @ jac, g)
  assert float(_fit_loss(unravel(flat - plain))) > float(_fit_loss(_START))
  tx = optim.scale_by_gauss_newton(damping=1e-8, cg_tol=0.0)
  d, state = tx.update(unravel(jnp.asarray(g)), tx.init(_START), _START, model_fn=_residuals,
                       output_loss_fn=_half_sum_of_squares)
  np.testing.assert_array_equal(ravel_pytree(d)[0], np.zeros(3))
  np.testing.assert_allclose(state.damping, 4e-8, rtol=1e-12)


def _softmax_regression():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(30, 4)))
  params = {"w": jnp.asarray(0.5 * rng.normal(size=(4, 3))), "b": jnp.asarray(0.1 * rng.normal(size=3))}
  labels = jnp.asarray(rng.integers(0, 3, size=30))
  model_fn = lambda p: x @ p["w"] + p["b"].reshape(1, 3)
  loss = lambda p: jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(model_fn(p)), labels[:, None], axis=1))
  return x, params, labels, model_fn, loss


def test_natural_gradient_direction_matches_dense_fisher_solve():
  x, params, labels, model_fn, loss = _softmax_regression()
  damping = 0.1
  flat, unravel = ravel_pytree(params)
  g = jax.grad(loss)(params)
  g_flat = np.asarray(ravel_pytree(g)[0])
  # Exact Fisher in closed form: F = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n, J_n = ∂z_n/∂θ.
  probs = np.asarray(jax.nn.softmax(model_fn(params)))
  jac = np.asarray(jax.jacobian(lambda v: model_fn(unravel(v)))(flat))          # (N, 3, P)
  fisher = sum(j.T @ (np.diag(p) - np.outer(p, p)) @ j for j, p in zip(jac, probs)) / len(probs)
  # For softmax with logits linear in θ, the Fisher is the Hessian of the mean cross-entropy.
  np.testing.assert_allclose(fisher, jax.hessian(lambda v: loss(unravel(v)))(flat), atol=1e-12)
  expected = np.linalg.solve(fisher + damping * np.eye(flat.size), g_flat)

  def error(num_samples):
    tx = optim.scale_by_natural_gradient(damping=damping, likelihood="categorical", num_samples=num_samples)
    d, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, model_fn=model_fn))(g, tx.init(params), params)
    return np.linalg.norm(ravel_pytree(d)[0] - expected) / np.linalg.norm(expected)

  # Monte-Carlo error ∝ 1/√S: measured 0.12 at S = 100 and 0.009 at S = 4000.
  few, many = error(100), error(4000)
  assert many < 0.02 and many < few / 3, (few, many)
  # The empirical Fisher (data labels instead of sampled ones) gives a clearly different direction.
  scores = np.stack([j.T @ (p - np.eye(3)[y]) for j, p, y in zip(jac, probs, np.asarray(labels))])
  empirical = np.linalg.solve(scores.T @ scores / len(scores) + damping * np.eye(flat.size), g_flat)
  assert np.linalg.norm(empirical - expected) / np.linalg.norm(expected) > 10 * many   # measured 0.76


def test_natural_gradient_key_advances_and_seed_reproduces():
  _, params, _, model_fn, loss = _softmax_regression()
  g = jax.grad(loss)(params)
  tx = optim.scale_by_natural_gradient(damping=0.1, likelihood="categorical", seed=7)
  update = jax.jit(lambda s: tx.update(g, s, params, model_fn=model_fn))
  d1, state = update(tx.init(params))
  d2, _ = update(state)
  d1_again, _ = update(tx.init(params))
  np.testing.assert_array_equal(ravel_pytree(d1)[0], ravel_pytree(d1_again)[0])
  assert np.linalg.norm(ravel_pytree(d1)[0] - ravel_pytree(d2)[0]) > 1e-6


@pytest.mark.parametrize("name, missing", [("gauss_newton", "model_fn"), ("gauss_newton", "output_loss_fn"),
                                           ("natural_gradient", "model_fn")])
def test_missing_extra_arg_names_keyword_and_lambda(name, missing):
  tx = optim.get(name)(1.0)
  extra = {"model_fn": _residuals, "output_loss_fn": _half_sum_of_squares}
  del extra[missing]
  with pytest.raises(ValueError, match=rf"{missing}.*lambda"):
    tx.update(_START, tx.init(_START), _START, **extra)


def test_bad_likelihood_raises():
  with pytest.raises(ValueError, match="likelihood"):
    optim.get("natural_gradient")(1.0, likelihood="poisson")


def test_natural_gradient_gaussian_regression_matches_dense_fisher_solve():
  # A tanh network with 2 outputs per example over a batch of 40, unit-variance Gaussian likelihood:
  # the Fisher of the mean NLL is F = (1/B) Σ_b J_bᵀ J_b (the GGN), built here from jax.jacobian.
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(40, 3)))
  params = {"w1": jnp.asarray(rng.normal(size=(3, 4))), "w2": jnp.asarray(0.5 * rng.normal(size=(4, 2)))}
  y = jnp.asarray(rng.normal(size=(40, 2)))
  model_fn = lambda p: jnp.tanh(x @ p["w1"]) @ p["w2"]
  loss = lambda p: 0.5 * jnp.mean(jnp.sum((model_fn(p) - y) ** 2, axis=1))
  damping = 0.1
  flat, unravel = ravel_pytree(params)
  g = jax.grad(loss)(params)
  jac = np.asarray(jax.jacobian(lambda v: model_fn(unravel(v)))(flat))          # (B, 2, P)
  fisher = sum(j.T @ j for j in jac) / len(jac)
  expected = np.linalg.solve(fisher + damping * np.eye(flat.size), np.asarray(ravel_pytree(g)[0]))

  def error(num_samples):
    tx = optim.scale_by_natural_gradient(damping=damping, likelihood="gaussian", num_samples=num_samples)
    d, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, model_fn=model_fn))(g, tx.init(params), params)
    return np.linalg.norm(ravel_pytree(d)[0] - expected) / np.linalg.norm(expected)

  few, many = error(100), error(4000)
  assert many < 0.03 and many < few / 3, (few, many)
