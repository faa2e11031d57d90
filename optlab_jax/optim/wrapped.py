"""What the thin registry entries over optax's own aliases share: range checks and the wrapper.

An entry checks its hyperparameters with these, then returns `optax_alias(optax's alias, lr)`:
the learning rate checked, integer leaves of params left untouched. The numbers stay optax's.
"""

from __future__ import annotations

from typing import Any

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
