"""Training on a device mesh: the batch sharded over `data`, big leaves over `model` (FSDP-style).

A mesh is `{data: N}` or `{data: N, model: M}` (`train.mesh` in a config); None picks all
local devices on `data` when the batch divides over them, else one device. The training
program stays one `jax.jit`: `Placement.batch` and `Placement.state` put sharding constraints
on the batch and on the params and optimizer state it produces, and XLA's partitioner (the
mesh's axes are `Auto`) inserts the collectives, so every optimizer runs unchanged.

The rules, as functions of shapes only (so the specs of a vmapped sweep's runs are those of one run):
  batch     every leaf's leading (example) axis over `data`; a batch that does not divide
            over `data` is a `ValueError` before anything compiles.
  params    a leaf of at least `min_shard_bytes` (default `MIN_SHARD_BYTES`) is sharded over
            `model` along its largest axis that `model` divides (ties: the first); smaller
            leaves and leaves without such an axis are replicated.
  opt state a leaf where the optimizer keeps a copy of the params (found by tree position with
            `optax.tree.map_params`) takes its param's spec; a leaf with a param's shape after
            extra leading axes (a memory of past vectors) takes that param's spec after those
            axes; other leaves follow the params rule; scalars and PRNG keys are replicated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from optlab_jax import checks

__all__ = ["AXES", "MIN_SHARD_BYTES", "Placement", "batch_spec", "leaf_spec", "make_mesh", "placement", "state_specs"]

AXES = ("data", "model")
# A leaf under 1 MiB saves less than 1 MiB per device when sharded but pays an all-gather at
# every use; big_vision's FSDP rule shards from 4 MiB. Our models are small, so lower.
MIN_SHARD_BYTES = 2**20


def make_mesh(data: int, model: int = 1) -> jax.sharding.Mesh:
  """A (data, model) mesh of the first data·model local devices, axes `Auto` (XLA partitions)."""
  checks.check_positive_int("data", data)
  checks.check_positive_int("model", model)
  devices = jax.local_devices()
  if data * model > len(devices):
    raise ValueError(f"mesh data={data} × model={model} needs {data * model} devices; "
                     f"{len(devices)} local {devices[0].platform} device(s) are available")
  return jax.make_mesh((data, model), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices[:data * model])


def leaf_spec(shape: tuple[int, ...], itemsize: int, model: int, min_shard_bytes: int = MIN_SHARD_BYTES) -> PartitionSpec:
  """The params rule: the largest axis `model` divides, for a leaf of at least `min_shard_bytes`."""
  if model == 1 or math.prod(shape) * itemsize < min_shard_bytes:
    return PartitionSpec()
  divisible = [i for i, n in enumerate(shape) if n % model == 0]
  if not divisible:
    return PartitionSpec()
  axis = max(divisible, key=lambda i: (shape[i], -i))
  return PartitionSpec(*(("model" if i == axis else None) for i in range(len(shape))))


def _is_scalar_or_key(x: Any) -> bool:
  return np.ndim(x) == 0 or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


@dataclasses.dataclass(frozen=True)
class _Follow:
  """A state leaf's spec taken from its param (a marker that is a pytree leaf)."""
  spec: PartitionSpec


def state_specs(tx: optax.GradientTransformation, params: Any, opt_state: Any, param_specs: Any,
                model: int, min_shard_bytes: int = MIN_SHARD_BYTES) -> Any:
  """A PartitionSpec per leaf of `opt_state` (see the module docstring for the rule)."""
  # A leaf in a param position but of another shape (a packed or stacked tree of the params) goes by shape.
  follow = lambda leaf, spec, p: _Follow(spec) if np.shape(leaf) == np.shape(p) else leaf
  try:
    followed = optax.tree.map_params(tx, follow, opt_state, param_specs, params,
                                     is_leaf=lambda x: isinstance(x, PartitionSpec))
  except (IndexError, TypeError, ValueError, AttributeError):
    followed = opt_state  # an init that cannot run on optax's placeholder (optax's line searches): by shape only
  by_shape = {}
  for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))):
    if any(s):
      by_shape.setdefault(tuple(p.shape), s)

  def spec(x):
    if isinstance(x, _Follow):
      return x.spec
    if _is_scalar_or_key(x):
      return PartitionSpec()
    for k in range(1, x.ndim):
      if tuple(x.shape[k:]) in by_shape:
        return PartitionSpec(*(None,) * k, *by_shape[tuple(x.shape[k:])])
    return leaf_spec(tuple(x.shape), x.dtype.itemsize, model, min_shard_bytes)

  return jax.tree.map(spec, followed, is_leaf=lambda x: isinstance(x, _Follow))


def batch_spec(x: Any) -> PartitionSpec:
  """A batch leaf's leading axis over `data` (a scalar leaf replicated)."""
  return PartitionSpec("data") if np.ndim(x) else PartitionSpec()


class Placement:
  """Sharding constraints for one training program on `mesh` (None: one device, no constraints)."""

  def __init__(self, mesh: jax.sharding.Mesh | None, min_shard_bytes: int = MIN_SHARD_BYTES):
    self.mesh, self.min_shard_bytes = mesh, min_shard_bytes
    self.model = 1 if mesh is None else mesh.shape["model"]

  def _constrain(self, tree: Any, specs: Any) -> Any:
    shardings = jax.tree.map(lambda s: NamedSharding(self.mesh, s), specs,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
    return jax.lax.with_sharding_constraint(tree, shardings)

  def param_specs(self, params: Any) -> Any:
    return jax.tree.map(lambda p: leaf_spec(tuple(p.shape), p.dtype.itemsize, self.model, self.min_shard_bytes),
                        params)

  def batch(self, batch: Any) -> Any:
    """`batch` with its examples sharded over `data`."""
    return batch if self.mesh is None else self._constrain(batch, jax.tree.map(batch_spec, batch))

  def state(self, params: Any, opt_state: Any, tx: optax.GradientTransformation) -> tuple[Any, Any]:
    """(params, opt_state) constrained to the params rule and the state rule."""
    if self.mesh is None:
      return params, opt_state
    specs = self.param_specs(params)
    opt_specs = state_specs(tx, params, opt_state, specs, self.model, self.min_shard_bytes)
    return self._constrain(params, specs), self._constrain(opt_state, opt_specs)


def placement(mesh: dict[str, int] | None, batch: Any) -> Placement:
  """The placement of a run whose batches look like `batch` (arrays or `ShapeDtypeStruct`s).

  `mesh` is {"data": N, "model": M, "min_shard_bytes": B} (model and min_shard_bytes optional);
  None takes every local device on `data` if the batch divides over them, else one device.
  """
  examples = sorted({np.shape(x)[0] for x in jax.tree.leaves(batch) if np.ndim(x)})
  if mesh is None:
    n = len(jax.local_devices())
    return Placement(make_mesh(n) if n > 1 and examples and all(e % n == 0 for e in examples) else None)
  unknown = set(mesh) - {*AXES, "min_shard_bytes"}
  if unknown:
    raise ValueError(f"mesh={mesh!r}: unknown key(s) {sorted(unknown)}; expected data, model, min_shard_bytes")
  if "data" not in mesh:
    raise ValueError(f"mesh={mesh!r} needs a data axis size, e.g. mesh={{'data': 8}}")
  data, model = mesh["data"], mesh.get("model", 1)
  min_shard_bytes = mesh.get("min_shard_bytes", MIN_SHARD_BYTES)
  checks.check_in_range("min_shard_bytes", min_shard_bytes, 0.0)
  for e in examples:
    if e % data:
      raise ValueError(f"a batch of {e} examples does not divide over the mesh's data axis (data={data}): "
                       f"choose a batch_size that is a multiple of {data}, or another data size")
  built = make_mesh(data, model)
  return Placement(None if built.size == 1 else built, min_shard_bytes)
