"""Kronecker-factored preconditioning shared by Shampoo and SOAP: leaves, blocks, factors, roots.

A leaf is preconditioned when it is a floating-point tensor with at least two axes, no zero
axis and every (blocked) axis at most `max_precond_dim` long; any other leaf (scalars,
vectors, embeddings wider than the limit, empty leaves) falls back to a diagonal method.
A preconditioned leaf of shape (n_1, …, n_k) is cut into blocks of b_i = min(n_i, block_size)
along each axis (zero-padded at the far end), laid out as (N, b_1, …, b_k) so that every
block's factors and roots are one batched array: factor i of a block G is
F_i = Σ_{other axes} G Gᵀ (for a matrix, L = G Gᵀ and R = Gᵀ G), of shape (N, b_i, b_i).
Padded rows and columns of F_i are zero, so a matrix function of F_i + εI acts on the real
block alone; eigenbases treat padded coordinates separately (`eigenbasis`, `power_qr_basis`).
On an explicit mesh the blocks live on every device (the factors are small matrices; a sharded
axis could not be contracted without choosing the result's sharding); `from_blocks` puts the
direction back on its leaf's sharding. On CPU the decompositions of a stack run one block at a
time (`_per_block`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import checks, compat

__all__ = [
    "DEFAULT_MAX_PRECOND_DIM", "check_structural", "check_precond_dtype", "precond_dtype",
    "init_factors", "pack", "unpack", "is_preconditioned", "to_blocks", "from_blocks",
    "padding_masks", "factor_statistics", "update_factors", "all_finite", "apply_per_axis",
    "inverse_root", "eigenbasis", "power_qr_basis",
]

DEFAULT_MAX_PRECOND_DIM = 4096  # `max_precond_dim=None`: a 4096² eigh is the largest we compute.
_NEWTON_MAX_ITERS = 100
_POWER_ITERS = 20


def check_structural(name: str, value: Any) -> int | None:
  """`value` (None or an integer >= 1) as a Python int; it sets shapes, so it cannot be traced."""
  if value is None:
    return None
  if isinstance(value, jax.core.Tracer):
    raise ValueError(f"{name} sets array shapes and cannot be traced; under optax.inject_hyperparams "
                     f"pass it in static_args=({name!r},)")
  checks.check_positive_int(name, value)
  return int(value)


def precond_dtype(value: str | None, param_dtype: Any) -> jnp.dtype:
  """The dtype of factors and roots: `value` ("float32"/"float64"), else at least float32."""
  if value is not None:
    return jnp.dtype(value)
  return jnp.promote_types(param_dtype, jnp.float32)


def check_precond_dtype(name: str, value: str | None) -> None:
  """`ValueError` unless `value` is None, "float32" or "float64" (the latter needs jax_enable_x64)."""
  if value is None:
    return
  checks.check_choice(name, value, ("float32", "float64"))
  if value == "float64" and not jax.config.jax_enable_x64:
    raise ValueError(f"{name}='float64' needs jax.config.update('jax_enable_x64', True)")


def _factor_dims(shape: tuple[int, ...], block_size: int | None) -> tuple[int, list[int]]:
  dims = _block_dims(shape, block_size)
  return math.prod(-(-n // b) for n, b in zip(shape, dims)), list(dims)


def init_factors(p: Any, max_precond_dim: int | None, block_size: int | None, dtype: str | None,
                 eye: bool) -> jax.Array:
  """Leaf `p`'s zero (or identity, `eye`) factors, `pack`ed; a (0,) array for a fallback leaf."""
  if not is_preconditioned(p, max_precond_dim, block_size):
    return jnp.zeros((0,), p.dtype)
  n, dims = _factor_dims(p.shape, block_size)
  d = precond_dtype(dtype, p.dtype)
  make = lambda b: jnp.broadcast_to(jnp.eye(b, dtype=d), (n, b, b)) if eye else jnp.zeros((n, b, b), d)
  return pack(tuple(make(b) for b in dims))


def pack(factors: tuple) -> jax.Array:
  """A leaf's factors (N, b_i, b_i), i = 1…k, as one flat array.

  State holds one array per leaf (trees shaped like params): `nnx.Optimizer` turns tuples nested
  in its state into int-keyed dicts, and `optax.tree.map_params` needs a params-independent layout.
  """
  return jnp.concatenate([f.ravel() for f in factors])


def unpack(flat: jax.Array, shape: tuple[int, ...], block_size: int | None) -> tuple:
  """Inverse of `pack` for a leaf of `shape`; () for a fallback leaf's empty array."""
  if flat.size == 0:
    return ()
  n, dims = _factor_dims(shape, block_size)
  offsets = np.cumsum([0] + [n * b * b for b in dims])
  return tuple(flat[o:o + n * b * b].reshape(n, b, b) for o, b in zip(offsets, dims))


def _block_dims(shape: tuple[int, ...], block_size: int | None) -> tuple[int, ...]:
  return tuple(n if block_size is None else min(n, block_size) for n in shape)


def is_preconditioned(x: Any, max_precond_dim: int | None, block_size: int | None) -> bool:
  """Whether leaf `x` gets Kronecker factors (see the module docstring); static."""
  limit = DEFAULT_MAX_PRECOND_DIM if max_precond_dim is None else max_precond_dim
  shape = tuple(np.shape(x))
  return (len(shape) >= 2 and math.prod(shape) > 0 and checks.is_float(x)
          and max(_block_dims(shape, block_size)) <= limit)


def to_blocks(x: jax.Array, block_size: int | None) -> jax.Array:
  """(n_1, …, n_k) → (N, b_1, …, b_k), zero-padded blocks in row-major block order, replicated."""
  x = compat.replicated(x)
  dims = _block_dims(x.shape, block_size)
  counts = [-(-n // b) for n, b in zip(x.shape, dims)]
  x = jnp.pad(x, [(0, c * b - n) for n, b, c in zip(x.shape, dims, counts)])
  x = x.reshape([v for c, b in zip(counts, dims) for v in (c, b)])
  k = len(dims)
  x = x.transpose([2 * i for i in range(k)] + [2 * i + 1 for i in range(k)])
  return x.reshape(-1, *dims)


def from_blocks(blocks: jax.Array, leaf: jax.Array, block_size: int | None) -> jax.Array:
  """Inverse of `to_blocks`: (N, b_1, …, b_k) → `leaf`'s shape (n_1, …, n_k) and sharding, padding dropped."""
  shape = leaf.shape
  dims = _block_dims(shape, block_size)
  counts = [-(-n // b) for n, b in zip(shape, dims)]
  k = len(dims)
  x = blocks.reshape(*counts, *dims)
  x = x.transpose([v for i in range(k) for v in (i, k + i)])
  x = x.reshape([c * b for c, b in zip(counts, dims)])
  return compat.sharded_like(x[tuple(slice(0, n) for n in shape)], leaf)


def padding_masks(shape: tuple[int, ...], block_size: int | None) -> list[np.ndarray]:
  """Per axis i, an (N, b_i) float mask that is 1 on padded coordinates of each block."""
  dims = _block_dims(shape, block_size)
  counts = [-(-n // b) for n, b in zip(shape, dims)]
  grid = np.indices(counts).reshape(len(counts), -1)
  return [((grid[i][:, None] * b + np.arange(b)) >= n).astype(np.float64)
          for i, (n, b) in enumerate(zip(shape, dims))]


def factor_statistics(blocks: jax.Array) -> tuple[jax.Array, ...]:
  """Per axis i, F_i = G_(i) G_(i)ᵀ with G_(i) the block unfolded along axis i: (N, b_i, b_i)."""
  out = []
  for i in range(blocks.ndim - 1):
    unfolded = jnp.moveaxis(blocks, i + 1, 1).reshape(blocks.shape[0], blocks.shape[i + 1], -1)
    out.append(jnp.einsum("nax,nbx->nab", unfolded, unfolded))
  return tuple(out)


def update_factors(factors: tuple, blocks: jax.Array, decay: Any) -> tuple:
  """F ← decay·F + (1 − decay)·stat, or the running sum F + stat when decay = 1 (may be traced).

  A gradient block with a non-finite entry leaves the factors unchanged: one NaN would
  otherwise poison every later root or eigenbasis.
  """
  stats = factor_statistics(blocks.astype(factors[0].dtype))
  finite = all_finite(blocks)
  weight = jnp.where(decay == 1, 1.0, 1.0 - decay).astype(factors[0].dtype)
  new = tuple(decay * f + weight * s for f, s in zip(factors, stats))
  return tuple(jnp.where(finite, n, f).astype(f.dtype) for n, f in zip(new, factors))


def all_finite(x: jax.Array) -> jax.Array:
  """Scalar bool: every entry of `x` is finite."""
  return jnp.all(jnp.isfinite(x))


def apply_per_axis(blocks: jax.Array, mats: tuple, transpose: bool = False) -> jax.Array:
  """Multiplies axis i of every block by mats[i] (x ↦ M x along that axis; Mᵀ x if `transpose`)."""
  spec = "nja,n...j->n...a" if transpose else "naj,n...j->n...a"
  for i, m in enumerate(mats):
    x = jnp.moveaxis(blocks, i + 1, -1)
    blocks = jnp.moveaxis(jnp.einsum(spec, m, x), -1, i + 1)
  return blocks


def _largest_eigenvalue(mats: jax.Array) -> jax.Array:
  """λ_max of each symmetric PSD matrix in a batch, by power iteration (for the Newton roots)."""
  v = jnp.ones(mats.shape[:-1], mats.dtype) / math.sqrt(mats.shape[-1])

  def step(_, v):
    w = jnp.einsum("nab,nb->na", mats, v)
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), jnp.finfo(mats.dtype).tiny)

  v = jax.lax.fori_loop(0, _POWER_ITERS, step, v)
  return jnp.einsum("na,nab,nb->n", v, mats, v)


def _newton_inverse_root(a: jax.Array, p: Any) -> jax.Array:
  """A^{-1/p} for a batch of SPD A by the coupled Newton iteration (integer p; may be traced).

  X₀ = z^{1/p} I, M₀ = z A with z = (1 + p)/(2‖A‖_F); T = ((p + 1) I − M)/p, X ← X T,
  M ← Tᵖ M, until max|M − I| < tol (X → A^{-1/p}). Guo & Higham, 2006; Anil et al., 2020.
  """
  eye = jnp.eye(a.shape[-1], dtype=a.dtype)[None]
  p = jnp.asarray(p, a.dtype)
  tol = 1e-6 if a.dtype == jnp.float32 else 1e-12
  z = (1 + p) / (2 * jnp.linalg.norm(a, axis=(-2, -1), keepdims=True))
  x0, m0 = jnp.power(z, 1 / p) * eye, z * a

  def matrix_power(t):
    return jax.lax.fori_loop(0, jnp.round(p).astype(jnp.int32), lambda _, acc: acc @ t,
                             jnp.broadcast_to(eye, t.shape))

  def body(carry):
    i, x, m, _ = carry
    t = ((p + 1) * eye - m) / p
    m = matrix_power(t) @ m
    return i + 1, x @ t, m, jnp.max(jnp.abs(m - eye))

  cond = lambda c: (c[0] < _NEWTON_MAX_ITERS) & (c[3] > tol)
  _, x, _, _ = jax.lax.while_loop(cond, body, (0, x0, m0, jnp.asarray(jnp.inf, a.dtype)))
  return x


def _per_block(decompose: Any, stack: jax.Array) -> Any:
  """`decompose` (eigh, qr) of each matrix of an (N, b, b) stack: batched, but on CPU one at a time.

  jaxlib's batched CPU LAPACK kernels fan the batch out over XLA's intra-op thread pool and wait
  for it from a thread of that pool, so two of them running at once (a leaf's two factor stacks)
  can leave every thread of a small pool waiting: Shampoo with `block_size` hung on 2 cores. One
  matrix per call (a `lax.map`) does not fan out, and runs the same LAPACK routine on each.
  """
  return jax.lax.platform_dependent(stack, cpu=lambda s: jax.lax.map(decompose, s), default=decompose)


def inverse_root(factors: jax.Array, exponent: Any, damping: Any, method: str) -> jax.Array:
  """(F + ε·λ_max(F)·I)^exponent for a batch of PSD F (exponent < 0; ε = `damping`).

  `method` "eigh": through the eigendecomposition; "newton": the coupled Newton iteration
  for p = −1/exponent (an integer). λ_max is floored at the dtype's tiny so that F = 0 stays finite.
  """
  eye = jnp.eye(factors.shape[-1], dtype=factors.dtype)[None]
  tiny = jnp.finfo(factors.dtype).tiny
  if method == "eigh":
    w, q = _per_block(jnp.linalg.eigh, factors)
    shift = damping * jnp.maximum(w[..., -1:], tiny)
    w = jnp.maximum(w, 0) + shift
    return jnp.einsum("nab,nb,ncb->nac", q, w ** exponent, q)
  shift = damping * jnp.maximum(_largest_eigenvalue(factors), tiny)
  return _newton_inverse_root(factors + shift[:, None, None] * eye, -1 / exponent)


def _with_padding_last(factors: jax.Array, pad: np.ndarray) -> jax.Array:
  """F with −(1 + tr F) on its padded diagonal: those unit vectors become its lowest eigenvectors."""
  trace = jnp.trace(factors, axis1=-2, axis2=-1)[:, None]
  return factors - jax.vmap(jnp.diag)(jnp.asarray(pad, factors.dtype) * (1 + trace))


def eigenbasis(factors: jax.Array, pad: np.ndarray) -> jax.Array:
  """Eigenvectors of each F, columns by descending eigenvalue (padded coordinates last)."""
  _, q = _per_block(jnp.linalg.eigh, _with_padding_last(factors, pad))
  return q[..., ::-1]


def power_qr_basis(factors: jax.Array, basis: jax.Array, pad: np.ndarray):
  """One power step from the current basis Q: Q ← qr(F Q_sorted), with Q's columns first sorted
  by descending Rayleigh quotient diag(Qᵀ F Q). Returns (new basis, the (N, b) sort order)."""
  f = _with_padding_last(factors, pad)
  estimate = jnp.einsum("nab,nac,ncb->nb", basis, f, basis)
  order = jnp.argsort(-estimate, axis=-1)
  basis = jnp.take_along_axis(basis, order[:, None, :], axis=-1)
  q, _ = _per_block(jnp.linalg.qr, f @ basis)
  return q, order
