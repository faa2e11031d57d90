"""Lookahead around any optimizer, with the slow weights kept in the optimizer state.

Lookahead acts on whole steps (after the learning rate), not on the gradient direction, so it
is a wrapper `with_lookahead(inner)` rather than a `scale_by_*` direction; the `lookahead`
alias wraps Adam.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.adam import scale_by_adam
from optlab_jax.optim.registry import register

__all__ = ["LookaheadState", "with_lookahead", "lookahead"]


class LookaheadState(NamedTuple):
  """State of `with_lookahead`."""
  count: jax.Array             # int32 scalar: inner (fast) steps taken so far.
  slow: optax.Params           # slow weights φ, moved every `sync_period` steps; tree of params.
  inner_state: optax.OptState  # state of the wrapped (fast) optimizer.


def with_lookahead(
    inner: optax.GradientTransformation,
    sync_period: int = 5,
    slow_step_size: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
  """Lookahead: `inner` takes k fast steps, then the weights move part-way back to the slow ones.

  Update rule, with fast weights θ (the params), slow weights φ, k = `sync_period`,
  α = `slow_step_size` and u_t the update of `inner`:
    θ' = θ_{t-1} + u_t
    if t mod k = 0:   φ ← φ + α (θ' − φ),   θ_t = φ     (synchronisation)
    else:             θ_t = θ'
  φ starts at the initial params. The returned update is θ_t − θ_{t-1}, so this is a drop-in
  transform on ordinary params; keyword extra arguments (`obj_fn=`, ...) go to `inner`, which
  sees the fast params. Integer leaves get `inner`'s update unchanged.

  Deliberate difference from `optax.lookahead`: the slow weights live in the state, not in a
  `LookaheadParams` params tree, so nothing else in a training loop changes. The fast-params
  trajectory is the same (tested to 1e-10 in float64). Evaluate the slow weights with
  `state.slow`. The synchronisation test uses jnp ops on the step count, so `sync_period` and
  `slow_step_size` may be traced (`optax.inject_hyperparams`).

  References: Zhang et al., 2019, Lookahead optimizer: k steps forward, 1 step back
  (arXiv:1907.08610).
  """
  checks.check_positive_int("sync_period", sync_period)
  checks.check_in_range("slow_step_size", slow_step_size, 0.0, 1.0, lower_open=True)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    params = base.materialize(params)
    return LookaheadState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.asarray, params), inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("lookahead needs the params: call tx.update(grads, state, params)")
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    count = optax.safe_increment(state.count)
    sync = count % sync_period == 0

    def new_slow(u, p, s):
      if not checks.is_float(p):
        return s
      alpha = jnp.asarray(slow_step_size, s.dtype)
      return jnp.where(sync, s + alpha * (p + u - s), s)

    def new_update(u, p, s_new):
      return jnp.where(sync, s_new - p, u) if checks.is_float(p) else u

    slow = jax.tree.map(new_slow, updates, params, state.slow)
    updates = jax.tree.map(new_update, updates, params, slow)
    return updates, LookaheadState(count, slow, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("lookahead")
def lookahead(
    learning_rate: optax.ScalarOrSchedule,
    sync_period: int = 5,
    slow_step_size: float = 0.5,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
  """Lookahead around Adam(learning_rate, b1, b2, eps), as in the paper's experiments.

  For another inner optimizer use `with_lookahead(inner, sync_period, slow_step_size)`.
  """
  inner = base.alias(scale_by_adam(b1, b2, eps), learning_rate=learning_rate)
  return with_lookahead(inner, sync_period, slow_step_size)
