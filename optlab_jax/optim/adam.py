"""Adam and its Nesterov variant Nadam, on optax's `scale_by_adam`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.preconditioner import register_preconditioner
from optlab_jax.optim.registry import register

__all__ = ["scale_by_adam", "adam", "nadam"]


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
  """Adam direction (optax's `scale_by_adam`, with checked hyperparameters).

  Update rule:
    m_t = β1 m_{t-1} + (1 − β1) g_t,     v_t = β2 v_{t-1} + (1 − β2) g_t²
    m̂_t = m_t / (1 − β1ᵗ),               v̂_t = v_t / (1 − β2ᵗ)
    d_t = m̂_t / (√(v̂_t + eps_root) + eps)
  Nadam (`nesterov=True`) uses m̂_t = β1 m_t/(1 − β1ᵗ⁺¹) + (1 − β1) g_t/(1 − β1ᵗ).

  References: Kingma & Ba, 2015, Adam: A method for stochastic optimization
  (arXiv:1412.6980); Dozat, 2016, Incorporating Nesterov momentum into Adam.
  """
  checks.check_decay("b1", b1)
  checks.check_decay("b2", b2)
  checks.check_nonnegative("eps", eps)
  checks.check_nonnegative("eps_root", eps_root)
  return optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


@register("adam")
def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Adam: p ← p − lr · d_t with d_t from `scale_by_adam` (`nesterov=True` is `nadam`)."""
  return base.alias(
      scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov), learning_rate=learning_rate
  )


@register("nadam")
def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Nadam: Adam with a Nesterov look-ahead on the first moment (see `scale_by_adam`)."""
  return base.alias(
      scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=True), learning_rate=learning_rate
  )


# Every optimizer whose direction is `scale_by_adam` alone (LAMB's trust ratio is not diagonal).
@register_preconditioner("adam", "nadam", "adamw", "adam_l2", "lazy_adam", state=optax.ScaleByAdamState)
def _preconditioner(state: optax.ScaleByAdamState, hp: dict) -> Any:
  """P = √(ν/(1 − β2ᵗ) + eps_root) + eps, the denominator of `scale_by_adam`."""
  t = jnp.maximum(state.count, 1)
  return jax.tree.map(
      lambda v: jnp.sqrt(v / (1 - hp["b2"] ** t.astype(v.dtype)) + hp["eps_root"]) + hp["eps"], state.nu)
