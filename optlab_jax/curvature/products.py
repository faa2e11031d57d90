"""Curvature-vector products: Hessian (forward-over-reverse) and generalised Gauss-Newton.

Every product takes and returns pytrees shaped like params and never builds an n×n matrix.
The `*_fn` builders do the work that does not depend on the vector once (a linearisation)
and return a reusable matvec; the matvecs are `jax.tree_util.Partial`s, so they can be
passed into `jax.jit` as arguments (their saved residuals are arrays, not baked constants).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.tree_util import Partial

__all__ = ["hvp", "hvp_fn", "ggn_fn", "linearize_transpose"]

Matvec = Callable[[Any], Any]


def hvp(obj_fn: Callable, params: Any, v: Any, *, return_grad: bool = False):
  """Hessian-vector product H v of `obj_fn` at `params`, forward-over-reverse.

  H v = d/dε ∇f(θ + ε v)|₀, computed as `jax.jvp(jax.grad(f), (θ,), (v,))`; the primal
  output of that same call is ∇f(θ), returned first when `return_grad=True`.

  References: Pearlmutter, 1994, Fast exact multiplication by the Hessian.
  """
  grad, hv = jax.jvp(jax.grad(obj_fn), (params,), (v,))
  return (grad, hv) if return_grad else hv


def hvp_fn(obj_fn: Callable, params: Any, *, return_grad: bool = False):
  """Linearises ∇f at `params` once and returns the matvec v ↦ H v (and ∇f if asked).

  Cheaper than `hvp` when several products are taken at one point: the forward and
  backward primal passes run once, each product only replays the linear tangent program.
  """
  grad, matvec = jax.linearize(jax.grad(obj_fn), params)
  return (grad, matvec) if return_grad else matvec


def linearize_transpose(fn: Callable, params: Any):
  """(fn(params), v ↦ J v, u ↦ Jᵀ u) from one linearisation of `fn` (no second forward pass)."""
  outputs, jvp = jax.linearize(fn, params)
  transpose = jax.linear_transpose(jvp, params)
  return outputs, jvp, Partial(_first, transpose)


def _first(transpose: Callable, u: Any) -> Any:
  return transpose(u)[0]


def _sandwich(jvp: Callable, vjp: Callable, middle: Callable, v: Any) -> Any:
  return vjp(middle(jvp(v)))


def ggn_fn(model_fn: Callable, output_loss_fn: Callable, params: Any) -> Matvec:
  """Generalised Gauss-Newton matvec v ↦ Jᵀ H_out J v.

  J = ∂model_fn/∂θ at `params` and H_out = ∇²_f output_loss_fn at f = model_fn(θ):
  a jvp (J v), the output-Hessian product (a `hvp_fn` of `output_loss_fn` at the outputs),
  then the transposed jvp (Jᵀ u). H_out is positive semi-definite for convex losses, so is G.

  References: Schraudolph, 2002, Fast curvature matrix-vector products for second-order
  gradient descent; Martens, 2020, New insights and perspectives on the natural gradient method.
  """
  outputs, jvp, vjp = linearize_transpose(model_fn, params)
  return Partial(_sandwich, jvp, vjp, hvp_fn(output_loss_fn, outputs))
