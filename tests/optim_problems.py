"""The library's test functions (`optlab_jax.problems`) as the optimizer tests use them.

Each is bound to its full batch (the test functions are deterministic there) and started from
the point its `seed` draws; the quadratic's x is split into a two-level tree so that transforms
see several leaves. `extra_args` gives every keyword argument any optimizer may ask for.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from optlab_jax.problems import test_functions


class Problem(NamedTuple):
  params: Any                      # the start point (a small tree)
  obj_fn: Callable                 # params -> scalar loss on the full batch
  model_fn: Callable               # params -> outputs
  output_loss_fn: Callable         # outputs -> scalar, obj_fn = output_loss_fn ∘ model_fn
  minimum: float                   # the optimal loss
  likelihood: str                  # the output loss as a negative log-likelihood (both: "gaussian")


def split(x: jax.Array) -> Any:
  return {"a": x[:4], "b": {"c": x[4:]}}


def join(tree: Any) -> jax.Array:
  return jnp.concatenate([tree["a"], tree["b"]["c"]])


def _bind(problem: test_functions.Problem, seed: int, to_tree: Callable, from_tree: Callable) -> Problem:
  batch = problem.sample_batch(jax.random.key(seed))
  extra = problem.extra_args(batch)
  model_fn = lambda p: extra["model_fn"]({"x": from_tree(p)})
  obj_fn = lambda p: extra["output_loss_fn"](model_fn(p))
  params = to_tree(problem.init_params(jax.random.key(seed))["x"])
  return Problem(params, obj_fn, model_fn, extra["output_loss_fn"], problem.minimum, problem.likelihood)


def quadratic(dtype=jnp.float32, condition: float = 100.0, dim: int = 10, seed: int = 0) -> Problem:
  """`problems.quadratic`: ½ (x − x*)ᵀ A (x − x*), eigenvalues of A from 1 to `condition`."""
  problem = test_functions.quadratic(dim=dim, condition=condition, data_seed=seed, dtype=jnp.dtype(dtype).name)
  return _bind(problem, seed, split, join)


def rosenbrock(dtype=jnp.float32) -> Problem:
  """`problems.rosenbrock` in 2-D from (−1.2, 1), residual form r = (1 − x, 10 (y − x²))."""
  return _bind(test_functions.rosenbrock(dim=2, dtype=jnp.dtype(dtype).name), 0, lambda x: {"x": x}, lambda p: p["x"])


def extra_args(problem: Problem, params) -> dict:
  """Every extra argument any registered optimizer may ask for, at `params`."""
  value, grad = jax.value_and_grad(problem.obj_fn)(params)
  return dict(obj_fn=problem.obj_fn, model_fn=problem.model_fn, output_loss_fn=problem.output_loss_fn,
              value=value, grad=grad, value_fn=problem.obj_fn)
