"""AdaGrad: per-coordinate step sizes from the running sum of squared gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.preconditioner import register_preconditioner
from optlab_jax.optim.registry import register

__all__ = ["scale_by_adagrad", "adagrad"]


def scale_by_adagrad(
    initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> optax.GradientTransformation:
  """AdaGrad direction (optax's `scale_by_rss`, with checked hyperparameters).

  Update rule:
    s_0 = initial_accumulator_value,   s_t = s_{t-1} + g_t²
    d_t = g_t / √(s_t + eps)           (0 where s_t = 0)

  References: Duchi, Hazan & Singer, 2011, Adaptive subgradient methods for online
  learning and stochastic optimization (JMLR 12).
  """
  checks.check_nonnegative("initial_accumulator_value", initial_accumulator_value)
  checks.check_nonnegative("eps", eps)
  return optax.scale_by_rss(initial_accumulator_value, eps)


@register("adagrad")
def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
) -> optax.GradientTransformationExtraArgs:
  """AdaGrad: p ← p − lr · d_t with d_t from `scale_by_adagrad` (same as `optax.adagrad`)."""
  return base.alias(scale_by_adagrad(initial_accumulator_value, eps), learning_rate=learning_rate)


@register_preconditioner("adagrad", state=optax.ScaleByRssState)
def _preconditioner(state: optax.ScaleByRssState, hp: dict) -> optax.Updates:
  """P = √(s + eps), the denominator of `scale_by_adagrad`."""
  return jax.tree.map(lambda s: jnp.sqrt(s + hp["eps"]), state.sum_of_squares)
