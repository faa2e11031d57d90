"""Sophia-H against optax.contrib.sophia (exact curvature diagonal), Sophia-G against numpy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature
from optlab_jax.optim.sophia import gnb_diag, sophia_g, sophia_h


def _nonseparable_problem():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(10, 10))
  a = jnp.asarray(a @ a.T / 10 + np.eye(10), jnp.float64)
  params = {"a": jnp.asarray(rng.normal(size=4), jnp.float64),
            "b": {"c": jnp.asarray(rng.normal(size=6), jnp.float64)}}
  _, unravel = ravel_pytree(params)

  def obj_fn(p):
    x = ravel_pytree(p)[0]
    return 0.5 * x @ a @ x + 0.25 * jnp.sum(x ** 4) - jnp.sum(x)

  return params, obj_fn, unravel


def _separable_problem():
  """f(x) = Σ cᵢ xᵢ⁴/4 + ½ Σ dᵢ xᵢ² − Σ xᵢ: diagonal Hessian, so z ⊙ Hz = diag(H) for every
  Rademacher z and Hutchinson's estimate is exact."""
  rng = np.random.default_rng(1)
  c, d = jnp.asarray(rng.uniform(0.5, 2.0, 10)), jnp.asarray(rng.uniform(0.5, 5.0, 10))
  params = {"a": jnp.asarray(rng.normal(size=4), jnp.float64),
            "b": {"c": jnp.asarray(rng.normal(size=6), jnp.float64)}}
  _, unravel = ravel_pytree(params)

  def obj_fn(p):
    x = ravel_pytree(p)[0]
    return jnp.sum(c * x ** 4) / 4 + 0.5 * jnp.sum(d * x ** 2) - jnp.sum(x)

  return params, obj_fn, unravel


def _exact_diagonal(unravel):
  """optax's `hessian_diagonal_fn` slot filled with diag(jax.hessian): no probes, none of our code."""
  def update_fn(updates, state, params=None, obj_fn=None, **extra_args):
    flat_hessian = jax.hessian(lambda x: obj_fn(unravel(x)))(ravel_pytree(params)[0])
    return unravel(jnp.diag(flat_hessian)), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def _trajectory(tx, params, obj_fn, steps):
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=obj_fn))
  state, out = tx.init(params), []
  for _ in range(steps):
    updates, state = update(jax.grad(obj_fn)(params), state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


_HP = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-2, gamma=0.05, clip_threshold=0.5, update_interval=3)


def test_sophia_h_equals_optax_contrib_sophia_where_hutchinson_is_exact():
  params, obj_fn, unravel = _separable_problem()
  ours = _trajectory(sophia_h(0.05, seed=7, **_HP), params, obj_fn, steps=12)
  theirs = _trajectory(optax.contrib.sophia(0.05, hessian_diagonal_fn=_exact_diagonal(unravel), **_HP),
                       params, obj_fn, steps=12)
  for o, t in zip(ours, theirs):
    chex.assert_trees_all_close(o, t, rtol=1e-10, atol=1e-12)


def test_sophia_h_probes_come_from_its_seed():
  params, obj_fn, _ = _nonseparable_problem()
  ours = _trajectory(sophia_h(0.05, seed=7, **_HP), params, obj_fn, steps=12)
  again = _trajectory(sophia_h(0.05, seed=7, **_HP), params, obj_fn, steps=12)
  other = _trajectory(sophia_h(0.05, seed=8, **_HP), params, obj_fn, steps=12)
  chex.assert_trees_all_equal(again[-1], ours[-1])
  assert not np.allclose(ravel_pytree(other[-1])[0], ravel_pytree(ours[-1])[0], rtol=1e-6)


# A tiny softmax model: 6 examples, 3 features, 4 classes.
_RNG = np.random.default_rng(3)
_X = _RNG.normal(size=(6, 3))
_Y = np.array([0, 1, 2, 3, 1, 0])            # data labels (the gradient)
_Y_HAT = np.array([2, 2, 0, 1, 3, 3])        # the "sampled" labels (the curvature)
_PARAMS = {"w": jnp.asarray(_RNG.normal(size=(3, 4)) * 0.5, jnp.float64), "b": jnp.zeros(4, jnp.float64)}


def _model_fn(p):
  return jnp.asarray(_X) @ p["w"] + p["b"][None, :]


def _np_ce_grad(w, b, labels):
  logits = _X @ w + b
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  residual = (prob - np.eye(4)[labels]) / len(labels)       # ∂ mean CE / ∂ logits
  return {"w": _X.T @ residual, "b": residual.sum(0)}


def test_sophia_g_equals_hand_computation_with_fixed_sampled_labels(monkeypatch):
  monkeypatch.setattr(curvature, "sample_targets", lambda key, outputs, likelihood: jnp.asarray(_Y_HAT))
  lr, b1, b2, eps, gamma, clip, wd, k = 0.1, 0.9, 0.9, 1e-8, 0.5, 1.0, 0.01, 2
  tx = sophia_g(lr, b1=b1, b2=b2, eps=eps, gamma=gamma, clip_threshold=clip, weight_decay=wd,
                update_interval=k)
  obj_fn = lambda p: -jnp.mean(jax.nn.log_softmax(_model_fn(p))[jnp.arange(6), _Y])
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, model_fn=_model_fn))
  params, state = _PARAMS, tx.init(_PARAMS)
  x = {n: np.array(v) for n, v in _PARAMS.items()}
  m = {n: np.zeros_like(v) for n, v in x.items()}
  h = {n: np.zeros_like(v) for n, v in x.items()}
  clipped = []
  for t in range(1, 6):
    updates, state = update(jax.grad(obj_fn)(params), state, params)
    params = optax.apply_updates(params, updates)
    g, g_hat = _np_ce_grad(x["w"], x["b"], _Y), _np_ce_grad(x["w"], x["b"], _Y_HAT)
    for n in x:
      m[n] = b1 * m[n] + (1 - b1) * g[n]
      ratio = m[n] / (1 - b1 ** t) / np.maximum(gamma * h[n], eps)
      clipped.append(np.mean(np.abs(ratio) > clip))
      if (t - 1) % k == 0:                                   # estimate after the step's ratio
        h[n] = b2 * h[n] + (1 - b2) * 6 * g_hat[n] ** 2
      x[n] = x[n] - lr * (np.clip(ratio, -clip, clip) + wd * x[n])
    chex.assert_trees_all_close(params, x, rtol=1e-10, atol=1e-12)
  assert 0 < np.mean(clipped) < 1        # both clipped and unclipped coordinates were exercised


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian"])
def test_gnb_estimate_is_unbiased_for_gauss_newton_diagonal(likelihood):
  # E[B ĝ ⊙ ĝ] = diag(Jᵀ H_out J) of the mean NLL, with labels really drawn from the model.
  params = _PARAMS
  flat, unravel = ravel_pytree(params)
  jac = jax.jacobian(lambda v: _model_fn(unravel(v)).reshape(-1))(flat)
  outputs = _model_fn(params)
  targets = curvature.sample_targets(jax.random.PRNGKey(0), outputs, likelihood)
  nll_of_flat = lambda f: curvature.nll(f.reshape(6, 4), targets, likelihood)
  out_hessian = jax.hessian(nll_of_flat)(outputs.reshape(-1))
  want = np.diag(jac.T @ out_hessian @ jac)
  keys = jax.random.split(jax.random.PRNGKey(1), 5000)
  samples = jax.vmap(lambda key: ravel_pytree(gnb_diag(_model_fn, params, key, likelihood))[0])(keys)
  np.testing.assert_allclose(samples.mean(0), want, rtol=0.08)   # max error 3.7% at this seed


def test_missing_extra_args_and_bad_arguments_raise():
  params, obj_fn, _ = _nonseparable_problem()
  grads = jax.grad(obj_fn)(params)
  tx = sophia_h(0.1)
  with pytest.raises(ValueError, match=r"obj_fn.*obj_fn=lambda p"):
    tx.update(grads, tx.init(params), params, model_fn=_model_fn)
  tx = sophia_g(0.1)
  with pytest.raises(ValueError, match=r"model_fn.*model_fn=lambda p"):
    tx.update(grads, tx.init(params), params, obj_fn=obj_fn)
  with pytest.raises(ValueError, match="likelihood"):
    sophia_g(0.1, likelihood="poisson")
  with pytest.raises(ValueError, match="gamma"):
    sophia_h(0.1, gamma=0.0)
