"""RAdam: Adam with the variance of its adaptive step size rectified in early steps."""

from __future__ import annotations

import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.registry import register

__all__ = ["scale_by_radam", "radam"]


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
  """RAdam direction (optax's `scale_by_radam`, with checked hyperparameters).

  Update rule (m̂_t, v̂_t as in Adam):
    ρ∞ = 2 / (1 − β2) − 1,     ρ_t = ρ∞ − 2 t β2ᵗ / (1 − β2ᵗ)
    r_t = √((ρ_t − 4)(ρ_t − 2) ρ∞ / ((ρ∞ − 4)(ρ∞ − 2) ρ_t))
    d_t = r_t m̂_t / (√(v̂_t + eps_root) + eps)   if ρ_t ≥ threshold,   else d_t = m̂_t
  The paper's Algorithm 2 switches at ρ_t > 4; the default threshold 5 follows its
  official code and optax.

  References: Liu et al., 2020, On the variance of the adaptive learning rate and beyond
  (ICLR, arXiv:1908.03265).
  """
  checks.check_decay("b1", b1)
  checks.check_decay("b2", b2)
  checks.check_nonnegative("eps", eps)
  checks.check_nonnegative("eps_root", eps_root)
  checks.check_nonnegative("threshold", threshold)
  return optax.scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov)


@register("radam")
def radam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """RAdam: p ← p − lr · d_t with d_t from `scale_by_radam` (same as `optax.radam`)."""
  return base.alias(
      scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov), learning_rate=learning_rate
  )
