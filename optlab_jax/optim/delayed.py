"""Stale gradients: any registered optimizer fed the gradient of τ steps ago (asynchronous SGD)."""

from __future__ import annotations

from typing import Any, NamedTuple

import math

import jax
import jax.numpy as jnp
import optax

from optlab_jax.checks import check_choice
from optlab_jax.optim import base as base_lib
from optlab_jax.optim import registry
from optlab_jax.optim.registry import register

__all__ = ["DelayState", "delay_gradients", "delayed", "stability_edge"]


class DelayState(NamedTuple):
  """State of `delay_gradients`."""
  buffer: optax.Updates  # tree of [τ, *leaf] arrays: the last τ gradients, a ring; zeros at first
  count: jax.Array       # int32 scalar, updates seen; slot count % τ holds g_{count−τ}


def delay_gradients(tau: int | None = None) -> optax.GradientTransformationExtraArgs:
  """Returns g_{t−τ} at step t (zeros for t < τ) and keeps g_t for step t + τ.

  This is what a parameter server applies when each worker's gradient arrives τ updates after the
  params it was computed at. `tau` (None: 1; 0: the gradient itself) sets the buffer's shape, so
  it is static.
  """
  if isinstance(tau, int) and tau == 0:  # synchronous: a sweep over tau may include 0
    return optax.with_extra_args_support(optax.identity())
  tau = base_lib.static_int("tau", tau, 1)

  def init_fn(params):
    return DelayState(base_lib.stacked_zeros(tau, params), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    slot = state.count % tau
    stale = jax.tree.map(lambda b: b[slot], state.buffer)
    buffer = jax.tree.map(lambda b, g: b.at[slot].set(g.astype(b.dtype)), state.buffer, updates)
    return stale, DelayState(buffer, optax.safe_increment(state.count))

  return optax.with_extra_args_support(optax.GradientTransformation(init_fn, update_fn))


@register("delayed")
def delayed(
    learning_rate: optax.ScalarOrSchedule,
    tau: int | None = None,
    base: str = "sgd",
    base_kwargs: dict[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Any registered optimizer (SGD by default) on gradients τ steps stale.

  Update rule: u_t = base(g_{t−τ}), with g_s = 0 for s < 0; for SGD θ_{t+1} = θ_t − η g(θ_{t−τ}).
  On f = λθ²/2 this is θ_{t+1} = θ_t − ηλ θ_{t−τ}, stable iff every root of
  z^{τ+1} − z^τ + ηλ = 0 lies inside the unit circle: ηλ < 2 sin(π / (2(2τ + 1))), so the largest
  stable lr falls like 1/τ (2/λ at τ = 0; `tau` None: 1). The base sees the stale gradient only:
  `obj_fn` and the like, if it takes them, are evaluated at the current params.

  References: Lian et al., 2015, Asynchronous parallel stochastic gradient for nonconvex
  optimization (NeurIPS, arXiv:1506.08272); Zhang et al., 2016, Staleness-aware async-SGD
  (IJCAI, arXiv:1511.05950).
  """
  check_choice("base", base, [n for n in registry.names() if n != "delayed"])
  base_tx = registry.get(base)(learning_rate, **(base_kwargs or {}))
  return base_lib.integer_leaves_untouched(optax.chain(delay_gradients(tau), base_tx))


def stability_edge(tau: int, curvature: float) -> float:
  """The largest stable learning rate of SGD on gradients τ steps stale, on a quadratic whose
  Hessian's largest eigenvalue is `curvature`: 2 sin(π / (2(2τ + 1))) / λ (2/λ at τ = 0).

  References: Levin & May, 1976, A note on difference-delay equations (Theoretical Population
  Biology 9), the roots of z^{τ+1} − z^τ + a = 0 inside the unit circle iff 0 < a < 2 sin(π/(4τ+2)).
  """
  return 2 * math.sin(math.pi / (2 * (2 * tau + 1))) / curvature
