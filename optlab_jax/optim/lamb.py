"""LAMB: Adam's direction (plus decoupled weight decay) rescaled by a layer-wise trust ratio."""

from __future__ import annotations

from typing import Any

import optax

from optlab_jax.optim import base
from optlab_jax.optim.adam import scale_by_adam
from optlab_jax.optim.registry import register

__all__ = ["scale_by_lamb", "lamb"]


def scale_by_lamb(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
  """LAMB direction: `scale_by_adam`, decoupled weight decay, optax's `scale_by_trust_ratio`.

  Update rule, per leaf (layer) p:
    a_t = m̂_t / (√(v̂_t + eps_root) + eps) + λ p          (Adam direction as in `scale_by_adam`)
    d_t = ‖p‖ / ‖a_t‖ · a_t                                (d_t = a_t where either norm is 0)

  References: You et al., 2020, Large batch optimization for deep learning: training
  BERT in 76 minutes (ICLR, arXiv:1904.00962).
  """
  return optax.chain(
      scale_by_adam(b1, b2, eps, eps_root),
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      optax.scale_by_trust_ratio(),
  )


@register("lamb")
def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """LAMB: p ← p − lr · d_t with d_t from `scale_by_lamb`.

  Equal to `optax.lamb`; its `mask` argument is called `weight_decay_mask` here.
  """
  return base.alias(
      scale_by_lamb(b1, b2, eps, eps_root, weight_decay, weight_decay_mask), learning_rate=learning_rate
  )
