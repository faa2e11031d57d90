"""Ranger: RAdam inside Lookahead."""

from __future__ import annotations

import optax

from optlab_jax.optim import base
from optlab_jax.optim.lookahead import with_lookahead
from optlab_jax.optim.radam import scale_by_radam
from optlab_jax.optim.registry import register

__all__ = ["ranger"]


@register("ranger")
def ranger(
    learning_rate: optax.ScalarOrSchedule,
    sync_period: int = 6,
    slow_step_size: float = 0.5,
    b1: float = 0.95,
    b2: float = 0.999,
    eps: float = 1e-5,
    threshold: float = 5.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """Ranger: `with_lookahead` around RAdam with decoupled weight decay (Wright's defaults).

  Fast step t (RAdam, `scale_by_radam`), with ρ∞ = 2/(1 − β2) − 1:
    m_t = β1 m_{t-1} + (1 − β1) g_t,     v_t = β2 v_{t-1} + (1 − β2) g_t²
    m̂_t = m_t / (1 − β1ᵗ),               v̂_t = v_t / (1 − β2ᵗ)
    ρ_t = ρ∞ − 2t β2ᵗ / (1 − β2ᵗ)
    d_t = r_t m̂_t / (√v̂_t + eps),  r_t = √((ρ_t − 4)(ρ_t − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρ_t))
          if ρ_t ≥ threshold, else d_t = m̂_t
    θ ← θ − lr (d_t + wd θ)
  then every `sync_period` steps the Lookahead synchronisation φ ← φ + α(θ − φ), θ ← φ.
  eps sits on √v̂_t as in optax's RAdam (the paper has no eps; Wright's code adds it to √v_t).

  References: Liu et al., 2020, On the variance of the adaptive learning rate and beyond
  (arXiv:1908.03265); Zhang et al., 2019, Lookahead optimizer (arXiv:1907.08610);
  Wright, 2019, Ranger (github.com/lessw2020/Ranger-Deep-Learning-Optimizer).
  """
  inner = base.alias(
      scale_by_radam(b1, b2, eps, threshold=threshold),
      base.maybe_weight_decay(weight_decay),
      learning_rate=learning_rate,
  )
  return with_lookahead(inner, sync_period, slow_step_size)
