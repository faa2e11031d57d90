"""What the thin registry entries over optax's own aliases share: range checks and the wrapper.

An entry checks its hyperparameters with these, then returns `optax_alias(optax's alias, lr)`:
the learning rate checked, integer leaves of params left untouched. The numbers stay optax's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base


def check_decays(**decays: Any) -> None:
  """`checks.check_decay` for each value that is not a schedule."""
  for name, value in decays.items():
    if not callable(value):
      checks.check_decay(name, value)


def check_nonnegatives(**values: Any) -> None:
  """`checks.check_nonnegative` for each value that is neither None nor a schedule."""
  for name, value in values.items():
    if value is not None and not callable(value):
      checks.check_nonnegative(name, value)


def optax_alias(tx: optax.GradientTransformation, learning_rate: Any) -> optax.GradientTransformationExtraArgs:
  """optax's `tx` with `learning_rate` checked and integer leaves of params untouched."""
  checks.check_learning_rate(learning_rate)
  return base.integer_leaves_untouched(tx)


def skip_zero_learning_rate(tx: optax.GradientTransformation, learning_rate: Any) -> optax.GradientTransformationExtraArgs:
  """`tx` whose update at a zero learning rate (a warm-up from 0) is exactly zero and leaves its
  state as it was, only its step count advancing; unchanged wherever the learning rate is not 0.

  For methods that use the learning rate inside their own arithmetic, where optax's update at
  lr = 0 is 0/0 = NaN (Prodigy's step-size estimate) or a rounding residue (MADGRAD's average).
  The learning rate is evaluated at the state's `count`, as those methods do.
  """
  if not callable(learning_rate):
    return optax.with_extra_args_support(tx)
  tx = optax.with_extra_args_support(tx)
  has_count = lambda s: "count" in getattr(s, "_fields", ())  # a NamedTuple state with a count field

  def update_fn(updates, state, params=None, **extra_args):
    (count,) = [s.count for s in jax.tree.leaves(state, is_leaf=has_count) if has_count(s)][:1]
    zero = learning_rate(count) == 0
    new_updates, new_state = tx.update(updates, state, params, **extra_args)
    new_updates = jax.tree.map(lambda u: jnp.where(zero, jnp.zeros_like(u), u), new_updates)
    keep = lambda old, new: new if jnp.issubdtype(new.dtype, jnp.integer) else jnp.where(zero, old, new)
    return new_updates, jax.tree.map(keep, state, new_state)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)
