"""AdaDelta: RMS of past updates over RMS of gradients, a unit-consistent step size."""

from __future__ import annotations

from typing import Any

import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.registry import register

__all__ = ["scale_by_adadelta", "adadelta"]


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> optax.GradientTransformation:
  """AdaDelta direction (optax's `scale_by_adadelta`, with checked hyperparameters).

  Update rule:
    E[g²]_t = ρ E[g²]_{t-1} + (1 − ρ) g_t²
    d_t = √(E[Δ²]_{t-1} + eps) / √(E[g²]_t + eps) · g_t
    E[Δ²]_t = ρ E[Δ²]_{t-1} + (1 − ρ) d_t²

  References: Zeiler, 2012, ADADELTA: An adaptive learning rate method (arXiv:1212.5701).
  """
  checks.check_decay("rho", rho)
  checks.check_nonnegative("eps", eps)
  return optax.scale_by_adadelta(rho, eps)


@register("adadelta")
def adadelta(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """AdaDelta: p ← p − lr · d_t, with d_t from `scale_by_adadelta` of g_t + wd · p.

  The paper has no learning rate, i.e. lr = 1, our default. `optax.adadelta`'s default
  `learning_rate=None` skips the scaling and with it the sign flip, so it steps uphill;
  ours with no learning rate equals `optax.adadelta(1.0)`. Weight decay is coupled
  (added to the gradient), as in optax.
  """
  return base.alias(
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      scale_by_adadelta(rho, eps),
      learning_rate=learning_rate,
  )
