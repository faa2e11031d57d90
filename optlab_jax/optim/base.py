"""The optimizer contract's shared parts: aliases, weight decay, integer leaves, every-k steps.

Hyperparameter and extra-argument checks live on the ground floor (`optlab_jax.checks`);
this module builds the user-facing alias (`alias`) and the pieces several optimizers share.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks


def integer_leaves_untouched(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Applies `tx` to the floating-point leaves only; integer leaves get zero updates.

  When every leaf is floating point (the common case) `tx` runs as it is, so its state
  keeps its own structure. Otherwise `tx` sees the float leaves only (optax.masked), and
  the function-valued extra args (`obj_fn`, `model_fn`, `value_fn`) are wrapped so that they
  still receive the full params, integer leaves filled in.
  """
  tx = optax.with_extra_args_support(tx)
  masked = optax.masked(
      tx, lambda tree: jax.tree.map(checks.is_float, tree), mask_compatible_extra_args=True
  )

  def all_float(tree):
    return all(checks.is_float(x) for x in jax.tree.leaves(tree))

  def init_fn(params):
    return tx.init(params) if all_float(params) else masked.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    if all_float(updates):
      return tx.update(updates, state, params, **extra_args)
    for key in _FUNCTION_ARGS.intersection(extra_args):
      if params is not None and callable(extra_args[key]):
        extra_args[key] = _with_integer_leaves(extra_args[key], params)
    updates, state = masked.update(updates, state, params, **extra_args)
    updates = jax.tree.map(lambda u: u if checks.is_float(u) else jnp.zeros_like(u), updates)
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# Extra args that are functions of the full params tree.
_FUNCTION_ARGS = frozenset({"obj_fn", "model_fn", "value_fn"})


def _with_integer_leaves(fn: Callable, full_params: Any) -> Callable:
  """`fn` of the full params, as a function of the masked (float-only) params."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)

  def wrapped(float_params, *args, **kwargs):
    merged = jax.tree.map(
        lambda m, full: full if is_masked(m) else m, float_params, full_params, is_leaf=is_masked
    )
    return fn(merged, *args, **kwargs)

  return wrapped


def alias(
    *transforms: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
  """The user-facing optimizer: `chain(*transforms, scale_by_learning_rate(lr))`.

  Integer leaves of params are left untouched (see `integer_leaves_untouched`).
  """
  checks.check_learning_rate(learning_rate)
  return integer_leaves_untouched(
      optax.chain(*transforms, optax.scale_by_learning_rate(learning_rate))
  )


def maybe_weight_decay(weight_decay: Any, mask: Any = None) -> optax.GradientTransformation:
  """`optax.add_decayed_weights` after checking `weight_decay >= 0` (or that it is a schedule)."""
  if not callable(weight_decay):
    checks.check_nonnegative("weight_decay", weight_decay)
  return optax.add_decayed_weights(weight_decay, mask)


def every_k_steps(count: jax.Array, k: Any, fn, *operands):
  """`fn(*operands)` when count % k == 0, else `operands` unchanged (`lax.cond`; k may be traced).

  A Python k = 1 calls `fn` without `lax.cond`: on XLA CPU a convolution inside control flow
  runs 40–50× slower (jax-ml/jax#12868), so an every-step estimate must stay outside it.
  """
  if isinstance(k, int) and k == 1:
    return fn(*operands)
  return jax.lax.cond(count % k == 0, fn, lambda *ops: ops, *operands)


Factory = Callable[..., optax.GradientTransformationExtraArgs]
