"""Sweep axes: a point of a sweep is one value of each axis (grid axes crossed, zip axes together)."""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

from optlab_jax.config.errors import Invalid


class Axis(NamedTuple):
  """One sweep axis's value at a point."""

  key: str    # the dotted key as written in `sweep:`, e.g. "optimizer.learning_rate"
  kind: str   # "grid" or "zip"
  index: int  # position of `value` in the axis's list
  value: Any

  @property
  def path(self) -> tuple[str, ...]:
    return tuple(self.key.split("."))


def expand(grid: dict[str, list], zipped: dict[str, list]) -> list[tuple[Axis, ...]]:
  """The sweep's points: the product of the grid axes (first axis outermost), each crossed with
  the zip axes taken together. `Invalid` if zip axes differ in length or repeat a grid key."""
  lengths = {key: len(values) for key, values in zipped.items()}
  if len(set(lengths.values())) > 1:
    raise Invalid(("sweep", "zip"), f"zip axes need lists of one length, got {lengths}")
  for key in zipped:
    if key in grid:
      raise Invalid(("sweep", "zip", key), "is also a grid axis")
  grid_axes = [[Axis(k, "grid", i, v) for i, v in enumerate(vs)] for k, vs in grid.items()]
  size = max(lengths.values(), default=1)
  zip_points = [tuple(Axis(k, "zip", i, vs[i]) for k, vs in zipped.items()) for i in range(size)]
  return [tuple(g) + z for g in itertools.product(*grid_axes) for z in zip_points]
