"""PINNs: the derivative operator against analytic derivatives, the exact solutions' residuals ~0,
and the loss against numpy finite differences of the network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab_jax import problems
from optlab_jax.problems import pinn


def test_derivatives_match_analytic():
  u = lambda z: jnp.sin(z[0]) * jnp.exp(z[1]) + z[0] ** 2 * z[1]
  for z in np.random.default_rng(0).normal(size=(3, 2)):
    value, grad, hess = jax.jit(lambda z: pinn.derivatives(u, z))(jnp.asarray(z))
    x, t = z
    np.testing.assert_allclose(value, np.sin(x) * np.exp(t) + x**2 * t, rtol=1e-13)
    np.testing.assert_allclose(grad, [np.cos(x) * np.exp(t) + 2 * x * t, np.sin(x) * np.exp(t) + x**2], rtol=1e-13)
    expected = [[-np.sin(x) * np.exp(t) + 2 * t, np.cos(x) * np.exp(t) + 2 * x],
                [np.cos(x) * np.exp(t) + 2 * x, np.sin(x) * np.exp(t)]]
    np.testing.assert_allclose(hess, expected, rtol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_poisson_exact_solution_has_zero_residual(dim):
  z = jnp.asarray(np.random.default_rng(dim).uniform(size=(50, dim)))
  residual = jax.jit(jax.vmap(lambda z: pinn.poisson_residual(pinn.poisson_exact, z)))(z)
  np.testing.assert_allclose(residual, 0.0, atol=1e-11)
  wrong = jax.jit(jax.vmap(lambda z: pinn.poisson_residual(lambda y: 1.01 * pinn.poisson_exact(y), z)))(z)
  assert np.abs(wrong).max() > 0.05  # the residual can tell a wrong solution


@pytest.mark.parametrize("nu", [0.05, 0.2])
def test_burgers_exact_front_has_zero_residual(nu):
  rng = np.random.default_rng(0)
  z = jnp.asarray(np.stack([rng.uniform(-1, 1, 200), rng.uniform(0, 1, 200)], 1))
  residual = jax.jit(jax.vmap(lambda z: pinn.burgers_residual(lambda y: pinn.burgers_exact(y, nu), z, nu)))(z)
  np.testing.assert_allclose(residual, 0.0, atol=1e-10)
  wrong = jax.jit(jax.vmap(lambda z: pinn.burgers_residual(lambda y: pinn.burgers_exact(y, nu), z, 1.1 * nu)))(z)
  assert np.abs(wrong).max() > 1e-2


def laplacian_fd(u, z, h=1e-4):
  """Σ_k (u(z + h e_k) − 2u(z) + u(z − h e_k)) / h², for points z [n, d]."""
  total = -2 * z.shape[1] * u(z)
  for k in range(z.shape[1]):
    e = np.zeros(z.shape[1])
    e[k] = h
    total = total + u(z + e) + u(z - e)
  return total / h**2


@pytest.mark.parametrize("name", ["pinn_poisson", "pinn_burgers"])
def test_loss_and_metrics_against_finite_differences(name):
  problem = problems.build(name, num_interior=40, num_boundary=10, num_test=30, hidden=(8, 8),
                           boundary_weight=2.0, dtype="float64")
  params = jax.jit(problem.init_params)(jax.random.key(0))
  u = lambda z: np.asarray(jax.jit(problem.info["u_fn"])(params, jnp.asarray(z)))
  train = jax.tree.map(np.asarray, problem.data["train"])
  z, b = train["interior"], train["boundary"]
  if name == "pinn_poisson":
    on_edge = np.any((b == 0.0) | (b == 1.0), axis=1)
    exact_b = np.prod(np.sin(np.pi * b), axis=1)
    residual = -laplacian_fd(u, z) - 2 * np.pi**2 * np.prod(np.sin(np.pi * z), axis=1)
  else:
    on_edge = (b[:, 1] == 0.0) | (np.abs(b[:, 0]) == 1.0)
    exact_b = 0.5 - np.tanh((b[:, 0] + 0.25 - 0.5 * b[:, 1]) / 0.1)
    h, ex, et = 1e-4, np.array([1e-4, 0.0]), np.array([0.0, 1e-4])
    u_x, u_t = (u(z + ex) - u(z - ex)) / (2 * h), (u(z + et) - u(z - et)) / (2 * h)
    u_xx = (u(z + ex) - 2 * u(z) + u(z - ex)) / h**2
    residual = u_t + u(z) * u_x - 0.05 * u_xx
  assert on_edge.all()
  np.testing.assert_allclose(train["g"], exact_b, atol=1e-12)
  expected = np.mean(residual**2) + 2.0 * np.mean((u(b) - exact_b) ** 2)
  full = problem.sample_batch(jax.random.key(0), None)
  np.testing.assert_allclose(jax.jit(problem.loss)(params, full), expected, rtol=1e-6)
  test = jax.tree.map(np.asarray, problem.data["test"])
  metrics = jax.jit(problem.eval_metrics)(params)
  np.testing.assert_allclose(metrics["relative_l2_error"],
                             np.linalg.norm(u(test["z"]) - test["u"]) / np.linalg.norm(test["u"]), rtol=1e-10)
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)
  batch = jax.jit(problem.sample_batch, static_argnums=1)(jax.random.key(1), 8)
  assert batch["x"]["interior"].shape[0] == 8 and batch["x"]["boundary"].shape[0] == 2
  assert problem.likelihood is None and problem.minimum == 0.0
