"""Optimizers: one algorithm per module, each an optax `GradientTransformationExtraArgs`.

`MODULES` lists every algorithm module, imported explicitly (importing one registers its
aliases); the names each lists in `__all__` are re-exported, so `optlab_jax.optim.adam` and
`optlab_jax.adam` both work. `get(name)` returns the alias factory registered under `name`;
`names()` lists them all. A new optimizer is a new module, imported and listed here.
"""

from optlab_jax.optim.base import with_full_params
from optlab_jax.optim.registry import get, names, register

# first order
from optlab_jax.optim import sgd, adagrad, adadelta, rmsprop, adam, amsgrad, adamw, radam  # noqa: E402
from optlab_jax.optim import lars, lamb, novograd, lookahead, ranger, lazy_adam  # noqa: E402
# Hessian-based
from optlab_jax.optim import adahessian, sophia, sam, conjugate_gradient, newton_cg  # noqa: E402
# constrained and clipped
from optlab_jax.optim import projected, clipped  # noqa: E402
# stale gradients (asynchronous SGD simulated)
from optlab_jax.optim import delayed  # noqa: E402
# curvature matrices
from optlab_jax.optim import gauss_newton, kfac_capture, kfac  # noqa: E402
# quasi-Newton
from optlab_jax.optim import lbfgs, lbfgs_b  # noqa: E402
# one optimizer, then another
from optlab_jax.optim import switch  # noqa: E402
# matrix preconditioners
from optlab_jax.optim import shampoo, soap  # noqa: E402
# optax's own (thin entries) and matrix preconditioners
from optlab_jax.optim import psgd_kron, muon, schedule_free, learning_rate_free, adam_variants, sign_and_factored  # noqa: E402

MODULES = (
    sgd, adagrad, adadelta, rmsprop, adam, amsgrad, adamw, radam, lars, lamb, novograd,
    lookahead, ranger, lazy_adam, adahessian, sophia, sam, conjugate_gradient, newton_cg,
    gauss_newton, kfac_capture, kfac, lbfgs, lbfgs_b, switch,
    shampoo, soap,
    psgd_kron, muon, schedule_free, learning_rate_free, adam_variants, sign_and_factored, projected, clipped,
    delayed,
)

__all__ = ["MODULES", "get", "names", "register", "with_full_params"]
for _module in MODULES:
  for _name in _module.__all__:
    globals()[_name] = getattr(_module, _name)
    __all__.append(_name)
