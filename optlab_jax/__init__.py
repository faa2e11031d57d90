"""optlab_jax: a JAX laboratory for deep-learning optimization."""

from optlab_jax import compat

compat.fix_optax_tree_vdot()  # before anything traces optax.tree.vdot (see compat.py)

from optlab_jax import optim
from optlab_jax import schedules
from optlab_jax.optim import *  # noqa: F401,F403  (flat re-exports: optlab_jax.adam, ...)
from optlab_jax.optim import __all__ as _optim_all

__all__ = ["optim", *_optim_all]
__version__ = "0.1.0"
