"""The curvature engine: curvature-vector products and the estimators built on them.

Products (params-shaped pytrees in and out, never an n×n matrix): `hvp`, `hvp_fn`, `ggn_fn`,
`fisher_fn`, `empirical_fisher_fn`. Estimators on any symmetric matvec: `hutchinson_diag`,
`hutchinson_trace`, `hutchpp_trace` (each a `TraceEstimate` with its standard error),
`power_iteration`, `power_extremes`, `lanczos`,
`lanczos_eigs`, `slq_quadrature`, `slq_moments`, `slq_density`. The Krylov estimators take
`loop="auto"|"scan"|"python"` (see `loops.resolve_loop`: conv models on CPU run a Python loop
over jitted steps, everything else a `lax.scan`).
"""

from optlab_jax.curvature.fisher import (
    DEFAULT_LIKELIHOOD,
    LIKELIHOODS,
    check_likelihood,
    check_outputs,
    empirical_fisher_fn,
    fisher_fn,
    nll,
    per_example_nll,
    sample_targets,
)
from optlab_jax.curvature.hutchinson import TraceEstimate, hutchinson_diag, hutchinson_trace, hutchpp_trace
from optlab_jax.curvature.lanczos import LanczosEigs, LanczosResult, lanczos, lanczos_eigs, tridiagonal
from optlab_jax.curvature.loops import LOOPS, has_primitive, resolve_loop
from optlab_jax.curvature.power import power_extremes, power_iteration
from optlab_jax.curvature.probes import rademacher_like
from optlab_jax.curvature.products import ggn_fn, hvp, hvp_fn, linearize_transpose
from optlab_jax.curvature.slq import gaussian_density, slq_density, slq_moments, slq_quadrature

__all__ = [
    "DEFAULT_LIKELIHOOD", "LIKELIHOODS", "LOOPS", "LanczosEigs", "LanczosResult", "TraceEstimate",
    "check_likelihood", "check_outputs",
    "empirical_fisher_fn", "fisher_fn", "gaussian_density", "ggn_fn", "has_primitive",
    "hutchinson_diag", "hutchinson_trace", "hutchpp_trace", "hvp", "hvp_fn", "lanczos",
    "lanczos_eigs", "linearize_transpose", "nll", "per_example_nll", "power_extremes",
    "power_iteration", "rademacher_like", "resolve_loop", "sample_targets", "slq_density",
    "slq_moments", "slq_quadrature", "tridiagonal",
]
