"""Schedule-free AdamW and SGD (optax's), and the averaged point that evaluation must use."""

from __future__ import annotations

from typing import Any

import jax
import optax
from optax import contrib

from optlab_jax import checks
from optlab_jax.optim.registry import register
from optlab_jax.optim.wrapped import check_decays, check_nonnegatives, optax_alias

__all__ = ["schedule_free_adamw", "schedule_free_sgd", "schedule_free_eval_params"]


def _check(b1, warmup_steps, weight_lr_power) -> None:
  # b1 = 0 would divide by zero when x is recovered from y and z.
  checks.check_in_range("b1", b1, 0.0, 1.0, lower_open=True, upper_open=True)
  if warmup_steps is not None:
    checks.check_positive_int("warmup_steps", warmup_steps)
  checks.check_nonnegative("weight_lr_power", weight_lr_power)


@register("schedule_free_adamw")
def schedule_free_adamw(learning_rate: optax.ScalarOrSchedule = 0.0025, warmup_steps: int | None = None,
                        b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                        weight_lr_power: float = 2.0,
                        state_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """Schedule-free AdamW: no decay schedule, an online average x of the base iterates z instead.

    z_{t+1} = z_t − γ_t (g(y_t) / (√v̂_t + eps) + λ y_t)        (v̂: Adam's debiased 2nd moment, no m)
    c_{t+1} = γ_max^p / Σ_{k≤t} γ_max,k^p   (p = weight_lr_power),   x_{t+1} = (1 − c) x_t + c z_{t+1}
    y_{t+1} = b1 x_{t+1} + (1 − b1) z_{t+1}
  The params are y (where gradients are taken); evaluate at x = `schedule_free_eval_params(state, params)`.
  `warmup_steps` prepends a linear warm-up to lr.

  References: Defazio et al., 2024, The road less scheduled (arXiv:2405.15682).
  """
  _check(b1, warmup_steps, weight_lr_power)
  check_decays(b2=b2)
  check_nonnegatives(eps=eps, weight_decay=weight_decay)
  tx = contrib.schedule_free_adamw(learning_rate, warmup_steps, b1, b2, eps, weight_decay, weight_lr_power,
                                   state_dtype)
  return optax_alias(tx, learning_rate)


@register("schedule_free_sgd")
def schedule_free_sgd(learning_rate: optax.ScalarOrSchedule = 1.0, warmup_steps: int | None = None,
                      b1: float = 0.9, weight_decay: float | None = None, weight_lr_power: float = 2.0,
                      state_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """Schedule-free SGD: `schedule_free_adamw`'s averaging over plain SGD steps z ← z − γ (g + λ y).

  References: Defazio et al., 2024, The road less scheduled (arXiv:2405.15682).
  """
  _check(b1, warmup_steps, weight_lr_power)
  check_nonnegatives(weight_decay=weight_decay)
  tx = contrib.schedule_free_sgd(learning_rate, warmup_steps, b1, weight_decay, weight_lr_power, state_dtype)
  return optax_alias(tx, learning_rate)


def _is_schedule_free_state(x) -> bool:
  return isinstance(x, contrib.ScheduleFreeState)


def schedule_free_eval_params(opt_state: Any, params: Any) -> Any:
  """The point to evaluate at: x of the schedule-free state inside `opt_state`, else `params`.

  Finds the `ScheduleFreeState` however it is nested (chain, inject_hyperparams, masking of
  integer leaves) and applies `optax.contrib.schedule_free_eval_params`; leaves it does not
  cover (masked integer leaves) keep their value.
  """
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_free_state) if _is_schedule_free_state(s)]
  if not found:
    return params
  if len(found) > 1:
    raise ValueError("opt_state holds more than one schedule-free state; evaluate each part yourself")
  state = found[0]
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  z = jax.tree.map(lambda zi, p: p if is_masked(zi) else zi, state.z, params, is_leaf=is_masked)
  x = contrib.schedule_free_eval_params(state._replace(z=z), params)
  return jax.tree.map(lambda zi, xi, p: p if is_masked(zi) else xi.astype(p.dtype), state.z, x, params,
                      is_leaf=is_masked)
