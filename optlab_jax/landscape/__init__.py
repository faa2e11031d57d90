"""Loss-landscape tools: directions, 1-D/2-D slices, interpolation and mode connectivity.

  directions  `random_direction` / `filter_normalize` (Li et al., 2018) and `pca_directions` of a
              saved trajectory, with the trajectory projected on them
  grid        `evaluate` (any function of the params on many points as one compiled, vmapped or
              chunked program), `slice_1d`, `slice_2d`, `peak_bytes` (its memory)
  paths       `interpolate` with the monotonic-linear-interpolation statistics, `connect` (a
              trained Bézier curve between two minima) and the barriers of both paths

Figures of these results are in `optlab_jax.landscape_plots`.
"""

from optlab_jax.landscape.directions import (
    NORMALIZATIONS,
    PCADirections,
    filter_normalize,
    pca_directions,
    random_direction,
)
from optlab_jax.landscape.grid import AUTO_CHUNK, evaluate, peak_bytes, shift, slice_1d, slice_2d
from optlab_jax.landscape.paths import Connection, Interpolation, barrier, connect, interpolate, max_bump

__all__ = [
    "AUTO_CHUNK", "NORMALIZATIONS", "Connection", "Interpolation", "PCADirections", "barrier", "connect",
    "evaluate", "filter_normalize", "interpolate", "max_bump", "pca_directions", "peak_bytes", "random_direction", "shift",
    "slice_1d", "slice_2d",
]
