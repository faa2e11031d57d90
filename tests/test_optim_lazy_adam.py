"""LazyAdam: TF-Addons' sparse-update pseudocode in numpy; untouched rows bit-identical; dense = Adam."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab_jax
from optlab_jax.optim.lazy_adam import default_lazy_mask


class _TfLazyAdam:
  """TF-Addons LazyAdam `_resource_apply_sparse` on a numpy table, rows given by index.

  `eps_scaled=True` uses epsilon_t = eps·√(1 − β2ᵗ), which moves eps onto √v̂ (our placement).
  """

  def __init__(self, table, lr, b1, b2, eps, eps_scaled=True):
    self.var, self.m, self.v = table.copy(), np.zeros_like(table), np.zeros_like(table)
    self.lr, self.b1, self.b2, self.eps, self.eps_scaled, self.t = lr, b1, b2, eps, eps_scaled, 0

  def apply(self, grad):
    self.t += 1  # the global step: β powers advance for every row
    idx = np.flatnonzero(np.any(grad != 0, axis=1))
    b1, b2, t = self.b1, self.b2, self.t
    lr_t = self.lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    eps_t = self.eps * np.sqrt(1 - b2**t) if self.eps_scaled else self.eps
    self.m[idx] = b1 * self.m[idx] + (1 - b1) * grad[idx]
    self.v[idx] = b2 * self.v[idx] + (1 - b2) * grad[idx] ** 2
    self.var[idx] -= lr_t * self.m[idx] / (np.sqrt(self.v[idx]) + eps_t)


def _sparse_grad(rng, shape, rows):
  g = np.zeros(shape)
  g[rows] = rng.normal(size=(len(rows), shape[1]))
  return g


def test_matches_tf_addons_pseudocode():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(8, 3))
  lr, b1, b2, eps = 0.1, 0.9, 0.99, 1e-2  # a large eps, so where it sits shows
  ref, tf_eps = _TfLazyAdam(table, lr, b1, b2, eps), _TfLazyAdam(table, lr, b1, b2, eps, eps_scaled=False)
  tx = optlab_jax.lazy_adam(lr, b1=b1, b2=b2, eps=eps)
  params = jnp.asarray(table)
  state, update = tx.init(params), jax.jit(tx.update)
  for rows in [[0, 1, 2, 3, 4, 5, 6, 7], [1, 4], [4, 6, 7], [0], [1, 2, 6]]:
    g = _sparse_grad(rng, table.shape, rows)
    g[rows[0], 1] = 0.0  # a zero entry inside an active row still updates with its row
    ref.apply(g)
    tf_eps.apply(g)
    updates, state = update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, ref.var, rtol=1e-12)
    np.testing.assert_allclose(state[0].mu, ref.m, rtol=1e-12)
    np.testing.assert_allclose(state[0].nu, ref.v, rtol=1e-12)
  # The deliberate difference: with TF's unscaled epsilon the rows differ measurably.
  assert np.max(np.abs(tf_eps.var - ref.var)) > 1e-4


def test_untouched_rows_of_a_large_table_are_bit_identical():
  rng = np.random.default_rng(1)
  table = rng.normal(size=(1000, 16))
  rows = [3, 141, 500, 777, 999]
  lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
  ref = _TfLazyAdam(table, lr, b1, b2, eps)
  tx = optlab_jax.lazy_adam(lr)
  update = jax.jit(tx.update)
  params = jnp.asarray(table)
  state = tx.init(params)
  # One dense step first, so every row has non-zero moments that must then stay frozen.
  dense = rng.normal(size=table.shape)
  ref.apply(dense)
  updates, state = update(jnp.asarray(dense), state, params)
  params = optax.apply_updates(params, updates)
  before = (np.asarray(params), np.asarray(state[0].mu), np.asarray(state[0].nu))
  for _ in range(10):
    g = _sparse_grad(rng, table.shape, rows)
    ref.apply(g)
    updates, state = update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  others = np.setdiff1d(np.arange(1000), rows)
  assert len(others) == 995
  for got, frozen in zip((params, state[0].mu, state[0].nu), before):
    np.testing.assert_array_equal(np.asarray(got)[others], frozen[others])
  for got, want in zip((params, state[0].mu, state[0].nu), (ref.var, ref.m, ref.v)):
    np.testing.assert_allclose(np.asarray(got)[rows], want[rows], rtol=1e-10)
  assert np.min(np.abs(np.asarray(params)[rows] - before[0][rows])) > 0.0


def test_dense_leaves_equal_optax_adam_and_table_rows_match_pseudocode():
  rng = np.random.default_rng(2)
  params = {"embed": jnp.asarray(rng.normal(size=(50, 4))),
            "dense": {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3))}}
  mask = {"embed": True, "dense": {"w": False, "b": False}}
  lr = 0.05
  tx, ref_tx = optlab_jax.lazy_adam(lr, lazy_mask=mask), optax.adam(lr)
  ref_embed = _TfLazyAdam(np.asarray(params["embed"]), lr, 0.9, 0.999, 1e-8)
  state, ref_state, ref_dense = tx.init(params), ref_tx.init(params["dense"]), params["dense"]
  for _ in range(20):
    dense_g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), params["dense"])
    dense_g["w"] = dense_g["w"].at[1].set(0.0)  # a zero row in a dense leaf: Adam still moves it
    embed_g = _sparse_grad(rng, (50, 4), rng.choice(50, size=3, replace=False))
    ref_embed.apply(embed_g)
    updates, state = tx.update({"embed": jnp.asarray(embed_g), "dense": dense_g}, state, params)
    params = optax.apply_updates(params, updates)
    ref_updates, ref_state = ref_tx.update(dense_g, ref_state, ref_dense)
    ref_dense = optax.apply_updates(ref_dense, ref_updates)
    chex.assert_trees_all_close(params["dense"], ref_dense, rtol=1e-10)
    np.testing.assert_allclose(params["embed"], ref_embed.var, rtol=1e-10)


def test_default_mask_is_rank_two_and_a_callable_mask_works():
  params = {"table": jnp.ones((4, 2)), "bias": jnp.ones(4), "conv": jnp.ones((2, 2, 1, 1))}
  assert default_lazy_mask(params) == {"table": True, "bias": False, "conv": False}
  grads = jax.tree.map(jnp.ones_like, params)
  zero_first = jax.tree.map(lambda g: g.at[0].set(0.0), grads)
  for lazy_mask in [None, default_lazy_mask]:
    tx = optlab_jax.lazy_adam(0.1, lazy_mask=lazy_mask)
    _, state = tx.update(grads, tx.init(params), params)
    updates, _ = tx.update(zero_first, state, params)
    # Table row 0 has no gradient: frozen. Bias entry 0 has none either, but dense Adam moves it.
    assert float(jnp.max(jnp.abs(updates["table"][0]))) == 0.0
    assert float(jnp.min(jnp.abs(updates["table"][1:]))) > 0.0
    assert float(jnp.min(jnp.abs(updates["bias"]))) > 0.0
    assert float(jnp.min(jnp.abs(updates["conv"]))) > 0.0


def test_bad_hyperparameters_raise():
  for key, bad in [("b1", 1.0), ("b2", -0.5), ("eps", -1.0)]:
    with pytest.raises(ValueError, match=key):
      optlab_jax.lazy_adam(1e-3, **{key: bad})
