"""Directions in parameter space for loss-landscape slices: filter-normalised random directions
and the principal directions of a training trajectory.

Filter normalisation (Li et al., 2018): draw d ~ N(0, I) shaped like θ, then rescale every
filter j of every kernel,  d_j ← d_j · ‖θ_j‖ / (‖d_j‖ + 1e-10),  so a unit step along d moves each
filter by its own size and slices of networks with different weight scales are comparable.
The filter axis: Flax stores a Dense kernel as (in, out) and a Conv kernel as HWIO
(h, w, in, out); a filter (one neuron's or one output channel's weights) is `kernel[..., j]`, a
slice along the LAST axis, and its norm runs over all the other axes (PyTorch, which Li et al.
used, puts the output axis first). Every leaf with ndim ≥ 2 is treated so, embedding tables
included. Leaves with ndim ≤ 1 (biases, LayerNorm/BatchNorm scales and offsets) get, with
`one_dim="ignore"` (Li et al.'s default, `ignore='biasbn'`), a zero direction: the slice never
moves them; with `one_dim="include"`, the whole vector is one filter (normalised to ‖θ_leaf‖).

References: Li, Xu, Taylor, Studer & Goldstein, 2018, Visualizing the loss landscape of neural
nets (arXiv:1712.09913), sections 4 and 7.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from optlab_jax import checks

__all__ = ["NORMALIZATIONS", "PCADirections", "filter_normalize", "pca_directions", "random_direction"]

NORMALIZATIONS = ("filter", "layer", "none")
_EPS = 1e-10  # Li et al.'s guard against a zero-norm direction


def _normalize_leaf(d: jax.Array, w: jax.Array, normalization: str, one_dim: str) -> jax.Array:
  if not checks.is_float(w):
    return jnp.zeros_like(w)
  if w.ndim <= 1 and one_dim == "ignore":
    return jnp.zeros_like(d)
  if normalization == "none":
    return d
  axes = tuple(range(w.ndim - 1)) if normalization == "filter" and w.ndim >= 2 else None
  norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))
  return d * norm(w) / (norm(d) + _EPS)


def filter_normalize(direction: Any, params: Any, *, normalization: str = "filter",
                     one_dim: str = "ignore") -> Any:
  """`direction` rescaled to `params` filter by filter (see the module docstring).

  normalization: "filter" (per filter, Li et al.), "layer" (each leaf as a whole to ‖θ_leaf‖)
  or "none"; one_dim: "ignore" (zero on biases and norm parameters) or "include".
  Non-float leaves get a zero direction.
  """
  checks.check_choice("normalization", normalization, NORMALIZATIONS)
  checks.check_choice("one_dim", one_dim, ("ignore", "include"))
  return jax.tree.map(lambda d, w: _normalize_leaf(d, w, normalization, one_dim), direction, params)


def random_direction(key: jax.Array, params: Any, *, normalization: str = "filter",
                     one_dim: str = "ignore") -> Any:
  """A Gaussian direction shaped like `params`, normalised by `filter_normalize`."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  raw = [jax.random.normal(k, jnp.shape(w), w.dtype) if checks.is_float(w) else jnp.zeros_like(w)
         for k, w in zip(keys, leaves)]
  return filter_normalize(jax.tree.unflatten(treedef, raw), params, normalization=normalization,
                          one_dim=one_dim)


class PCADirections(NamedTuple):
  """Output of `pca_directions`."""
  directions: tuple[Any, Any]    # the top-2 principal directions, unit vectors shaped like params
  coords: jax.Array              # (T, 2) the trajectory's coordinates (θ_t − origin) · d_k
  explained_variance: jax.Array  # (2,) fraction of the centred trajectory's variance along d_1, d_2
  origin: Any                    # the point the coordinates are measured from


def pca_directions(trajectory: Any, origin: Any = None) -> PCADirections:
  """The top-2 principal directions of a parameter trajectory, and the trajectory projected on them.

  `trajectory` is shaped like params with a leading axis T ≥ 2 (snapshots θ_0 … θ_{T−1}). With
  X the T × n matrix of raveled snapshots and X_c = X − mean(X), the directions are the top-2
  right singular vectors of X_c, signed so that each one's largest-magnitude entry is positive.
  `origin` defaults to the last snapshot (Li et al. centre the plot at the final model).

  References: Li et al., 2018 (arXiv:1712.09913), section 7.
  """
  steps = jax.tree.leaves(trajectory)[0].shape[0]
  if steps < 2:
    raise ValueError(f"trajectory has {steps} snapshot(s); expected at least 2 along its leading axis")
  first = jax.tree.map(lambda x: x[0], trajectory)
  _, unravel = ravel_pytree(first)
  x = jax.vmap(lambda t: ravel_pytree(t)[0])(trajectory)
  origin = jax.tree.map(lambda a: a[-1], trajectory) if origin is None else origin
  _, s, vt = jnp.linalg.svd(x - jnp.mean(x, axis=0, keepdims=True), full_matrices=False)
  if vt.shape[0] < 2:
    raise ValueError(f"params have {vt.shape[1]} entries; expected at least 2 for two directions")
  top = vt[:2]
  signs = jnp.sign(top[jnp.arange(2), jnp.argmax(jnp.abs(top), axis=1)])
  top = top * jnp.where(signs == 0, 1.0, signs)[:, None].astype(top.dtype)
  coords = (x - ravel_pytree(origin)[0][None]) @ top.T
  variance = jnp.square(s)
  explained = variance[:2] / jnp.maximum(jnp.sum(variance), _EPS)
  return PCADirections((unravel(top[0]), unravel(top[1])), coords, explained, origin)
