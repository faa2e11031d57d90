"""Sophia: momentum over a clipped diagonal-curvature preconditioner (Sophia-H and Sophia-G)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks, curvature
from optlab_jax.optim import base
from optlab_jax.optim.preconditioner import register_preconditioner
from optlab_jax.optim.registry import register

__all__ = ["ScaleBySophiaState", "gnb_diag", "scale_by_sophia", "sophia_h", "sophia_g"]

ESTIMATORS = ("hutchinson", "gnb")


class ScaleBySophiaState(NamedTuple):
  """State of `scale_by_sophia`."""
  count: jax.Array      # int32 scalar: updates applied so far.
  mu: optax.Updates     # EMA of the gradient; tree of params.
  nu: optax.Updates     # EMA of the diagonal curvature estimate; refreshed every update_interval steps.
  key: jax.Array        # raw PRNG key for the next probe or label draw; advances at estimation steps.


def gnb_diag(model_fn: Callable, params: Any, key: jax.Array, likelihood: str) -> Any:
  """Gauss-Newton-Bartlett estimate B · ĝ ⊙ ĝ of the diagonal of the Gauss-Newton matrix.

  ĝ = ∇_θ (1/B) Σ_b ℓ(f_b(θ), ŷ_b) with labels ŷ_b ∼ p(y | f_b) drawn from the model
  (`curvature.sample_targets`) and ℓ the likelihood's negative log-likelihood (`curvature.nll`);
  B is the number of terms that mean runs over (`curvature.per_example_nll`'s size: examples, or
  tokens for sequence logits). By Bartlett's identity E[B ĝ ĝᵀ] = (1/B) Σ_b J_bᵀ ∇²ℓ_b J_b.
  One forward and one backward pass of `model_fn`.
  """
  outputs, pullback = jax.vjp(model_fn, params)
  targets = curvature.sample_targets(key, outputs, likelihood)
  num_terms = curvature.per_example_nll(outputs, targets, likelihood).size
  (grad,) = pullback(jax.grad(curvature.nll)(outputs, targets, likelihood))
  return jax.tree.map(lambda g: num_terms * g * g, grad)


def scale_by_sophia(
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-8,
    gamma: float = 0.01,
    clip_threshold: float = 1.0,
    update_interval: int = 10,
    seed: int = 0,
    *,
    estimator: str = "hutchinson",
    likelihood: str = curvature.DEFAULT_LIKELIHOOD,
) -> optax.GradientTransformationExtraArgs:
  """Sophia direction, with Hutchinson (Sophia-H) or Gauss-Newton-Bartlett (Sophia-G) curvature.

  Update rule, at step t (counting from 1), with g_t the incoming updates:
    m_t = β1 m_{t-1} + (1 − β1) g_t
    d_t = clip(m_t/(1 − β1ᵗ) / max(γ h_{t-1}, eps), −c, c)          (c = `clip_threshold`)
    h_t = β2 h_{t-1} + (1 − β2) ĥ_t   if (t − 1) mod k = 0, else h_{t-1}   (k = `update_interval`)
  ĥ is z ⊙ H z for a Rademacher z (`estimator="hutchinson"`, needs `obj_fn=`) or `gnb_diag`
  (`estimator="gnb"`, needs `model_fn=` returning outputs with a leading batch axis: logits for
  `likelihood="categorical"`, means of a unit Gaussian for "gaussian"; `output_loss_fn` is not
  used, since the estimator needs a loss that is a negative log-likelihood it can sample from).

  This is the order and form of `optax.contrib.sophia` (equal to it given the same probes): the
  step uses the curvature EMA from before this step's estimate, and m is bias-corrected. The
  paper's Algorithm 3 instead uses h_t (this step's estimate) and no bias correction; the
  authors' code, like ours, uses the estimate from the next step on. Our probes are
  `curvature.rademacher_like` signs (bits → signs) rather than optax's `jax.random.rademacher`.

  References: Liu et al., 2023, Sophia: A scalable stochastic second-order optimizer for
  language model pre-training (arXiv:2305.14342).
  """
  checks.check_decay("b1", b1)
  checks.check_decay("b2", b2)
  checks.check_nonnegative("eps", eps)
  checks.check_positive("gamma", gamma)
  checks.check_positive("clip_threshold", clip_threshold)
  checks.check_positive_int("update_interval", update_interval)
  checks.check_choice("estimator", estimator, ESTIMATORS)
  curvature.check_likelihood(likelihood)
  checks.check_seed("seed", seed)

  def init_fn(params):
    base.check_real(f"sophia ({estimator})", params)
    return ScaleBySophiaState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params),
        key=jax.random.PRNGKey(seed),
    )

  def update_fn(updates, state, params=None, *, obj_fn=None, model_fn=None, **extra_args):
    del extra_args
    if estimator == "hutchinson":
      checks.require_extra_arg("obj_fn", obj_fn, example="obj_fn=lambda p: loss_fn(p, batch)")
    else:
      checks.require_extra_arg("model_fn", model_fn, example="model_fn=lambda p: model.apply(p, batch_x)")
    if params is None:
      raise ValueError("scale_by_sophia needs params: call tx.update(grads, state, params, obj_fn=...)")

    def diag_estimate(key):
      if estimator == "hutchinson":
        return curvature.hutchinson_diag(lambda v: curvature.hvp(obj_fn, params, v), params, key)
      return gnb_diag(model_fn, params, key, likelihood)

    def estimate(key, nu):
      key, sample_key = jax.random.split(key)
      nu_new = optax.tree.update_moment(diag_estimate(sample_key), nu, b2, 1)
      return key, optax.tree.cast_like(nu_new, nu)

    count = optax.safe_increment(state.count)
    mu = optax.tree.cast_like(optax.tree.update_moment(updates, state.mu, b1, 1), state.mu)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    direction = jax.tree.map(
        lambda m, h: jnp.clip(m / jnp.maximum(gamma * h, eps), -clip_threshold, clip_threshold)
        .astype(m.dtype),
        mu_hat, state.nu,
    )
    key, nu = base.every_k_steps(state.count, update_interval, estimate, state.key, state.nu)
    return direction, ScaleBySophiaState(count, mu, nu, key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _alias(learning_rate, weight_decay, weight_decay_mask, **direction):
  return base.alias(
      scale_by_sophia(**direction),
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      learning_rate=learning_rate,
  )


@register("sophia_h")
def sophia_h(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    weight_decay_mask: Any = None,
    gamma: float = 0.01,
    clip_threshold: float = 1.0,
    update_interval: int = 10,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """Sophia-H: p ← p − lr · (d_t + wd · p), Hutchinson curvature. Needs `obj_fn=` in `update`.

  Defaults and weight decay (decoupled) are `optax.contrib.sophia`'s.
  """
  return _alias(learning_rate, weight_decay, weight_decay_mask, b1=b1, b2=b2, eps=eps, gamma=gamma,
                clip_threshold=clip_threshold, update_interval=update_interval, seed=seed,
                estimator="hutchinson")


@register("sophia_g")
def sophia_g(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    weight_decay_mask: Any = None,
    gamma: float = 0.05,
    clip_threshold: float = 1.0,
    update_interval: int = 10,
    seed: int = 0,
    likelihood: str = curvature.DEFAULT_LIKELIHOOD,
) -> optax.GradientTransformationExtraArgs:
  """Sophia-G: p ← p − lr · (d_t + wd · p), Gauss-Newton-Bartlett curvature (see `gnb_diag`).

  Needs `model_fn=` in `update`; `likelihood` names the model's predictive distribution.
  γ = 0.05 by default, as for Sophia-G in the paper and in Levanter (Sophia-H: 0.01).
  """
  return _alias(learning_rate, weight_decay, weight_decay_mask, b1=b1, b2=b2, eps=eps, gamma=gamma,
                clip_threshold=clip_threshold, update_interval=update_interval, seed=seed,
                estimator="gnb", likelihood=likelihood)


@register_preconditioner("sophia_h", "sophia_g", state=ScaleBySophiaState)
def _preconditioner(state: ScaleBySophiaState, hp: dict) -> Any:
  """P = max(γ h, eps), the denominator of the next `scale_by_sophia` step (unclipped coordinates)."""
  return jax.tree.map(lambda h: jnp.maximum(hp["gamma"] * h, hp["eps"]), state.nu)
