"""A deep chain of weight matrices without biases: the exploding / vanishing gradient example.

h₀ = x, h_l = σ(h_{l−1} W_l) for l = 1…L, fitted to the identity (y = x) by ½ mean ‖h_L − y‖².
For the linear chain (σ = id) with P = W₁…W_L and Σ = XᵀX / n the loss is ½ tr((P − I)ᵀ Σ (P − I))
and ∂/∂W_i = (W₁…W_{i−1})ᵀ Σ (P − I) (W_{i+1}…W_L)ᵀ. Started at W_l = w·I (`init="identity"`,
w = `weight_scale`) every layer's gradient is w^{L−1}(w^L − 1)·Σ, so the gradient norm is
√L·|w|^{L−1}·|w^L − 1|·‖Σ‖_F: it explodes like w^{2L−1} for w > 1 and vanishes like w^{L−1} for
w < 1. Width 1 is the survey's scalar chain (w₁w₂…w_L − 1)² (times the mean of x²).

References: Sun, 2019, Optimization for deep learning: theory and algorithms, §4.1–4.2
(arXiv:1912.08957); Glorot & Bengio, 2010 (Xavier init); He et al., 2015 (Kaiming init,
arXiv:1502.01852); Saxe et al., 2014 (orthogonal init of deep linear nets, arXiv:1312.6120).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import checks
from optlab_jax.problems.base import Dtype, Problem, supervised_problem

__all__ = ["deep_chain", "INITS"]

# Each scaled by `weight_scale`; the random ones are jax.nn.initializers' (truncated normal for
# Xavier and Kaiming, as there).
INITS = {
    "identity": lambda key, shape, dtype: jnp.eye(shape[0], dtype=dtype),
    "orthogonal": jax.nn.initializers.orthogonal(),
    "xavier": jax.nn.initializers.glorot_normal(),
    "kaiming": jax.nn.initializers.he_normal(),
}


def deep_chain(
    depth: int = 10,
    width: int = 1,
    activation: Literal["linear", "tanh", "relu"] = "linear",
    init: Literal["identity", "orthogonal", "xavier", "kaiming"] = "identity",
    weight_scale: float = 1.0,
    num_train: int = 256,
    num_test: int = 256,
    data_seed: int = 0,
    dtype: Dtype = "float32",
) -> Problem:
  """A chain h_l = σ(h_{l−1} W_l) of `depth` `width`×`width` matrices fitted to y = x, whose gradient
  grows or vanishes like w^L.

  x ~ N(0, I) from `data_seed`; see the module docstring for the closed form. The minimum of the
  linear chain is 0 (at any P = I). Besides the losses, the eval metrics are
  `first_layer_grad_norm` (‖∂loss/∂W₁‖ on the training set: backpropagation passes the whole
  chain to reach it) and `signal_ratio` = rms(h_L) / rms(x) on the test inputs: how the forward
  signal's scale changes across the depth. Kaiming's init is the one for `relu`, Xavier's for
  `linear` and `tanh`.
  """
  checks.check_positive_int("depth", depth)
  checks.check_positive_int("width", width)
  checks.check_choice("activation", activation, ("linear", "tanh", "relu"))
  checks.check_choice("init", init, tuple(INITS))
  checks.check_positive_int("num_train", num_train)
  checks.check_positive_int("num_test", num_test)
  sigma = {"linear": lambda h: h, "tanh": jnp.tanh, "relu": jax.nn.relu}[activation]
  initializer = INITS[init]

  def init_params(key):
    keys = jax.random.split(key, depth)
    return {"layers": {l: weight_scale * initializer(keys[l], (width, width), dtype) for l in range(depth)}}

  def model_fn(params, x):
    for l in range(depth):
      x = sigma(x @ params["layers"][l])
    return x

  x = np.random.default_rng(data_seed).normal(size=(num_train + num_test, width))
  train, test = ({"x": jnp.asarray(part, dtype), "y": jnp.asarray(part, dtype)}
                 for part in (x[:num_train], x[num_train:]))
  problem = supervised_problem("deep_chain", init_params, model_fn, train, test, "gaussian")

  def metrics_fn(data, params):
    rms = lambda a: jnp.sqrt(jnp.mean(jnp.square(a)))
    grad = jax.grad(problem.loss)(params, data["train"])["layers"][0]
    top = jnp.max(jnp.abs(grad))  # scaled first: the exploding chain's squares overflow float32
    return {
        **problem.metrics_fn(data, params),
        "first_layer_grad_norm": top * jnp.linalg.norm(grad / jnp.where(top > 0, top, 1)),
        "signal_ratio": rms(model_fn(params, data["test"]["x"])) / rms(data["test"]["x"]),
    }

  return dataclasses.replace(problem, metrics_fn=metrics_fn, minimum=0.0 if activation == "linear" else None)
