"""Learning-rate schedules: optax's, re-exported, and those optax lacks.

Ours: the cyclical learning rates of Smith (2017) (`triangular`, `triangular2`, `exp_range`),
inverse-time and inverse-square-root decay, and `linear_warmup` around any schedule. Each maps
a step count (a Python int or a traced integer) to a learning rate, so any of them can be the
`learning_rate` of an optimizer here or in optax.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from optax.schedules import (
    Schedule,
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
)

from optlab_jax import checks

__all__ = [
    # optax's, unchanged
    "Schedule", "constant_schedule", "cosine_decay_schedule", "cosine_onecycle_schedule",
    "exponential_decay", "join_schedules", "linear_onecycle_schedule", "linear_schedule",
    "piecewise_constant_schedule", "piecewise_interpolate_schedule", "polynomial_schedule",
    "sgdr_schedule", "warmup_constant_schedule", "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    # ours
    "triangular", "triangular2", "exp_range", "inverse_time_decay", "inverse_sqrt_decay",
    "linear_warmup",
]


def _float_step(count: jax.typing.ArrayLike) -> jax.Array:
  return jnp.asarray(count, dtype=float)


def _cyclical(
    base_lr: float, max_lr: float, step_size: float, scale: Callable[[jax.Array, jax.Array], jax.Array]
) -> Schedule:
  """Smith's triangle between base_lr and max_lr, its height times scale(cycle, t)."""
  checks.check_nonnegative("base_lr", base_lr)
  checks.check_in_range("max_lr", max_lr, float(base_lr))
  checks.check_positive("step_size", step_size)

  def schedule(count):
    t = _float_step(count)
    cycle = jnp.floor(1.0 + t / (2.0 * step_size))
    x = jnp.abs(t / step_size - 2.0 * cycle + 1.0)
    return base_lr + (max_lr - base_lr) * jnp.maximum(0.0, 1.0 - x) * scale(cycle, t)

  return schedule


def triangular(base_lr: float, max_lr: float, step_size: float) -> Schedule:
  """Cyclical lr rising linearly from base_lr to max_lr over `step_size` steps and back.

    cycle = ⌊1 + t / (2 step_size)⌋,   x = |t / step_size − 2 cycle + 1|
    lr_t = base_lr + (max_lr − base_lr) · max(0, 1 − x)

  References: Smith, 2017, Cyclical learning rates for training neural networks
  (arXiv:1506.01186).
  """
  return _cyclical(base_lr, max_lr, step_size, lambda cycle, t: 1.0)


def triangular2(base_lr: float, max_lr: float, step_size: float) -> Schedule:
  """`triangular` with the height halved every cycle: scale = 1 / 2^(cycle − 1).

  References: Smith, 2017, Cyclical learning rates (arXiv:1506.01186).
  """
  return _cyclical(base_lr, max_lr, step_size, lambda cycle, t: 0.5 ** (cycle - 1.0))


def exp_range(base_lr: float, max_lr: float, step_size: float, gamma: float) -> Schedule:
  """`triangular` with the height shrunk by gamma every step: scale = gammaᵗ, gamma in (0, 1].

  References: Smith, 2017, Cyclical learning rates (arXiv:1506.01186).
  """
  checks.check_in_range("gamma", gamma, 0.0, 1.0, lower_open=True)
  return _cyclical(base_lr, max_lr, step_size, lambda cycle, t: gamma**t)


def _inverse_decay(init_value, decay_rate, decay_steps, staircase, power) -> Schedule:
  checks.check_nonnegative("init_value", init_value)
  checks.check_nonnegative("decay_rate", decay_rate)
  checks.check_positive("decay_steps", decay_steps)

  def schedule(count):
    progress = _float_step(count) / decay_steps
    progress = jnp.floor(progress) if staircase else progress
    return init_value / (1.0 + decay_rate * progress) ** power

  return schedule


def inverse_time_decay(
    init_value: float, decay_rate: float, decay_steps: float = 1.0, staircase: bool = False
) -> Schedule:
  """lr_t = init_value / (1 + decay_rate · t / decay_steps); ⌊t / decay_steps⌋ if `staircase`.

  References: Robbins & Monro, 1951, A stochastic approximation method (the 1/t step sizes).
  """
  return _inverse_decay(init_value, decay_rate, decay_steps, staircase, 1.0)


def inverse_sqrt_decay(
    init_value: float, decay_rate: float, decay_steps: float = 1.0, staircase: bool = False
) -> Schedule:
  """lr_t = init_value / √(1 + decay_rate · t / decay_steps); ⌊t / decay_steps⌋ if `staircase`.

  References: Vaswani et al., 2017, Attention is all you need (arXiv:1706.03762), the
  inverse-square-root decay after warm-up.
  """
  return _inverse_decay(init_value, decay_rate, decay_steps, staircase, 0.5)


def linear_warmup(
    schedule: Schedule | float, warmup_steps: int, init_value: float = 0.0
) -> Schedule:
  """Ramps linearly from init_value to schedule(0) over `warmup_steps`, then schedule(t − warmup_steps).

  Built from optax's `linear_schedule` and `join_schedules`; a float `schedule` is a constant.

  References: Goyal et al., 2017, Accurate, large minibatch SGD: training ImageNet in 1 hour
  (arXiv:1706.02677), gradual warm-up.
  """
  checks.check_positive_int("warmup_steps", warmup_steps)
  checks.check_nonnegative("init_value", init_value)
  if not callable(schedule):
    checks.check_nonnegative("schedule", schedule)
    schedule = constant_schedule(schedule)
  linear = linear_schedule(init_value, schedule(0), int(warmup_steps))
  # optax's ramp computes in float32 when given an int32 count; a float count keeps x64.
  ramp = lambda count: linear(_float_step(count))
  return join_schedules([ramp, schedule], [int(warmup_steps)])
