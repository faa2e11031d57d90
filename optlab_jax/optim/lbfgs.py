"""L-BFGS: optax's `lbfgs` (two-loop direction, zoom line search) under our registry name.

The chain is optax.lbfgs's own (`scale_by_lbfgs`, `scale_by_learning_rate`, line search),
with two adapters so that it keeps the contract: its state follows the params' dtype and
keeps its types across steps, and the line search ignores the extra args of other members.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.registry import register

__all__ = ["lbfgs"]


def _memory_like_params(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """optax's `scale_by_lbfgs`, its ρ_i memory (created in the default float dtype) in the params'
  dtype and its (s_i, y_i) memories sharded like the params (optax creates them unsharded)."""

  def init_fn(params):
    state = tx.init(params)
    stack = base.stacked_zeros(state.weights_memory.shape[0], params)
    return state._replace(weights_memory=state.weights_memory.astype(base.params_dtype(params)),
                          diff_params_memory=stack, diff_updates_memory=stack)

  return optax.GradientTransformation(init_fn, tx.update)


_STAND_IN = "__lbfgs_params_stand_in__"


def _line_search_args_only(linesearch: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`linesearch`, handed only `value`, `grad` and `value_fn` of the extra args, its state strongly typed.

  optax's line searches forward every other extra arg to `value_fn` and reject the ones it
  does not take; in a chain, the args meant for other members (`obj_fn`, `model_fn`, …)
  arrive too, so they are dropped here.
  """
  linesearch = optax.with_extra_args_support(linesearch)

  def init_fn(params):
    if not jax.tree.leaves(params):
      # optax's line searches read a dtype off the first leaf; a tree without leaves
      # (`optax.tree.map_params`'s placeholder) gets a float32 stand-in's state with params put
      # back where the stand-in's copies are, so that map_params finds them.
      state = init_fn({_STAND_IN: jnp.zeros([], jnp.float32)})
      is_stand_in = lambda x: isinstance(x, dict) and set(x) == {_STAND_IN}
      return jax.tree.map(lambda x: params if is_stand_in(x) else x, state, is_leaf=is_stand_in)
    # optax's zoom search starts some info scalars weakly typed and returns them strongly
    # typed, which would retrace a jitted step on its second call.
    return jax.tree.map(lambda x: jnp.asarray(x, x.dtype), linesearch.init(params))

  def update_fn(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args):
    del extra_args
    grad = None if grad is None else base.like_params(grad, params)
    return linesearch.update(updates, state, params, value=value, grad=grad, value_fn=value_fn)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("lbfgs")
def lbfgs(
    learning_rate: optax.ScalarOrSchedule,
    memory_size: int | None = None,
    scale_init_precond: bool = True,
    linesearch: optax.GradientTransformationExtraArgs | None = optax.scale_by_zoom_linesearch(
        max_linesearch_steps=20, initial_guess_strategy="one"),
) -> optax.GradientTransformationExtraArgs:
  """L-BFGS: θ ← θ + η · (−lr · H_k g), η from a line search on `value_fn`.

  H_k g is the two-loop recursion over the last `memory_size` pairs (s_i = θ_{i+1} − θ_i,
  y_i = g_{i+1} − g_i; None: 10, static: it sets the memory's shape), with
  H_0 = (sᵀy / yᵀy) I when `scale_init_precond`. g is the incoming update, so a clipping or
  accumulation before this transform shapes the direction and the pairs; the line search
  evaluates f and ∇f itself through `value_fn`, starting from `value=` and `grad=`. The line search
  (optax's default: zoom line search, strong Wolfe conditions; None: no line search) needs
  `value=`, `grad=` and `value_fn=` in `update`, exactly as `optax.lbfgs`; lr = 1 is the
  natural setting. Other extra args are not forwarded to `value_fn` (bind the batch into it).
  Integer leaves of params are left untouched.

  References: Nocedal, 1980, Updating quasi-Newton matrices with limited storage; Liu &
  Nocedal, 1989, On the limited memory BFGS method for large scale optimization.
  """
  checks.check_learning_rate(learning_rate)
  memory_size = base.static_int("memory_size", memory_size, 10)
  return base.integer_leaves_untouched(optax.chain(
      _memory_like_params(optax.scale_by_lbfgs(memory_size, scale_init_precond)),
      optax.scale_by_learning_rate(learning_rate),
      optax.identity() if linesearch is None else _line_search_args_only(linesearch),
  ))
