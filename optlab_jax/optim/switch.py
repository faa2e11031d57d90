"""Switch: one optimizer for the first `switch_step` updates, another one from then on.

The common use is Adam → L-BFGS for physics-informed networks: Adam's cheap steps find the basin,
L-BFGS's line-searched quasi-Newton steps converge inside it (Rathore et al., 2024).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.curvature import loops
from optlab_jax.optim.registry import get, names, register
from optlab_jax.optim.wrapped import optax_alias

__all__ = ["SwitchState", "switch"]


class SwitchState(NamedTuple):
  """State of `switch`."""
  count: jax.Array    # int32 scalar: updates applied so far.
  first: Any          # the first optimizer's state (frozen from the switch on).
  second: Any         # the second optimizer's state (as initialised until the switch).


def _build(role: str, tx: Any, learning_rate: Any, kwargs: dict | None) -> optax.GradientTransformationExtraArgs:
  """A registry name built as `get(tx)(learning_rate, **kwargs)`, or a transform as it is."""
  if isinstance(tx, str):
    checks.check_choice(role, tx, names())
    tx = get(tx)(learning_rate, **(kwargs or {}))
  elif not isinstance(tx, optax.GradientTransformation):
    raise ValueError(f"{role}={tx!r} must be a registry name or an optax transform")
  elif kwargs:
    raise ValueError(f"{role}_kwargs={kwargs!r} needs {role} to be a registry name, got a transform")
  return optax.with_extra_args_support(tx)


@register("switch")
def switch(
    learning_rate: optax.ScalarOrSchedule,
    first: Any = "adam",
    second: Any = "lbfgs",
    switch_step: int = 100,
    second_learning_rate: optax.ScalarOrSchedule = 1.0,
    first_kwargs: dict | None = None,
    second_kwargs: dict | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Updates with `first` for t < switch_step, with `second` from then on.

    u_t = first(g_t)   for t < switch_step   (its state advances, the second's waits)
    u_t = second(g_t)  for t ≥ switch_step   (starting from its initial state: no memory of phase 1)

  `first` and `second` are registry names, built as `get(first)(learning_rate, **first_kwargs)`
  and `get(second)(second_learning_rate, **second_kwargs)` (L-BFGS's natural lr is 1), or
  transforms that carry their own learning rates. Each gets every extra argument of `update`
  (L-BFGS's line search reads `value`, `grad`, `value_fn`). One cond picks the branch
  (`curvature.loops.cond`, so convolutions keep XLA CPU's fast path); under `jax.vmap` over
  runs a cond becomes a select, and each step pays for both optimizers.

  References: Rathore et al., 2024, Challenges in training PINNs: a loss landscape perspective
  (ICML, arXiv:2402.01868), Adam followed by L-BFGS.
  """
  checks.check_in_range("switch_step", switch_step, 0.0, 2.0**31 - 1)
  if not callable(second_learning_rate):
    checks.check_nonnegative("second_learning_rate", second_learning_rate)
  first = _build("first", first, learning_rate, first_kwargs)
  second = _build("second", second, second_learning_rate, second_kwargs)

  def init_fn(params):
    return SwitchState(jnp.zeros([], jnp.int32), first.init(params), second.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    def run_first(updates, first_state, second_state):
      updates, first_state = first.update(updates, first_state, params, **extra_args)
      return updates, first_state, second_state

    def run_second(updates, first_state, second_state):
      updates, second_state = second.update(updates, second_state, params, **extra_args)
      return updates, first_state, second_state

    updates, first_state, second_state = loops.cond(
        state.count < switch_step, run_first, run_second, updates, state.first, state.second)
    return updates, SwitchState(optax.safe_increment(state.count), first_state, second_state)

  return optax_alias(optax.GradientTransformationExtraArgs(init_fn, update_fn), learning_rate)
