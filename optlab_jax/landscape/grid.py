"""A function of the params on many points θ = origin + Σ_k c_k d_k, as one compiled program.

`evaluate` is the one home of this: `slice_1d`, `slice_2d`, `interpolate` and `connect` all call
it. Every point is a row of `coords`; the whole set runs as one jitted `jax.vmap` (`chunk_size=None`:
peak memory holds all points' activations at once) or as `jax.lax.map(..., batch_size=chunk_size)`
(a vmap over `chunk_size` points at a time inside one scan, memory bounded by the chunk). The
default "auto" takes `AUTO_CHUNK` points per chunk: on XLA CPU a vmapped matmul is a loop of the
points' matmuls whose activations leave the cache, so small chunks run fastest there (see
experiments/bench_landscape.py). On XLA CPU a convolution inside a scan runs 40–50× slower than
plainly jitted (docs/architecture.md), so with
`loop="auto"` a chunked convolutional `fn` on CPU runs its one compiled chunk program from a Python
loop instead; "scan" and "python" force either.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import checks
from optlab_jax.curvature.loops import LOOPS, has_primitive

__all__ = ["AUTO_CHUNK", "evaluate", "peak_bytes", "slice_1d", "slice_2d", "shift"]


# Points per chunk of chunk_size="auto", by backend (experiments/bench_landscape.py: on 2 CPU cores,
# digits-MLP slices ran fastest at 4 per chunk); accelerators take big chunks, memory still bounded.
AUTO_CHUNK = {"cpu": 4}
AUTO_CHUNK_ACCELERATOR = 256


def _chunk_size(chunk_size: int | str | None) -> int | None:
  if chunk_size == "auto":
    return AUTO_CHUNK.get(jax.default_backend(), AUTO_CHUNK_ACCELERATOR)
  if chunk_size is not None:
    checks.check_positive_int("chunk_size", chunk_size)
  return chunk_size


def shift(origin: Any, directions: Sequence[Any], c: jax.Array) -> Any:
  """origin + Σ_k c[k] · directions[k], leaf by leaf in each leaf's dtype."""
  def leaf(o, *ds):
    return o + sum(c[k].astype(o.dtype) * d for k, d in enumerate(ds)) if ds else o
  return jax.tree.map(leaf, origin, *directions)


def _point(fn, origin, directions, args, c):
  return fn(shift(origin, directions, c), *args)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _all_points(fn, origin, directions, coords, args, chunk_size):
  point = functools.partial(_point, fn, origin, directions, args)
  if chunk_size is None:
    return jax.vmap(point)(coords)
  return jax.lax.map(point, coords, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnums=0)
def _chunk(fn, origin, directions, coords, args):
  return jax.vmap(functools.partial(_point, fn, origin, directions, args))(coords)


def evaluate(
    fn: Callable[..., Any],
    origin: Any,
    directions: Sequence[Any],
    coords: Any,
    *,
    args: tuple = (),
    chunk_size: int | str | None = "auto",
    loop: str = "auto",
) -> Any:
  """fn(origin + Σ_k coords[i, k] · directions[k], *args) for every row i of `coords` (N × K).

  `fn(params, *args)` returns a scalar or a pytree of scalars (e.g. a metrics dict); the result
  has the same structure with a leading axis N. Pass data through `args` rather than closing over
  it: jitted arguments are not baked into the program as constants. `fn` is a static argument
  (compiled once per function object), so keep one function across calls. `chunk_size`: points
  evaluated at once ("auto": `AUTO_CHUNK` for the backend; None: all of them).
  """
  checks.check_choice("loop", loop, LOOPS)
  coords = jnp.asarray(coords)
  if coords.ndim != 2 or coords.shape[1] != len(directions):
    raise ValueError(f"coords has shape {coords.shape}; expected (N, {len(directions)}), one column per direction")
  directions, args, chunk_size = tuple(directions), tuple(args), _chunk_size(chunk_size)
  if chunk_size is None:
    return _all_points(fn, origin, directions, coords, args, None)
  if loop == "auto":
    on_cpu = jax.default_backend() == "cpu"
    conv = on_cpu and has_primitive(functools.partial(_point, fn), "conv_general_dilated", origin, directions,
                                    args, coords[0])
    loop = "python" if conv else "scan"
  if loop == "scan":
    return _all_points(fn, origin, directions, coords, args, chunk_size)
  n = coords.shape[0]
  padded = jnp.concatenate([coords, jnp.zeros(((-n) % chunk_size, coords.shape[1]), coords.dtype)])
  parts = [_chunk(fn, origin, directions, padded[i:i + chunk_size], args) for i in range(0, n, chunk_size)]
  return jax.tree.map(lambda *xs: jnp.concatenate(xs)[:n], *parts)


def slice_1d(fn: Callable[..., Any], params: Any, direction: Any, alphas: Any, **kwargs: Any) -> Any:
  """fn(params + α · direction) for every α in `alphas`: values with a leading axis len(alphas).

  Keyword arguments (`args`, `chunk_size`, `loop`) as in `evaluate`.
  """
  return evaluate(fn, params, (direction,), jnp.reshape(jnp.asarray(alphas), (-1, 1)), **kwargs)


def slice_2d(fn: Callable[..., Any], params: Any, direction_x: Any, direction_y: Any, xs: Any, ys: Any,
             **kwargs: Any) -> Any:
  """fn(params + x · d_x + y · d_y) on the grid xs × ys, as one program over all the points.

  Each value has shape (len(ys), len(xs)): entry [i, j] is at (xs[j], ys[i]), the layout
  matplotlib's `contour(xs, ys, values)` reads. Keyword arguments as in `evaluate`.
  """
  xs, ys = np.asarray(xs), np.asarray(ys)
  grid_x, grid_y = np.meshgrid(xs, ys)
  coords = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
  values = evaluate(fn, params, (direction_x, direction_y), coords, **kwargs)
  return jax.tree.map(lambda v: v.reshape(len(ys), len(xs), *v.shape[1:]), values)


def peak_bytes(fn: Callable[..., Any], origin: Any, directions: Sequence[Any], coords: Any, *, args: tuple = (),
               chunk_size: int | str | None = "auto") -> int:
  """XLA's estimate of the scratch and output memory of `evaluate`'s one program (the "scan"
  path): what `chunk_size` bounds. Compiles the program ahead of time, without running it."""
  compiled = _all_points.lower(fn, origin, tuple(directions), jnp.asarray(coords), tuple(args),
                               _chunk_size(chunk_size)).compile()
  memory = compiled.memory_analysis()
  return int(memory.temp_size_in_bytes + memory.output_size_in_bytes)
