"""Truncated conjugate gradient (Steihaug-Toint) on a matvec over pytrees.

The shared linear solver of the curvature-based optimizers (Newton-CG, Gauss-Newton,
natural gradient): it only needs v ↦ A v, so the curvature matrix is never built, and it
runs in one `lax.while_loop`, so it is jittable and vmappable.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["CGResult", "conjugate_gradient"]


class CGResult(NamedTuple):
  """Output of `conjugate_gradient`."""
  x: Any                          # the approximate solution; a tree shaped like b.
  residual: Any                   # b − (A + damping·I) x, updated recursively along with x.
  iterations: jax.Array           # int32: matvecs spent.
  negative_curvature: jax.Array   # bool: stopped on a direction p with pᵀ(A + damping·I)p ≤ 0.


class _Carry(NamedTuple):
  k: jax.Array          # iterations done.
  x: Any                # current iterate.
  r: Any                # current residual b − A x.
  p: Any                # current search direction.
  rr: jax.Array         # ‖r‖².
  done: jax.Array       # bool: converged, hit the boundary or met negative curvature.
  negative: jax.Array   # bool: the stop was on negative curvature.


def axpy(a: jax.Array, x: Any, y: Any) -> Any:
  """y + a·x, leaf by leaf, keeping each leaf's dtype (a loop's carry must not change type)."""
  return jax.tree.map(lambda xi, yi: yi + a.astype(yi.dtype) * xi, x, y)


def _to_boundary(x: Any, p: Any, radius: jax.Array) -> jax.Array:
  """τ ≥ 0 with ‖x + τ p‖ = radius (x inside the ball)."""
  xp, pp, xx = optax.tree.vdot(x, p), optax.tree.vdot(p, p), optax.tree.vdot(x, x)
  gap = jnp.maximum(radius * radius - xx, 0.0)
  return (jnp.sqrt(xp * xp + pp * gap) - xp) / pp


def conjugate_gradient(
    matvec: Callable[[Any], Any],
    b: Any,
    *,
    max_iters: int | jax.Array,
    tol: float | jax.Array,
    damping: float | jax.Array = 0.0,
    radius: float | jax.Array | None = None,
) -> CGResult:
  """Solves (A + damping·I) x = b by conjugate gradient from x₀ = 0, truncated.

  With A' = A + damping·I, r₀ = p₀ = b, each iteration:
    κ = pᵀA'p,  α = ‖r‖²/κ,  x ← x + α p,  r ← r − α A'p,  p ← r + (‖r_new‖²/‖r‖²) p.
  It stops when ‖r‖ ≤ tol·‖b‖ or after `max_iters` matvecs, and (Steihaug) when κ ≤ 0:
  A' is not positive definite along p, so the quadratic model m(x) = ½xᵀA'x − bᵀx is
  unbounded below along p. Then, without `radius`, x is the last iterate (0 if κ ≤ 0 at the
  first step); with `radius`, CG runs inside the ball ‖x‖ ≤ radius, and both a negative
  curvature direction and an iterate leaving the ball end on its boundary, x + τ p with
  ‖x + τ p‖ = radius, τ > 0. Every iterate, boundary point included, decreases m, so −x
  is never an ascent direction of the model; the residual is updated with the same step.
  `max_iters`, `tol`, `damping` and `radius` may be traced.

  References: Hestenes & Stiefel, 1952, Methods of conjugate gradients for solving linear
  systems; Steihaug, 1983, The conjugate gradient method and trust regions in large scale
  optimization; Nocedal & Wright, Numerical Optimization, 2nd ed., Algorithm 7.2.
  """
  dtype = jnp.result_type(*jax.tree.leaves(b))
  damping = jnp.asarray(damping, dtype)
  threshold = jnp.asarray(tol, dtype) * optax.tree.norm(b)
  apply = lambda v: axpy(damping, v, matvec(v))

  def body(c: _Carry) -> _Carry:
    ap = apply(c.p)
    kappa = optax.tree.vdot(c.p, ap).astype(dtype)
    negative = kappa <= 0
    alpha = jnp.where(negative, 0.0, c.rr / kappa).astype(dtype)
    if radius is None:
      boundary, step = negative, alpha
    else:
      outside = optax.tree.norm(axpy(alpha, c.p, c.x)) >= radius
      boundary = negative | outside
      step = jnp.where(boundary, _to_boundary(c.x, c.p, radius), alpha).astype(dtype)
    x, r = axpy(step, c.p, c.x), axpy(-step, ap, c.r)
    rr = optax.tree.vdot(r, r).astype(dtype)
    p = axpy(rr / c.rr, c.p, r)
    done = boundary | (jnp.sqrt(rr) <= threshold)
    return _Carry(c.k + 1, x, r, p, rr, done, negative)

  rr0 = optax.tree.vdot(b, b).astype(dtype)
  init = _Carry(jnp.zeros([], jnp.int32), optax.tree.zeros_like(b), b, b, rr0,
                jnp.sqrt(rr0) <= threshold, jnp.zeros([], bool))
  out = jax.lax.while_loop(lambda c: ~c.done & (c.k < max_iters), body, init)
  return CGResult(out.x, out.r, out.k, out.negative)
