"""Shampoo: one Kronecker factor per tensor axis, the update grafted to Adam's (or SGD's) step size."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base, kronecker
from optlab_jax.optim.registry import register

__all__ = ["ScaleByShampooState", "scale_by_shampoo", "shampoo"]


class ScaleByShampooState(NamedTuple):
  """State of `scale_by_shampoo`; a fallback leaf's factors and roots are (0,)-shaped."""
  adam: optax.ScaleByAdamState  # count; EMAs of g and g² for every leaf (momentum, graft, fallback).
  factors: Any                  # per leaf, `kronecker.pack`ed F_i = EMA (or sum) of G_(i) G_(i)ᵀ.
  roots: Any                    # per leaf, packed (F_i + ε λ_max I)^e from the last refresh.


def _graft(blocks: jax.Array, reference: jax.Array) -> jax.Array:
  """`blocks` rescaled so that each block has the Frobenius norm of the same block of `reference`."""
  axes = tuple(range(1, blocks.ndim))
  norm = jnp.sqrt(jnp.sum(blocks * blocks, axes, keepdims=True))
  target = jnp.sqrt(jnp.sum(reference * reference, axes, keepdims=True))
  return blocks * jnp.where(norm > 0, target / jnp.where(norm > 0, norm, 1), 0)


def scale_by_shampoo(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    factor_decay: float = 0.999,
    damping: float = 1e-6,
    precondition_every: int = 10,
    exponent: float | None = None,
    *,
    graft: str = "adam",
    inverse_root: str = "eigh",
    block_size: int | None = None,
    max_precond_dim: int | None = None,
    precond_dtype: str | None = None,
) -> optax.GradientTransformation:
  """Shampoo direction, with momentum on the gradient and grafting as in Shi et al. (2023).

  Update rule at step t for a leaf with k axes, cut into blocks (`kronecker`), per block G:
    m_t = β1 m_{t-1} + (1 − β1) g_t,  v_t = β2 v_{t-1} + (1 − β2) g_t²   (optax's Adam moments)
    F_i ← β_F F_i + (1 − β_F) G_(i) G_(i)ᵀ   for each axis i   (β_F = `factor_decay`; 1: the sum)
    P_i = (F_i + ε λ_max(F_i) I)^e,  e = `exponent` or −1/(2k) (L^{-1/4} G R^{-1/4} for a matrix),
        recomputed at steps 1, n+1, 2n+1, … (n = `precondition_every`; `inverse_root`: "eigh" or
        the coupled Newton iteration "newton"; in `precond_dtype`, default float32 or float64 params')
    D = m̂_t ×_1 P_1 ⋯ ×_k P_k,  m̂_t = m_t/(1 − β1ᵗ)
    d_t = D · ‖A‖/‖D‖ per block, A = Adam's m̂/(√v̂ + eps) (`graft="adam"`) or m̂ ("sgd");
        `graft="none"` returns D itself.
  Scalars, vectors, empty leaves and leaves with a (blocked) axis longer than `max_precond_dim`
  (default 4096) take the graft's own direction: Adam's (also for "none") or m̂ for "sgd".
  A gradient block with a non-finite entry leaves its factors (hence roots) as they were; the
  moments follow Adam's (NaN in, NaN out: use `optax.apply_if_finite` to skip such steps).

  References: Gupta, Koren & Singer, 2018, Shampoo: Preconditioned stochastic tensor optimization
  (arXiv:1802.09568); Anil et al., 2020, Scalable second order optimization for deep learning
  (arXiv:2002.09018); Shi et al., 2023, A distributed data-parallel PyTorch implementation of the
  distributed Shampoo optimizer (arXiv:2309.06497).
  """
  checks.check_decay("b1", b1)
  checks.check_decay("b2", b2)
  checks.check_nonnegative("eps", eps)
  checks.check_in_range("factor_decay", factor_decay, 0.0, 1.0, lower_open=True)
  checks.check_nonnegative("damping", damping)
  checks.check_positive_int("precondition_every", precondition_every)
  checks.check_choice("graft", graft, ("adam", "sgd", "none"))
  checks.check_choice("inverse_root", inverse_root, ("eigh", "newton"))
  kronecker.check_precond_dtype("precond_dtype", precond_dtype)
  block_size = kronecker.check_structural("block_size", block_size)
  max_precond_dim = kronecker.check_structural("max_precond_dim", max_precond_dim)
  if exponent is not None:
    checks.check_in_range("exponent", exponent, -1.0, 0.0, upper_open=True)
    if inverse_root == "newton" and not isinstance(exponent, jax.core.Tracer):
      p = -1.0 / float(exponent)
      if abs(p - round(p)) > 1e-9:
        raise ValueError(f"exponent={exponent!r} needs an integer -1/exponent for inverse_root='newton'")
  adam = optax.scale_by_adam(b1, b2, eps)

  def init_fn(params):
    init = lambda eye: jax.tree.map(
        lambda p: kronecker.init_factors(p, max_precond_dim, block_size, precond_dtype, eye), params)
    return ScaleByShampooState(adam.init(params), init(False), init(True))

  def update_fn(updates, state, params=None):
    del params
    adam_updates, adam_state = adam.update(updates, state.adam)
    m_hat = optax.tree.bias_correction(adam_state.mu, b1, adam_state.count)
    unpack = lambda flat, g: kronecker.unpack(flat, g.shape, block_size)

    def leaf_factors(g, flat):
      if not flat.size:
        return flat
      return kronecker.pack(kronecker.update_factors(unpack(flat, g), kronecker.to_blocks(g, block_size), factor_decay))

    factors = jax.tree.map(leaf_factors, updates, state.factors)

    def leaf_roots(g, flat, old):
      if not flat.size:
        return old
      e = -1.0 / (2 * g.ndim) if exponent is None else exponent
      return kronecker.pack(tuple(kronecker.inverse_root(x, e, damping, inverse_root) for x in unpack(flat, g)))

    roots, = base.every_k_steps(
        state.adam.count, precondition_every,
        lambda roots: (jax.tree.map(leaf_roots, updates, factors, roots),), state.roots)

    def direction(g, m, a, flat):
      r = unpack(flat, g)
      if not r:
        return (m if graft == "sgd" else a).astype(g.dtype)
      blocks = kronecker.apply_per_axis(kronecker.to_blocks(m.astype(r[0].dtype), block_size), r)
      if graft != "none":
        reference = kronecker.to_blocks((a if graft == "adam" else m).astype(r[0].dtype), block_size)
        blocks = _graft(blocks, reference)
      return kronecker.from_blocks(blocks, m, block_size).astype(g.dtype)

    out = jax.tree.map(direction, updates, m_hat, adam_updates, roots)
    return out, ScaleByShampooState(adam_state, factors, roots)

  return optax.GradientTransformation(init_fn, update_fn)


@register("shampoo")
def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    factor_decay: float = 0.999,
    damping: float = 1e-6,
    precondition_every: int = 10,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    exponent: float | None = None,
    graft: str = "adam",
    inverse_root: str = "eigh",
    block_size: int | None = None,
    max_precond_dim: int | None = None,
    precond_dtype: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Shampoo: p ← p − lr · (d_t + wd · p), d_t from `scale_by_shampoo` (decoupled weight decay)."""
  return base.alias(
      scale_by_shampoo(
          b1, b2, eps, factor_decay, damping, precondition_every, exponent, graft=graft,
          inverse_root=inverse_root, block_size=block_size, max_precond_dim=max_precond_dim,
          precond_dtype=precond_dtype,
      ),
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      learning_rate=learning_rate,
  )
