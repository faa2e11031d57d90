"""Lanczos with partial, full or no re-orthogonalisation, and the Ritz pairs it gives.

After m steps from a unit q₀, Qᵀ A Q = T, the m × m tridiagonal matrix with diagonal α and
off-diagonal β, Q = [q₀ … q_{m−1}] orthonormal. Each step:
  w = A q_i;  α_i = q_iᵀ w;  w ← w − α_i q_i − β_{i−1} q_{i−1};  [w ← w − Q (Qᵀ w)];
  β_i = ‖w‖;  q_{i+1} = w / β_i.
The bracketed pass over the whole basis (repeated when it cancels most of w, the DGKS test)
costs two reads of the m-row basis, which dominates on big models. `reorth="full"` runs it every
step (Q orthonormal to working precision). `reorth="partial"` (the default) runs it only when
Simon's recurrence for the loss of orthogonality ω_{i+1,k} ≈ q_{i+1}ᵀ q_k,
  β_i ω_{i+1,k} = β_k ω_{i,k+1} + (α_k − α_i) ω_{i,k} + β_{k−1} ω_{i,k−1} − β_{i−1} ω_{i−1,k} ± 2ε‖T‖,
crosses √ε, and then at the next step too; this keeps Q semi-orthogonal (|q_jᵀ q_k| ≤ √ε), which
is enough for T's eigenvalues to be accurate to working precision without spurious copies, at a
few passes over the basis per run instead of one per step. If β_i vanishes (Krylov space
exhausted: an invariant subspace was found), the step restarts from a random vector orthogonal
to Q and records β_i = 0, so T stays Qᵀ A Q and its eigenvalues remain eigenvalues of A.
`reorth="none"` stores no basis (the recurrence carries q_{i−1}; O(n) memory, no m-row buffer
to write): Q drifts from orthogonality once a Ritz value converges, which adds copies of
converged values to T's spectrum but leaves its extreme values accurate; a restart then draws
its random vector without projecting (each β = 0 block of T is a Lanczos run of its own).

Extreme eigenvalues converge first (fast when separated, as Hessian outliers are); the top and
bottom Ritz values are interior bounds: θ_max ≤ λ_max and θ_min ≥ λ_min.

References: Lanczos, 1950; Golub & Van Loan, Matrix Computations, §10.1; Simon, 1984, The Lanczos
algorithm with partial reorthogonalization (Math. Comp. 42); Paige, 1980, Accuracy and effectiveness
of the Lanczos algorithm for the symmetric eigenproblem (Linear Algebra Appl. 34); Ghorbani et al., 2019,
An investigation into neural net optimization via Hessian eigenvalue density (arXiv:1901.10159).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax.curvature import basis as B
from optlab_jax.curvature.loops import apply, as_partial, consume_once, resolve_loop
from optlab_jax.curvature.probes import rademacher_like
from optlab_jax.checks import check_choice, check_positive_int

__all__ = ["LanczosResult", "LanczosEigs", "lanczos", "lanczos_eigs", "tridiagonal"]


class LanczosResult(NamedTuple):
  """Output of `lanczos`."""
  alphas: jax.Array   # (m,) diagonal of T.
  betas: jax.Array    # (m−1,) off-diagonal of T (0 where a breakdown restarted the iteration).
  basis: Any          # params-shaped tree, leading axis m: the orthonormal Lanczos vectors q_i (None: "none").
  reorthogonalised: jax.Array  # (m,) bool: the steps that ran the pass over the whole basis.


class LanczosEigs(NamedTuple):
  """Output of `lanczos_eigs`: the k largest and k smallest Ritz pairs."""
  top_values: jax.Array     # (k,) largest Ritz values, descending.
  top_vectors: Any          # params-shaped tree, leading axis k: their unit Ritz vectors (None: "none").
  bottom_values: jax.Array  # (k,) smallest Ritz values, ascending.
  bottom_vectors: Any       # params-shaped tree, leading axis k: their unit Ritz vectors (None: "none").


_BREAKDOWN = 10.0   # β ≤ this · eps · ‖T‖ (estimated) counts as an exhausted Krylov space.
REORTH = ("partial", "full", "none")


class _State(NamedTuple):
  basis: Any          # `basis` rows: 0..i−1 hold q_0..q_{i−1}, the rest zeros; step i writes q_i (None: "none").
  q: Any              # q_i, the vector the next matvec is applied to.
  q_prev: Any         # q_{i−1} with reorth="none" (no basis to read it from); None otherwise.
  beta: jax.Array     # β_{i−1} (0 at i = 0).
  alphas: jax.Array   # (m,) α_j for j < i.
  betas: jax.Array    # (m,) β_j for j < i.
  scale: jax.Array    # running max of |α_j| + β_{j−1}, the size the breakdown test compares to.
  key: jax.Array      # PRNG key for restart vectors (step i folds in i: no key work on steps that do not restart).
  omega: jax.Array    # (m + 1,) estimates of q_iᵀ q_k (Simon's recurrence); 1 at k = i, 0 past it.
  omega_prev: jax.Array  # (m + 1,) the same for q_{i−1}.
  force: jax.Array    # bool: this step re-orthogonalises (the last one did, on the recurrence's word).
  passes: jax.Array   # (m,) bool: the steps that re-orthogonalised.


def tridiagonal(alphas: jax.Array, betas: jax.Array) -> jax.Array:
  """The dense m × m symmetric tridiagonal T from its diagonal and off-diagonal."""
  return jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)


def _init(v0: Any, key: jax.Array, num_iters: int, mode: str) -> _State:
  q = B.unit(v0)
  dtype = B.scalar_dtype(q)
  zero = jnp.zeros([], dtype)
  omega = jnp.zeros(num_iters + 1, dtype)
  stored = mode != "none"
  basis, q_prev = (B.zeros(q, num_iters), None) if stored else (None, jax.tree.map(jnp.zeros_like, q))
  return _State(basis, q, q_prev, zero, jnp.zeros(num_iters, dtype), jnp.zeros(num_iters, dtype), zero, key,
                omega.at[0].set(1), omega, jnp.zeros([], bool), jnp.zeros(num_iters, bool))


def _omega_next(state: _State, alphas: jax.Array, alpha: jax.Array, beta: jax.Array, scale: jax.Array,
                i: jax.Array) -> jax.Array:
  """Simon's estimate of q_{i+1}ᵀ q_k for every k (before any re-orthogonalisation of q_{i+1})."""
  eps = jnp.finfo(beta.dtype).eps
  m = alphas.shape[0]
  k = jnp.arange(m + 1)
  pad = lambda x: jnp.concatenate([x, jnp.zeros(m + 1 - x.shape[0], x.dtype)])
  betas, alphas = pad(state.betas), pad(alphas)
  shift_down = lambda x: jnp.concatenate([jnp.zeros(1, x.dtype), x[:-1]])   # x[k−1], 0 at k = 0
  shift_up = lambda x: jnp.concatenate([x[1:], jnp.zeros(1, x.dtype)])      # x[k+1]
  t = (betas * shift_up(state.omega) + (alphas - alpha) * state.omega + shift_down(betas) * shift_down(state.omega)
       - state.beta * state.omega_prev)
  t = (t + jnp.where(t >= 0, 2, -2) * eps * scale) / beta
  return jnp.where(k < i, t, jnp.where(k == i, eps * scale / beta, jnp.where(k == i + 1, 1.0, 0.0)))


def _three_term(w: Any, q: Any, q_prev: Any, beta_prev: jax.Array) -> tuple[jax.Array, Any, jax.Array]:
  """(α, w − α q − β q_prev, its norm): the recurrence's passes over the matvec's output."""
  alpha = B.vdot(q, w)
  w = jax.tree.map(lambda x, a, b: x - alpha.astype(x.dtype) * a - beta_prev.astype(x.dtype) * b, w, q, q_prev)
  return alpha, w, B.norm(w)


def _step(state: _State, w: Any, i: jax.Array, mode: str = "partial") -> _State:
  stored = mode != "none"
  basis = B.set_row(state.basis, i, state.q) if stored else None
  # With a basis, q_{i−1} is read from it rather than carried (at i = 0, β = 0 cancels the clamped row).
  q_prev = B.row(basis, jnp.maximum(i - 1, 0), w) if stored else state.q_prev
  alpha, w, local_norm = consume_once(i, _three_term, w, state.q, q_prev, state.beta)
  scale = jnp.maximum(state.scale, jnp.abs(alpha) + state.beta)
  alphas = state.alphas.at[i].set(alpha)
  eps = jnp.finfo(local_norm.dtype).eps
  if stored:
    omega = _omega_next(state, alphas, alpha, jnp.maximum(local_norm, eps * scale), scale, i)
    reorth = (mode == "full") | state.force | (
        jnp.max(jnp.abs(jnp.where(jnp.arange(omega.shape[0]) < i, omega, 0))) > np.sqrt(eps))
    w, beta = jax.lax.cond(reorth, lambda: _reorthogonalise(basis, w, local_norm), lambda: (w, local_norm))
    omega = jnp.where(reorth & (jnp.arange(omega.shape[0]) <= i), eps, omega)
  else:
    omega, reorth, beta = state.omega, jnp.zeros([], bool), local_norm
  breakdown = beta <= _BREAKDOWN * eps * scale

  def restart():
    z = rademacher_like(jax.random.fold_in(state.key, i), w)
    return B.unit(B.project_out(basis, B.project_out(basis, z)) if stored else z)

  q_next = jax.lax.cond(breakdown, restart, lambda: jax.tree.map(lambda x: x / beta.astype(x.dtype), w))
  beta = jnp.where(breakdown, jnp.zeros_like(beta), beta)
  omega = jnp.where(breakdown & (jnp.arange(omega.shape[0]) <= i), eps, omega)
  return _State(basis, q_next, None if stored else state.q, beta, alphas, state.betas.at[i].set(beta), scale, state.key,
                omega, state.omega, reorth & ~state.force & (mode != "full"), state.passes.at[i].set(reorth))


def _reorthogonalise(basis: Any, w: Any, local_norm: jax.Array) -> tuple[Any, jax.Array]:
  w = B.project_out(basis, w)
  beta = B.norm(w)
  # DGKS test: when the pass removed more than 1 − 1/√2 of the norm, one pass may not reach
  # working-precision orthogonality, so a second pass runs (rarely: near breakdown).
  return jax.lax.cond(beta < local_norm / np.sqrt(2.0), lambda: _again(basis, w), lambda: (w, beta))


def _again(basis: Any, w: Any) -> tuple[Any, jax.Array]:
  w = B.project_out(basis, w)
  return w, B.norm(w)


_step_jit = jax.jit(_step, donate_argnums=0, static_argnums=3)
_init_jit = jax.jit(_init, static_argnums=(2, 3))


def _result(state: _State) -> LanczosResult:
  basis = None if state.basis is None else B.stack(state.basis, state.q)
  return LanczosResult(state.alphas, state.betas[:-1], basis, state.passes)


_result_jit = jax.jit(_result)


@partial(jax.jit, static_argnums=(3, 4))
def _lanczos_scan(matvec: Callable, v0: Any, key: jax.Array, num_iters: int, mode: str) -> LanczosResult:
  def body(state, i):
    return _step(state, matvec(state.q), i, mode), None
  # Without a basis, q moves to q_prev's slot each step, a copy of both per iteration of a rolled
  # loop; two steps an iteration hand the vectors over inside the body instead.
  state, _ = jax.lax.scan(body, _init(v0, key, num_iters, mode), jnp.arange(num_iters),
                          unroll=2 if mode == "none" else 1)
  return _result(state)


def _lanczos_python(matvec: Callable, v0: Any, key: jax.Array, num_iters: int, mode: str) -> LanczosResult:
  state = _init_jit(v0, key, num_iters, mode)
  for i in range(num_iters):
    state = _step_jit(state, apply(matvec, state.q), jnp.asarray(i, jnp.int32), mode)
  return _result_jit(state)


@jax.jit
def _start(key: jax.Array, params: Any) -> tuple[jax.Array, Any]:
  key, start_key = jax.random.split(key)
  return key, rademacher_like(start_key, params)


def lanczos(
    matvec: Callable,
    params: Any,
    key: jax.Array,
    num_iters: int,
    *,
    v0: Any = None,
    loop: str = "auto",
    reorth: str = "partial",
) -> LanczosResult:
  """Runs `num_iters` Lanczos steps on the symmetric operator `matvec` (one matvec each).

  Starts from `v0` (normalised) or, if None, a Rademacher vector drawn from `key`; `key`
  also seeds restart vectors. `loop` ("auto" | "scan" | "python", see `loops.resolve_loop`):
  "scan" runs one `lax.scan` (jittable, vmappable); "python" calls a jitted matvec and a
  jitted step from a Python loop, avoiding the conv-in-control-flow slowdown on CPU.
  `reorth` ("partial" | "full" | "none"): the basis semi-orthogonal (|q_jᵀ q_k| ≤ √ε, far fewer
  passes over it) or orthonormal to working precision; memory: the basis holds num_iters copies of
  params. "none" keeps no basis (`basis` is None; memory: a few vectors): plain Lanczos, whose lost
  orthogonality repeats converged Ritz values in T but leaves its extreme ones accurate, the
  cheapest λ_max and λ_min, with no Ritz vectors.
  """
  check_positive_int("num_iters", num_iters)
  check_choice("reorth", reorth, REORTH)
  size = B.size(params)
  if num_iters > size:
    raise ValueError(f"num_iters={num_iters} is out of range; expected num_iters <= {size} (the dimension)")
  matvec = as_partial(matvec)
  run = _lanczos_python if resolve_loop(loop, matvec, params) == "python" else _lanczos_scan
  if v0 is None:
    key, v0 = _start(key, params)
  return run(matvec, v0, key, num_iters, reorth)


@partial(jax.jit, static_argnums=1)
def _ritz_pairs(result: LanczosResult, k: int) -> LanczosEigs:
  theta, s = jnp.linalg.eigh(tridiagonal(result.alphas, result.betas))
  top, bottom = theta.shape[0] - 1 - jnp.arange(k), jnp.arange(k)
  if result.basis is None:
    return LanczosEigs(theta[top], None, theta[bottom], None)
  rows, like = B.unstack(result.basis), jax.tree.map(lambda b: b[0], result.basis)
  return LanczosEigs(theta[top], B.combine(rows, s[:, top], like),
                     theta[bottom], B.combine(rows, s[:, bottom], like))


def lanczos_eigs(
    matvec: Callable,
    params: Any,
    key: jax.Array,
    num_iters: int,
    k: int = 1,
    *,
    v0: Any = None,
    loop: str = "auto",
    reorth: str = "partial",
) -> LanczosEigs:
  """The k largest and k smallest Ritz pairs of `matvec` after `num_iters` Lanczos steps.

  Ritz values are the eigenvalues θ of T = QᵀAQ, Ritz vectors Q s for T's eigenvectors s
  (None with reorth="none", which keeps no Q; there the second value may repeat the first).
  Signs are handled exactly (unlike power iteration): the top values are the largest λ, not
  the largest |λ|.
  """
  check_positive_int("k", k)
  if k > num_iters:
    raise ValueError(f"k={k} is out of range; expected k <= num_iters={num_iters}")
  return _ritz_pairs(lanczos(matvec, params, key, num_iters, v0=v0, loop=loop, reorth=reorth), k)
