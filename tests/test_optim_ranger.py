"""Ranger against the papers' pseudocode (RAdam's rectified step, Lookahead's sync) in numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab_jax


def _problem(seed=0, dim=6):
  """f(x) = ½ xᵀ A x with an SPD A (eigenvalues 1..20), params split into two leaves."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  a = q @ np.diag(np.linspace(1.0, 20.0, dim)) @ q.T
  x0 = rng.normal(size=dim)
  return a, x0


def _ranger_numpy(a, x0, steps, lr, k, alpha, b1, b2, eps, wd, threshold=5.0):
  """Ranger step by step: RAdam (Liu et al., Algorithm 2) fast steps, Lookahead sync every k."""
  fast, slow = x0.copy(), x0.copy()
  m, v = np.zeros_like(x0), np.zeros_like(x0)
  rho_inf = 2.0 / (1.0 - b2) - 1.0
  trajectory, rectified = [], []
  for t in range(1, steps + 1):
    g = a @ fast
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    m_hat = m / (1.0 - b1**t)
    rho = rho_inf - 2.0 * t * b2**t / (1.0 - b2**t)
    if rho >= threshold:
      r = np.sqrt((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
      step = r * m_hat / (np.sqrt(v / (1.0 - b2**t)) + eps)
    else:
      step = m_hat
    rectified.append(rho >= threshold)
    fast = fast - lr * (step + wd * fast)
    if t % k == 0:
      slow = slow + alpha * (fast - slow)
      fast = slow.copy()
    trajectory.append(fast)
  return trajectory, rectified


@pytest.mark.parametrize(
    "hp",
    [
        dict(sync_period=4, slow_step_size=0.5, b1=0.95, b2=0.999, eps=1e-5, weight_decay=0.0),
        dict(sync_period=3, slow_step_size=0.7, b1=0.9, b2=0.99, eps=1e-3, weight_decay=0.05),
    ],
)
def test_matches_numpy_pseudocode(hp):
  a, x0 = _problem()
  steps, lr = 16, 0.02
  want, rectified = _ranger_numpy(a, x0, steps, lr, hp["sync_period"], hp["slow_step_size"],
                                  hp["b1"], hp["b2"], hp["eps"], hp["weight_decay"])
  assert any(rectified) and not all(rectified), "both RAdam branches must be exercised"
  assert steps // hp["sync_period"] >= 3

  tx = optlab_jax.ranger(lr, **hp)
  a_jnp = jnp.asarray(a)

  def obj_fn(p):
    x = jnp.concatenate([p["u"], p["w"]])
    return 0.5 * x @ a_jnp @ x

  params = {"u": jnp.asarray(x0[:2]), "w": jnp.asarray(x0[2:])}
  state, update = tx.init(params), jax.jit(tx.update)
  for t in range(steps):
    updates, state = update(jax.grad(obj_fn)(params), state, params)
    params = optax.apply_updates(params, updates)
    got = np.concatenate([params["u"], params["w"]])
    np.testing.assert_allclose(got, want[t], rtol=1e-10, atol=1e-14, err_msg=f"step {t + 1}")


def test_defaults_are_wrights():
  a, x0 = _problem(seed=1)
  want, _ = _ranger_numpy(a, x0, 14, 1e-3, k=6, alpha=0.5, b1=0.95, b2=0.999, eps=1e-5, wd=0.0)
  tx = optlab_jax.ranger(1e-3)
  params, state = jnp.asarray(x0), tx.init(jnp.asarray(x0))
  for t in range(14):
    updates, state = tx.update(jnp.asarray(a) @ params, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params, want[-1], rtol=1e-10)


@pytest.mark.parametrize("key, bad", [("sync_period", 0), ("slow_step_size", 0.0), ("b1", 1.0),
                                      ("b2", -0.1), ("eps", -1.0), ("weight_decay", -1.0)])
def test_bad_hyperparameters_raise(key, bad):
  with pytest.raises(ValueError, match=key):
    optlab_jax.ranger(1e-3, **{key: bad})
