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
from optlab_jax.curvature import loops


def integer_leaves_untouched(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Applies `tx` to the floating-point leaves only; integer leaves get zero updates.

  When every leaf is floating point (the common case) `tx` runs as it is, so its state
  keeps its own structure. Otherwise `tx` sees the float leaves only (optax.masked), and
  the function-valued extra args are given the full params (`with_full_params`).
  """
  tx = optax.with_extra_args_support(tx)
  masked = with_full_params(optax.masked(
      tx, lambda tree: jax.tree.map(checks.is_float, tree), mask_compatible_extra_args=True
  ))

  def all_float(tree):
    return all(checks.is_float(x) for x in jax.tree.leaves(tree))

  def init_fn(params):
    params = materialize(params)
    return tx.init(params) if all_float(params) else masked.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    if all_float(updates):
      return tx.update(updates, state, params, **extra_args)
    updates, state = masked.update(updates, state, params, **extra_args)
    updates = jax.tree.map(lambda u: u if checks.is_float(u) else jnp.zeros_like(u), updates)
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def materialize(params: Any) -> Any:
  """Params given as `jax.ShapeDtypeStruct`s (a model known by its shapes) as zeros of that
  shape, dtype and sharding; other leaves as they are.

  optax's `tree.dtype` (read by several of its transforms' init) and a state that copies the
  params cannot read an abstract leaf, so `init` from shapes builds the state at zero params:
  the state's shapes, dtypes and shardings are those of the real one (a template for
  `out_shardings` or for restoring a checkpoint); a copy of the params in it holds zeros.
  """
  def leaf(x):
    return jnp.zeros(x.shape, x.dtype, device=x.sharding) if isinstance(x, jax.ShapeDtypeStruct) else x
  return jax.tree.map(leaf, params)


def stacked_zeros(m: int, params: Any) -> Any:
  """m zeros of each leaf on a new leading axis, each keeping its leaf's dtype and sharding
  (a memory of past vectors written row by row; an unsharded stack beside a sharded param is
  a type error under sharding-in-types)."""
  return jax.tree.map(lambda x: jnp.broadcast_to(jnp.zeros_like(x)[None], (m, *jnp.shape(x))), params)


# Extra args that are functions of the full params tree.
FUNCTION_ARGS = frozenset({"obj_fn", "model_fn", "value_fn"})


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def fill_masked(fn: Callable, full_params: Any) -> Callable:
  """`fn` of the full params as a function of a subset: `optax.MaskedNode` leaves are filled
  in from `full_params` (held fixed); a tree without masked leaves is passed as it is."""

  def wrapped(params, *args, **kwargs):
    merged = jax.tree.map(
        lambda m, full: full if _is_masked(m) else m, params, full_params, is_leaf=_is_masked
    )
    return fn(merged, *args, **kwargs)

  return wrapped


def like_params(tree: Any, params: Any) -> Any:
  """`tree` (shaped like the full params) restricted to the leaves `params` holds: a MaskedNode
  where `params` has one. A `grad=` extra arg reaches a masked inner transform in full."""
  if params is None:
    return tree
  return jax.tree.map(lambda p, t: p if _is_masked(p) else t, params, tree, is_leaf=_is_masked)


def with_full_params(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`tx` whose inner transforms' `obj_fn`, `model_fn` and `value_fn` see the full params.

  `optax.masked` and `optax.multi_transform` hand their inner transforms params whose other
  leaves are `optax.MaskedNode`s, but these extra args are functions of the whole tree. Wrapped
  by this, each is called on the subset with the other leaves filled in at their current
  values (`fill_masked`), so a curvature optimizer on a subset S takes its products with
  respect to S, the rest held fixed: H_SS v, J_Sᵀ H_out J_S v, the sub-block of the full
  curvature. Wrap the outermost masking transform, e.g.
  `with_full_params(optax.multi_transform({"k": adahessian(0.1), "b": optax.adam(1e-3)}, labels))`.
  """
  tx = optax.with_extra_args_support(tx)

  def update_fn(updates, state, params=None, **extra_args):
    if params is not None:
      extra_args = {k: fill_masked(v, params) if k in FUNCTION_ARGS and callable(v) else v
                    for k, v in extra_args.items()}
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def static_int(name: str, value: Any, default: int) -> int:
  """`value` (None: `default`) as a Python int >= 1, for a hyperparameter that sets a shape
  or a Python branch.

  `optax.inject_hyperparams` turns every numeric argument it is given into an array, so such
  an argument arrives here as one and is refused with a `ValueError` naming the `static_args`.
  Its default is None, so the bare `inject_hyperparams(f)(learning_rate=lr)` never injects it.
  """
  if value is None:
    return default
  if isinstance(value, (jax.Array, jax.core.Tracer)):
    raise ValueError(
        f"{name} sets a shape or a Python branch and cannot be a traced hyperparameter; "
        f"pass static_args=({name!r},) to optax.inject_hyperparams"
    )
  checks.check_positive_int(name, value)
  return int(value)


def params_dtype(params: Any) -> jnp.dtype:
  """The widest dtype among params' leaves (float32 for a tree without leaves, such as
  `optax.tree.map_params`'s placeholder)."""
  return optax.tree.dtype(params, "highest")


def check_real(name: str, params: Any) -> None:
  """`ValueError` naming the dtype if params hold complex leaves (for methods without a complex form)."""
  for leaf in jax.tree.leaves(params):
    if jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
      raise ValueError(f"{name} does not support complex parameters (got a {jnp.result_type(leaf)} leaf); "
                       "its curvature model is defined for real parameters only")


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
  """`fn(*operands)` when count % k == 0, else `operands` unchanged (a cond; k may be traced).

  The cond is `curvature.loops.cond`: on XLA CPU a convolution inside control flow runs 40–50×
  slower (jax-ml/jax#12868), so there a refresh with convolutions runs as its own plainly
  jitted program. A Python k = 1 calls `fn` directly.
  """
  if isinstance(k, int) and k == 1:
    return fn(*operands)
  return loops.cond(count % k == 0, fn, lambda *ops: ops, *operands)


Factory = Callable[..., optax.GradientTransformationExtraArgs]
