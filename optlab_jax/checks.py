"""The ground floor: argument validators and small helpers that every layer may import.

Every hyperparameter is checked at construction with `check_*` (a `ValueError` that names the
argument, the value and the allowed range); a missing extra argument of `update` is asked for
by `require_extra_arg`; an unknown name gets the closest known one from `did_you_mean`. This
module imports nothing of optlab_jax, so the layers above it (curvature, optim, problems,
train, config) share one copy of each rule.
"""

from __future__ import annotations

import collections.abc
import difflib
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "check_choice", "check_decay", "check_in_range", "check_learning_rate", "check_nonnegative",
    "check_positive", "check_positive_int", "check_seed", "did_you_mean", "is_float", "require_extra_arg",
]


def _concrete(value: Any) -> float | None:
  """The value as a float, or None when it is traced (then it cannot be checked)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"expected a number, got {value!r}") from e


def check_in_range(
    name: str,
    value: Any,
    lower: float = -math.inf,
    upper: float = math.inf,
    *,
    lower_open: bool = False,
    upper_open: bool = False,
    allow_inf: bool = False,
) -> None:
  """Raises `ValueError` naming `name` unless `value` lies in the given interval.

  NaN never passes, and ±inf only with `allow_inf=True` (where infinity means something, such
  as "no bound"): a YAML `1e400` reads as inf and must not slip through an unbounded range.
  Traced values (``optax.inject_hyperparams`` under ``jit``) pass unchecked: they were
  checked when the transform was first built with concrete values.
  """
  x = _concrete(value)
  if x is None:
    return
  below = x <= lower if lower_open else x < lower
  above = x >= upper if upper_open else x > upper
  if below or above or math.isnan(x) or (math.isinf(x) and not allow_inf):
    left = "(" if lower_open or (lower == -math.inf and not allow_inf) else "["
    right = ")" if upper_open or (upper == math.inf and not allow_inf) else "]"
    raise ValueError(f"{name}={value!r} is out of range; expected {name} in {left}{lower}, {upper}{right}")


def check_nonnegative(name: str, value: Any) -> None:
  """`ValueError` unless value >= 0."""
  check_in_range(name, value, 0.0)


def check_positive(name: str, value: Any) -> None:
  """`ValueError` unless value > 0."""
  check_in_range(name, value, 0.0, lower_open=True)


def check_decay(name: str, value: Any) -> None:
  """`ValueError` unless value is in [0, 1) (EMA decay rates, momenta)."""
  check_in_range(name, value, 0.0, 1.0, upper_open=True)


def check_positive_int(name: str, value: Any) -> None:
  """`ValueError` unless value is an integer >= 1 (periods, intervals, sizes)."""
  x = _concrete(value)
  if x is not None and (math.isnan(x) or math.isinf(x) or x < 1 or x != int(x)):
    raise ValueError(f"{name}={value!r} is out of range; expected an integer {name} >= 1")


def check_seed(name: str, value: Any) -> None:
  """`ValueError` unless value is an integer in the int32 range (a PRNG seed; traced as int32)."""
  x = _concrete(value)
  if x is not None and (math.isnan(x) or math.isinf(x) or x != int(x) or not -2**31 <= x < 2**31):
    raise ValueError(f"{name}={value!r} is out of range; expected an integer {name} in [-2**31, 2**31)")


def check_learning_rate(learning_rate: optax.ScalarOrSchedule) -> None:
  """A learning rate is a schedule (callable) or a number >= 0."""
  if not callable(learning_rate):
    check_nonnegative("learning_rate", learning_rate)


def check_choice(name: str, value: Any, allowed: collections.abc.Sequence[Any]) -> None:
  """`ValueError` unless `value` is one of `allowed` (a likelihood, an estimator, a loop)."""
  if value not in allowed:
    raise ValueError(
        f"{name}={value!r} is not supported{did_you_mean(str(value), map(str, allowed))}; "
        f"expected one of {tuple(allowed)}"
    )


def require_extra_arg(name: str, value: Any, example: str) -> None:
  """Raises `ValueError` telling the caller which keyword to pass to `update`, if missing."""
  if value is None:
    raise ValueError(
        f"this optimizer needs the keyword argument `{name}` in update(); "
        f"call tx.update(grads, state, params, {example})"
    )


def is_float(x: Any) -> bool:
  """Whether an array (or dtype-carrying leaf) is floating point or complex."""
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


# PyTorch's names of hyperparameters, for the did-you-mean of an unknown key.
_TORCH_NAMES = {"lr": "learning_rate", "betas": "b1", "beta1": "b1", "beta2": "b2", "alpha": "decay"}


def did_you_mean(name: str, known: collections.abc.Iterable[str]) -> str:
  """"; did you mean 'x'?" with the closest known name (difflib, or PyTorch's name for it), or ""."""
  known = list(known)
  if _TORCH_NAMES.get(name) in known:
    return f"; did you mean {_TORCH_NAMES[name]!r}?"
  close = difflib.get_close_matches(name, known, n=1)
  return f"; did you mean {close[0]!r}?" if close else ""
