"""Projected optimizers: any registered optimizer whose iterates are kept in a box [lower, upper]."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optlab_jax.checks import check_choice, check_in_range
from optlab_jax.optim import registry
from optlab_jax.optim.base import integer_leaves_untouched
from optlab_jax.optim.registry import register

__all__ = ["project_box", "projected"]


def project_box(lower: float | None = None, upper: float | None = None) -> optax.GradientTransformationExtraArgs:
  """Turns an update u into the step to the projection of params + u onto [lower, upper].

  Update rule, with Π the Euclidean projection onto the box (a clip of each coordinate):
    u ← Π(w + u) − w,   so that   w ← Π(w + u).
  None is an open side (no bound there). Put it last in a chain, after the learning rate. For a
  box, the projection in AMSGrad's metric diag(√v̂) (Reddi et al.'s Π_{F, √V̂}) is this same
  coordinate-wise clip, since that metric is diagonal.

  References: Reddi, Kale & Kumar, 2018, On the convergence of Adam and beyond (ICLR;
  arXiv:1904.09237), Algorithm 2's projection step.
  """
  if lower is not None:
    check_in_range("lower", lower, allow_inf=True)  # NaN never passes; traced values are skipped
  if upper is not None:
    floor = lower if lower is not None and not isinstance(lower, jax.core.Tracer) else -math.inf
    check_in_range("upper", upper, floor, allow_inf=True)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("project_box needs the params in `update` (it projects params + updates)")
    low = -float("inf") if lower is None else lower
    high = float("inf") if upper is None else upper
    step = lambda u, w: (jnp.clip(w + u, low, high) - w).astype(w.dtype)
    return jax.tree.map(step, updates, params), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@register("projected")
def projected(
    learning_rate: optax.ScalarOrSchedule,
    lower: float | None = None,
    upper: float | None = None,
    base: str = "sgd",
    base_kwargs: dict[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Any registered optimizer (SGD by default) with its iterates kept in the box [lower, upper].

  Update rule: u ← `get(base)(learning_rate, **base_kwargs)`'s update, then `project_box`:
  w ← Π(w + u). Every iterate lies in [lower, upper] (None: unbounded on that side), as in online
  convex optimization on a bounded feasible set. The base's own hyperparameters are fixed here.
  """
  check_choice("base", base, [n for n in registry.names() if n != "projected"])
  base_tx = registry.get(base)(learning_rate, **(base_kwargs or {}))
  return integer_leaves_untouched(optax.chain(base_tx, project_box(lower, upper)))
