"""Power iteration with deflation and shifts, and the extreme eigenvalues from two runs.

Each step: λ = vᵀ A' v (the signed Rayleigh quotient), v ← A' v / ‖A' v‖, with
A' = P (A − σ I) P, P = I − U Uᵀ projecting out the `deflate` vectors U; it stops when
|λ − λ_prev| ≤ tol·|λ_prev| or after num_iters steps (PyHessian's rule; defaults 100, 1e-3).

Failure mode: power iteration converges to the eigenvalue of largest |λ − σ|, not the largest
λ. With σ = 0 and a dominant negative eigenvalue (common early in training, or at saddles) it
returns that negative eigenvalue. We return the signed Rayleigh quotient, so the sign shows
which end was found, and `power_extremes` runs a second, shifted iteration with σ = λ_found,
whose dominant eigenvalue is the opposite end of the spectrum. Convergence is geometric in
|λ₂ − σ|/|λ₁ − σ|: slow for clustered spectra, and the tol test can stop early, far from λ
(Lanczos, in lanczos.py, converges much faster for the same matvecs).

References: Golub & Van Loan, Matrix Computations, §7.3; Yao et al., 2020, PyHessian
(arXiv:1912.07145).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from optlab_jax.curvature import basis as B
from optlab_jax.curvature.loops import apply, as_partial, resolve_loop
from optlab_jax.curvature.probes import rademacher_like
from optlab_jax.checks import check_nonnegative, check_positive_int

__all__ = ["power_iteration", "power_extremes"]


class _State(NamedTuple):
  v: Any                # current unit iterate.
  eigenvalue: jax.Array # latest Rayleigh quotient vᵀA'v (shift not added back).
  iters: jax.Array      # int32: matvecs taken.
  converged: jax.Array  # bool: the tol test passed.


def _operator(matvec: Callable, shift: jax.Array, deflate_rows: Any, v: Any) -> Any:
  if deflate_rows is not None:
    v = B.project_out(deflate_rows, v)
  av = jax.tree.map(lambda a, x: a - shift.astype(x.dtype) * x, matvec(v), v)
  return av if deflate_rows is None else B.project_out(deflate_rows, av)


def _init(v0: Any) -> _State:
  v = B.unit(v0)
  return _State(v, jnp.zeros([], B.scalar_dtype(v)), jnp.zeros([], jnp.int32), jnp.zeros([], bool))


def _step(state: _State, av: Any, tol: jax.Array) -> _State:
  eigenvalue = B.vdot(state.v, av)
  change = jnp.abs(eigenvalue - state.eigenvalue)
  converged = (state.iters > 0) & (change <= tol * jnp.abs(state.eigenvalue))
  return _State(B.unit(av), eigenvalue, state.iters + 1, converged)


_step_jit = jax.jit(_step, donate_argnums=0)
_init_jit = jax.jit(_init)
_start = jax.jit(rademacher_like)


@partial(jax.jit, static_argnums=3)
def _power_while(op: Callable, v0: Any, tol: jax.Array, num_iters: int) -> _State:
  cond = lambda s: (s.iters < num_iters) & ~s.converged
  return jax.lax.while_loop(cond, lambda s: _step(s, op(s.v), tol), _init(v0))


def _power_python(op: Callable, v0: Any, tol: jax.Array, num_iters: int) -> _State:
  state = _init_jit(v0)
  for _ in range(num_iters):
    state = _step_jit(state, apply(op, state.v), tol)
    if state.converged:
      break
  return state


def power_iteration(
    matvec: Callable,
    params: Any,
    key: jax.Array,
    num_iters: int = 100,
    tol: float = 1e-3,
    deflate: Any = None,
    *,
    shift: float | jax.Array = 0.0,
    loop: str = "auto",
):
  """Dominant eigenpair of P (A − shift·I) P, returned as (λ + shift, unit vector, iters).

  `deflate`: orthonormal vectors to exclude, stacked along a leading axis of a params-shaped
  tree (e.g. `lanczos_eigs(...).top_vectors` or earlier results stacked); None for none.
  The eigenvalue is the signed Rayleigh quotient: it is the largest-|λ| eigenvalue, which may
  be negative (see the module docstring and `power_extremes`). `loop` as in `lanczos`; the
  Python loop stops early on the host, the scan path with `lax.while_loop`.
  """
  check_positive_int("num_iters", num_iters)
  check_nonnegative("tol", tol)
  rows = None if deflate is None else B.unstack(deflate)
  op = Partial(_operator, as_partial(matvec), jnp.asarray(shift), rows)
  run = _power_python if resolve_loop(loop, op, params) == "python" else _power_while
  state = run(op, _start(key, params), jnp.asarray(tol), num_iters)
  return state.eigenvalue + shift, state.v, state.iters


def power_extremes(
    matvec: Callable,
    params: Any,
    key: jax.Array,
    num_iters: int = 100,
    tol: float = 1e-3,
    *,
    loop: str = "auto",
) -> tuple[jax.Array, jax.Array]:
  """(λ_max, λ_min) from two power iterations: unshifted, then shifted by the first result.

  The first run finds the eigenvalue λ_d of largest |λ|; the dominant eigenvalue of A − λ_d I
  is the other end of the spectrum λ_o, so {λ_max, λ_min} = {λ_d, λ_o}.
  """
  first_key, second_key = jax.random.split(key)
  dominant, _, _ = power_iteration(matvec, params, first_key, num_iters, tol, loop=loop)
  other, _, _ = power_iteration(matvec, params, second_key, num_iters, tol, shift=dominant, loop=loop)
  return jnp.maximum(dominant, other), jnp.minimum(dominant, other)
