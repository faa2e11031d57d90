"""Sets of m vectors shaped like params, stored as "rows": each leaf flattened to an (m, size) matrix.

Krylov bases live in this form inside the loops: every product with the basis is one plain
matrix-vector product per leaf, and writing a row is a dynamic-update-slice on the same array
XLA reads, so it runs in place. (Keeping leaves as (m, *shape) and reshaping for the products
made XLA CPU copy the whole basis several times per step.) Each leaf keeps its own dtype; on an
explicit mesh (sharding-in-types) the rows live on every device, since a sharded leaf cannot be
flattened, and the vectors read from them take their leaf's sharding, as the products need.
`stack`/`unstack` convert to and from params-shaped trees with a leading axis m.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import compat

__all__ = ["scalar_dtype", "size", "zeros", "set_row", "row", "vdot", "norm", "unit", "dot", "combine", "project_out",
           "stack", "unstack", "to_matrix", "from_matrix"]


def _flat(x: jax.Array) -> jax.Array:
  return compat.replicated(x).reshape(-1)


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
      lambda r, x: jax.lax.dynamic_update_slice_in_dim(r, _flat(x).reshape(1, -1).astype(r.dtype), i, 0), rows, v)


def row(rows: Any, i: jax.Array, like: Any) -> Any:
  """Row `i` as a vector shaped like `like`."""
  return jax.tree.map(
      lambda r, x: compat.sharded_like(jax.lax.dynamic_index_in_dim(r, i, 0, keepdims=False).reshape(jnp.shape(x)), x),
      rows, like)


def vdot(u: Any, v: Any) -> jax.Array:
  """⟨u, v⟩ summed over all leaves."""
  return sum(compat.sharding_safe_vdot(a, b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v)))


def norm(v: Any) -> jax.Array:
  """Euclidean norm over all leaves."""
  return jnp.sqrt(vdot(v, v))


def unit(v: Any) -> Any:
  """v / ‖v‖."""
  n = norm(v)
  return jax.tree.map(lambda x: x / n.astype(x.dtype), v)


def dot(rows: Any, v: Any) -> jax.Array:
  """(Qᵀ v)_j = ⟨q_j, v⟩ for every row j: shape (m,)."""
  return sum(r @ _flat(x) for r, x in zip(jax.tree.leaves(rows), jax.tree.leaves(v)))


def combine(rows: Any, coeffs: jax.Array, like: Any) -> Any:
  """Σ_j c_j q_j shaped like `like`; `coeffs` of shape (m, k) gives k vectors stacked on axis 0."""
  def leaf(r, x):
    return compat.sharded_like((coeffs.astype(r.dtype).T @ r).reshape(coeffs.shape[1:] + jnp.shape(x)), x)
  return jax.tree.map(leaf, rows, like)


def project_out(rows: Any, v: Any) -> Any:
  """v − Q (Qᵀ v): removes the components of `v` along the (orthonormal) rows."""
  return jax.tree.map(jnp.subtract, v, combine(rows, dot(rows, v), v))


def stack(rows: Any, like: Any) -> Any:
  """Rows as a params-shaped tree with a leading axis m."""
  return jax.tree.map(lambda r, x: compat.sharded_like(r.reshape((r.shape[0],) + jnp.shape(x)), x), rows, like)


def unstack(stacked: Any) -> Any:
  """A params-shaped tree with a leading axis m as rows."""
  return jax.tree.map(lambda s: compat.replicated(s).reshape(s.shape[0], -1), stacked)


def to_matrix(rows: Any) -> jax.Array:
  """Rows as one (m, n) matrix, the leaves side by side in tree order (promoted to one dtype)."""
  return jnp.concatenate(jax.tree.leaves(rows), axis=1)


def from_matrix(matrix: jax.Array, like: Any) -> Any:
  """Inverse of `to_matrix`: an (m, n) matrix as rows for vectors shaped like `like`, each in its dtype."""
  leaves, treedef = jax.tree.flatten(like)
  cuts = np.cumsum([int(np.prod(jnp.shape(x))) for x in leaves])[:-1]
  parts = jnp.split(matrix, cuts, axis=1)
  return jax.tree.unflatten(treedef, [m.astype(jnp.result_type(x)) for m, x in zip(parts, leaves)])
