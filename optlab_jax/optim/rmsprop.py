"""RMSProp, plain or centered, with optional (Nesterov) momentum on the scaled gradient."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.preconditioner import register_preconditioner
from optlab_jax.optim.registry import register
from optlab_jax.optim.sgd import scale_by_sgd

__all__ = ["scale_by_rmsprop", "rmsprop"]


def scale_by_rmsprop(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> optax.GradientTransformation:
  """RMSProp direction: optax's `scale_by_rms` (or `scale_by_stddev`), then `scale_by_sgd`.

  Update rule:
    v_t = ρ v_{t-1} + (1 − ρ) g_t²        (v_0 = initial_scale)
    μ_t = ρ μ_{t-1} + (1 − ρ) g_t         (centered only; else μ_t = 0)
    s_t = g_t / √(v_t − μ_t² + eps)        (eps_in_sqrt=False: g_t / (√(v_t − μ_t²) + eps))
    d_t = s_t, or its heavy-ball / Nesterov momentum trace (see `scale_by_sgd`)
  `bias_correction=True` divides v_t and μ_t by (1 − ρᵗ).

  References: Tieleman & Hinton, 2012, Lecture 6.5 of Neural Networks for Machine Learning
  (Coursera); Graves, 2013, Generating sequences with recurrent neural networks
  (arXiv:1308.0850), for the centered variant.
  """
  checks.check_decay("decay", decay)
  checks.check_nonnegative("eps", eps)
  checks.check_nonnegative("initial_scale", initial_scale)
  rms = optax.scale_by_stddev if centered else optax.scale_by_rms
  return optax.chain(
      rms(decay, eps, initial_scale, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction),
      scale_by_sgd(momentum, nesterov),
  )


@register("rmsprop")
def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """RMSProp: p ← p − lr_t · d_t with d_t from `scale_by_rmsprop`.

  Deliberate difference from `optax.rmsprop`: with momentum, the learning rate multiplies
  the momentum trace (m_t = β m_{t-1} + s_t, u_t = −lr_t m_t, as in PyTorch) where optax
  traces the scaled step (u_t = β u_{t-1} − lr_t s_t). With a constant learning rate the
  two are equal; under a schedule ours applies lr_t to the whole trace.
  """
  return base.alias(
      scale_by_rmsprop(
          decay, eps, initial_scale, eps_in_sqrt, centered, momentum, nesterov, bias_correction
      ),
      learning_rate=learning_rate,
  )


# The state types of optax's scale_by_rms / scale_by_stddev, with and without bias correction
# (the counted ones are not exported by optax; their shapes are read without allocating).
_RMS_STATES = tuple(
    type(jax.eval_shape(rms(bias_correction=corrected).init, {}))
    for rms in (optax.scale_by_rms, optax.scale_by_stddev) for corrected in (False, True)
)


@register_preconditioner("rmsprop", state=_RMS_STATES)
def _preconditioner(state: Any, hp: dict) -> optax.Updates:
  """P = √(v̂ − μ̂² + eps) (or √(v̂ − μ̂²) + eps), the denominator of `scale_by_rmsprop`."""
  count = state.count if "count" in state._fields else None   # (a tuple's .count is a method)
  correct = (lambda x: x) if count is None else (
      lambda x: x / (1 - hp["decay"] ** jnp.maximum(count, 1).astype(x.dtype)))
  mu = getattr(state, "mu", None)
  var = jax.tree.map(correct, state.nu) if mu is None else jax.tree.map(
      lambda v, m: correct(v) - correct(m) ** 2, state.nu, mu)
  if hp["eps_in_sqrt"]:
    return jax.tree.map(lambda v: jnp.sqrt(v + hp["eps"]), var)
  return jax.tree.map(lambda v: jnp.sqrt(v) + hp["eps"], var)
