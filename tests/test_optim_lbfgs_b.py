"""L-BFGS-B against scipy.optimize.minimize(method="L-BFGS-B") and scipy.optimize.nnls; L-BFGS against optax."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

from optlab_jax import optim
from tests import optim_problems as P


def _run(tx, obj_fn, params, steps):
  """`steps` jitted updates with value/grad/value_fn as optax's L-BFGS takes them; all iterates."""

  def step(carry, _):
    p, state = carry
    value, grad = jax.value_and_grad(obj_fn)(p)
    updates, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=obj_fn)
    p = optax.apply_updates(p, updates)
    return (p, state), p

  (params, _), trajectory = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))((params, tx.init(params)))
  return params, trajectory


def _scipy(obj_fn, params, lower, upper):
  """scipy's L-BFGS-B run to tight tolerances on the flattened problem."""
  flat, unravel = ravel_pytree(params)
  f = jax.jit(jax.value_and_grad(lambda v: obj_fn(unravel(v))))
  fun = lambda v: tuple(np.asarray(t, np.float64) for t in f(jnp.asarray(v)))
  res = scipy.optimize.minimize(fun, np.asarray(flat), jac=True, method="L-BFGS-B",
                                bounds=list(zip(lower, upper)),
                                options={"ftol": 0.0, "gtol": 1e-13, "maxiter": 20000, "maxcor": 10})
  return res.x


def _bounded_quadratic():
  """½xᵀAx − bᵀx (κ = 100, 10-d) on [−0.5, 0.5]¹⁰, b large enough that the box binds some coordinates, not all."""
  problem = P.quadratic(jnp.float64, condition=100.0)
  b = jnp.asarray(np.random.default_rng(1).normal(size=10) * 5.0)
  obj_fn = lambda p: problem.obj_fn(p) - b @ P.join(p)
  return obj_fn, problem.params, -0.5, 0.5, np.full(10, -0.5), np.full(10, 0.5)


def _bounded_rosenbrock():
  """Chained Rosenbrock in 6-d, x ≥ −2 and a per-leaf upper tree that cuts off the minimum (1, …, 1)."""
  def obj_fn(p):
    x = jnp.concatenate([p["u"], p["v"]])
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

  params = {"u": jnp.asarray([-1.2, 1.0, -1.2], jnp.float64), "v": jnp.asarray([1.0, -1.2, 1.0], jnp.float64)}
  upper = {"u": jnp.asarray([2.0, 0.7, 2.0]), "v": jnp.asarray([2.0, 2.0, 0.5])}
  return obj_fn, params, -2.0, upper, np.full(6, -2.0), np.array([2.0, 0.7, 2.0, 2.0, 2.0, 0.5])


def _nonnegative_least_squares():
  """½‖M x − c‖² with x ≥ 0 (no upper bound), 20 × 8."""
  rng = np.random.default_rng(2)
  m, c = rng.normal(size=(20, 8)), rng.normal(size=20)
  obj_fn = lambda p: 0.5 * jnp.sum((jnp.asarray(m) @ p["x"] - jnp.asarray(c)) ** 2)
  return obj_fn, {"x": jnp.ones(8, jnp.float64)}, 0.0, None, np.zeros(8), np.full(8, np.inf)


PROBLEMS = {"quadratic": _bounded_quadratic, "rosenbrock": _bounded_rosenbrock, "nnls": _nonnegative_least_squares}


@pytest.mark.parametrize("name", PROBLEMS)
def test_matches_scipy_lbfgsb_with_active_bounds(name):
  obj_fn, params, lower, upper, lo, hi = PROBLEMS[name]()
  tx = optim.get("lbfgs_b")(1.0, lower=lower, upper=upper)
  final, trajectory = _run(tx, obj_fn, params, 100)
  x = np.asarray(ravel_pytree(final)[0])
  expected = _scipy(obj_fn, params, lo, hi)
  np.testing.assert_allclose(x, expected, atol=1e-6)
  active = (expected <= lo + 1e-9) | (expected >= hi - 1e-9)
  assert active.sum() >= 1 and (~active).sum() >= 1
  np.testing.assert_array_equal(x[active], np.where(expected <= lo + 1e-9, lo, hi)[active])   # exactly on the bound
  flat_trajectory = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(trajectory))
  assert np.all(flat_trajectory >= lo) and np.all(flat_trajectory <= hi)   # feasible at every step
  values = np.asarray(jax.vmap(obj_fn)(trajectory))
  assert np.all(np.diff(values) <= 1e-12 * np.abs(values[:-1]))          # monotone (Armijo)


def test_nnls_matches_scipy_nnls():
  obj_fn, params, lower, upper, _, _ = _nonnegative_least_squares()
  rng = np.random.default_rng(2)
  m, c = rng.normal(size=(20, 8)), rng.normal(size=20)
  final, _ = _run(optim.get("lbfgs_b")(1.0, lower=lower, upper=upper), obj_fn, params, 100)
  np.testing.assert_allclose(final["x"], scipy.optimize.nnls(m, c)[0], atol=1e-6)


def test_infeasible_start_is_projected_and_stays_feasible():
  obj_fn, params, lower, upper, lo, hi = _bounded_quadratic()
  start = jax.tree.map(lambda x: 3.0 * jnp.sign(x), params)
  _, trajectory = _run(optim.get("lbfgs_b")(1.0, lower=lower, upper=upper), obj_fn, start, 5)
  flat = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(trajectory))
  assert np.all(flat >= lo) and np.all(flat <= hi)


def test_unbounded_first_step_is_a_unit_gradient_step():
  # No pair yet: d = g/‖g‖ (γ = 1/‖g‖), and the quadratic's value drops along it, so t = 1.
  problem = P.quadratic(jnp.float64)
  _, trajectory = _run(optim.get("lbfgs_b")(1.0), problem.obj_fn, problem.params, 1)
  g = jax.grad(problem.obj_fn)(problem.params)
  expected = optax.tree.sub(problem.params, optax.tree.scale(1.0 / optax.tree.norm(g), g))
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], trajectory), expected, rtol=1e-12)


def _two_loop(g, pairs):
  """H_k g by the L-BFGS two-loop recursion, H_0 = γI with γ = sᵀy / yᵀy of the newest pair
  (Nocedal & Wright, 2006, Algorithm 7.4 and eq. 7.20)."""
  q, alphas = g.copy(), []
  for s, y in reversed(pairs):
    alphas.append((s @ q) / (y @ s))
    q = q - alphas[-1] * y
  s, y = pairs[-1]
  r = (s @ y) / (y @ y) * q
  for (s, y), a in zip(pairs, reversed(alphas)):
    r = r + s * (a - (y @ r) / (y @ s))
  return r


def test_lbfgs_steps_along_the_two_loop_direction_with_a_wolfe_step():
  # Oracle: a numpy transcription of L-BFGS (memory 10) on our own iterates' (s, y) pairs; each
  # step must be a positive multiple of −H_k g_k that satisfies the strong Wolfe conditions.
  problem = P.rosenbrock(jnp.float64)
  final, trajectory = _run(optim.get("lbfgs")(1.0), problem.obj_fn, problem.params, 60)
  assert float(problem.obj_fn(final)) < 1e-10
  flat = lambda p: np.asarray(ravel_pytree(p)[0])
  xs = [flat(problem.params)] + [flat(jax.tree.map(lambda x: x[k], trajectory)) for k in range(60)]
  f = jax.jit(lambda v: problem.obj_fn({"x": v}))
  grad = jax.jit(jax.grad(lambda v: problem.obj_fn({"x": v})))
  gs = [np.asarray(grad(x)) for x in xs]
  checked = 0
  for k in range(1, 60):
    if np.linalg.norm(gs[k]) < 1e-5:
      break
    pairs = [(xs[i + 1] - xs[i], gs[i + 1] - gs[i]) for i in range(max(0, k - 10), k)]
    d, step = -_two_loop(gs[k], pairs), xs[k + 1] - xs[k]
    np.testing.assert_allclose(step @ d / (np.linalg.norm(step) * np.linalg.norm(d)), 1.0, atol=1e-9)
    assert float(f(xs[k + 1])) <= float(f(xs[k])) + 1e-4 * (gs[k] @ step)          # sufficient decrease
    assert abs(gs[k + 1] @ step) <= 0.9 * abs(gs[k] @ step) + 1e-12                # strong curvature
    checked += 1
  assert checked >= 10


@pytest.mark.parametrize("missing", ["value", "grad", "value_fn"])
def test_missing_extra_arg_names_it(missing):
  problem = P.quadratic(jnp.float64)
  tx = optim.get("lbfgs_b")(1.0, lower=-1.0, upper=1.0)
  extra = P.extra_args(problem, problem.params)
  del extra[missing]
  with pytest.raises(ValueError, match=missing):
    tx.update(extra["grad"] if missing != "grad" else problem.params, tx.init(problem.params), problem.params, **extra)


@pytest.mark.parametrize("bad", [dict(memory_size=0), dict(decrease_factor=1.0), dict(slope_rtol=-0.1),
                                 dict(max_backtracking_steps=0)])
def test_bad_hyperparameters_raise(bad):
  with pytest.raises(ValueError, match=next(iter(bad))):
    optim.get("lbfgs_b")(1.0, **bad)
