"""Hutchinson diagonal/trace and Hutch++ against the dense Hessian/GGN and Rademacher variance formulas."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature
from tests.curvature_models import case


def _trace_variance(a):
  # Var[zᵀAz] for Rademacher z and symmetric A: 2 (‖A‖_F² − Σ A_ii²).
  return 2.0 * (np.sum(a * a) - np.sum(np.diag(a) ** 2))


def test_diag_mean_within_three_standard_errors_of_exact_diagonal():
  c = case("mlp")
  h, num_samples = c.hessian, 4000
  got = ravel_pytree(curvature.hutchinson_diag(c.hvp, c.params,
                                               jax.random.key(0), num_samples))[0]
  # Var[z_i (Hz)_i] = Σ_{j≠i} H_ij².
  se = np.sqrt((np.sum(h * h, axis=1) - np.diag(h) ** 2) / num_samples)
  z = np.abs(np.asarray(got) - np.diag(h)) / se
  assert np.mean(z < 3.0) > 0.97 and np.max(z) < 4.5


def test_trace_unbiased_and_variance_shrinks_as_one_over_samples():
  c = case("cnn")
  matvec = c.hvp
  exact, var = np.trace(c.hessian), _trace_variance(c.hessian)
  keys = jax.random.split(jax.random.key(1), 2000)
  for num_samples in (1, 8):
    est = np.asarray(jax.jit(jax.vmap(lambda k: curvature.hutchinson_trace(matvec, c.params, k, num_samples)))(keys))
    assert abs(est.mean() - exact) < 3.0 * np.sqrt(var / num_samples / keys.shape[0])
    # Sample variance of 2000 draws: relative spread about √(2/2000) plus kurtosis; 20% is ample.
    assert abs(est.var() / (var / num_samples) - 1.0) < 0.2


def _dense_ggn(c):
  ggn = curvature.ggn_fn(c.model_fn, c.output_loss_fn, c.params)
  flat, unravel = ravel_pytree(c.params)
  eye = jnp.eye(flat.size, dtype=flat.dtype)
  return ggn, np.asarray(jax.jit(jax.vmap(lambda e: ravel_pytree(ggn(unravel(e)))[0]))(eye))


def test_hutchpp_is_exact_when_the_sketch_spans_a_low_rank_matrix():
  c = case("mlp")
  ggn, dense = _dense_ggn(c)
  rank = np.linalg.matrix_rank(dense)
  assert rank <= 32                                     # batch 16 × (3 classes − 1)
  got = curvature.hutchpp_trace(ggn, c.params, jax.random.key(2), num_samples=3 * (rank + 1))
  assert abs(got - np.trace(dense)) < 1e-8 * abs(np.trace(dense))


def test_hutchpp_unbiased_and_beats_hutchinson_on_a_decaying_spectrum():
  c = case("mlp")
  keys, budget = jax.random.split(jax.random.key(3), 500), 30
  run = lambda matvec: np.asarray(jax.jit(jax.vmap(
      lambda k: curvature.hutchpp_trace(matvec, c.params, k, budget)))(keys))
  hpp = run(c.hvp)
  assert abs(hpp.mean() - np.trace(c.hessian)) < 3.0 * hpp.std() / np.sqrt(keys.shape[0])
  ggn, dense = _dense_ggn(c)
  hpp = run(ggn)
  assert abs(hpp.mean() - np.trace(dense)) < 3.0 * hpp.std() / np.sqrt(keys.shape[0])
  assert hpp.var() < 0.5 * _trace_variance(dense) / budget
