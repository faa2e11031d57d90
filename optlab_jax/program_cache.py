"""Numbers about a traced program (XLA's FLOP estimate, say), kept by the program's own text.

Lowering a program to read its cost takes several times longer than tracing it. `cost` traces,
hashes the jaxpr (with the JAX version and backend) and lowers only on a miss; the value is kept in
this process and, when the persistent compilation cache is on (`train.use_compilation_cache`),
in a file beside it, so a rerun of a sweep lowers nothing for it. Equal jaxprs are the same
program, so they have the same cost; a jaxpr that prints a memory address (a host callback)
only misses.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

import jax

__all__ = ["cost"]

_KEPT: dict[str, float] = {}  # hash of (jax version, backend, name, jaxpr) -> value, this process


def cost(traced: jax.stages.Traced, name: str = "flops") -> float:
  """`traced.lower().cost_analysis()[name]`, lowering only the first time this program is seen."""
  text = f"{jax.__version__} {jax.default_backend()} {name}\n{traced.jaxpr}"
  key = hashlib.sha256(text.encode()).hexdigest()
  if key in _KEPT:
    return _KEPT[key]
  directory = jax.config.jax_compilation_cache_dir
  path = pathlib.Path(directory) / "optlab_costs" / key if directory else None
  if path is not None and path.exists():
    _KEPT[key] = float(path.read_text())
    return _KEPT[key]
  _KEPT[key] = float(traced.lower().cost_analysis()[name])
  if path is not None:  # atomically: concurrent sweeps (Ray workers) may write the same key
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
      f.write(repr(_KEPT[key]))
    os.replace(f.name, path)
  return _KEPT[key]
