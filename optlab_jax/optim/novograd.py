"""NovoGrad: layer-wise second moments (one scalar per leaf) with decoupled weight decay."""

from __future__ import annotations

from typing import Any

import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.registry import register

__all__ = ["scale_by_novograd", "novograd"]


def scale_by_novograd(
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  """NovoGrad direction (optax's `scale_by_novograd`, with checked hyperparameters).

  Update rule, per leaf (layer) p, with a scalar v per leaf:
    v_1 = ‖g_1‖²,                        v_t = β2 v_{t-1} + (1 − β2) ‖g_t‖²
    a_t = g_t / (√(v_t + eps_root) + eps) + λ p
    m_1 = a_1,                           m_t = β1 m_{t-1} + a_t,      d_t = m_t

  References: Ginsburg et al., 2019, Stochastic gradient methods with layer-wise adaptive
  moments for training of deep networks (arXiv:1905.11286).
  """
  checks.check_decay("b1", b1)
  checks.check_decay("b2", b2)
  checks.check_nonnegative("eps", eps)
  checks.check_nonnegative("eps_root", eps_root)
  checks.check_nonnegative("weight_decay", weight_decay)
  return optax.scale_by_novograd(b1, b2, eps, eps_root, weight_decay, mu_dtype)


@register("novograd")
def novograd(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """NovoGrad: p ← p − lr · d_t with d_t from `scale_by_novograd` (same as `optax.novograd`)."""
  return base.alias(scale_by_novograd(b1, b2, eps, eps_root, weight_decay), learning_rate=learning_rate)
