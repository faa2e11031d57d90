"""Flax NNX models (MLP, 2-D and 1-D CNNs, a causal Transformer), used as pure functions.

Params are a plain dict of arrays: `functional(make)` splits a module into its static graph
(built once, abstractly) and its parameters (`nnx.to_pure_dict(nnx.state(module))`), so optimizers
see a pytree of plain arrays and the model is applied with `nnx.merge(graphdef, params)(x)` inside jitted code.
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


Norm = Literal["none", "layer", "batch"]
NORMS = ("none", "layer", "batch")


class BatchNorm(nnx.Module):
  """Batch normalisation in training mode: each feature standardised over the batch it is applied to,
  y = γ ⊙ (z − mean_batch(z)) / sqrt(var_batch(z) + ε) + β, with no running averages.

  The loss is then a function of the whole batch (the landscape Santurkar et al. measure), and an
  evaluation standardises with the evaluated set's own statistics (a full test set: its population's).
  `nnx.BatchNorm` keeps running averages as mutable state, which a pure `model_fn` cannot update.

  References: Ioffe & Szegedy, 2015, Batch normalization (arXiv:1502.03167).
  """

  def __init__(self, features: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs, epsilon: float = 1e-5):
    del rngs  # γ = 1, β = 0: no random init
    self.scale = nnx.Param(jnp.ones((features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((features,), param_dtype))
    self.dtype, self.epsilon = dtype, epsilon

  def __call__(self, z: jax.Array) -> jax.Array:
    batch_axes, feature_shape = tuple(range(z.ndim - 1)), (1,) * (z.ndim - 1) + (-1,)
    mean, var = z.mean(batch_axes, keepdims=True), z.var(batch_axes, keepdims=True)
    scale, bias = self.scale[...].reshape(feature_shape), self.bias[...].reshape(feature_shape)
    return ((z - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(self.dtype)


class MLP(nnx.Module):
  """Dense layers `sizes[0] → sizes[1] → … → sizes[-1]`, the activation between them.

  `norm="layer"` puts a LayerNorm (learned scale and shift, ε = 1e-6) between each hidden layer's
  dense map and its activation: h = act(γ ⊙ (z − mean(z)) / sqrt(var(z) + ε) + β), z = W x + b, the
  mean and variance over z's features; `norm="batch"` puts a `BatchNorm` there (the same formula,
  ε = 1e-5, the mean and variance of each feature over the batch).

  References: Ba et al., 2016, Layer normalization (arXiv:1607.06450).
  """

  def __init__(self, sizes: Sequence[int], activation: Activation, *, dtype: Any, rngs: nnx.Rngs,
               norm: Norm = "none"):
    self.activation = ACTIVATIONS[activation]
    kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(n_in, n_out, **kw) for n_in, n_out in zip(sizes[:-1], sizes[1:])])
    # None, not an empty list, without norms: the params keep the tree they had before the option.
    norm_layer = {"layer": nnx.LayerNorm, "batch": BatchNorm}.get(norm)
    self.norms = None if norm_layer is None else nnx.List([norm_layer(n, **kw) for n in sizes[1:-1]])

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers[:-1]):
      x = layer(x)
      x = self.activation(x if self.norms is None else self.norms[i](x))
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


class CNN1D(nnx.Module):
  """1-D convolutions (NWC), each with explicit padding and a ReLU, then a dense head.

  `layers` holds (channels, kernel size, stride, padding) per convolution.
  """

  def __init__(
      self,
      length: int,
      layers: Sequence[tuple[int, int, int, int]],
      num_classes: int,
      *,
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
    convs, channels = [], 1
    for out_channels, size, stride, pad in layers:
      convs.append(nnx.Conv(channels, out_channels, (size,), strides=stride, padding=((pad, pad),), **kw))
      length, channels = (length + 2 * pad - size) // stride + 1, out_channels
    self.convs = nnx.List(convs)
    self.head = nnx.Linear(length * channels, num_classes, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    return self.head(x.reshape(*x.shape[:-2], -1))


def masked_attention(query, key, value, mask, **unused):
  """Softmax attention [..., T, heads, d] under `mask`, in the inputs' dtype (flax's fast path hands
  it to `jax.nn.dot_product_attention`, whose softmax runs in float32 even for float64 inputs)."""
  del unused  # dropout and precision arguments of nnx.MultiHeadAttention's attention_fn
  logits = jnp.einsum("...qhd,...khd->...hqk", query, key) / jnp.sqrt(query.shape[-1]).astype(query.dtype)
  logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  return jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, axis=-1), value)


class Block(nnx.Module):
  """Pre-LayerNorm Transformer block: x + attn(LN(x)) (causal), then x + MLP(LN(x)) with GELU."""

  def __init__(self, width: int, num_heads: int, mlp_width: int, *, dtype: Any, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
    init = nnx.initializers.normal(0.02)
    self.ln1, self.ln2 = nnx.LayerNorm(width, **kw), nnx.LayerNorm(width, **kw)
    self.attn = nnx.MultiHeadAttention(
        num_heads, width, kernel_init=init, attention_fn=masked_attention, decode=False,
        deterministic=True, keep_rngs=False, **kw,
    )
    self.up = nnx.Linear(width, mlp_width, kernel_init=init, **kw)
    self.down = nnx.Linear(mlp_width, width, kernel_init=init, **kw)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attn(self.ln1(x), mask=mask)
    return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
  """Causal decoder-only language model: token + learned position embeddings, pre-LN blocks,
  a final LayerNorm and an untied head to next-token logits.

  Weights start as in GPT-2 (normal, std 0.02; zero biases), so the initial logits are small and
  the loss at initialisation is close to ln(vocab_size).

  References: Vaswani et al., 2017 (arXiv:1706.03762); Radford et al., 2019, GPT-2 (pre-LN).
  """

  def __init__(
      self,
      vocab_size: int,
      seq_len: int,
      width: int,
      num_layers: int,
      num_heads: int,
      mlp_width: int,
      *,
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
    init = nnx.initializers.normal(0.02)
    self.tokens = nnx.Embed(vocab_size, width, embedding_init=init, **kw)
    self.positions = nnx.Embed(seq_len, width, embedding_init=init, **kw)
    self.blocks = nnx.List([Block(width, num_heads, mlp_width, dtype=dtype, rngs=rngs) for _ in range(num_layers)])
    self.ln = nnx.LayerNorm(width, **kw)
    self.head = nnx.Linear(width, vocab_size, kernel_init=init, **kw)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """[..., T] int tokens (T <= seq_len) -> [..., T, vocab_size] logits."""
    x = self.tokens(tokens) + self.positions(jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape))
    mask = nnx.make_causal_mask(tokens, dtype=jnp.bool_)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.ln(x))


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
