"""optlab_jax: a JAX laboratory for deep-learning optimization."""

from optlab_jax import optim
from optlab_jax.optim import *  # noqa: F401,F403  (flat re-exports: optlab_jax.adam, ...)

__version__ = "0.1.0"
