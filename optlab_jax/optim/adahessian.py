"""AdaHessian: Adam with the squared gradient replaced by a squared Hutchinson diagonal of H."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab_jax import checks, curvature
from optlab_jax.optim import base
from optlab_jax.optim.preconditioner import register_preconditioner
from optlab_jax.optim.registry import register

__all__ = ["ScaleByAdaHessianState", "spatial_average", "scale_by_adahessian", "adahessian"]


class ScaleByAdaHessianState(NamedTuple):
  """State of `scale_by_adahessian`."""
  count: jax.Array      # int32 scalar: updates applied so far.
  mu: optax.Updates     # EMA of the gradient; tree of params.
  nu: optax.Updates     # EMA of the squared, spatially averaged diag(H); refreshed at estimation steps.
  key: jax.Array        # raw PRNG key for the next Rademacher probe; advances at estimation steps.


def _block_mean(d: jax.Array, block_size: int) -> jax.Array:
  """Mean over consecutive blocks of `block_size` along the last axis (a short last block too)."""
  n = d.shape[-1]
  num_blocks = -(-n // block_size)
  pad = [(0, 0)] * (d.ndim - 1) + [(0, num_blocks * block_size - n)]
  sums = jnp.sum(jnp.pad(d, pad).reshape(*d.shape[:-1], num_blocks, block_size), -1, keepdims=True)
  counts = np.minimum(block_size, n - block_size * np.arange(num_blocks))
  counts = counts.reshape((1,) * (d.ndim - 1) + (num_blocks, 1))
  means = jnp.broadcast_to(sums / counts.astype(d.dtype), (*d.shape[:-1], num_blocks, block_size))
  return means.reshape(*d.shape[:-1], num_blocks * block_size)[..., :n]


def spatial_average(diag: Any, block_size: int = 1, average_conv_kernel: bool = True) -> Any:
  """|D| averaged spatially, leaf by leaf (the paper's D^(s)).

  A 4-d leaf is taken as an HWIO conv kernel: with `average_conv_kernel`, |D| is replaced by its
  mean over the two spatial axes (one value per input-output channel pair). Every other leaf
  with at least one axis is averaged over consecutive blocks of `block_size` entries along its
  last axis (the final block may be shorter). The absolute value keeps positive and negative
  curvature of one block from cancelling, as in the authors' code; it is squared next anyway.
  """
  def leaf(d):
    d = jnp.abs(d)
    if d.ndim == 4 and average_conv_kernel:
      return jnp.broadcast_to(jnp.mean(d, axis=(0, 1), keepdims=True), d.shape)
    if d.ndim not in (0, 4) and block_size > 1:
      return _block_mean(d, block_size)
    return d
  return jax.tree.map(leaf, diag)


def scale_by_adahessian(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    update_interval: int = 1,
    seed: int = 0,
    *,
    block_size: int | None = None,
    average_conv_kernel: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """AdaHessian direction. Needs `obj_fn=` (params -> loss on the batch) in `update`.

  Update rule, at step t (counting from 1), with g_t the incoming updates:
    D_t = z ⊙ H_t z, z Rademacher (Hutchinson; `curvature.hutchinson_diag`), at estimation steps
    D_t^(s) = spatial_average(D_t)                       (blocks, conv kernels: see there)
    v_t = β2 v_{t-1} + (1 − β2) D_t^(s) ⊙ D_t^(s)       (at estimation steps only)
    m_t = β1 m_{t-1} + (1 − β1) g_t
    d_t = m_t/(1 − β1ᵗ) / ((√(v_t/(1 − β2ʲ)))^k + eps)
  with k = `hessian_power` and j the number of estimates so far. The diagonal is estimated at
  steps 1, n+1, 2n+1, ... (n = `update_interval`; see `every_k_steps`) and v is reused in
  between. `block_size` (None: 1) sets a shape, so it is static (`base.static_int`).

  The first moment uses the incoming updates, not the gradient that the same jvp call returns
  as its primal: inside a chain they may be clipped or accumulated (`optax.MultiSteps`) and must
  stay so. In a plain jitted train step the caller's gradient and the jvp's primal pass are the
  same computation (XLA shares it), so no gradient is paid for twice.

  References: Yao et al., 2020, ADAHESSIAN: An adaptive second order optimizer for machine
  learning (arXiv:2006.00719).
  """
  checks.check_decay("b1", b1)
  checks.check_decay("b2", b2)
  checks.check_nonnegative("eps", eps)
  checks.check_in_range("hessian_power", hessian_power, 0.0, 1.0)
  checks.check_positive_int("update_interval", update_interval)
  block_size = base.static_int("block_size", block_size, 1)
  checks.check_seed("seed", seed)

  def init_fn(params):
    base.check_real("adahessian", params)
    return ScaleByAdaHessianState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params),
        key=jax.random.PRNGKey(seed),
    )

  def update_fn(updates, state, params=None, *, obj_fn=None, **extra_args):
    del extra_args
    checks.require_extra_arg("obj_fn", obj_fn, example="obj_fn=lambda p: loss_fn(p, batch)")
    if params is None:
      raise ValueError("scale_by_adahessian needs params: call tx.update(grads, state, params, obj_fn=...)")

    def estimate(key, nu):
      key, probe_key = jax.random.split(key)
      diag = curvature.hutchinson_diag(lambda v: curvature.hvp(obj_fn, params, v), params, probe_key)
      diag = spatial_average(diag, block_size, average_conv_kernel)
      return key, optax.tree.cast_like(optax.tree.update_moment(diag, nu, b2, 2), nu)

    key, nu = base.every_k_steps(state.count, update_interval, estimate, state.key, state.nu)
    count = optax.safe_increment(state.count)
    num_estimates = (state.count // update_interval + 1).astype(jnp.int32)
    mu = optax.tree.cast_like(optax.tree.update_moment(updates, state.mu, b1, 1), state.mu)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, num_estimates)
    updates = jax.tree.map(
        lambda m, v: (m / (jnp.sqrt(v) ** hessian_power + eps)).astype(m.dtype), mu_hat, nu_hat
    )
    return updates, ScaleByAdaHessianState(count, mu, nu, key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("adahessian")
def adahessian(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    update_interval: int = 1,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    seed: int = 0,
    block_size: int | None = None,
    average_conv_kernel: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """AdaHessian: p ← p − lr · (d_t + wd · p), d_t from `scale_by_adahessian`.

  Weight decay is decoupled (added after the preconditioning), as in the paper's code.
  """
  return base.alias(
      scale_by_adahessian(
          b1, b2, eps, hessian_power, update_interval, seed,
          block_size=block_size, average_conv_kernel=average_conv_kernel,
      ),
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      learning_rate=learning_rate,
  )


@register_preconditioner("adahessian", state=ScaleByAdaHessianState)
def _preconditioner(state: ScaleByAdaHessianState, hp: dict) -> Any:
  """P = (√(v/(1 − β2ʲ)))^k + eps, the denominator of `scale_by_adahessian` (j estimates so far)."""
  num_estimates = jnp.maximum((state.count - 1) // hp["update_interval"] + 1, 1)
  return jax.tree.map(
      lambda v: jnp.sqrt(v / (1 - hp["b2"] ** num_estimates.astype(v.dtype))) ** hp["hessian_power"] + hp["eps"],
      state.nu)
