"""Optimizers: one algorithm per module, each an optax `GradientTransformationExtraArgs`.

`get(name)` returns the alias factory registered under `name`; `names()` lists them all.
"""

from optlab_jax.optim.registry import get, names, register
from optlab_jax.optim.sgd import scale_by_sgd, sgd
from optlab_jax.optim.adam import adam, nadam, scale_by_adam

__all__ = ["get", "names", "register", "scale_by_sgd", "sgd", "adam", "nadam", "scale_by_adam"]
