"""K-FAC: Kronecker-factored natural gradient for the Linear and Conv layers of a Flax NNX model."""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks, curvature
from optlab_jax.optim import base
from optlab_jax.optim.kfac_capture import capture, find_layers, kronecker_factors
from optlab_jax.optim.registry import register

__all__ = ["ScaleByKfacState", "scale_by_kfac", "kfac"]


class ScaleByKfacState(NamedTuple):
  """State of `scale_by_kfac`; the tuples hold one entry per layer of `find_layers(params)`."""
  count: jax.Array        # int32 scalar: updates applied so far.
  a_factors: tuple        # EMA of A = E[ā āᵀ] (inputs with a bias column), (d_in+1)².
  g_factors: tuple        # EMA of G = E[g gᵀ] (per-example output-gradients), d_out².
  a_inverses: tuple       # (A + π√λ I)⁻¹ at the last refresh.
  g_inverses: tuple       # (G + √λ/π I)⁻¹ at the last refresh.
  key: jax.Array          # raw PRNG key for the next sampled labels.


def _damped_inverses(a: jax.Array, g: jax.Array, damping: Any) -> tuple[jax.Array, jax.Array]:
  """Tikhonov damping split between the factors with Martens & Grosse's π (trace-norm ratio)."""
  norm_a, norm_g = jnp.trace(a) / a.shape[0], jnp.trace(g) / g.shape[0]
  # A dead layer (G = 0) gets π = 1 instead of an infinite split.
  both = (norm_a > 0) & (norm_g > 0)
  pi = jnp.where(both, jnp.sqrt(norm_a / jnp.where(both, norm_g, 1)), 1)
  root = jnp.sqrt(jnp.asarray(damping, a.dtype))

  def inverse(m, shift):
    # LAPACK has no bfloat16/float16 Cholesky: factor in at least float32, keep m's dtype.
    work = jnp.promote_types(m.dtype, jnp.float32)
    eye = jnp.eye(m.shape[0], dtype=work)
    m = (m + shift * jnp.eye(m.shape[0], dtype=m.dtype)).astype(work)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(m, lower=True), eye).astype(a.dtype)

  return inverse(a, pi * root), inverse(g, root / pi)


def scale_by_kfac(
    damping: float = 1e-3,
    factor_decay: float = 0.95,
    inverse_every: int = 10,
    kl_clip: float | None = 1e-3,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    likelihood: str = curvature.DEFAULT_LIKELIHOOD,
    empirical: bool = False,
    seed: int = 0,
    covariance_every: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """K-FAC direction per Linear/Conv layer; every other parameter keeps its gradient.

  Needs `model_fn=lambda p: model_apply(p, x)` in `update` (outputs with a leading batch axis;
  `nnx.merge(graphdef, p, rest)(x)` for an NNX model) and, with `empirical=True`,
  `output_loss_fn=lambda out: loss(out, y)` (averaged over the batch). The gradient
  preconditioned is the incoming update (as clipped or accumulated before this transform); the
  factors come from `model_fn` (under `optax.MultiSteps`, the last micro-batch's). A layer whose
  bias is not in this transform's params (masked out) gets its kernel block alone. Per layer, with the
  gradient as the (d_in+1)×d_out matrix ∇ = [∇W; ∇b] (Conv: W flattened to (k·k·c_in)×c_out):
    Â = (1/R) Σ_r ā_r ā_rᵀ,  Ĝ = (1/N) Σ_r g_r g_rᵀ   (R rows = examples × locations)
    ā: layer input with a 1 appended (Conv: im2col patch, KFC); g = ∇_s ℓ(f, y), y ∼ p(y|f)
      sampled by `curvature.sample_targets` (true Fisher) or the data labels (`empirical`)
    every `covariance_every` steps (None: 1), the s-th such refresh (s = 0, 1, …):
      A ← β_s A + (1−β_s) Â,  G ← β_s G + (1−β_s) Ĝ,   β_s = min(factor_decay, s/(s+1))
    every `inverse_every` steps: π = √((tr A/dim A)/(tr G/dim G)),
      A⁻ = (A + π√λ I)⁻¹,  G⁻ = (G + √λ/π I)⁻¹   (λ = damping; a new λ applies at a refresh)
    d = A⁻ ∇ G⁻          ( = ((A + π√λ I) ⊗ (G + √λ/π I))⁻¹ vec ∇, row-major vec )
  Layers are the leaves named "kernel" (ndim ≥ 2) with their sibling "bias" (Flax's names),
  each matched to the nnx.Linear/nnx.Conv call that reads it (`kfac_capture`). Fallback: the
  other leaves (norms, embeddings, plain arrays), and layers no call reads (with a warning),
  get d = g, the identity preconditioner, as in kfac-pytorch. A layer that model_fn calls inside
  a transformation of its own (a PINN's input derivatives) raises `ValueError`. With `kl_clip=κ` (None: off)
  the K-FAC directions are scaled by ν = min(1, √(κ / (η² |Σ dᵀg|))), the sum over the K-FAC
  leaves and η = `learning_rate` at this step (Ba et al.): η² dᵀg ≈ η² dᵀFd is the step's KL.

  Cost: `capture` runs model_fn forward and backpropagates the sampled labels' output-gradient
  to the layer outputs only (no weight gradients); in the caller's jitted step XLA merges that
  forward with the gradient's own (same HLO), and with `empirical` the backward too, so the
  statistics add at most one activation backward (a test checks the compiled FLOPs). A refresh
  every k > 1 steps sits in a cond, outside which nothing is shared: it pays its own forward.
  Under `optax.inject_hyperparams` an explicit covariance_every is traced and always takes the cond.

  References: Martens & Grosse, 2015, Optimizing neural networks with Kronecker-factored
  approximate curvature (arXiv:1503.05671); Grosse & Martens, 2016, A Kronecker-factored
  approximate Fisher matrix for convolution layers (arXiv:1602.01407); Ba, Grosse & Martens,
  2017, Distributed second-order optimization using Kronecker-factored approximations.
  """
  checks.check_positive("damping", damping)
  checks.check_decay("factor_decay", factor_decay)
  checks.check_positive_int("inverse_every", inverse_every)
  if covariance_every is not None:
    checks.check_positive_int("covariance_every", covariance_every)
  if kl_clip is not None:
    checks.check_positive("kl_clip", kl_clip)
  checks.check_learning_rate(learning_rate)
  curvature.check_likelihood(likelihood)
  checks.check_seed("seed", seed)

  def init_fn(params):
    base.check_real("kfac", params)
    leaves = jax.tree.leaves(params)
    shapes = [_factor_shapes(leaves, layer) for layer in find_layers(params)]
    zeros = lambda i: tuple(jnp.zeros((s[i], s[i]), s[2]) for s in shapes)
    return ScaleByKfacState(
        jnp.zeros([], jnp.int32), zeros(0), zeros(1), zeros(0), zeros(1), jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, *, model_fn=None, output_loss_fn=None, **extra_args):
    del extra_args
    layers = find_layers(updates)
    key = state.key
    directions = jax.tree.leaves(updates)
    if layers:
      checks.require_extra_arg("model_fn", model_fn, example="model_fn=lambda p: nnx.merge(graphdef, p, rest)(x)")
      if params is None:
        raise ValueError("K-FAC needs the params in update(): call tx.update(grads, state, params, model_fn=...)")
      if empirical:
        checks.require_extra_arg("output_loss_fn", output_loss_fn, example="output_loss_fn=lambda out: loss(out, y)")
        output_grad_fn = jax.grad(output_loss_fn)
      else:
        key, sample_key = jax.random.split(key)
        output_grad_fn = functools.partial(_sampled_nll_grad, sample_key, likelihood)
      every = 1 if covariance_every is None else covariance_every
      seen = {}  # which layers a call read: known once the statistics are traced

      def statistics(a_factors, g_factors):
        _, captured = capture(model_fn, params, layers, output_grad_fn)
        seen["live"] = [j for j, c in enumerate(captured) if c is not None]
        return _ema_factors(a_factors, g_factors, captured, factor_decay, state.count // every)

      a_factors, g_factors = base.every_k_steps(state.count, every, statistics, state.a_factors, state.g_factors)
      live = seen["live"]
      missed = [layer.name for j, layer in enumerate(layers) if j not in live]
      if missed:
        warnings.warn(f"K-FAC captured no nnx.Linear/nnx.Conv call reading {missed} (a grouped conv, or a kernel "
                      "that model_fn transforms first); these layers fall back to the gradient")
      state = state._replace(a_factors=a_factors, g_factors=g_factors)
      state, directions = _precondition(state, layers, live, directions, damping, inverse_every)
      if kl_clip is not None:
        indices = [i for j in live for i in (layers[j].kernel, layers[j].bias) if i is not None]
        directions = _kl_clip(directions, jax.tree.leaves(updates), indices, kl_clip, learning_rate, state.count)
    new_updates = jax.tree.unflatten(jax.tree.structure(updates), directions)
    return new_updates, state._replace(count=optax.safe_increment(state.count), key=key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sampled_nll_grad(key: jax.Array, likelihood: str, outputs: jax.Array) -> jax.Array:
  """∂ nll(outputs, y)/∂ outputs with y ∼ p(y | outputs): the true-Fisher output-gradients."""
  targets = curvature.sample_targets(key, outputs, likelihood)
  return jax.grad(curvature.nll)(outputs, targets, likelihood)


def _factor_shapes(leaves: list, layer) -> tuple[int, int, Any]:
  kernel = leaves[layer.kernel]
  d_in = kernel.size // kernel.shape[-1] + (layer.bias is not None)
  return d_in, kernel.shape[-1], kernel.dtype


def _ema_factors(a_factors, g_factors, captured, factor_decay, refreshes):
  """A ← β A + (1−β) Â and G likewise per captured layer, β = min(decay, s/(s+1)) at refresh s."""
  a_factors, g_factors = list(a_factors), list(g_factors)
  for j, c in enumerate(captured):
    if c is not None:
      a_hat, g_hat = kronecker_factors(c)
      # β in at least float32 and at least the factors' precision (2/3 in float32 is off by 3e-8).
      s = refreshes.astype(jnp.promote_types(a_hat.dtype, jnp.float32))
      beta = jnp.minimum(jnp.asarray(factor_decay, s.dtype), s / (s + 1))
      a_factors[j] = (beta * a_factors[j] + (1 - beta) * a_hat).astype(a_hat.dtype)
      g_factors[j] = (beta * g_factors[j] + (1 - beta) * g_hat).astype(g_hat.dtype)
  return tuple(a_factors), tuple(g_factors)


def _precondition(state, layers, live, directions, damping, inverse_every):
  """Inverses refreshed on schedule from the state's factors, and d = A⁻ ∇ G⁻ per live layer."""
  def refresh(*_):
    pairs = [_damped_inverses(state.a_factors[j], state.g_factors[j], damping) for j in live]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)

  a_live, g_live = base.every_k_steps(
      state.count, inverse_every, refresh,
      tuple(state.a_inverses[j] for j in live), tuple(state.g_inverses[j] for j in live),
  )
  a_inverses, g_inverses = list(state.a_inverses), list(state.g_inverses)
  directions = list(directions)
  for j, a_inv, g_inv in zip(live, a_live, g_live):
    a_inverses[j], g_inverses[j] = a_inv, g_inv
    layer = layers[j]
    kernel = directions[layer.kernel]
    grad = kernel.reshape(-1, kernel.shape[-1])
    if layer.bias is not None:
      grad = jnp.concatenate([grad, directions[layer.bias][None]], axis=0)
    d = a_inv @ grad @ g_inv
    directions[layer.kernel] = d[: grad.shape[0] - (layer.bias is not None)].reshape(kernel.shape)
    if layer.bias is not None:
      directions[layer.bias] = d[-1]
  return state._replace(a_inverses=tuple(a_inverses), g_inverses=tuple(g_inverses)), directions


def _kl_clip(directions, grads, indices, kl_clip, learning_rate, count):
  """Scales the K-FAC leaves so that the step's quadratic KL estimate η² |dᵀg| stays ≤ κ."""
  lr = learning_rate(count) if callable(learning_rate) else learning_rate
  kl = jnp.abs(sum(jnp.vdot(directions[i], grads[i]) for i in indices)) * jnp.square(lr)
  nu = jnp.where(kl > kl_clip, jnp.sqrt(kl_clip / jnp.where(kl > 0, kl, 1)), 1)
  directions = list(directions)
  for i in indices:
    directions[i] = (directions[i] * nu).astype(directions[i].dtype)
  return directions


@register("kfac")
def kfac(
    learning_rate: optax.ScalarOrSchedule,
    damping: float = 1e-3,
    momentum: float = 0.9,
    factor_decay: float = 0.95,
    inverse_every: int = 10,
    kl_clip: float | None = 1e-3,
    weight_decay: float = 0.0,
    likelihood: str = curvature.DEFAULT_LIKELIHOOD,
    empirical: bool = False,
    seed: int = 0,
    covariance_every: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """K-FAC: p ← p − lr · m_t,  m_t = momentum · m_{t−1} + d_t + wd · p  (d_t from `scale_by_kfac`).

  Needs `model_fn=` in `update` (see `scale_by_kfac`) when params hold Linear/Conv kernels.
  Weight decay is added after the preconditioning; damping 1e-3 and kl_clip 1e-3 follow
  kfac-pytorch's defaults.
  """
  checks.check_decay("momentum", momentum)
  return base.alias(
      scale_by_kfac(damping, factor_decay, inverse_every, kl_clip, learning_rate, likelihood, empirical, seed,
                    covariance_every),
      base.maybe_weight_decay(weight_decay),
      optax.trace(decay=momentum),
      learning_rate=learning_rate,
  )
