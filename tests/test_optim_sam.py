"""SAM and ASAM directions against the perturbation computed by hand (numpy) and jax.grad."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab_jax.optim.sam import asam, sam, scale_by_sam

_RNG = np.random.default_rng(0)
_X = jnp.asarray(_RNG.normal(size=(20, 3)), jnp.float64)
_Y = jnp.asarray(_RNG.integers(0, 2, size=20), jnp.float64)
PARAMS = {"w": jnp.asarray(_RNG.normal(size=3), jnp.float64), "b": jnp.asarray([0.3], jnp.float64)}


def obj_fn(p):
  """Logistic regression: mean binary cross-entropy."""
  z = _X @ p["w"] + p["b"][0]
  return jnp.mean(jax.nn.softplus(z) - _Y * z)


def _np(tree):
  return {n: np.array(v) for n, v in tree.items()}


def _reference(rho, adaptive, eta=0.01):
  """∇f(w + ε), ε = ρ g/‖g‖ (SAM) or ρ T² g/‖T g‖ with T = |w| + η (ASAM)."""
  w, g = _np(PARAMS), _np(jax.grad(obj_fn)(PARAMS))
  t = {n: np.abs(w[n]) + eta if adaptive else np.ones_like(w[n]) for n in w}
  norm = np.sqrt(sum(np.sum((t[n] * g[n]) ** 2) for n in w))
  eps = {n: rho * t[n] ** 2 * g[n] / norm for n in w}
  return jax.grad(obj_fn)({n: jnp.asarray(w[n] + eps[n]) for n in w})


@pytest.mark.parametrize("adaptive, rho", [(False, 0.05), (False, 0.5), (True, 0.5)])
def test_direction_is_gradient_at_perturbed_point(adaptive, rho):
  tx = scale_by_sam(rho, adaptive=adaptive, eta=0.01)
  got, _ = tx.update(jax.grad(obj_fn)(PARAMS), tx.init(PARAMS), PARAMS, obj_fn=obj_fn)
  want = _reference(rho, adaptive)
  chex.assert_trees_all_close(got, want, rtol=1e-12)
  assert not np.allclose(got["w"], jax.grad(obj_fn)(PARAMS)["w"], rtol=1e-3)


def test_aliases_step_the_base_optimizer_along_the_direction():
  grads = jax.grad(obj_fn)(PARAMS)
  u, _ = jax.jit(lambda g, s, p: sam(0.1, rho=0.05).update(g, s, p, obj_fn=obj_fn))(
      grads, sam(0.1).init(PARAMS), PARAMS)
  chex.assert_trees_all_close(u, jax.tree.map(lambda d: -0.1 * d, _reference(0.05, False)), rtol=1e-12)
  # ASAM on a momentum base: two steps equal optax.sgd(momentum) fed the hand-computed directions.
  tx = asam(0.1, rho=0.5, eta=0.01, base="sgd", base_kwargs={"momentum": 0.9})
  ref = optax.sgd(0.1, momentum=0.9)
  state, ref_state, params = tx.init(PARAMS), ref.init(PARAMS), PARAMS
  for _ in range(2):
    u, state = tx.update(jax.grad(obj_fn)(params), state, params, obj_fn=obj_fn)
    t = jax.tree.map(lambda w: jnp.abs(w) + 0.01, params)
    g = jax.grad(obj_fn)(params)
    norm = optax.tree.norm(jax.tree.map(jnp.multiply, t, g))
    eps = jax.tree.map(lambda ti, gi: 0.5 * ti * ti * gi / norm, t, g)
    d = jax.grad(obj_fn)(jax.tree.map(jnp.add, params, eps))
    ru, ref_state = ref.update(d, ref_state, params)
    chex.assert_trees_all_close(u, ru, rtol=1e-12)
    params = optax.apply_updates(params, u)


def test_chains_before_any_optax_optimizer():
  tx = optax.chain(scale_by_sam(0.05), optax.adamw(1e-2, weight_decay=0.1))
  u, _ = tx.update(jax.grad(obj_fn)(PARAMS), tx.init(PARAMS), PARAMS, obj_fn=obj_fn)
  ref = optax.adamw(1e-2, weight_decay=0.1)
  want, _ = ref.update(_reference(0.05, False), ref.init(PARAMS), PARAMS)
  chex.assert_trees_all_close(u, want, rtol=1e-12)


def test_zero_gradient_means_no_perturbation():
  tx = scale_by_sam(0.05)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  got, _ = tx.update(zeros, tx.init(PARAMS), PARAMS, obj_fn=obj_fn)
  chex.assert_trees_all_close(got, jax.grad(obj_fn)(PARAMS), rtol=1e-15)


def test_missing_obj_fn_and_bad_hyperparameters_raise():
  with pytest.raises(ValueError, match=r"obj_fn.*obj_fn=lambda p"):
    sam(0.1).update(PARAMS, sam(0.1).init(PARAMS), PARAMS)
  with pytest.raises(ValueError, match="rho"):
    sam(0.1, rho=-0.1)
  with pytest.raises(ValueError, match="eta"):
    asam(0.1, eta=-1.0)
  with pytest.raises(ValueError, match=r"base='sgdd' is not supported; did you mean 'sgd'\?"):
    sam(0.1, base="sgdd")
