"""Newton-CG against dense Hessians (jax.hessian, numpy), scipy, and hand-computed damping rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

from optlab_jax import optim
from tests import optim_problems as P


def _logistic_problem():
  """Strongly convex: mean logistic loss + ½·0.01‖w‖² on 200 fixed examples, 10 features + bias."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(200, 10)))
  w_true = rng.normal(size=10)
  y = jnp.asarray((rng.uniform(size=200) < 1.0 / (1.0 + np.exp(-np.asarray(x) @ w_true))).astype(np.float64))

  def obj_fn(p):
    z = x @ p["w"] + p["b"][0]
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.005 * (p["w"] @ p["w"])

  return obj_fn, {"w": jnp.zeros(10, jnp.float64), "b": jnp.zeros(1, jnp.float64)}


def _run(tx, obj_fn, params, steps):
  """Params and ‖∇f‖ before each of `steps` jitted updates (and after the last)."""
  state = tx.init(params)
  step = jax.jit(lambda s, p: tx.update(jax.grad(obj_fn)(p), s, p, obj_fn=obj_fn))
  trajectory = [params]
  for _ in range(steps):
    updates, state = step(state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
  return trajectory, state


def _grad_norm(obj_fn, params):
  return float(optax.tree.norm(jax.grad(obj_fn)(params)))


def test_logistic_regression_reaches_1e_10_quadratically():
  obj_fn, params = _logistic_problem()
  trajectory, _ = _run(optim.get("newton_cg")(1.0), obj_fn, params, 15)
  norms = np.array([_grad_norm(obj_fn, p) for p in trajectory])
  assert norms[-1] <= 1e-10 and np.min(norms) <= 1e-10
  first = int(np.argmax(norms <= 1e-10))
  assert first <= 15   # measured: 7 steps (‖g‖: 0.37, 0.22, 0.10, 3.6e-2, 6.4e-3, 2.7e-4, 4.7e-7, 1.4e-12)
  # Quadratic convergence: ‖g_{k+1}‖ ≤ C ‖g_k‖² once close (measured C ≈ 6.5), down to rounding.
  close = [k for k in range(first) if norms[k] <= 1e-2 and norms[k + 1] > 1e-14]
  assert len(close) >= 2
  ratios = norms[[k + 1 for k in close]] / norms[close] ** 2
  assert np.all(ratios <= 20.0), ratios
  # The minimiser agrees with scipy's (trust-exact, dense Hessian from jax.hessian).
  flat, unravel = ravel_pytree(params)
  f = lambda v: obj_fn(unravel(jnp.asarray(v)))
  ref = scipy.optimize.minimize(f, np.zeros(flat.size), jac=jax.grad(f), hess=jax.hessian(f),
                                method="trust-exact", options={"gtol": 1e-12})
  np.testing.assert_allclose(ravel_pytree(trajectory[-1])[0], ref.x, atol=1e-9)


def test_first_step_and_damping_update_match_dense_rule():
  obj_fn, params = _logistic_problem()
  mu = 0.3
  tx = optim.scale_by_newton_cg(damping=mu, max_cg_iters=200, cg_tol=1e-13)
  d, state = tx.update(jax.grad(obj_fn)(params), tx.init(params), params, obj_fn=obj_fn)
  flat, unravel = ravel_pytree(params)
  f = lambda v: obj_fn(unravel(v))
  g, h = np.asarray(jax.grad(f)(flat)), np.asarray(jax.hessian(f)(flat))
  lam = mu * np.linalg.norm(g)
  expected = np.linalg.solve(h + lam * np.eye(flat.size), g)
  np.testing.assert_allclose(ravel_pytree(d)[0], expected, rtol=1e-9, atol=1e-12)
  rho = (float(f(flat)) - float(f(flat - expected))) / (g @ expected - 0.5 * expected @ h @ expected)
  expected_mu = mu * 4.0 if rho < 0.25 else mu * 0.5 if rho > 0.75 else mu
  assert rho > 0.75   # a convex problem: the model is good and the damping halves
  np.testing.assert_allclose(state.damping, expected_mu, rtol=1e-12)


def test_rejects_an_uphill_step_and_raises_damping():
  # f(x) = √(1 + x²): from x = 2 the Newton step goes to −8, uphill; ρ < 0 rejects it.
  obj_fn = lambda p: jnp.sum(jnp.sqrt(1.0 + p["x"] ** 2))
  params = {"x": jnp.asarray([2.0], jnp.float64)}
  tx = optim.scale_by_newton_cg(damping=1e-6, cg_tol=1e-12)
  d, state = tx.update(jax.grad(obj_fn)(params), tx.init(params), params, obj_fn=obj_fn)
  np.testing.assert_array_equal(d["x"], [0.0])
  np.testing.assert_allclose(state.damping, 4e-6, rtol=1e-12)
  trajectory, _ = _run(optim.get("newton_cg")(1.0, damping=1e-6), obj_fn, params, 30)
  values = [float(obj_fn(p)) for p in trajectory]
  assert all(b <= a for a, b in zip(values, values[1:]))   # rejected steps keep f monotone
  assert abs(float(trajectory[-1]["x"][0])) < 1e-8


def test_moves_away_from_saddle():
  obj_fn = lambda p: p["xy"][0] ** 2 - p["xy"][1] ** 2
  trajectory, _ = _run(optim.get("newton_cg")(1.0), obj_fn, {"xy": jnp.asarray([0.5, 1e-3], jnp.float64)}, 6)
  ys = np.abs([float(p["xy"][1]) for p in trajectory])
  values = np.array([float(obj_fn(p)) for p in trajectory])
  assert np.all(np.diff(ys) > 0) and np.all(np.diff(values) < 0)
  assert ys[-1] > 10.0 and values[-1] < -100.0
  # Plain Newton, H⁻¹g = (x, y), would jump to the saddle (0, 0) in one step.
  assert ys[1] > ys[0]


def test_negative_curvature_at_the_first_cg_step_goes_to_the_trust_boundary():
  # At (0, y₀) the gradient (0, −2y₀) is a direction of curvature −2 + λ < 0, so CG stops at
  # once and steps to the boundary ‖d‖ = 1/μ along −g: y₁ = y₀ + 1/μ.
  obj_fn = lambda p: p["xy"][0] ** 2 - p["xy"][1] ** 2
  params = {"xy": jnp.asarray([0.0, 1e-3], jnp.float64)}
  tx = optim.get("newton_cg")(1.0, damping=0.5)
  updates, _ = tx.update(jax.grad(obj_fn)(params), tx.init(params), params, obj_fn=obj_fn)
  np.testing.assert_allclose(optax.apply_updates(params, updates)["xy"], [0.0, 1e-3 + 2.0], rtol=1e-12)


def test_ill_conditioned_quadratic_steps_are_the_dense_damped_newton_steps():
  # Oracle: x_{k+1} = x_k − (A + μ_k‖g_k‖ I)⁻¹ g_k by numpy's dense solve, μ_k the damping in the
  # state (the LM rule's choice); κ = 10⁴, where gradient descent at 1/L needs ~10⁵ steps.
  problem = P.quadratic(jnp.float64, condition=1e4)
  flat, unravel = ravel_pytree(problem.params)
  a = np.asarray(jax.hessian(lambda v: problem.obj_fn(unravel(v)))(flat))
  g0 = _grad_norm(problem.obj_fn, problem.params)
  tx = optim.scale_by_newton_cg(damping=1e-6, cg_tol=1e-12, max_cg_iters=100)
  params, state = problem.params, tx.init(problem.params)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=problem.obj_fn))
  for _ in range(3):
    g = np.asarray(ravel_pytree(jax.grad(problem.obj_fn)(params))[0])
    x = np.asarray(ravel_pytree(params)[0])
    lam = float(state.damping) * np.linalg.norm(g)
    expected = x - np.linalg.solve(a + lam * np.eye(x.size), g)
    d, state = update(unravel(jnp.asarray(g)), state, params)
    params = jax.tree.map(lambda p, u: p - u, params, d)
    np.testing.assert_allclose(np.asarray(ravel_pytree(params)[0]), expected, rtol=1e-7, atol=1e-10)
  assert _grad_norm(problem.obj_fn, params) <= 1e-8 * g0


def test_missing_obj_fn_names_keyword_and_lambda():
  problem = P.quadratic(jnp.float64)
  tx = optim.get("newton_cg")(1.0)
  with pytest.raises(ValueError, match=r"obj_fn.*lambda"):
    tx.update(problem.params, tx.init(problem.params), problem.params)


@pytest.mark.parametrize("bad", [dict(damping=0.0), dict(max_cg_iters=0), dict(cg_tol=2.0)])
def test_bad_hyperparameters_raise(bad):
  with pytest.raises(ValueError, match=next(iter(bad))):
    optim.get("newton_cg")(1.0, **bad)
