"""Stochastic Lanczos quadrature (SLQ): spectral density and spectral moments of a symmetric matvec.

For a Rademacher probe z (‖z‖² = n) and m Lanczos steps from q₀ = z/√n, T = S diag(θ) Sᵀ gives
Gauss quadrature nodes θ_j and weights τ_j = S_{0j}² (Σ_j τ_j = 1), with
  zᵀ f(A) z / n ≈ Σ_j τ_j f(θ_j),  exact for polynomials f of degree ≤ 2m − 1.
Averaging over probes: the density φ(t) = (1/P) Σ_p Σ_j τ_pj N(t; θ_pj, σ²) (Gaussian
broadening), and the moments tr(Aᵏ)/n ≈ (1/P) Σ_p Σ_j τ_pj θ_pjᵏ — each probe's term equals
zᵀAᵏz/n exactly for k ≤ 2m − 1, so the only error is Hutchinson's probe variance.

References: Golub & Meurant, 2009, Matrices, moments and quadrature with applications;
Ghorbani et al., 2019, An investigation into neural net optimization via Hessian eigenvalue
density (arXiv:1901.10159); Ubaru, Chen & Saad, 2017, Fast estimation of tr(f(A)) via SLQ.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from optlab_jax.curvature.lanczos import lanczos, tridiagonal
from optlab_jax.curvature.loops import as_partial, resolve_loop
from optlab_jax.curvature.probes import rademacher_like
from optlab_jax.checks import check_positive, check_positive_int

__all__ = ["slq_quadrature", "slq_moments", "slq_density", "gaussian_density"]


@jax.jit
def _nodes_weights(alphas: jax.Array, betas: jax.Array) -> tuple[jax.Array, jax.Array]:
  theta, s = jnp.linalg.eigh(tridiagonal(alphas, betas))
  return theta, jnp.square(s[0])


def slq_quadrature(
    matvec: Callable,
    params: Any,
    key: jax.Array,
    num_iters: int,
    num_probes: int = 1,
    *,
    loop: str = "auto",
) -> tuple[jax.Array, jax.Array]:
  """Quadrature nodes θ and weights τ, each of shape (num_probes, num_iters).

  One Lanczos run per Rademacher probe, probes one after another (memory: one basis);
  `loop` as in `lanczos` ("scan" maps over probes with `lax.map`).
  """
  check_positive_int("num_probes", num_probes)
  matvec = as_partial(matvec)
  loop = resolve_loop(loop, matvec, params)

  def one(probe_key):
    z_key, restart_key = jax.random.split(probe_key)
    z = rademacher_like(z_key, params)
    result = lanczos(matvec, params, restart_key, num_iters, v0=z, loop=loop)
    return _nodes_weights(result.alphas, result.betas)

  keys = jax.random.split(key, num_probes)
  if loop == "scan":
    return jax.lax.map(one, keys)
  nodes, weights = zip(*(one(k) for k in keys))
  return jnp.stack(nodes), jnp.stack(weights)


def slq_moments(
    matvec: Callable,
    params: Any,
    key: jax.Array,
    num_iters: int,
    num_probes: int = 1,
    *,
    max_order: int = 4,
    loop: str = "auto",
) -> jax.Array:
  """Estimates of tr(Aᵏ)/n for k = 1..max_order, shape (max_order,).

  Exact per probe while max_order ≤ 2·num_iters − 1; the spread over probes is Hutchinson's,
  Var = 2 (‖Aᵏ‖_F² − Σ_i (Aᵏ)_ii²) / (n² P).
  """
  check_positive_int("max_order", max_order)
  if max_order > 2 * num_iters - 1:
    raise ValueError(f"max_order={max_order} is out of range; expected max_order <= 2*num_iters-1")
  nodes, weights = slq_quadrature(matvec, params, key, num_iters, num_probes, loop=loop)
  powers = nodes[..., None] ** jnp.arange(1, max_order + 1, dtype=nodes.dtype).reshape(1, 1, -1)
  return jnp.mean(jnp.sum(weights[..., None] * powers, axis=1), axis=0)


def gaussian_density(nodes: jax.Array, weights: jax.Array, grid: jax.Array, sigma: jax.Array) -> jax.Array:
  """φ(t) = (1/P) Σ_p Σ_j τ_pj N(t; θ_pj, σ²) on `grid` (integrates to 1 over the real line)."""
  z = (grid.reshape(-1, 1) - nodes.reshape(1, -1)) / sigma
  kernels = jnp.exp(-0.5 * z * z) / (sigma * jnp.sqrt(2.0 * jnp.pi))
  return kernels @ weights.reshape(-1) / nodes.shape[0]


def slq_density(
    matvec: Callable,
    params: Any,
    key: jax.Array,
    num_iters: int,
    num_probes: int = 1,
    *,
    num_points: int = 1024,
    sigma: float | None = None,
    grid: jax.Array | None = None,
    loop: str = "auto",
) -> tuple[jax.Array, jax.Array]:
  """(grid, φ(grid)): the SLQ spectral density with Gaussian broadening.

  `sigma` defaults to 1% of the node range θ_max − θ_min; `grid` defaults to `num_points`
  points spanning the nodes padded by 5σ on each side. Eigenvalue counts in an interval are
  n·∫φ; with few probes only the outliers and the bulk's shape are resolved.
  """
  check_positive_int("num_points", num_points)
  if sigma is not None:
    check_positive("sigma", sigma)
  nodes, weights = slq_quadrature(matvec, params, key, num_iters, num_probes, loop=loop)
  lo, hi = jnp.min(nodes), jnp.max(nodes)
  width = jnp.maximum(hi - lo, jnp.finfo(nodes.dtype).tiny)
  sigma = 0.01 * width if sigma is None else jnp.asarray(sigma, nodes.dtype)
  if grid is None:
    grid = jnp.linspace(lo - 5.0 * sigma, hi + 5.0 * sigma, num_points)
  return grid, gaussian_density(nodes, weights, grid, sigma)
