"""LARS: SGD with momentum and a layer-wise trust ratio ‖p‖ / ‖g‖ for large-batch training."""

from __future__ import annotations

from typing import Any

import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.registry import register
from optlab_jax.optim.sgd import scale_by_sgd

__all__ = ["scale_by_lars", "lars"]


def scale_by_lars(
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Any = True,
    momentum: float | None = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformation:
  """LARS direction: optax's `scale_by_trust_ratio` per leaf, then `scale_by_sgd`.

  Update rule, per leaf (layer) p with incoming update g (gradient plus any weight decay):
    s_t = η ‖p‖ / (‖g‖ + eps) · g     (s_t = g where ‖p‖ = 0, ‖g‖ = 0 or masked out)
    m_t = β m_{t-1} + s_t,   d_t = m_t  (Nesterov: d_t = s_t + β m_t)
  with η = trust_coefficient and β = momentum.

  References: You, Gitman & Ginsburg, 2017, Large batch training of convolutional
  networks (arXiv:1708.03888).
  """
  checks.check_nonnegative("trust_coefficient", trust_coefficient)
  checks.check_nonnegative("eps", eps)
  return optax.chain(
      optax.masked(
          optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps), trust_ratio_mask
      ),
      scale_by_sgd(momentum, nesterov),
  )


@register("lars")
def lars(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Any = True,
    momentum: float | None = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """LARS: p ← p − lr_t · d_t, with d_t from `scale_by_lars` of g_t + wd · p.

  Deliberate difference from `optax.lars` (which follows the paper's Algorithm 1): the
  learning rate multiplies the momentum trace (u_t = −lr_t m_t) where optax traces the
  scaled step (u_t = β u_{t-1} − lr_t s_t). With a constant learning rate the two are
  equal; under a schedule ours applies lr_t to the whole trace.
  """
  return base.alias(
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      scale_by_lars(trust_coefficient, eps, trust_ratio_mask, momentum, nesterov),
      learning_rate=learning_rate,
  )
