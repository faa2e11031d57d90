"""Sign-based and memory-light first-order methods, as optax ships them: Lion, signSGD, Adafactor, SM3.

Each entry is optax's own alias with our contract on top (see `optlab_jax.optim.wrapped`);
the numbers are optax's (tests/test_optim_contrib.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab_jax import checks, compat
from optlab_jax.optim import base
from optlab_jax.optim.registry import register
from optlab_jax.optim.wrapped import check_decays, check_nonnegatives, optax_alias

__all__ = ["lion", "sign_sgd", "adafactor", "sm3"]

ADAFACTOR_MIN_DIM_SIZE_TO_FACTOR = 128  # optax's default, when `min_dim_size_to_factor` is None


@register("lion")
def lion(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.99, mu_dtype: Any = None,
         weight_decay: Any = 1e-3, weight_decay_mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """Lion: the sign of an interpolation of momentum and gradient, with decoupled weight decay.

    d = sign(β1 m + (1 − β1) g),   m = β2 m + (1 − β2) g,   p ← p − lr (d + λ p)

  References: Chen et al., 2023, Symbolic discovery of optimization algorithms (arXiv:2302.06675).
  """
  check_decays(b1=b1, b2=b2)
  check_nonnegatives(weight_decay=weight_decay)
  return optax_alias(optax.lion(learning_rate, b1, b2, mu_dtype, weight_decay, weight_decay_mask), learning_rate)


@register("sign_sgd")
def sign_sgd(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
  """signSGD: p ← p − lr sign(g).

  References: Bernstein et al., 2018, signSGD: compressed optimisation for non-convex problems
  (ICML, arXiv:1802.04434).
  """
  return optax_alias(optax.sign_sgd(learning_rate), learning_rate)


@register("adafactor")
def adafactor(learning_rate: optax.ScalarOrSchedule, min_dim_size_to_factor: int | None = None,
              decay_rate: float = 0.8, decay_offset: int = 0, multiply_by_parameter_scale: bool = True,
              clipping_threshold: float | None = 1.0, momentum: float | None = None, dtype_momentum: Any = None,
              weight_decay_rate: Any = None, eps: float = 1e-30, factored: bool = True,
              weight_decay_mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """Adafactor: second moments of a matrix kept as row and column sums (rank-1 factored).

    β̂2_t = 1 − (t − decay_offset + 1)^(−decay_rate)   (t: 0-based step; decay_offset: fine-tuning start)
    R = β̂2 R + (1 − β̂2) (g² + eps) 1,   C = β̂2 C + (1 − β̂2) 1ᵀ(g² + eps),   v̂ = R C / (1ᵀ R)
    u = g / √v̂, clipped to RMS ≤ clipping_threshold, times max(RMS(p), 1e-3) if
    `multiply_by_parameter_scale`;   p ← p − lr u
  A leaf is factored when its two largest dimensions are ≥ `min_dim_size_to_factor` (None:
  optax's 128; a Python int, since it decides shapes). Leaves below that keep a full v.
  `dtype_momentum` None means the params' dtype.

  References: Shazeer & Stern, 2018, Adafactor: adaptive learning rates with sublinear memory
  cost (ICML, arXiv:1804.04235).
  """
  if min_dim_size_to_factor is None:
    min_dim_size_to_factor = ADAFACTOR_MIN_DIM_SIZE_TO_FACTOR
  checks.check_positive_int("min_dim_size_to_factor", min_dim_size_to_factor)
  checks.check_in_range("decay_rate", decay_rate, 0.0, 1.0)
  check_nonnegatives(decay_offset=decay_offset, clipping_threshold=clipping_threshold, eps=eps,
                     weight_decay_rate=weight_decay_rate)
  if momentum is not None:
    check_decays(momentum=momentum)
  tx = optax.adafactor(
      learning_rate, int(min_dim_size_to_factor), decay_rate, decay_offset, multiply_by_parameter_scale,
      clipping_threshold, momentum, dtype_momentum, weight_decay_rate, eps, factored, weight_decay_mask,
  )
  return optax_alias(tx, learning_rate)


@register("sm3")
def sm3(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9) -> optax.GradientTransformationExtraArgs:
  """SM3: AdaGrad whose accumulator is covered by one vector per tensor dimension.

    μ_r = max over the slice r of ν,   ν = min_r μ_r + g²   (per entry),   μ_r = max over r of ν
    m = momentum · m + (1 − momentum) g / √ν,   p ← p − lr m

  References: Anil et al., 2019, Memory-efficient adaptive optimization (NeurIPS, arXiv:1901.11150).
  """
  check_decays(momentum=momentum)
  # optax.sm3 is chain(scale_by_sm3(momentum), scale(−lr)); scale_by_learning_rate also takes schedules.
  return base.alias(_packed_sm3(optax.scale_by_sm3(momentum)), learning_rate=learning_rate)


def _packed_sm3(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` (optax's SM3) with each leaf's list of per-dimension accumulators packed into one vector.

  optax keeps a params-shaped tree of lists; nnx.Optimizer turns each list into an nnx State on the
  first update, so its jitted step traced again. A params-shaped tree of arrays stays as it is.
  """

  def pack(mu, params):
    # Each axis' accumulator replicated: on an explicit mesh they come sharded over different axes.
    return jax.tree.map(lambda p, m: jnp.concatenate([compat.replicated(v) for v in m]) if m else jnp.zeros(0, p.dtype),
                        params, mu)

  def unpack(mu, params):
    return jax.tree.map(lambda p, m: list(jnp.split(m, np.cumsum(p.shape[:-1]))) if p.ndim else [], params, mu)

  def init_fn(params):
    state = inner.init(params)
    return state._replace(mu=pack(state.mu, params))

  def update_fn(updates, state, params=None):
    updates, state = inner.update(updates, state._replace(mu=unpack(state.mu, updates)), params)
    return updates, state._replace(mu=pack(state.mu, updates))

  return optax.GradientTransformation(init_fn, update_fn)
