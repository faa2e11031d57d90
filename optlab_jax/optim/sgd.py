"""Stochastic gradient descent, with heavy-ball or Nesterov momentum."""

from __future__ import annotations

from typing import Any

import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.registry import register

__all__ = ["scale_by_sgd", "sgd"]


def scale_by_sgd(
    momentum: float | None = None, nesterov: bool = False, accumulator_dtype: Any = None
) -> optax.GradientTransformation:
  """SGD direction: the gradient, or its momentum trace.

  Update rule (heavy ball):   m_t = β m_{t-1} + g_t,   d_t = m_t
  Update rule (Nesterov):     m_t = β m_{t-1} + g_t,   d_t = g_t + β m_t
  With `momentum=None` the direction is g_t and the transform keeps no state. The trace m
  has the params' dtype unless `accumulator_dtype` says otherwise.

  References: Robbins & Monro, 1951, A stochastic approximation method; Polyak, 1964,
  Some methods of speeding up the convergence of iteration methods; Sutskever et al., 2013,
  On the importance of initialization and momentum in deep learning (Nesterov form).
  """
  if momentum is None:
    if nesterov:
      raise ValueError("nesterov=True needs a momentum; expected momentum in [0, 1)")
    return optax.identity()
  checks.check_decay("momentum", momentum)
  return optax.trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)


@register("sgd")
def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """SGD: p ← p − lr · d_t, with d_t from `scale_by_sgd` applied to g_t + wd · p.

  Weight decay is coupled (added to the gradient before momentum, so the momentum trace
  carries it too), as in classic SGD and `torch.optim.SGD`.
  """
  return base.alias(
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      scale_by_sgd(momentum, nesterov, accumulator_dtype),
      learning_rate=learning_rate,
  )
