"""Flax NNX models, used as pure functions: params are a plain dict of arrays.

`functional(make)` splits a module into its static graph (built once, abstractly) and its
parameters (`nnx.to_pure_dict(nnx.state(module))`), so optimizers see a pytree of plain arrays and
the model is applied with `nnx.merge(graphdef, params)(x)` inside jitted code.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Activation = Literal["relu", "tanh", "gelu"]
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
}


class MLP(nnx.Module):
  """Dense layers `sizes[0] → sizes[1] → … → sizes[-1]`, the activation between them."""

  def __init__(self, sizes: Sequence[int], activation: Activation, *, dtype: Any, rngs: nnx.Rngs):
    self.activation = ACTIVATIONS[activation]
    self.layers = nnx.List([
        nnx.Linear(n_in, n_out, dtype=dtype, param_dtype=dtype, rngs=rngs)
        for n_in, n_out in zip(sizes[:-1], sizes[1:])
    ])

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = self.activation(layer(x))
    return self.layers[-1](x)


class CNN(nnx.Module):
  """conv 3×3 → ReLU → conv 3×3 stride 2 → ReLU → dense, for small NHWC images."""

  def __init__(
      self,
      image_shape: tuple[int, int, int],
      channels: tuple[int, int],
      num_classes: int,
      *,
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    height, width, in_channels = image_shape
    kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.conv1 = nnx.Conv(in_channels, channels[0], (3, 3), **kw)
    self.conv2 = nnx.Conv(channels[0], channels[1], (3, 3), strides=2, **kw)
    flat = -(-height // 2) * -(-width // 2) * channels[1]  # SAME padding, stride 2: ceil(h/2)·ceil(w/2)
    self.head = nnx.Linear(flat, num_classes, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    return self.head(x.reshape(*x.shape[:-3], -1))


def functional(make: Callable[[nnx.Rngs], nnx.Module]):
  """(init_params, model_fn) of the module `make(rngs)` builds.

  init_params(key) -> params, a nested dict of arrays (jittable, vmappable over keys);
  model_fn(params, x) -> the module's output on x.
  """
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: make(nnx.Rngs(0))))

  def init_params(key: jax.Array) -> dict:
    return nnx.to_pure_dict(nnx.state(make(nnx.Rngs(key))))

  def model_fn(params: dict, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, params)(x)

  return init_params, model_fn
