"""Tiny float64 models for the curvature tests: each gives (model_fn, output_loss_fn, params).

`output_loss_fn` is `functools.partial(curvature.nll, targets=..., likelihood=...)` on fixed
generated data, so tests can read the targets back (`per_example_loss_fn`) and build dense
oracles with `jax.hessian` / `jax.jacobian` on the raveled params.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature

NUM_CLASSES = 3


def _dense(key, fan_in, fan_out):
  return {"w": jax.random.normal(key, (fan_in, fan_out), jnp.float64) / jnp.sqrt(fan_in),
          "b": 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (fan_out,), jnp.float64)}


def _targets(key, outputs, likelihood):
  if likelihood == "categorical":
    return jax.random.randint(key, outputs.shape[:1], 0, outputs.shape[-1], jnp.int32)
  return jax.random.normal(key, outputs.shape, jnp.float64)


def _loss(key, model_fn, params, likelihood):
  targets = _targets(key, model_fn(params), likelihood)
  return functools.partial(curvature.nll, targets=targets, likelihood=likelihood)


def tiny_mlp(key, likelihood="categorical", batch=16):
  """6 → 10 → 8 → 3 tanh MLP, 185 params, on a batch of Gaussian inputs."""
  keys = jax.random.split(key, 5)
  params = {"l1": _dense(keys[0], 6, 10), "l2": _dense(keys[1], 10, 8), "l3": _dense(keys[2], 8, NUM_CLASSES)}
  x = jax.random.normal(keys[3], (batch, 6), jnp.float64)

  def model_fn(p):
    h = jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"].reshape(1, -1))
    h = jnp.tanh(h @ p["l2"]["w"] + p["l2"]["b"].reshape(1, -1))
    return h @ p["l3"]["w"] + p["l3"]["b"].reshape(1, -1)

  return model_fn, _loss(keys[4], model_fn, params, likelihood), params


def _conv(x, w, b):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.tanh(y + b.reshape(1, 1, 1, -1))


def tiny_cnn(key, likelihood="categorical", batch=8):
  """Two 3×3 VALID convs (1→3→2 channels) on 6×6 inputs, then dense 8 → 3: 113 params."""
  keys = jax.random.split(key, 6)
  params = {
      "c1": {"w": jax.random.normal(keys[0], (3, 3, 1, 3), jnp.float64) / 3.0, "b": jnp.zeros((3,), jnp.float64)},
      "c2": {"w": jax.random.normal(keys[1], (3, 3, 3, 2), jnp.float64) / 5.0, "b": jnp.zeros((2,), jnp.float64)},
      "out": _dense(keys[2], 8, NUM_CLASSES),
  }
  x = jax.random.normal(keys[3], (batch, 6, 6, 1), jnp.float64)

  def model_fn(p):
    h = _conv(_conv(x, p["c1"]["w"], p["c1"]["b"]), p["c2"]["w"], p["c2"]["b"])
    return h.reshape(batch, -1) @ p["out"]["w"] + p["out"]["b"].reshape(1, -1)

  return model_fn, _loss(keys[4], model_fn, params, likelihood), params


MODELS = {"mlp": tiny_mlp, "cnn": tiny_cnn}


def obj_fn(model_fn, output_loss_fn):
  """params ↦ output_loss_fn(model_fn(params))."""
  return lambda p: output_loss_fn(model_fn(p))


def per_example_loss_fn(model_fn, output_loss_fn):
  """params ↦ the vector of per-example losses whose mean is `output_loss_fn(model_fn(params))`."""
  kw = output_loss_fn.keywords
  return lambda p: curvature.per_example_nll(model_fn(p), kw["targets"], kw["likelihood"])


def dense(matvec, params):
  """The matrix of a linear params ↦ params map, column by column (vmapped over the basis)."""
  flat, unravel = ravel_pytree(params)
  eye = jnp.eye(flat.size, dtype=flat.dtype)
  return jax.jit(jax.vmap(lambda e: ravel_pytree(matvec(unravel(e)))[0]))(eye).T


def dense_hessian(fn, params):
  """jax.hessian of fn on the raveled params."""
  flat, unravel = ravel_pytree(params)
  return jax.jit(jax.hessian(lambda x: fn(unravel(x))))(flat)


def rel_err(got, want) -> float:
  """‖got − want‖ / ‖want‖ over raveled trees (or arrays)."""
  g, w = np.ravel(ravel_pytree(got)[0]), np.ravel(ravel_pytree(want)[0])
  return float(np.linalg.norm(g - w) / np.linalg.norm(w))


class Case(NamedTuple):
  model_fn: Callable        # params -> outputs (batch, classes)
  output_loss_fn: Callable  # outputs -> mean nll
  params: Any               # float64 params tree
  obj_fn: Callable          # params -> loss
  hessian: np.ndarray       # dense ∇² obj_fn at params, from jax.hessian
  unravel: Callable         # flat vector -> params tree
  hvp: Callable             # curvature.hvp_fn(obj_fn, params), shared so compiled loops are reused


@functools.lru_cache(maxsize=None)
def case(name: str, seed: int = 0, likelihood: str = "categorical") -> Case:
  """A model from MODELS with its dense Hessian, built once per process."""
  model_fn, output_loss_fn, params = MODELS[name](jax.random.key(seed), likelihood)
  fn = obj_fn(model_fn, output_loss_fn)
  hessian = np.asarray(dense_hessian(fn, params))
  return Case(model_fn, output_loss_fn, params, fn, hessian, ravel_pytree(params)[1],
              curvature.hvp_fn(fn, params))
