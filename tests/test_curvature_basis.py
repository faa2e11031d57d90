"""Row-form vector sets (curvature.basis) against the same products on raveled numpy matrices."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optlab_jax.curvature import basis as B

TREE = {"w": jnp.zeros((3, 4), jnp.float64), "b": jnp.zeros((5,), jnp.float64)}


def _random_rows(key, m):
  flat, unravel = ravel_pytree(TREE)
  q, _ = np.linalg.qr(np.asarray(jax.random.normal(key, (flat.size, m), jnp.float64)))
  stacked = jax.vmap(unravel)(jnp.asarray(q.T))
  return B.unstack(stacked), stacked, q, unravel


def test_dot_combine_project_out_match_matrix_products():
  rows, stacked, q, unravel = _random_rows(jax.random.key(0), 4)
  v = np.asarray(jax.random.normal(jax.random.key(1), (q.shape[0],), jnp.float64))
  c = np.asarray(jax.random.normal(jax.random.key(2), (4, 2), jnp.float64))
  np.testing.assert_allclose(B.dot(rows, unravel(v)), q.T @ v, rtol=1e-13)
  got = jax.vmap(lambda t: ravel_pytree(t)[0])(B.combine(rows, jnp.asarray(c), TREE))
  np.testing.assert_allclose(got, (q @ c).T, rtol=1e-13)
  np.testing.assert_allclose(ravel_pytree(B.project_out(rows, unravel(v)))[0], v - q @ (q.T @ v), atol=1e-13)
  assert abs(B.norm(unravel(v)) - np.linalg.norm(v)) < 1e-13
  assert jax.tree.all(jax.tree.map(np.array_equal, B.stack(rows, TREE), stacked))


def test_set_row_and_row_round_trip():
  rows = B.zeros(TREE, 3)
  v = jax.tree.map(lambda x: jnp.arange(x.size, dtype=x.dtype).reshape(x.shape), TREE)
  got = B.set_row(rows, jnp.asarray(1, jnp.int32), v)
  np.testing.assert_array_equal(B.dot(got, v), [0.0, float(B.vdot(v, v)), 0.0])
  assert jax.tree.all(jax.tree.map(np.array_equal, B.row(got, jnp.asarray(1, jnp.int32), TREE), v))


def test_to_matrix_and_from_matrix_are_ravel_pytree_side_by_side():
  tree = {"b": jnp.zeros((2,), jnp.float32), "w": jnp.zeros((3, 2), jnp.float64)}   # leaves in key order: b, w
  m = np.arange(3 * 8, dtype=np.float64).reshape(3, 8) / 7
  rows = B.from_matrix(jnp.asarray(m), tree)
  assert rows["b"].dtype == jnp.float32 and rows["w"].dtype == jnp.float64
  np.testing.assert_array_equal(rows["w"], m[:, 2:])
  np.testing.assert_allclose(rows["b"], m[:, :2], rtol=1e-7)
  np.testing.assert_allclose(B.to_matrix(rows), m, rtol=1e-7)
  np.testing.assert_array_equal(jax.vmap(lambda t: ravel_pytree(t)[0])(B.stack(rows, tree)), B.to_matrix(rows))
