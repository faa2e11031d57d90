"""Compatibility fixes for the installed versions of our dependencies, applied on import of optlab_jax.

optax 0.2.8 picks its inner product by comparing version strings, `jax.__version__ < '0.7.2'`,
which is True for JAX 0.10 ('1' < '7'): `optax.tree.vdot` then takes `jnp.vdot`, whose ravel
is a reshape that JAX refuses on a leaf sharded over an explicit mesh axis ("This reshape is
not supported … new sizes: (64,)"). Every optimizer built on it (L-BFGS's two-loop, our CG
solver, Prodigy, D-Adaptation, Mechanic) then fails under sharding-in-types. The fix installs
the branch optax meant for JAX ≥ 0.7.2 (a full tensordot, replicated result on an explicit
mesh), only while the misfire is present: same numbers, no ravel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax.tree_utils import _tree_math

__all__ = ["fix_optax_tree_vdot", "replicated", "sharded_like", "sharding_safe_vdot"]


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def sharding_safe_vdot(a: jax.Array, b: jax.Array, precision=jax.lax.Precision.HIGHEST) -> jax.Array:
  """⟨a, b⟩ (a conjugated) of two same-shaped arrays without flattening them."""
  if a.shape != b.shape:
    raise ValueError(f"vdot of arrays of shapes {a.shape} and {b.shape}: the shapes must be equal")
  if jnp.issubdtype(a.dtype, jnp.complexfloating):
    a = jnp.conj(a)
  mesh = jax.typeof(a).sharding.mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.P()) if mesh.are_all_axes_explicit else None
  return jnp.tensordot(a, b, a.ndim, precision=precision, out_sharding=replicated)


def replicated(x: jax.Array) -> jax.Array:
  """`x` on every device when it is sharded over an explicit mesh axis; `x` itself otherwise.

  For small per-leaf work (Kronecker blocks, SM3's per-axis accumulators) whose contractions or
  concatenations of sharded axes have no sharding JAX could infer.
  """
  sharding = jax.typeof(x).sharding
  if not sharding.mesh.explicit_axes or all(a is None for a in sharding.spec):
    return x
  return jax.sharding.reshard(x, jax.P())


def sharded_like(x: jax.Array, reference: jax.Array) -> jax.Array:
  """`x` resharded as `reference` on an explicit mesh; `x` itself otherwise.

  `x` has `reference`'s shape, or extra leading axes (a stack of vectors), which stay unsharded.
  """
  sharding = jax.typeof(reference).sharding
  if not sharding.mesh.explicit_axes:
    return x
  spec = jax.P(*([None] * (jnp.ndim(x) - jnp.ndim(reference))), *sharding.spec)
  if jax.typeof(x).sharding.spec == spec:
    return x
  return jax.sharding.reshard(x, spec)


def fix_optax_tree_vdot() -> bool:
  """Installs `sharding_safe_vdot` in optax's tree_vdot where optax's version test misfires."""
  misfires = jax.__version__ < "0.7.2" and _version(jax.__version__) >= (0, 7, 2)
  if misfires and _tree_math._vdot is not sharding_safe_vdot:
    _tree_math._vdot = sharding_safe_vdot
  return misfires
