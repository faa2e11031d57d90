"""SOAP: Adam run in the eigenbasis of Shampoo's Kronecker factors, refreshed by a power/QR step."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base, kronecker
from optlab_jax.optim.registry import register

__all__ = ["ScaleBySoapState", "scale_by_soap", "soap"]


class ScaleBySoapState(NamedTuple):
  """State of `scale_by_soap`; a fallback leaf's factors and bases are (0,)-shaped."""
  count: jax.Array     # int32 scalar: updates so far (the first one only starts the factors).
  mu: optax.Updates    # EMA of g in parameter space; tree of params.
  nu: Any              # EMA of (Qᵀ g)² in the eigenbasis: blocks (N, b_1, …, b_k), or the leaf's shape.
  # mu and nu of a preconditioned leaf are in `precond_dtype`: with a bfloat16 m, Qᵀm has rounding
  # noise in directions where Qᵀg (hence √v) is ~0, and m'/√v explodes.
  factors: Any         # per leaf, `kronecker.pack`ed F_i = EMA of G_(i) G_(i)ᵀ, (N, b_i, b_i).
  bases: Any           # per leaf, packed Q_i: F_i's eigenbasis, columns by descending eigenvalue.


def scale_by_soap(
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    factor_decay: float | None = None,
    precondition_every: int = 10,
    *,
    block_size: int | None = None,
    max_precond_dim: int | None = None,
    precond_dtype: str | None = None,
) -> optax.GradientTransformation:
  """SOAP direction, as in the authors' reference code.

  Update rule for a leaf with k axes cut into blocks (`kronecker`), per block, at call t:
    t = 1: F_i = (1 − β_F) G_(i) G_(i)ᵀ, Q_i = eigenvectors of F_i (`eigh`); d_1 = 0
    t > 1 (s = t − 1 counts the Adam steps):
      m ← β1 m + (1 − β1) g,   g' = g ×_1 Q_1ᵀ ⋯ ×_k Q_kᵀ,   v ← β2 v + (1 − β2) g'²
      m' = m ×_1 Q_1ᵀ ⋯ ×_k Q_kᵀ,   n' = (m'/(1 − β1ˢ)) / (√(v/(1 − β2ˢ)) + eps)
      d_t = n' ×_1 Q_1 ⋯ ×_k Q_k
      F_i ← β_F F_i + (1 − β_F) G_(i) G_(i)ᵀ   (after the step: Q never sees the current g)
      every n steps (s % n = 0, n = `precondition_every`): sort Q_i's columns by diag(Q_iᵀ F_i Q_i),
        permute v's axis i alike, Q_i ← qr(F_i Q_i) (one power step)
  with β_F = `factor_decay` (default β2). Leaves that `kronecker` does not precondition (scalars,
  vectors, empty leaves, axes longer than `max_precond_dim`, default 4096) run the same rule with
  Q = I: Adam from the second gradient on. eps is added to √v̂ (optax's Adam) where the reference
  code adds it to √v; a gradient block with a non-finite entry leaves its factors unchanged.

  References: Vyas et al., 2024, SOAP: Improving and stabilizing Shampoo using Adam
  (arXiv:2409.11321); reference code github.com/nikhilvyas/SOAP.
  """
  checks.check_decay("b1", b1)
  checks.check_decay("b2", b2)
  checks.check_nonnegative("eps", eps)
  if factor_decay is not None:
    checks.check_decay("factor_decay", factor_decay)
  checks.check_positive_int("precondition_every", precondition_every)
  kronecker.check_precond_dtype("precond_dtype", precond_dtype)
  block_size = kronecker.check_structural("block_size", block_size)
  max_precond_dim = kronecker.check_structural("max_precond_dim", max_precond_dim)

  def preconditioned(p):
    return kronecker.is_preconditioned(p, max_precond_dim, block_size)

  def init_fn(params):
    init = lambda eye: jax.tree.map(
        lambda p: kronecker.init_factors(p, max_precond_dim, block_size, precond_dtype, eye), params)
    blocked = lambda p: jax.eval_shape(lambda x: kronecker.to_blocks(x, block_size), p).shape
    dtype = lambda p: kronecker.precond_dtype(precond_dtype, p.dtype) if preconditioned(p) else p.dtype
    mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype(p)), params)
    nu = jax.tree.map(lambda p: jnp.zeros(blocked(p) if preconditioned(p) else p.shape, dtype(p)), params)
    return ScaleBySoapState(jnp.zeros([], jnp.int32), mu, nu, init(False), init(True))

  def update_fn(updates, state, params=None):
    del params
    first = state.count == 0
    steps = jnp.maximum(state.count, 1)
    unpack = lambda flat, g: kronecker.unpack(flat, g.shape, block_size)

    def rotate(x, q):
      """x's blocks in the eigenbasis (Qᵀ on every axis); x itself for a fallback leaf."""
      if not q:
        return x
      return kronecker.apply_per_axis(kronecker.to_blocks(x.astype(q[0].dtype), block_size), q, transpose=True)

    def leaf_step(g, m, v, flat_q):
      q = unpack(flat_q, g)
      m = (b1 * m + (1 - b1) * g).astype(m.dtype)
      v = (b2 * v + (1 - b2) * jnp.square(rotate(g, q))).astype(v.dtype)
      n = (rotate(m, q) / (1 - b1 ** steps)) / (jnp.sqrt(v / (1 - b2 ** steps)) + eps)
      if q:
        n = kronecker.from_blocks(kronecker.apply_per_axis(n, q), g, block_size)
      return jnp.where(first, 0, n).astype(g.dtype), m, v

    stepped = jax.tree.map(leaf_step, updates, state.mu, state.nu, state.bases)
    out, mu, nu = jax.tree.transpose(jax.tree.structure(updates), jax.tree.structure((0, 0, 0)), stepped)
    mu = jax.tree.map(lambda new, old: jnp.where(first, old, new), mu, state.mu)
    nu = jax.tree.map(lambda new, old: jnp.where(first, old, new), nu, state.nu)
    decay = b2 if factor_decay is None else factor_decay

    def leaf_factors(g, flat):
      if not flat.size:
        return flat
      return kronecker.pack(kronecker.update_factors(unpack(flat, g), kronecker.to_blocks(g, block_size), decay))

    factors = jax.tree.map(leaf_factors, updates, state.factors)

    def leaf_refresh(start: bool, g, flat_f, flat_q, v):
      if not flat_f.size:
        return flat_q, v
      pads = kronecker.padding_masks(g.shape, block_size)
      f, q = unpack(flat_f, g), unpack(flat_q, g)
      if start:
        return kronecker.pack(tuple(map(kronecker.eigenbasis, f, pads))), v
      new_q = []
      for i, (x, qi, pad) in enumerate(zip(f, q, pads)):
        qi, order = kronecker.power_qr_basis(x, qi, pad)
        order = order.reshape(order.shape[:1] + (1,) * i + order.shape[1:] + (1,) * (v.ndim - i - 2))
        v = jnp.take_along_axis(v, order, axis=i + 1)
        new_q.append(qi)
      return kronecker.pack(tuple(new_q)), v

    def refresh(bases, nu):
      def run(start):
        def fn(bases, nu):
          pairs = jax.tree.map(functools.partial(leaf_refresh, start), updates, factors, bases, nu)
          return jax.tree.transpose(jax.tree.structure(updates), jax.tree.structure((0, 0)), pairs)
        return fn
      return jax.lax.cond(first, run(True), run(False), bases, nu)

    bases, nu = base.every_k_steps(state.count, precondition_every, refresh, state.bases, nu)
    return out, ScaleBySoapState(optax.safe_increment(state.count), mu, nu, factors, bases)

  return optax.GradientTransformation(init_fn, update_fn)


@register("soap")
def soap(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    factor_decay: float | None = None,
    precondition_every: int = 10,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    block_size: int | None = None,
    max_precond_dim: int | None = None,
    precond_dtype: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SOAP: p ← p − lr · (d_t + wd · p), d_t from `scale_by_soap`.

  Weight decay is decoupled; the reference code's default is weight_decay=0.01 and applies it
  after the step (p ← p − lr·wd·p with the updated p), which differs by O(lr²·wd).
  """
  return base.alias(
      scale_by_soap(b1, b2, eps, factor_decay, precondition_every, block_size=block_size,
                    max_precond_dim=max_precond_dim, precond_dtype=precond_dtype),
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      learning_rate=learning_rate,
  )
