"""LazyAdam: Adam that leaves the rows of embedding tables alone unless they get a gradient."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from optlab_jax.optim import base
from optlab_jax.optim.adam import scale_by_adam
from optlab_jax.optim.registry import register

__all__ = ["scale_by_lazy_adam", "lazy_adam", "default_lazy_mask"]

LazyMask = Any | Callable[[optax.Params], Any]


def default_lazy_mask(tree: optax.Params) -> Any:
  """The default `lazy_mask`: every leaf of rank 2 (vocabulary × features) is a table."""
  return jax.tree.map(lambda x: jnp.ndim(x) == 2, tree)


def _active_rows(g: jax.Array) -> jax.Array:
  """True for the rows (first axis) of `g` holding a non-zero entry; shape (n, 1, ..., 1)."""
  return jnp.any(g != 0, axis=tuple(range(1, g.ndim)), keepdims=True)


def scale_by_lazy_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    lazy_mask: LazyMask = None,
) -> optax.GradientTransformation:
  """LazyAdam direction: Adam, but a table row with a zero gradient row keeps its state.

  For a table leaf (`lazy_mask` True) and row i, with R_t = {i : g_t[i] ≠ 0}:
    i ∈ R_t:  m_t[i] = β1 m[i] + (1 − β1) g_t[i],   v_t[i] = β2 v[i] + (1 − β2) g_t[i]²
              d_t[i] = m̂_t[i] / (√(v̂_t[i] + eps_root) + eps),  m̂ = m/(1 − β1ᵗ), v̂ = v/(1 − β2ᵗ)
    i ∉ R_t:  m[i], v[i] unchanged (bit for bit) and d_t[i] = 0
  t is the global step count (as TF's β powers), so a row that wakes up is bias-corrected with
  the current t. Other leaves are plain Adam (`scale_by_adam`); the state is optax's
  `ScaleByAdamState` (count, mu, nu).

  `lazy_mask` says which leaves are tables: a pytree of Python bools with the params'
  structure, a callable params -> such a tree, or None for `default_lazy_mask` (rank-2
  leaves). JAX gradients are dense, so "sparse" means rows that are exactly zero: a dense
  kernel marked as a table also skips rows whose input was zero throughout the batch.

  Deliberate difference from TF-Addons LazyAdam: eps sits on √v̂ as in `adam` (optax) instead
  of on √v with the bias correction folded into lr; the two agree when TF's epsilon at step t
  is eps·√(1 − β2ᵗ) (tested).

  References: Kingma & Ba, 2015, Adam (arXiv:1412.6980); TensorFlow Addons,
  `tfa.optimizers.LazyAdam`.
  """
  adam = scale_by_adam(b1, b2, eps, eps_root, mu_dtype)

  def update_fn(updates, state, params=None):
    direction, new = adam.update(updates, state, params)
    mask = lazy_mask(updates) if callable(lazy_mask) else lazy_mask
    mask = default_lazy_mask(updates) if mask is None else mask
    # Python bools, resolved at trace time: dense leaves take no select at all.
    rows = jax.tree.map(lambda lazy, g: _active_rows(g) if bool(lazy) else None, mask, updates)

    def keep(fresh, old):
      return jax.tree.map(
          lambda r, f, o: f if r is None else jnp.where(r, f, o), rows, fresh, old, is_leaf=lambda r: r is None
      )

    zero = jax.tree.map(lambda d: jnp.zeros([], d.dtype), direction)
    return keep(direction, zero), new._replace(mu=keep(new.mu, state.mu), nu=keep(new.nu, state.nu))

  return optax.GradientTransformation(adam.init, update_fn)


@register("lazy_adam")
def lazy_adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    lazy_mask: LazyMask = None,
) -> optax.GradientTransformationExtraArgs:
  """LazyAdam: p ← p − lr · d_t with d_t from `scale_by_lazy_adam` (untouched rows stay put)."""
  return base.alias(scale_by_lazy_adam(b1, b2, eps, eps_root, mu_dtype, lazy_mask), learning_rate=learning_rate)
