"""Sets of m vectors shaped like params, stored as "rows": each leaf flattened to an (m, size) matrix.

Krylov bases live in this form inside the loops: every product with the basis is one plain
matrix-vector product per leaf, and writing a row is a dynamic-update-slice on the same array
XLA reads, so it runs in place. (Keeping leaves as (m, *shape) and reshaping for the products
made XLA CPU copy the whole basis several times per step.) Each leaf keeps its own dtype and
sharding. `stack`/`unstack` convert to and from params-shaped trees with a leading axis m.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["scalar_dtype", "size", "zeros", "set_row", "row", "vdot", "norm", "unit", "dot", "combine", "project_out",
           "stack", "unstack"]


def scalar_dtype(tree: Any) -> jnp.dtype:
  """The dtype that inner products of `tree`'s leaves promote to."""
  return jnp.result_type(*jax.tree.leaves(tree))


def size(tree: Any) -> int:
  """The number of entries over all leaves: the dimension of the vector space."""
  return sum(int(np.prod(jnp.shape(x))) for x in jax.tree.leaves(tree))


def zeros(like: Any, m: int) -> Any:
  """m zero rows for vectors shaped like `like`."""
  return jax.tree.map(lambda x: jnp.zeros((m, jnp.size(x)), jnp.result_type(x)), like)


def set_row(rows: Any, i: jax.Array, v: Any) -> Any:
  """Writes vector `v` into row `i`."""
  return jax.tree.map(
      lambda r, x: jax.lax.dynamic_update_slice_in_dim(r, x.reshape(1, -1).astype(r.dtype), i, 0), rows, v)


def row(rows: Any, i: jax.Array, like: Any) -> Any:
  """Row `i` as a vector shaped like `like`."""
  return jax.tree.map(lambda r, x: jax.lax.dynamic_index_in_dim(r, i, 0, keepdims=False).reshape(jnp.shape(x)),
                      rows, like)


def vdot(u: Any, v: Any) -> jax.Array:
  """⟨u, v⟩ summed over all leaves."""
  return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v)))


def norm(v: Any) -> jax.Array:
  """Euclidean norm over all leaves."""
  return jnp.sqrt(vdot(v, v))


def unit(v: Any) -> Any:
  """v / ‖v‖."""
  n = norm(v)
  return jax.tree.map(lambda x: x / n.astype(x.dtype), v)


def dot(rows: Any, v: Any) -> jax.Array:
  """(Qᵀ v)_j = ⟨q_j, v⟩ for every row j: shape (m,)."""
  return sum(r @ x.reshape(-1) for r, x in zip(jax.tree.leaves(rows), jax.tree.leaves(v)))


def combine(rows: Any, coeffs: jax.Array, like: Any) -> Any:
  """Σ_j c_j q_j shaped like `like`; `coeffs` of shape (m, k) gives k vectors stacked on axis 0."""
  def leaf(r, x):
    return (coeffs.astype(r.dtype).T @ r).reshape(coeffs.shape[1:] + jnp.shape(x))
  return jax.tree.map(leaf, rows, like)


def project_out(rows: Any, v: Any) -> Any:
  """v − Q (Qᵀ v): removes the components of `v` along the (orthonormal) rows."""
  return jax.tree.map(jnp.subtract, v, combine(rows, dot(rows, v), v))


def stack(rows: Any, like: Any) -> Any:
  """Rows as a params-shaped tree with a leading axis m."""
  return jax.tree.map(lambda r, x: r.reshape((r.shape[0],) + jnp.shape(x)), rows, like)


def unstack(stacked: Any) -> Any:
  """A params-shaped tree with a leading axis m as rows."""
  return jax.tree.map(lambda s: s.reshape(s.shape[0], -1), stacked)
