"""Random probe vectors for stochastic trace/diagonal estimators and Krylov starts."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import compat

__all__ = ["rademacher_like"]

_BITS = 32


def _signs(key: jax.Array, like: jax.Array) -> jax.Array:
  size, dtype = int(np.prod(jnp.shape(like))), jnp.result_type(like)
  words = jax.random.bits(key, (-(-size // _BITS), 1), jnp.uint32)
  bits = (words >> jnp.arange(_BITS, dtype=jnp.uint32).reshape(1, _BITS)) & jnp.uint32(1)
  signs = jnp.asarray(1, dtype) - jnp.asarray(2, dtype) * bits.astype(dtype)
  return compat.sharded_like(signs.reshape(-1)[:size].reshape(jnp.shape(like)), like)


def rademacher_like(key: jax.Array, tree: Any) -> Any:
  """A tree shaped like `tree` of independent ±1 entries, each leaf in its own dtype.

  One 32-bit random word yields 32 signs (sign = 1 − 2·bit), so the generator runs on
  n/32 words instead of the n uniforms `jax.random.rademacher` draws; each leaf gets its own
  key (split from `key`) and is written in one fused pass, with its leaf's sharding. The draw is a measurable cost
  next to a gradient on CPU (see experiments/bench_curvature.py).
  """
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [_signs(k, x) for k, x in zip(keys, leaves)])
