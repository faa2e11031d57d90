"""PSGD-Kron against a numpy transcription of the reference's update (Li's psgd_torch Kron, as
ported to JAX by E. Walters), the fitted P = QᵀQ against H⁻¹ on a Kronecker-structured quadratic,
and bad input.

The transcription writes each leaf's preconditioner as explicit matrices (Q₁ G Q₂ᵀ, Q₁⁻ᵀ V Q₂⁻¹,
Q₁ᵀQ₁ G Q₂ᵀQ₂), not the axis-by-axis contractions of the module, so a swapped axis, a missing
transpose or a wrong inverse shows. Probes and fit decisions are drawn from the documented key
schedule of the state's key.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import optim

# The package re-exports the alias under the module's name, so the module is taken from sys.modules.
kron_module = importlib.import_module("optlab_jax.optim.psgd_kron")

LR, B1, PLR, WD = 0.05, 0.8, 0.2, 0.01


def small_model():
  """Least squares with a matrix, a vector and a scalar leaf (triangular, diagonal, scalar factors)."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 3))
  params = {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3)), "s": jnp.asarray(0.3)}
  obj_fn = lambda p: 0.5 * jnp.mean(jnp.sum((x @ p["w"] + p["b"][None] * p["s"] - y) ** 2, axis=-1))
  return params, obj_fn


def draws(seed, steps, params, prob):
  """Per step (fit?, probes) from the state's key: key, k_prob, k_probe = split(key, 3); one
  normal probe per leaf (tree-flatten order) from split(k_probe, #leaves); fit iff U(k_prob) < prob."""
  key, leaves, out = jax.random.PRNGKey(seed), jax.tree.leaves(params), []
  treedef = jax.tree.structure(params)
  for _ in range(steps):
    key, k_prob, k_probe = jax.random.split(key, 3)
    keys = jax.random.split(k_probe, len(leaves))
    probes = treedef.unflatten([np.asarray(jax.random.normal(k, x.shape, jnp.float64)) for k, x in zip(keys, leaves)])
    out.append((prob >= 1 or float(jax.random.uniform(k_prob)) < prob, probes))
  return out


def np_norm_lower_bound(s):
  """The reference's bound: S/max|S|, x = (largest column)ᵀ S, max|S| · ‖(x/‖x‖) Sᵀ‖."""
  m = np.max(np.abs(s))
  if m == 0:
    return 0.0
  a = s / m
  x = a[:, np.argmax(np.sum(a * a, axis=0))] @ a
  return m * np.linalg.norm((x / np.linalg.norm(x)) @ a.T)


def np_fit(qs, h, v):
  """One fit of a leaf's factors (matrix form) on the pair (v, h); balanced if two factors."""
  if len(qs) == 2:
    q1, q2 = qs
    a = q1 @ h @ q2.T
    b = np.linalg.inv(q1).T @ v @ np.linalg.inv(q2)
    new = []
    for q, t1, t2 in ((q1, a @ a.T, b @ b.T), (q2, a.T @ a, b.T @ b)):
      new.append(q - PLR / max(np_norm_lower_bound(t1 + t2), 1e-30) * np.triu(t1 - t2) @ q)
    norms = [np.max(np.abs(q)) for q in new]
    g = np.sqrt(norms[0] * norms[1])
    return [new[0] * g / norms[0], new[1] * g / norms[1]]
  (q,) = qs
  a, b = q * h, v / q
  return [q - PLR / max(np.max(np.abs(a * a + b * b)), 1e-30) * (a * a - b * b) * q]


def np_precondition(qs, g):
  if len(qs) == 2:
    return qs[0].T @ qs[0] @ g @ qs[1].T @ qs[1]
  return qs[0] ** 2 * g


def np_psgd_kron(params, obj_fn, steps, prob, newton):
  """The reference's step, with weight decay and lr after it, for `steps` full-batch steps."""
  p = {k: np.asarray(v, np.float64).reshape(np.shape(v) or (1,)) for k, v in params.items()}
  shape = {k: np.shape(v) for k, v in params.items()}
  qs = {"w": [np.eye(4), np.eye(3)], "b": [np.ones(3)], "s": [np.ones(1)]}
  mu = {k: np.zeros_like(v) for k, v in p.items()}
  unravel = ravel_pytree(params)[1]
  grad_fn, hess_fn = jax.jit(jax.grad(obj_fn)), jax.jit(jax.hessian(lambda f: obj_fn(unravel(f))))
  out = []
  for fit, probes in draws(0, steps, params, prob):
    jp = {k: jnp.asarray(v.reshape(shape[k])) for k, v in p.items()}
    g = {k: np.asarray(v).reshape(p[k].shape) for k, v in grad_fn(jp).items()}
    mu = {k: B1 * mu[k] + (1 - B1) * g[k] for k in p}
    v = {k: probes[k].reshape(p[k].shape) for k in p}
    if newton:  # H v from the dense Hessian at the current point
      hess = np.asarray(hess_fn(ravel_pytree(jp)[0]))
      hv = unravel(hess @ ravel_pytree({k: jnp.asarray(v[k].reshape(shape[k])) for k in p})[0])
      h = {k: np.asarray(hv[k]).reshape(p[k].shape) for k in p}
    else:
      h = mu
    if fit:
      qs = {k: np_fit(qs[k], h[k], v[k]) for k in p}
    d = {k: np_precondition(qs[k], mu[k]) for k in p}
    n = sum(x.size for x in d.values())
    norm = np.sqrt(sum(np.sum(x * x) for x in d.values()))
    d = {k: np.clip(x * np.sqrt(n) / max(np.sqrt(n), norm), -1, 1) for k, x in d.items()}
    p = {k: p[k] - LR * (d[k] + WD * p[k]) for k in p}
    out.append(np.concatenate([p[k].ravel() for k in sorted(p)]))
  return np.stack(out), qs


def run(tx, params, obj_fn, steps):
  state, out = tx.init(params), []
  step = jax.jit(lambda p, s: tx.update(jax.grad(obj_fn)(p), s, p, obj_fn=obj_fn))
  for _ in range(steps):
    u, state = step(params, state)
    params = optax.apply_updates(params, u)
    out.append(np.asarray(ravel_pytree(params)[0]))
  return np.stack(out), state


@pytest.mark.parametrize("preconditioner,prob", [("whitening", 1.0), ("whitening", 0.5), ("newton", 1.0)])
def test_matches_numpy_transcription_of_the_reference(preconditioner, prob):
  params, obj_fn = small_model()
  tx = optim.psgd_kron(LR, b1=B1, weight_decay=WD, preconditioner_lr=PLR, update_probability=prob,
                       preconditioner=preconditioner)
  got, state = run(tx, params, obj_fn, 6)
  want, qs = np_psgd_kron(params, obj_fn, 6, prob, preconditioner == "newton")
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
  for k in ("w", "b"):
    for mine, theirs in zip(_leaf_factors(state, params, k), qs[k]):
      np.testing.assert_allclose(np.asarray(mine), theirs, rtol=1e-10, atol=1e-12)
  assert np.abs(want[-1] - want[0]).max() > 1e-3
  if prob < 1:  # some steps fitted, some did not: both branches were exercised
    fits = [f for f, _ in draws(0, 6, params, prob)]
    assert any(fits) and not all(fits)


def _leaf_factors(state, float_params, key):
  """The factors of `float_params[key]`, unpacked from the state."""
  (inner,) = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kron_module.ScaleByPsgdKronState))
              if isinstance(s, kron_module.ScaleByPsgdKronState)]
  return kron_module.unpack_factors(inner.qs[key], float_params[key].shape)


def test_newton_fit_approaches_the_inverse_kronecker_hessian():
  """f(W) = ½ ⟨W, A W B⟩ has H = A ⊗ B (row-major vec): the fitted QᵀQ must approach A⁻¹ ⊗ B⁻¹."""
  rng = np.random.default_rng(1)
  def spd(n, cond):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q @ np.diag(np.logspace(0, np.log10(cond), n)) @ q.T
  a, b = spd(4, 10.0), spd(3, 5.0)
  obj_fn = lambda p: 0.5 * jnp.sum(p["w"] * (a @ p["w"] @ b))
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)))}
  tx = kron_module.scale_by_psgd_kron(preconditioner="newton", update_probability=1.0, preconditioner_lr=0.1)
  step = jax.jit(lambda s: tx.update(jax.grad(obj_fn)(params), s, params, obj_fn=obj_fn)[1])
  state = tx.init(params)
  want = np.kron(np.linalg.inv(a), np.linalg.inv(b))
  error = lambda s: np.linalg.norm(_dense_p(s) - want) / np.linalg.norm(want)
  start = error(state)
  for _ in range(1500):
    state = step(state)
  assert error(state) < 0.1 < 0.5 * start, (start, error(state))


def _dense_p(state):
  q1, q2 = (np.asarray(q) for q in kron_module.unpack_factors(state.qs["w"], (4, 3)))
  return np.kron(q1.T @ q1, q2.T @ q2)


def test_non_finite_gradient_leaves_factors_finite_and_unchanged():
  params, obj_fn = small_model()
  tx = kron_module.scale_by_psgd_kron(update_probability=1.0)
  update = jax.jit(lambda g, s: tx.update(g, s, params)[1])
  g = jax.grad(obj_fn)(params)
  state = update(g, tx.init(params))
  after = update({**g, "w": g["w"].at[0, 0].set(jnp.nan)}, state)
  for k in ("w",):
    for q0, q1 in zip(_leaf_factors(state, params, k), _leaf_factors(after, params, k)):
      assert np.all(np.isfinite(np.asarray(q1)))
      np.testing.assert_array_equal(q1, q0)
  # The other leaves' fits are independent of the bad one and go on.
  assert not np.array_equal(_leaf_factors(after, params, "b")[0], _leaf_factors(state, params, "b")[0])


def test_zero_size_and_integer_leaves_left_alone():
  params, obj_fn = small_model()
  tree = {**params, "empty": jnp.zeros((0, 3)), "step": jnp.arange(3, dtype=jnp.int32)}
  grads = {**jax.grad(obj_fn)(params), "empty": jnp.zeros((0, 3)), "step": jnp.zeros(3, jnp.int32)}
  tx = optim.psgd_kron(0.1, update_probability=1.0)
  updates, state = jax.jit(tx.update)(grads, tx.init(tree), tree)
  floats = {k: v for k, v in tree.items() if k != "step"}
  assert updates["empty"].shape == (0, 3) and _leaf_factors(state, floats, "empty") == ()
  np.testing.assert_array_equal(optax.apply_updates(tree, updates)["step"], np.arange(3))
  assert all(np.all(np.isfinite(np.asarray(u))) for u in jax.tree.leaves(updates))
  # Without fits (P = I) the float leaves' step is the one without the extra leaves.
  tx, ref = optim.psgd_kron(0.1, update_probability=0.0), optim.psgd_kron(0.1, update_probability=0.0)
  updates, _ = jax.jit(tx.update)(grads, tx.init(tree), tree)
  want, _ = jax.jit(ref.update)(jax.grad(obj_fn)(params), ref.init(params), params)
  for k in params:
    np.testing.assert_allclose(updates[k], want[k], rtol=1e-12)


def test_update_probability_schedule_is_the_reference_formula():
  sched = kron_module.update_probability_schedule()
  for n in (0, 1, 200, 201, 1000, 5000):
    want = min(max(np.exp(-0.001 * (n - 200)), 0.03), 1.0)
    np.testing.assert_allclose(float(sched(jnp.asarray(n))), want, rtol=1e-6)


def test_factor_kinds_follow_the_reference_rules():
  kinds = kron_module.factor_is_triangular
  assert kinds((784, 512)) == (True, True)
  assert kinds((10,)) == (False,) and kinds(()) == (False,)
  assert kinds((1, 5)) == (False, True)
  assert kinds((200, 50), max_size=100) == (False, True)
  assert kinds((200, 50), max_skew=2.0) == (False, True)
  assert kinds((10,), min_ndim=1) == (True,)


@pytest.mark.parametrize("kwargs,name", [
    (dict(b1=1.5), "b1"), (dict(preconditioner_lr=0.0), "preconditioner_lr"), (dict(init_scale=-1.0), "init_scale"),
    (dict(update_probability=1.5), "update_probability"), (dict(prob_min=-0.1), "prob_min"),
    (dict(prob_max=2.0), "prob_max"), (dict(prob_decay=-1.0), "prob_decay"),
    (dict(max_size_triangular=0), "max_size_triangular"), (dict(min_ndim_triangular=0), "min_ndim_triangular"),
    (dict(max_skew_triangular=-1.0), "max_skew_triangular"), (dict(preconditioner="newtn"), "preconditioner"),
    (dict(weight_decay=-1.0), "weight_decay"),
])
def test_bad_hyperparameters_raise_naming_them(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optim.psgd_kron(0.1, **kwargs)


def test_newton_without_obj_fn_asks_for_it():
  params, obj_fn = small_model()
  tx = optim.psgd_kron(0.1, preconditioner="newton")
  with pytest.raises(ValueError, match="obj_fn"):
    tx.update(jax.grad(obj_fn)(params), tx.init(params), params)
