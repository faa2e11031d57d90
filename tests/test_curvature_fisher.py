"""Fisher matvecs, nll and sample_targets against dense Jacobian oracles, optax and statistics (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature
from tests.curvature_models import case, dense, per_example_loss_fn, rel_err


def _jacobian(c):
  flat, _ = ravel_pytree(c.params)
  jac = jax.jacobian(lambda x: c.model_fn(c.unravel(x)))(flat)
  return np.asarray(jac).reshape(jac.shape[0], -1, flat.size)            # (B, d, n)


def _dense_ggn(c):
  jac = _jacobian(c)
  outputs = np.asarray(c.model_fn(c.params))
  p = np.exp(outputs - outputs.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  h_out = np.stack([np.diag(pb) - np.outer(pb, pb) for pb in p])        # softmax CE Hessian per example
  return np.einsum("bcn,bcd,bdm->nm", jac, h_out, jac) / jac.shape[0]


def test_nll_matches_optax_and_the_squared_error_formula():
  logits = jax.random.normal(jax.random.key(0), (7, 4), jnp.float64)
  labels = jax.random.randint(jax.random.key(1), (7,), 0, 4, jnp.int32)
  want = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  assert abs(curvature.nll(logits, labels, "categorical") - want) < 1e-14
  targets = jax.random.normal(jax.random.key(2), (7, 4), jnp.float64)
  want = 0.5 * np.sum((np.asarray(logits) - np.asarray(targets)) ** 2) / 7
  assert abs(curvature.nll(logits, targets, "gaussian") - want) < 1e-13
  with pytest.raises(ValueError, match="likelihood='poisson'"):
    curvature.nll(logits, labels, "poisson")


def test_sample_targets_follow_the_predictive_distribution():
  logits = jnp.asarray([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], jnp.float64)
  keys = jax.random.split(jax.random.key(0), 20000)
  labels = jax.vmap(curvature.sample_targets, in_axes=(0, None, None))(keys, logits, "categorical")
  assert labels.dtype == jnp.int32
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  freq = np.stack([np.bincount(np.asarray(labels[:, b]), minlength=3) / 20000 for b in range(2)])
  assert np.all(np.abs(freq - probs) < 4 * np.sqrt(probs * (1 - probs) / 20000))
  y = jax.vmap(curvature.sample_targets, in_axes=(0, None, None))(keys, logits, "gaussian")
  assert np.all(np.abs(np.mean(y, 0) - logits) < 4 / np.sqrt(20000))
  assert np.all(np.abs(np.var(y, 0) - 1.0) < 4 * np.sqrt(2 / 20000))


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_fisher_fn_matches_dense_outer_products_of_sampled_scores(name, likelihood):
  c = case(name, likelihood=likelihood)
  key, num_samples = jax.random.key(7), 3
  got = np.asarray(dense(curvature.fisher_fn(c.model_fn, c.params, key, likelihood=likelihood,
                                             num_samples=num_samples), c.params))
  jac, outputs = _jacobian(c), np.asarray(c.model_fn(c.params))
  want = np.zeros_like(got)
  sample = jax.jit(jax.vmap(curvature.sample_targets, in_axes=(0, None, None)), static_argnums=2)
  for y in np.asarray(sample(jax.random.split(key, num_samples), jnp.asarray(outputs), likelihood)):
    if likelihood == "categorical":
      p = np.exp(outputs - outputs.max(1, keepdims=True))
      scores = p / p.sum(1, keepdims=True) - np.eye(outputs.shape[1])[y]  # ∇_f CE = softmax − onehot
    else:
      scores = outputs - y
    jg = np.einsum("bcn,bc->bn", jac, scores)
    want += jg.T @ jg / (num_samples * outputs.shape[0])
  assert rel_err(got, want) < 1e-8


def test_sampled_fisher_equals_ggn_in_expectation():
  # Averages of S i.i.d. draws F_s with E[F_s] = G have E‖mean − G‖_F² = E‖F₁ − G‖_F² / S;
  # Markov's inequality bounds a 3× excess by probability 1/3, far less in practice.
  c = case("mlp")
  ggn = _dense_ggn(c)
  assert rel_err(dense(curvature.ggn_fn(c.model_fn, c.output_loss_fn, c.params), c.params), ggn) < 1e-8
  single = jax.jit(jax.vmap(lambda k: dense(curvature.fisher_fn(c.model_fn, c.params, k), c.params)))
  draws = np.asarray(single(jax.random.split(jax.random.key(0), 400)))
  per_draw = np.mean(np.sum((draws - ggn) ** 2, axis=(1, 2)))
  assert np.sum((np.mean(draws, 0) - ggn) ** 2) < 3.0 * per_draw / 400
  num_samples = 2000
  many = dense(curvature.fisher_fn(c.model_fn, c.params, jax.random.key(1), num_samples=num_samples),
               c.params)
  assert np.sum((np.asarray(many) - ggn) ** 2) < 3.0 * per_draw / num_samples
  assert rel_err(many, ggn) < 0.05


def test_empirical_fisher_is_the_mean_outer_product_of_per_example_gradients():
  c = case("cnn")
  per_example = per_example_loss_fn(c.model_fn, c.output_loss_fn)
  flat, _ = ravel_pytree(c.params)
  grads = np.asarray(jax.jacobian(lambda x: per_example(c.unravel(x)))(flat))   # (B, n)
  got = dense(curvature.empirical_fisher_fn(per_example, c.params), c.params)
  assert rel_err(got, grads.T @ grads / grads.shape[0]) < 1e-8
  # With the data labels the empirical Fisher is not the GGN (Kunstner et al., 2019).
  assert rel_err(got, dense(curvature.ggn_fn(c.model_fn, c.output_loss_fn, c.params), c.params)) > 0.1
