"""rademacher_like: values, dtypes, shapes, and the moments E[z] = 0, E[z zᵀ] = I of Rademacher probes."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature


def test_leaves_keep_shape_and_dtype_and_hold_only_signs():
  tree = {"a": jnp.zeros((3, 5), jnp.float32), "b": [jnp.zeros((7,), jnp.float64), jnp.zeros((), jnp.bfloat16)]}
  z = curvature.rademacher_like(jax.random.key(0), tree)
  for got, like in zip(jax.tree.leaves(z), jax.tree.leaves(tree)):
    assert got.shape == like.shape and got.dtype == like.dtype
    assert set(np.unique(np.asarray(got, np.float64))) <= {-1.0, 1.0}


def test_first_and_second_moments_match_rademacher():
  tree = {"w": jnp.zeros((4, 9), jnp.float64), "b": jnp.zeros((11,), jnp.float64)}  # 47 = one word + 15 bits
  draws = jax.jit(jax.vmap(lambda k: ravel_pytree(curvature.rademacher_like(k, tree))[0]))(
      jax.random.split(jax.random.key(1), 20000))
  draws = np.asarray(draws)
  se = 1.0 / np.sqrt(draws.shape[0])
  assert np.max(np.abs(draws.mean(0))) < 5 * se
  cov = draws.T @ draws / draws.shape[0]
  assert np.allclose(np.diag(cov), 1.0)
  assert np.max(np.abs(cov - np.eye(cov.shape[0]))) < 5 * se          # bits of one word independent


def test_same_key_same_probe_other_key_other_probe():
  tree = jnp.zeros((100,), jnp.float32)
  a = curvature.rademacher_like(jax.random.key(3), tree)
  assert np.array_equal(a, curvature.rademacher_like(jax.random.key(3), tree))
  assert not np.array_equal(a, curvature.rademacher_like(jax.random.key(4), tree))
