"""Gradient clipping by global norm in front of any registered optimizer."""

from __future__ import annotations

from typing import Any

import optax

from optlab_jax.checks import check_choice, check_positive
from optlab_jax.optim import registry
from optlab_jax.optim.base import integer_leaves_untouched
from optlab_jax.optim.registry import register

__all__ = ["clipped"]


@register("clipped")
def clipped(
    learning_rate: optax.ScalarOrSchedule,
    max_norm: float = 1.0,
    base: str = "sgd",
    base_kwargs: dict[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Any registered optimizer (SGD by default) on gradients clipped to global norm `max_norm`.

  Update rule: g ← g · min(1, max_norm / ‖g‖₂), then `get(base)(learning_rate, **base_kwargs)`.
  A step of plain SGD is then at most lr · max_norm long, however steep the loss: the exploding
  gradients of a deep chain started at W = w·I, w > 1, stay trainable.

  References: Pascanu, Mikolov & Bengio, 2013, On the difficulty of training recurrent neural
  networks (ICML; arXiv:1211.5063), §3.2.
  """
  check_positive("max_norm", max_norm)
  check_choice("base", base, [n for n in registry.names() if n != "clipped"])
  base_tx = registry.get(base)(learning_rate, **(base_kwargs or {}))
  return integer_leaves_untouched(optax.chain(optax.clip_by_global_norm(max_norm), base_tx))
