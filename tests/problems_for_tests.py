"""Small deterministic problems the optimizer tests share: each gives obj_fn, model_fn, output_loss_fn."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Problem(NamedTuple):
  params: Any                      # initial params (a small tree)
  obj_fn: Callable                 # params -> scalar loss
  model_fn: Callable               # params -> outputs
  output_loss_fn: Callable         # outputs -> scalar, obj_fn = output_loss_fn ∘ model_fn
  minimum: float                   # the optimal loss


def _split(x):
  """A flat vector as a two-level tree, so that transforms see several leaves."""
  return {"a": x[:4], "b": {"c": x[4:]}}


def _join(tree):
  return jnp.concatenate([tree["a"], tree["b"]["c"]])


def quadratic(dtype=jnp.float32, condition: float = 100.0, dim: int = 10, seed: int = 0) -> Problem:
  """f(x) = ½ xᵀ A x with A = Q diag(logspace(0, log10 κ)) Qᵀ, a rotated ill-conditioned quadratic."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  eig = np.logspace(0.0, np.log10(condition), dim)
  root = jnp.asarray(np.diag(np.sqrt(eig)) @ q.T, dtype)   # A = rootᵀ root
  model_fn = lambda p: root @ _join(p)
  output_loss_fn = lambda y: 0.5 * jnp.sum(y * y)
  x0 = jnp.asarray(rng.normal(size=dim), dtype)
  return Problem(_split(x0), lambda p: output_loss_fn(model_fn(p)), model_fn, output_loss_fn, 0.0)


def rosenbrock(dtype=jnp.float32) -> Problem:
  """f(x, y) = (1 − x)² + 100 (y − x²)² from (−1.2, 1); residual form for Gauss-Newton."""
  model_fn = lambda p: jnp.stack([1.0 - p["x"][0], 10.0 * (p["y"][0] - p["x"][0] ** 2)])
  output_loss_fn = lambda r: jnp.sum(r * r)
  params = {"x": jnp.asarray([-1.2], dtype), "y": jnp.asarray([1.0], dtype)}
  return Problem(params, lambda p: output_loss_fn(model_fn(p)), model_fn, output_loss_fn, 0.0)


def extra_args(problem: Problem, params) -> dict:
  """Every extra argument any registered optimizer may ask for, at `params`."""
  value, grad = jax.value_and_grad(problem.obj_fn)(params)
  return dict(
      obj_fn=problem.obj_fn,
      model_fn=problem.model_fn,
      output_loss_fn=problem.output_loss_fn,
      value=value,
      grad=grad,
      value_fn=problem.obj_fn,
  )
