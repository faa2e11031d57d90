"""K-FAC's view of a Flax NNX model: the inputs and output-gradients of its Linear and Conv layers.

The user's model stays a plain Flax model. While `capture` traces `model_fn(params)`, it
intercepts `nnx.Linear.__call__` and `nnx.Conv.__call__`; a call belongs to layer ℓ when the
kernel it reads *is* the kernel leaf of ℓ in `params` (object identity, which `nnx.merge`
preserves). Each such call records its input rows ā (Conv: im2col patches, KFC) and returns
y + z with z = 0, so the cotangent of z is δ = ∂L/∂y. One `jax.eval_shape` pass finds the
shapes of the z's, then one `jax.vjp` in z (not in the params: no weight gradients) gives
every δ. Everything is jittable. Layers read inside `nnx.scan`/`nnx.vmap`, grouped convs and
kernels that `model_fn` transforms before the layer reads them are not captured. A layer that
`model_fn` calls inside a JAX transformation of its own (jax.grad, jax.hessian, jax.vmap,
jax.checkpoint: a PINN's input derivatives) raises `ValueError`: there the outputs depend on the
kernel through more than the call's y = W ā, so A ⊗ G is not the layer's Fisher block.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import jax.extend
import numpy as np
from flax import nnx

__all__ = ["Layer", "Captured", "find_layers", "capture", "kronecker_factors"]


class Layer(NamedTuple):
  """A Linear or Conv layer found in params by the Flax naming convention."""
  name: str               # path of the kernel, e.g. "block/0/kernel"
  kernel: int             # index of the kernel among `jax.tree.leaves(params)`
  bias: int | None        # index of the sibling "bias" leaf, or None


class Captured(NamedTuple):
  """What one step sees of a layer, every call and location stacked as rows."""
  a: jax.Array            # (rows, d_in [+1]): inputs (Conv: patches in kernel order), bias column of ones
  g: jax.Array            # (rows, d_out): per-example output-gradients N·δ (N = batch size)
  num_examples: int       # N, the leading axis of model_fn's outputs (nll averages over it)


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def find_layers(params: Any) -> tuple[Layer, ...]:
  """Every leaf named "kernel" with ndim ≥ 2, with its sibling "bias" of matching size if any."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = []
  for path, _ in flat:
    names = tuple(_key_name(k) for k in path)
    # nnx.State leaves end in the Variable's `.value`.
    if names and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
      names = names[:-1]
    paths.append(names)
  index = {p: i for i, p in enumerate(paths)}
  layers = []
  for i, (names, (_, leaf)) in enumerate(zip(paths, flat)):
    if names and names[-1] == "kernel" and jnp.ndim(leaf) >= 2:
      bias = index.get(names[:-1] + ("bias",))
      if bias is not None and jnp.shape(flat[bias][1]) != (jnp.shape(leaf)[-1],):
        bias = None
      layers.append(Layer("/".join(names), i, bias))
  return tuple(layers)


def _value(variable: Any) -> Any:
  return None if variable is None else variable.get_value()


class _Recorder:
  """Bookkeeping of one traced model_fn call: which layer each intercepted call is, its rows."""

  def __init__(self, leaves: list, layers: tuple[Layer, ...], perturbations: list | None):
    self.leaves, self.layers, self.perturbations = leaves, layers, perturbations
    self.position = {id(leaves[layer.kernel]): j for j, layer in enumerate(layers)}
    self.calls: list[int] = []          # layer position of each captured call, in call order
    self.inputs: list[jax.Array] = []   # ā rows of each captured call
    self.shapes: list[jax.ShapeDtypeStruct] = []
    self.trace = None                    # the JAX trace model_fn runs in (`run`)

  def run(self, model_fn: Callable, params: Any) -> Any:
    self.trace = _current_trace()
    return model_fn(params)

  def layer_of(self, module: Any) -> int | None:
    j = self.position.get(id(_value(module.kernel)))
    if j is None:
      return None
    bias = self.layers[j].bias
    # A layer without a bias leaf in params (none, or masked out of this optimizer's subset)
    # takes its kernel block alone: rows without the ones column, whatever the module adds.
    return j if bias is None or id(_value(module.bias)) == id(self.leaves[bias]) else None

  def record(self, j: int, rows: jax.Array, y: jax.Array) -> jax.Array:
    if _current_trace() != self.trace:
      raise ValueError(
          f"K-FAC cannot precondition layer {self.layers[j].name!r}: model_fn calls it inside a JAX "
          "transformation of its own (jax.grad, jax.hessian, jax.vmap, jax.checkpoint, ...), e.g. a PINN's "
          "input derivatives: the outputs then depend on the kernel through more than the layer's outputs, "
          "and the Kronecker factors are not its Fisher block; use natural_gradient, gauss_newton or sophia_g")
    kernel = self.leaves[self.layers[j].kernel]
    rows = rows.astype(kernel.dtype)
    if self.layers[j].bias is not None:
      rows = jnp.concatenate([rows, jnp.ones((rows.shape[0], 1), rows.dtype)], axis=1)
    self.calls.append(j)
    self.inputs.append(rows)
    self.shapes.append(jax.ShapeDtypeStruct(y.shape, y.dtype))
    if self.perturbations is None:
      return y
    return y + self.perturbations[len(self.calls) - 1]


_ACTIVE: list[_Recorder] = []


def _current_trace() -> Any:
  # Flax NNX compares traces the same way (nnx.tracers.current_jax_trace).
  return jax.extend.core.get_opaque_trace_state(convention="nnx")


def _linear_call(original: Callable) -> Callable:
  def call(self, inputs, *args, **kwargs):
    y = original(self, inputs, *args, **kwargs)
    j = _ACTIVE[-1].layer_of(self) if _ACTIVE else None
    if j is None:
      return y
    return _ACTIVE[-1].record(j, jnp.reshape(inputs, (-1, inputs.shape[-1])), y)
  return call


def _patches(seen: dict) -> jax.Array:
  """im2col rows of the convolution's (already padded, batch-flattened) input, kernel order."""
  lhs, filter_shape = seen["lhs"], seen["filter_shape"]
  patches = jax.lax.conv_general_dilated_patches(
      lhs, filter_shape, seen["window_strides"], seen["padding"],
      lhs_dilation=seen.get("lhs_dilation"), rhs_dilation=seen.get("rhs_dilation"),
      dimension_numbers=seen.get("dimension_numbers"), precision=jax.lax.Precision.HIGHEST,
  )
  channels, taps = lhs.shape[-1], int(np.prod(filter_shape))
  # Patch features come channel-major (C, *filter); kernels flatten as (*filter, C).
  patches = patches.reshape(-1, channels, taps)
  return jnp.swapaxes(patches, 1, 2).reshape(-1, taps * channels)


def _conv_call(original: Callable) -> Callable:
  def call(self, inputs, *args, **kwargs):
    j = _ACTIVE[-1].layer_of(self) if _ACTIVE else None
    if j is None:
      return original(self, inputs, *args, **kwargs)
    seen: dict = {}
    inner = self.conv_general_dilated

    def spy(lhs, rhs, window_strides, padding, **conv_kwargs):
      seen.update(conv_kwargs, lhs=lhs, filter_shape=rhs.shape[:-2],
                  window_strides=window_strides, padding=padding)
      return inner(lhs, rhs, window_strides, padding, **conv_kwargs)

    # The conv function is a plain attribute; swapping it records exactly what the
    # convolution sees after Flax's own padding, batch flattening and dtype promotion.
    object.__setattr__(self, "conv_general_dilated", spy)
    try:
      y = original(self, inputs, *args, **kwargs)
    finally:
      object.__setattr__(self, "conv_general_dilated", inner)
    if seen.get("feature_group_count", 1) != 1:
      return y
    return _ACTIVE[-1].record(j, _patches(seen), y)
  return call


@contextlib.contextmanager
def _intercept(recorder: _Recorder):
  originals = {cls: cls.__call__ for cls in (nnx.Linear, nnx.Conv)}
  nnx.Linear.__call__ = _linear_call(originals[nnx.Linear])
  nnx.Conv.__call__ = _conv_call(originals[nnx.Conv])
  _ACTIVE.append(recorder)
  try:
    yield recorder
  finally:
    _ACTIVE.pop()
    for cls, original in originals.items():
      cls.__call__ = original


def capture(
    model_fn: Callable,
    params: Any,
    layers: tuple[Layer, ...],
    output_grad_fn: Callable[[jax.Array], jax.Array],
) -> tuple[jax.Array, tuple[Captured | None, ...]]:
  """Runs `model_fn(params)` once forward and once backward from `output_grad_fn(outputs)`.

  Args:
    model_fn: params -> outputs with a leading batch axis; calls Flax Linear/Conv layers.
    params: the params whose kernel leaves `layers` index.
    layers: from `find_layers(params)`.
    output_grad_fn: outputs -> ∂L/∂outputs of the mean loss L whose δ's are wanted
      (K-FAC: the nll of labels sampled from the model).

  Returns:
    (outputs, per layer a `Captured`, or None when no call of the model read that kernel).
  """
  leaves = jax.tree.leaves(params)
  with _intercept(_Recorder(leaves, layers, None)) as found:
    jax.eval_shape(lambda: found.run(model_fn, params))

  def perturbed(zs):
    with _intercept(_Recorder(leaves, layers, zs)) as rec:
      outputs = rec.run(model_fn, params)
    return outputs, rec.inputs

  zeros = [jnp.zeros(s.shape, s.dtype) for s in found.shapes]
  outputs, vjp_fn, inputs = jax.vjp(perturbed, zeros, has_aux=True)
  (deltas,) = vjp_fn(output_grad_fn(outputs))
  num_examples = outputs.shape[0]
  result = []
  for j in range(len(layers)):
    calls = [c for c, layer in enumerate(found.calls) if layer == j]
    if not calls:
      result.append(None)
      continue
    a = jnp.concatenate([inputs[c] for c in calls], axis=0)
    g = jnp.concatenate([deltas[c].reshape(-1, deltas[c].shape[-1]) for c in calls], axis=0)
    result.append(Captured(a, g * num_examples, num_examples))
  return outputs, tuple(result)


def kronecker_factors(captured: Captured) -> tuple[jax.Array, jax.Array]:
  """(A, G) = ((1/R) Σ ā āᵀ, (1/N) Σ g gᵀ) over the R rows; A ⊗ G is the layer's Fisher block.

  With T = R/N locations per example (Conv) this is KFC's Ω ⊗ Γ = E[Σ_t ā āᵀ] ⊗ (1/T) E[Σ_t g gᵀ].
  """
  a, g = captured.a, captured.g
  return a.T @ a / a.shape[0], g.T @ g / captured.num_examples
