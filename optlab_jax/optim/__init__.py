"""Optimizers: one algorithm per module, each an optax `GradientTransformationExtraArgs`.

Every module of this package is imported here, which registers its aliases; the names a
module lists in `__all__` are re-exported (so `optlab_jax.optim.adam` and `optlab_jax.adam`).
`get(name)` returns the alias factory registered under `name`; `names()` lists them all.
"""

import importlib
import pkgutil

from optlab_jax.optim.registry import get, names, register

__all__ = ["get", "names", "register"]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  _mod = importlib.import_module(f"{__name__}.{_module}")
  for _name in getattr(_mod, "__all__", ()):
    globals()[_name] = getattr(_mod, _name)
    __all__.append(_name)
