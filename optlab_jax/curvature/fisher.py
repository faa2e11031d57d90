"""Fisher-vector products: the true Fisher (labels sampled from the model) and the empirical Fisher.

Outputs carry a leading batch axis. The likelihoods are
  categorical: p(y | f) = softmax(f)_y, int labels, ℓ(f, y) = −log softmax(f)_y;
  gaussian:    p(y | f) = N(y; f, I),             ℓ(f, y) = ½ ‖f − y‖² (summed over output axes).
For both, E_{y∼p(y|f)}[∇_f ℓ ∇_f ℓᵀ] = ∇²_f ℓ, so the true Fisher equals the GGN of the
mean loss in expectation; the empirical Fisher uses the data labels instead and does not.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from optlab_jax import checks
from optlab_jax.curvature.products import linearize_transpose

__all__ = ["DEFAULT_LIKELIHOOD", "LIKELIHOODS", "check_likelihood", "check_outputs", "per_example_nll", "nll", "sample_targets", "fisher_fn", "empirical_fisher_fn"]

LIKELIHOODS = ("categorical", "gaussian")
# The one default of every optimizer that samples from the model (natural_gradient, sophia_g,
# kfac): classifiers and language models are the common case; a regression model's outputs
# contradict it and raise in `check_outputs`, naming likelihood="gaussian".
DEFAULT_LIKELIHOOD = "categorical"


def check_likelihood(likelihood: str) -> None:
  """`ValueError` unless `likelihood` names a supported predictive distribution."""
  checks.check_choice("likelihood", likelihood, LIKELIHOODS)


def check_outputs(outputs: Any, likelihood: str) -> None:
  """`ValueError` naming `likelihood` when the model's outputs cannot be its parameters: categorical
  needs logits [batch, ..., classes] with at least 2 classes; both need a leading batch axis and
  floating-point outputs. Static (shapes and dtypes), so it raises at trace time."""
  shape, dtype = tuple(outputs.shape), outputs.dtype   # arrays and jax.ShapeDtypeStruct alike
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"likelihood={likelihood!r} needs floating-point model outputs, got {dtype}")
  if likelihood == "categorical" and (len(shape) < 2 or shape[-1] < 2):
    raise ValueError(
        f"likelihood='categorical' needs model outputs of logits [batch, ..., classes >= 2], got shape "
        f"{shape}; for a regression model pass likelihood='gaussian'")
  if likelihood == "gaussian" and len(shape) < 1:
    raise ValueError(f"likelihood='gaussian' needs model outputs with a leading batch axis, got shape {shape}")


def per_example_nll(outputs: jax.Array, targets: jax.Array, likelihood: str) -> jax.Array:
  """Negative log-likelihood of each example (shape: the batch axis), up to constants."""
  check_likelihood(likelihood)
  if likelihood == "categorical":
    logp = jax.nn.log_softmax(outputs, axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  sq = jnp.square(outputs - targets).reshape(outputs.shape[0], -1)
  return 0.5 * jnp.sum(sq, axis=1)


def nll(outputs: jax.Array, targets: jax.Array, likelihood: str) -> jax.Array:
  """Mean over the batch of `per_example_nll` (softmax cross-entropy, or ½ squared error)."""
  return jnp.mean(per_example_nll(outputs, targets, likelihood))


def sample_targets(key: jax.Array, outputs: jax.Array, likelihood: str) -> jax.Array:
  """Targets drawn from the model's predictive distribution p(y | outputs).

  categorical: int32 labels y ∼ Categorical(softmax(outputs)); gaussian: y = outputs + N(0, I).
  """
  check_likelihood(likelihood)
  check_outputs(outputs, likelihood)
  outputs = jax.lax.stop_gradient(outputs)
  if likelihood == "categorical":
    return jax.random.categorical(key, outputs, axis=-1).astype(jnp.int32)
  return outputs + jax.random.normal(key, outputs.shape, outputs.dtype)


def _outer_product_apply(jvp: Callable, vjp: Callable, scores: jax.Array, v: Any) -> Any:
  # scores: (S, *outputs.shape) per-sample, per-example output gradients g_sb. The output axes
  # are summed over, never flattened: a reshape of a sharded output axis is refused under
  # sharding-in-types.
  num_samples, batch = scores.shape[0], scores.shape[1]
  jv = jvp(v)
  coeff = jnp.sum(scores * jv[None], axis=tuple(range(2, scores.ndim)), keepdims=True)  # g_sbᵀ (J v)_b
  return vjp(jnp.sum(scores * coeff, axis=0) / (num_samples * batch))


def fisher_fn(
    model_fn: Callable,
    params: Any,
    key: jax.Array,
    *,
    likelihood: str = "categorical",
    num_samples: int = 1,
):
  """Monte-Carlo true Fisher matvec of the mean negative log-likelihood.

  F v = (1/(S·B)) Σ_s Σ_b J_bᵀ g_sb g_sbᵀ J_b v,   g_sb = ∇_f ℓ(f_b, y_sb),  y_sb ∼ p(y | f_b),
  with S = `num_samples` label draws (keys `jax.random.split(key, S)`, one per draw, passed
  to `sample_targets`) and B the batch size. E[F] equals the GGN of `nll` for both likelihoods.

  References: Martens, 2020, New insights and perspectives on the natural gradient method;
  Kunstner et al., 2019, Limitations of the empirical Fisher approximation.
  """
  check_likelihood(likelihood)
  check_outputs(jax.eval_shape(model_fn, params), likelihood)
  outputs, jvp, vjp = linearize_transpose(model_fn, params)
  keys = jax.random.split(key, num_samples)
  targets = jax.vmap(sample_targets, in_axes=(0, None, None))(keys, outputs, likelihood)
  total_nll = lambda f, y: jnp.sum(per_example_nll(f, y, likelihood))
  scores = jax.vmap(jax.grad(total_nll), in_axes=(None, 0))(outputs, targets)
  return Partial(_outer_product_apply, jvp, vjp, scores)


def _gram_apply(jvp: Callable, vjp: Callable, v: Any) -> Any:
  u = jvp(v)
  return vjp(u / u.shape[0])


def empirical_fisher_fn(per_example_loss_fn: Callable, params: Any):
  """Empirical Fisher matvec v ↦ (1/n) J_ℓᵀ J_ℓ v from the data labels.

  J_ℓ (n × params) is the Jacobian of the vector of n per-example losses, so
  (1/n) J_ℓᵀ J_ℓ = (1/n) Σ_i ∇ℓ_i ∇ℓ_iᵀ; one jvp and one transposed jvp, no per-example
  gradient is materialised.

  References: Kunstner et al., 2019, Limitations of the empirical Fisher approximation.
  """
  _, jvp, vjp = linearize_transpose(per_example_loss_fn, params)
  return Partial(_gram_apply, jvp, vjp)
