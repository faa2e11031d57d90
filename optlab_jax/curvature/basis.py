"""Sets of vectors stored as one tree: each leaf of params gets a leading axis of size m.

Keeping a Krylov basis in this stacked form (rather than a flat m × n matrix) keeps every
leaf's own shape and sharding, so the products below run where the parameters live.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["zeros", "set_row", "dot", "combine", "project_out", "vdot", "norm", "scalar_dtype"]


def scalar_dtype(tree: Any) -> jnp.dtype:
  """The dtype that inner products of `tree`'s leaves promote to."""
  return jnp.result_type(*jax.tree.leaves(tree))


def zeros(tree: Any, m: int) -> Any:
  """m zero vectors shaped like `tree`."""
  return jax.tree.map(lambda x: jnp.zeros((m, *jnp.shape(x)), jnp.result_type(x)), tree)


def set_row(basis: Any, i: jax.Array, v: Any) -> Any:
  """Writes vector `v` into row `i`; an out-of-range `i` leaves the basis unchanged."""
  return jax.tree.map(lambda b, x: b.at[i].set(x, mode="drop"), basis, v)


def vdot(u: Any, v: Any) -> jax.Array:
  """⟨u, v⟩ summed over all leaves."""
  return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v)))


def norm(v: Any) -> jax.Array:
  """Euclidean norm over all leaves."""
  return jnp.sqrt(vdot(v, v))


def dot(basis: Any, v: Any) -> jax.Array:
  """(Qᵀ v)_j = ⟨q_j, v⟩ for every row j: shape (m,)."""
  def leaf_dot(b, x):
    return jnp.tensordot(b, x, axes=x.ndim)
  return sum(leaf_dot(b, x) for b, x in zip(jax.tree.leaves(basis), jax.tree.leaves(v)))


def combine(basis: Any, coeffs: jax.Array) -> Any:
  """Σ_j c_j q_j; `coeffs` of shape (m,) gives one vector, (m, k) gives k stacked vectors."""
  return jax.tree.map(lambda b: jnp.tensordot(coeffs.astype(b.dtype), b, axes=([0], [0])), basis)


def project_out(basis: Any, v: Any) -> Any:
  """v − Q (Qᵀ v): removes the components of `v` along the (orthonormal) rows of the basis."""
  return jax.tree.map(jnp.subtract, v, combine(basis, dot(basis, v)))
