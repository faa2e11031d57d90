"""Sharpness-aware minimisation: SAM and its scale-invariant variant ASAM, on any base optimizer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optlab_jax.checks import check_choice, check_nonnegative, require_extra_arg
from optlab_jax.optim import registry
from optlab_jax.optim.base import check_real, integer_leaves_untouched
from optlab_jax.optim.registry import register

__all__ = ["scale_by_sam", "sam", "asam"]


def scale_by_sam(
    rho: float = 0.05, *, adaptive: bool = False, eta: float = 0.01
) -> optax.GradientTransformationExtraArgs:
  """SAM direction: the gradient at the (first-order) worst point of a ρ-ball. Needs `obj_fn=`.

  Update rule, with g the incoming updates (the gradient at w):
    SAM:   ε = ρ g / ‖g‖₂
    ASAM:  ε = ρ T² g / ‖T g‖₂,   T = diag(|w| + η)          (`adaptive=True`)
    d = ∇f(w + ε),   f = `obj_fn`
  ρ ≥ 0 is the radius of the ball (ASAM's is relative to |w|); ε = 0 when g = 0. The
  incoming updates only set ε's direction; the gradient returned is re-evaluated by `obj_fn`
  at w + ε. So a global-norm clipping placed before this transform has no effect (clip after
  it), and under `optax.MultiSteps` ε follows the mean micro-batch gradient while d is the
  last micro-batch's gradient at w + ε. Neither can be detected from inside the transform,
  so it is documented here, not refused. Chain any optax optimizer after it, e.g.
  `optax.chain(scale_by_sam(0.05), optax.adamw(1e-3))`. T scales every leaf (Kwon et al.'s
  code leaves biases unscaled, T = 1). Costs one gradient of `obj_fn` beyond the caller's.

  References: Foret et al., 2020, Sharpness-aware minimization for efficiently improving
  generalization (arXiv:2010.01412); Kwon et al., 2021, ASAM: Adaptive sharpness-aware
  minimization for scale-invariant learning of deep neural networks (arXiv:2102.11600).
  """
  check_nonnegative("rho", rho)
  check_nonnegative("eta", eta)

  def init_fn(params):
    check_real("asam" if adaptive else "sam", params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, obj_fn=None, **extra_args):
    del extra_args
    require_extra_arg("obj_fn", obj_fn, example="obj_fn=lambda p: loss_fn(p, batch)")
    if params is None:
      raise ValueError("scale_by_sam needs params: call tx.update(grads, state, params, obj_fn=...)")
    if adaptive:
      scale = jax.tree.map(lambda w: jnp.abs(w) + eta, params)
      scaled = jax.tree.map(jnp.multiply, scale, updates)             # T g
      direction = jax.tree.map(jnp.multiply, scale, scaled)           # T² g
    else:
      scaled = direction = updates
    norm = optax.tree.norm(scaled)
    step = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1), 0)
    perturbed = jax.tree.map(lambda w, d: (w + step * d).astype(w.dtype), params, direction)
    return jax.grad(obj_fn)(perturbed), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _on_base(direction, learning_rate, base, base_kwargs):
  check_choice("base", base, [n for n in registry.names() if n not in ("sam", "asam")])
  base_tx = registry.get(base)(learning_rate, **(base_kwargs or {}))
  return integer_leaves_untouched(optax.chain(direction, base_tx))


@register("sam")
def sam(
    learning_rate: optax.ScalarOrSchedule,
    rho: float = 0.05,
    base: str = "sgd",
    base_kwargs: dict[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SAM: any registered optimizer, stepping along the gradient at the worst point of a ρ-ball.

  The base optimizer is `get(base)(learning_rate, **base_kwargs)` and steps along the direction
  of `scale_by_sam`; weight decay and momentum belong to the base.

  The base's own hyperparameters are fixed here; to sweep them, chain `scale_by_sam` before
  `optax.inject_hyperparams(get(base))(...)`.
  """
  return _on_base(scale_by_sam(rho), learning_rate, base, base_kwargs)


@register("asam")
def asam(
    learning_rate: optax.ScalarOrSchedule,
    rho: float = 0.5,
    eta: float = 0.01,
    base: str = "sgd",
    base_kwargs: dict[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """ASAM: like `sam`, with the adaptive (scale-invariant) perturbation of `scale_by_sam`."""
  return _on_base(scale_by_sam(rho, adaptive=True, eta=eta), learning_rate, base, base_kwargs)
