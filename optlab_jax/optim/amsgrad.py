"""AMSGrad: Adam whose denominator never shrinks (a running max of the second moment)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.preconditioner import register_preconditioner
from optlab_jax.optim.registry import register

__all__ = ["scale_by_amsgrad", "amsgrad"]


def scale_by_amsgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> optax.GradientTransformation:
  """AMSGrad direction (optax's `scale_by_amsgrad`, with checked hyperparameters).

  Update rule:
    m_t = β1 m_{t-1} + (1 − β1) g_t,     v_t = β2 v_{t-1} + (1 − β2) g_t²
    m̂_t = m_t / (1 − β1ᵗ),               v̂_t = v_t / (1 − β2ᵗ)
    v̂max_t = max(v̂max_{t-1}, v̂_t),       d_t = m̂_t / (√(v̂max_t + eps_root) + eps)
  The max runs over bias-corrected v̂ (as in optax); with both `bias_correction_*` off it
  is the paper's Algorithm 2 with constant β1, the max over raw v.

  References: Reddi, Kale & Kumar, 2018, On the convergence of Adam and beyond (ICLR).
  """
  checks.check_decay("b1", b1)
  checks.check_decay("b2", b2)
  checks.check_nonnegative("eps", eps)
  checks.check_nonnegative("eps_root", eps_root)
  return optax.scale_by_amsgrad(
      b1, b2, eps, eps_root, mu_dtype,
      bias_correction_mu=bias_correction_mu, bias_correction_nu=bias_correction_nu,
  )


@register("amsgrad")
def amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """AMSGrad: p ← p − lr · d_t with d_t from `scale_by_amsgrad` (same as `optax.amsgrad`)."""
  return base.alias(
      scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, bias_correction_mu, bias_correction_nu),
      learning_rate=learning_rate,
  )


@register_preconditioner("amsgrad", state=optax.ScaleByAmsgradState)
def _preconditioner(state: optax.ScaleByAmsgradState, hp: dict) -> Any:
  """P = √(v̂max + eps_root) + eps, the denominator of `scale_by_amsgrad`."""
  return jax.tree.map(lambda v: jnp.sqrt(v + hp["eps_root"]) + hp["eps"], state.nu_max)
