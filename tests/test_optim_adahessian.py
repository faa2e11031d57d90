"""AdaHessian against the paper's update rule computed step by step in numpy.

On a separable function the Hessian is diagonal, so the Hutchinson estimate z ⊙ H z equals
diag(H) exactly for every Rademacher probe and the trajectory is deterministic.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab_jax.optim.adahessian import adahessian, spatial_average

SHAPES = {"b": (7,), "w": (3, 5), "k": (2, 2, 3, 4)}   # a vector, a matrix, an HWIO conv kernel


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  coeffs = {n: rng.uniform(0.5, 3.0, s) for n, s in SHAPES.items()}
  params = {n: jnp.asarray(rng.normal(size=s), jnp.float64) for n, s in SHAPES.items()}

  def obj_fn(p):
    # Σ c (x⁴/12 + x²/2): gradient c (x³/3 + x), Hessian diagonal c (x² + 1) > 0.
    return sum(jnp.sum(coeffs[n] * (p[n] ** 4 / 12 + p[n] ** 2 / 2)) for n in SHAPES)

  return params, coeffs, obj_fn


def _np_spatial(d, block_size, average_conv_kernel):
  """The paper's D^(s), written with explicit loops over blocks."""
  d = np.abs(d)
  if d.ndim == 4:
    return np.broadcast_to(d.mean(axis=(0, 1), keepdims=True), d.shape) if average_conv_kernel else d
  out = d.copy()
  for start in range(0, d.shape[-1], block_size):
    block = slice(start, start + block_size)
    out[..., block] = d[..., block].mean(axis=-1, keepdims=True)
  return out


def _np_reference(params, coeffs, grads_scale, steps, lr, b1, b2, eps, k, block_size, conv, wd, interval):
  """Algorithm 1 of Yao et al. (Adam moments on g and on D^(s)², bias corrections, power k)."""
  x = {n: np.array(v) for n, v in params.items()}
  m = {n: np.zeros(s) for n, s in SHAPES.items()}
  v = {n: np.zeros(s) for n, s in SHAPES.items()}
  trajectory, estimates = [], 0
  for t in range(1, steps + 1):
    refresh = (t - 1) % interval == 0
    estimates += refresh
    for n in SHAPES:
      g = grads_scale * coeffs[n] * (x[n] ** 3 / 3 + x[n])
      if refresh:
        d = _np_spatial(coeffs[n] * (x[n] ** 2 + 1), block_size, conv)
        v[n] = b2 * v[n] + (1 - b2) * d * d
      m[n] = b1 * m[n] + (1 - b1) * g
      m_hat, v_hat = m[n] / (1 - b1 ** t), v[n] / (1 - b2 ** estimates)
      x[n] = x[n] - lr * (m_hat / (np.sqrt(v_hat) ** k + eps) + wd * x[n])
    trajectory.append({n: x[n].copy() for n in SHAPES})
  return trajectory


def _run(tx, params, obj_fn, steps, grads_scale=1.0):
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=obj_fn))
  state, out, states = tx.init(params), [], []
  for _ in range(steps):
    grads = jax.tree.map(lambda g: grads_scale * g, jax.grad(obj_fn)(params))
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params), states.append(state)
  return out, states


@pytest.mark.parametrize("hessian_power", [1.0, 0.5])
@pytest.mark.parametrize("block_size, average_conv_kernel", [(1, False), (3, True)])
def test_trajectory_equals_paper_rule(hessian_power, block_size, average_conv_kernel):
  params, coeffs, obj_fn = _problem()
  hp = dict(lr=0.1, b1=0.9, b2=0.99, eps=1e-4, k=hessian_power, wd=0.01)
  tx = adahessian(hp["lr"], b1=hp["b1"], b2=hp["b2"], eps=hp["eps"], hessian_power=hessian_power,
                    weight_decay=hp["wd"], block_size=block_size, average_conv_kernel=average_conv_kernel)
  got, _ = _run(tx, params, obj_fn, steps=6)
  want = _np_reference(params, coeffs, 1.0, 6, block_size=block_size, conv=average_conv_kernel,
                       interval=1, **hp)
  for g, w in zip(got, want):
    chex.assert_trees_all_close(g, w, rtol=1e-12, atol=1e-14)


def test_update_interval_reuses_estimate_and_works_injected():
  params, coeffs, obj_fn = _problem(seed=1)
  hp = dict(lr=0.05, b1=0.9, b2=0.99, eps=1e-4, k=1.0, wd=0.0)
  want = _np_reference(params, coeffs, 1.0, 7, block_size=1, conv=True, interval=3, **hp)
  tx = adahessian(0.05, b2=0.99, update_interval=3)
  got, states = _run(tx, params, obj_fn, steps=7)
  for g, w in zip(got, want):
    chex.assert_trees_all_close(g, w, rtol=1e-12, atol=1e-14)
  # The second-moment state changes at steps 1, 4, 7 only, and the key with it.
  nus, keys = [s[0].nu for s in states], [s[0].key for s in states]
  for t in (1, 2, 4, 5):
    chex.assert_trees_all_equal(nus[t], nus[t - 1])
    chex.assert_trees_all_equal(keys[t], keys[t - 1])
  assert not np.array_equal(nus[3]["b"], nus[2]["b"])
  injected = optax.inject_hyperparams(adahessian, static_args="block_size")
  injected = injected(0.05, b2=0.99, update_interval=3)
  got_i, _ = _run(injected, params, obj_fn, steps=7)
  chex.assert_trees_all_close(got_i[-1], want[-1], rtol=1e-12, atol=1e-14)


def test_first_moment_uses_incoming_updates_not_jvp_gradient():
  # Inside a chain the incoming updates may be clipped: AdaHessian must follow them.
  params, coeffs, obj_fn = _problem(seed=2)
  hp = dict(lr=0.1, b1=0.9, b2=0.999, eps=1e-4, k=1.0, wd=0.0)
  got, _ = _run(adahessian(0.1), params, obj_fn, steps=5, grads_scale=0.3)
  want = _np_reference(params, coeffs, 0.3, 5, block_size=1, conv=True, interval=1, **hp)
  for g, w in zip(got, want):
    chex.assert_trees_all_close(g, w, rtol=1e-12, atol=1e-14)


def test_spatial_average_short_last_block():
  d = jnp.asarray([[1.0, -3.0, 2.0, 6.0, -5.0]], jnp.float64)
  np.testing.assert_allclose(spatial_average(d, block_size=2), [[2.0, 2.0, 4.0, 4.0, 5.0]])


def test_missing_obj_fn_and_bad_hyperparameters_raise():
  params, _, obj_fn = _problem()
  tx = adahessian(0.1)
  with pytest.raises(ValueError, match=r"obj_fn.*obj_fn=lambda p"):
    tx.update(jax.grad(obj_fn)(params), tx.init(params), params)
  with pytest.raises(ValueError, match="hessian_power"):
    adahessian(0.1, hessian_power=1.5)
  with pytest.raises(ValueError, match="block_size"):
    adahessian(0.1, block_size=0)
