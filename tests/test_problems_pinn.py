"""PINNs: the derivative operator against analytic derivatives, the exact solutions' residuals ~0,
and the loss against numpy finite differences of the network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import cli, curvature, problems, results
from optlab_jax.problems import pinn
from tests.curvature_models import dense


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


def exact_numpy(name, points):
  if name == "pinn_poisson":
    return np.prod(np.sin(np.pi * points), axis=1)
  return 0.5 - np.tanh((points[:, 0] + 0.25 - 0.5 * points[:, 1]) / 0.1)


def residuals_fd(name, u, inputs):
  """The interior residuals and boundary misfits by finite differences of the network u."""
  z, b = inputs["interior"], inputs["boundary"]
  if name == "pinn_poisson":
    residual = -laplacian_fd(u, z) - z.shape[1] * np.pi**2 * np.prod(np.sin(np.pi * z), axis=1)
  else:
    h, ex, et = 1e-4, np.array([1e-4, 0.0]), np.array([0.0, 1e-4])
    u_x, u_t = (u(z + ex) - u(z - ex)) / (2 * h), (u(z + et) - u(z - et)) / (2 * h)
    u_xx = (u(z + ex) - 2 * u(z) + u(z - ex)) / h**2
    residual = u_t + u(z) * u_x - 0.05 * u_xx
  return residual, u(b) - exact_numpy(name, b)


@pytest.mark.parametrize("name", ["pinn_poisson", "pinn_burgers"])
def test_loss_and_metrics_against_finite_differences(name):
  problem = problems.build(name, num_interior=40, num_boundary=10, num_test=30, hidden=(8, 8),
                           boundary_weight=2.0, dtype="float64")
  assert problem.likelihood == "gaussian" and problem.minimum == 0.0
  params = jax.jit(problem.init_params)(jax.random.key(0))
  u = lambda z: np.asarray(jax.jit(problem.info["u_fn"])(params, jnp.asarray(z)))
  train = jax.tree.map(np.asarray, problem.data["train"])
  b = train["boundary"]
  on_edge = np.any((b == 0.0) | (b == 1.0), axis=1) if name == "pinn_poisson" else (
      (b[:, 1] == 0.0) | (np.abs(b[:, 0]) == 1.0))
  assert on_edge.all()
  np.testing.assert_allclose(train["g"], exact_numpy(name, b), atol=1e-12)
  loss, sample = jax.jit(problem.loss), jax.jit(problem.sample_batch, static_argnums=1)
  # The old formula mean r² + w·mean (u − g)², on the full batch and on sampled ones (8 interior
  # points and round(8 · 10/40) = 2 boundary points: the scale factors follow the batch's counts).
  for batch in (problem.sample_batch(jax.random.key(0), None), sample(jax.random.key(1), 8), sample(jax.random.key(2), 8)):
    inputs = jax.tree.map(np.asarray, batch["x"])
    residual, misfit = residuals_fd(name, u, inputs)
    expected = np.mean(residual**2) + 2.0 * np.mean(misfit**2)
    np.testing.assert_allclose(loss(params, batch), expected, rtol=1e-6)
    n, m = len(residual), len(misfit)
    np.testing.assert_array_equal(batch["y"], np.zeros((n + m, 1)))
    parts = jax.jit(problem.info["residuals_fn"])(params, batch["x"])
    np.testing.assert_allclose(parts["interior"], residual, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts["boundary"], misfit, rtol=1e-12, atol=1e-12)
    outputs = np.asarray(jax.jit(problem.model_fn)(params, batch["x"]))
    np.testing.assert_allclose(outputs[:, 0], np.concatenate([np.sqrt(2 * (n + m) / n) * parts["interior"],
                                                              np.sqrt(4 * (n + m) / m) * parts["boundary"]]),
                               rtol=1e-12)
  assert inputs["interior"].shape[0] == 8 and inputs["boundary"].shape[0] == 2
  test = jax.tree.map(np.asarray, problem.data["test"])
  metrics = jax.jit(problem.eval_metrics)(params)
  np.testing.assert_allclose(metrics["relative_l2_error"],
                             np.linalg.norm(u(test["z"]) - test["u"]) / np.linalg.norm(test["u"]), rtol=1e-10)
  residual, misfit = residuals_fd(name, u, train)
  np.testing.assert_allclose(metrics["loss"], np.mean(residual**2) + 2.0 * np.mean(misfit**2), rtol=1e-6)


def test_scale_residuals_by_hand():
  rng = np.random.default_rng(0)
  r, b = rng.normal(size=5), rng.normal(size=3)
  for w in (0.7, 0.0):
    o = np.asarray(pinn.scale_residuals({"interior": jnp.asarray(r), "boundary": jnp.asarray(b)}, w))
    assert o.shape == (8, 1)
    np.testing.assert_allclose(o[:, 0], np.concatenate([np.sqrt(16 / 5) * r, np.sqrt(16 * w / 3) * b]), rtol=1e-14)
    loss = problems.base.half_squared_error(jnp.asarray(o), {"y": jnp.zeros((8, 1))})
    np.testing.assert_allclose(loss, np.mean(r**2) + w * np.mean(b**2), rtol=1e-14)


@pytest.mark.parametrize("name", ["pinn_poisson", "pinn_burgers"])
def test_exact_solution_gives_zero_outputs_at_the_problems_points(name):
  problem = problems.build(name, num_interior=30, num_boundary=10, num_test=10, hidden=(2,), dtype="float64")
  train = problem.data["train"]
  if name == "pinn_poisson":
    residual = lambda z: pinn.poisson_residual(pinn.poisson_exact, z)
  else:
    residual = lambda z: pinn.burgers_residual(lambda y: pinn.burgers_exact(y, 0.05), z, 0.05)
  outputs = jax.jit(lambda t: pinn.scale_residuals(
      {"interior": jax.vmap(residual)(t["interior"]), "boundary": problem.info["exact_fn"](t["boundary"]) - t["g"]},
      1.0))(train)
  np.testing.assert_allclose(outputs, 0.0, atol=1e-10)


def tiny(name):
  """A 13-parameter PINN on 6 interior and 3 boundary points, its params and full batch."""
  problem = problems.build(name, hidden=(3,), num_interior=6, num_boundary=3, num_test=10, boundary_weight=1.5,
                           dtype="float64")
  params = problem.init_params(jax.random.key(1))
  return problem, params, problem.sample_batch(jax.random.key(0), None)


@pytest.mark.parametrize("name", ["pinn_poisson", "pinn_burgers"])
def test_true_fisher_is_the_ggn_which_is_the_residual_dicts(name):
  problem, params, batch = tiny(name)
  flat, unravel = ravel_pytree(params)
  model_fn = lambda p: problem.model_fn(p, batch["x"])
  ggn = np.asarray(dense(curvature.ggn_fn(model_fn, lambda o: problem.output_loss_fn(o, batch), params), params))
  # The old formulation: outputs {"interior": r, "boundary": u − g}, loss mean r² + w·mean b², whose
  # Hessian in the outputs is diag(2/n, 2w/m): GGN = (2/n) J_rᵀ J_r + (2w/m) J_bᵀ J_b.
  jac = jax.jit(jax.jacobian(lambda x: problem.info["residuals_fn"](unravel(x), batch["x"])))(flat)
  j_r, j_b = np.asarray(jac["interior"]), np.asarray(jac["boundary"])
  old = 2 / 6 * j_r.T @ j_r + 2 * 1.5 / 3 * j_b.T @ j_b
  np.testing.assert_allclose(ggn, old, rtol=1e-10, atol=1e-12 * np.abs(old).max())
  # Monte-Carlo true Fisher with y ~ N(o, I): F = (1/N) Σ_b c_b J_bᵀ J_b, c_b = mean_s ε_sb² (mean 1,
  # variance 2/S), so each entry's standard error is √(2/S)/N · √(Σ_b (J_bi J_bj)²).
  samples = 10000
  fisher = lambda fn: np.asarray(dense(curvature.fisher_fn(fn, params, jax.random.key(3), likelihood="gaussian",
                                                           num_samples=samples), params))
  rows = np.asarray(jax.jit(jax.jacobian(lambda x: model_fn(unravel(x))[:, 0]))(flat))
  # (+ a floor: entries that no row touches, e.g. the output bias in −Δu, are 0 in both.)
  stderr = np.sqrt(2 / samples) / 9 * np.sqrt(np.einsum("bi,bj->ij", rows**2, rows**2)) + 1e-12 * np.abs(ggn).max()
  z = np.abs(fisher(model_fn) - ggn) / stderr
  assert z.max() < 5.0, z.max()  # measured: 1.4 (Poisson), 1.1 (Burgers)
  # Control: the residuals unscaled (one output [r; u − g], unit variances) have a true Fisher that
  # is not this loss's GGN, by far more than the Monte-Carlo error.
  unscaled = lambda p: jnp.concatenate(list(problem.info["residuals_fn"](p, batch["x"]).values()))[:, None]
  assert (np.abs(fisher(unscaled) - ggn) / stderr).max() > 50.0  # measured: 129, 130


RUNS = """
problem: {name: pinn_poisson, hidden: [8], num_interior: 32, num_boundary: 8, num_test: 50}
train: {steps: 10, batch_size: full, eval_every: 10}
sweep:
  zip:
    optimizer: [{name: natural_gradient, learning_rate: 0.5}, {name: sophia_g, learning_rate: 0.2}]
seeds: [0]
"""


def test_optimizers_that_sample_from_the_model_run_on_a_pinn_from_a_config(tmp_path):
  # Without the problem's likelihood they would take their default, "categorical", and refuse the
  # PINN's [N, 1] outputs; K-FAC, whose Kronecker factors do not describe input-derivative
  # residuals, must refuse too, by name, rather than precondition with them.
  path, out = tmp_path / "pinn.yaml", str(tmp_path / "out")
  path.write_text(RUNS)
  assert cli.main(["run", str(path), "--out", out, "--quiet", "--no-compile-cache"]) == 0
  records = {r["config"]["optimizer"]["name"]: r for r in results.load_records(out)}
  assert sorted(records) == ["natural_gradient", "sophia_g"]
  for name, record in records.items():
    assert record["status"] == "ok" and record["config"]["optimizer"]["likelihood"] == "gaussian"
    first = results.load_metrics(out, record["id"])["train_loss"][0]
    # Measured from 107.8 in 10 steps: natural gradient 0.74, Sophia-G 26.2.
    assert record["final"]["loss"] < (0.05 if name == "natural_gradient" else 0.5) * first, (name, record["final"])
  with pytest.raises(ValueError, match="K-FAC cannot precondition layer 'layers/0/kernel'.*PINN"):
    cli.main(["run", str(path), "--out", str(tmp_path / "kfac"), "--quiet", "--no-compile-cache",
              "--set", "sweep.zip.optimizer=[{name: kfac, learning_rate: 0.1}]"])
