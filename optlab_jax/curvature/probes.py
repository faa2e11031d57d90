"""Random probe vectors for stochastic trace/diagonal estimators and Krylov starts."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["rademacher_like"]

_BITS = 32


def rademacher_like(key: jax.Array, tree: Any) -> Any:
  """A tree shaped like `tree` of independent ±1 entries, each leaf in its own dtype.

  One 32-bit random word yields 32 signs (sign = 1 − 2·bit), so the generator runs on
  n/32 words instead of the n uniforms `jax.random.rademacher` draws: the draw is a
  measurable cost next to a gradient on CPU (see experiments/bench_curvature.py).
  """
  leaves, treedef = jax.tree.flatten(tree)
  sizes = [int(np.prod(jnp.shape(x))) for x in leaves]
  total = sum(sizes)
  words = jax.random.bits(key, (-(-total // _BITS), 1), jnp.uint32)
  shifts = jnp.arange(_BITS, dtype=jnp.uint32).reshape(1, _BITS)
  bits = ((words >> shifts) & jnp.uint32(1)).reshape(-1)[:total]
  out, start = [], 0
  for leaf, size in zip(leaves, sizes):
    dtype = jnp.result_type(leaf)
    chunk = bits[start:start + size].astype(dtype)
    out.append((jnp.asarray(1, dtype) - jnp.asarray(2, dtype) * chunk).reshape(jnp.shape(leaf)))
    start += size
  return jax.tree.unflatten(treedef, out)
