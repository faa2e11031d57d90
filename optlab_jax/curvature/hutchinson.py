"""Stochastic diagonal and trace estimators on any symmetric matvec: Hutchinson and Hutch++.

With Rademacher probes z (E[z zᵀ] = I): E[z ⊙ A z] = diag(A) and E[zᵀ A z] = tr(A), with
Var[zᵀ A z] = 2 (‖A‖_F² − Σ_i A_ii²) ≤ 2 ‖A‖_F². The trace estimators return a `TraceEstimate`:
the value with its standard error: from the probes' sample variance once there are
`_MIN_PROBES` of them, from 2‖Az‖² (which estimates the bound) before that, since the sample
variance of a few probes is too noisy to cover (a t-statistic with one degree of freedom exceeds
3 in a fifth of draws). Given `rtol`, they draw batches of probes until stderr ≤ rtol · |value|
or the matvec budget is spent: a `lax.while_loop`, or a Python loop over jitted batches where
`loops.resolve_loop` says so (conv models on CPU). When the dimension n is within the budget,
they return the exact trace Σ_i e_iᵀ A e_i instead (n unit-vector products, batched; stderr 0).
Probes are drawn with `rademacher_like` (bits → signs); a batch of probes is one vmapped matvec,
so memory grows with the batch size.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from optlab_jax.curvature import basis as B
from optlab_jax.curvature.loops import as_partial, resolve_loop
from optlab_jax.curvature.probes import rademacher_like
from optlab_jax.checks import check_positive, check_positive_int

__all__ = ["TraceEstimate", "hutchinson_diag", "hutchinson_trace", "hutchpp_trace"]


class TraceEstimate(NamedTuple):
  """A trace estimate with its standard error."""
  value: jax.Array        # the estimate of tr(A).
  stderr: jax.Array       # its standard error (0 for the exact trace).
  num_matvecs: jax.Array  # int32: matvecs spent.


class _Moments(NamedTuple):
  count: jax.Array   # int32: probes drawn so far.
  mean: jax.Array    # mean of their quadratic forms zᵀAz.
  m2: jax.Array      # Σ (zᵀAz − mean)², merged batch by batch (Chan, Golub & LeVeque).
  bound: jax.Array   # mean of 2‖Az‖², which estimates Var's bound 2‖A‖_F² (used below _MIN_PROBES).
  key: jax.Array     # PRNG key of the next batch.


_MIN_PROBES = 5   # 4 degrees of freedom: |t| > 3 in 4% of Gaussian draws.


def _probe_products(matvec: Callable, params: Any, key: jax.Array, num_samples: int):
  probes = jax.vmap(rademacher_like, in_axes=(0, None))(jax.random.split(key, num_samples), params)
  return probes, jax.vmap(matvec)(probes)


def hutchinson_diag(matvec: Callable, params: Any, key: jax.Array, num_samples: int = 1) -> Any:
  """diag(A) ≈ (1/S) Σ_s z_s ⊙ A z_s, a params-shaped tree.

  References: Bekas, Kokiopoulou & Saad, 2007, An estimator for the diagonal of a matrix;
  Yao et al., 2020, ADAHESSIAN (arXiv:2006.00719).
  """
  check_positive_int("num_samples", num_samples)
  probes, products = _probe_products(matvec, params, key, num_samples)
  return jax.tree.map(lambda z, az: jnp.mean(z * az, axis=0), probes, products)


def _hutchinson_draw(matvec, params, key, batch):
  probes, products = _probe_products(matvec, params, key, batch)
  return jax.vmap(B.vdot)(probes, products), jax.vmap(B.vdot)(products, products)


def _residual_draw(matvec, rows, params, key, batch):
  """Probes of P A P, P = I − Q Qᵀ: (Pz)ᵀ A (Pz) and ‖P A P z‖²."""
  project = jax.vmap(lambda v: B.project_out(rows, v))
  w = project(jax.vmap(rademacher_like, in_axes=(0, None))(jax.random.split(key, batch), params))
  aw = jax.vmap(matvec)(w)
  paw = project(aw)
  return jax.vmap(B.vdot)(w, aw), jax.vmap(B.vdot)(paw, paw)


@partial(jax.jit, static_argnums=2)
def _step(draw: Partial, m: _Moments, batch: int) -> _Moments:
  key, sub = jax.random.split(m.key)
  quads, sq = draw(sub, batch)
  old = m.count.astype(m.mean.dtype)
  new = old + batch
  batch_mean = jnp.mean(quads)
  delta = batch_mean - m.mean
  return _Moments(m.count + batch, m.mean + delta * batch / new,
                  m.m2 + jnp.sum((quads - batch_mean) ** 2) + delta**2 * old * batch / new,
                  m.bound + (2 * jnp.mean(sq) - m.bound) * batch / new, key)


def _stderr(m: _Moments) -> jax.Array:
  n = m.count.astype(m.mean.dtype)
  return jnp.sqrt(jnp.where(m.count >= _MIN_PROBES, m.m2 / jnp.maximum(n - 1, 1), m.bound) / n)


def _more(m: _Moments, batch: int, max_probes: int, rtol: jax.Array, offset: jax.Array) -> jax.Array:
  return (m.count + batch <= max_probes) & (_stderr(m) > rtol * jnp.abs(offset + m.mean))


_more_jit = jax.jit(_more, static_argnums=(1, 2))


@partial(jax.jit, static_argnums=(2, 3))
def _while(draw, m, batch, max_probes, rtol, offset):
  return jax.lax.while_loop(lambda m: _more(m, batch, max_probes, rtol, offset),
                            lambda m: _step(draw, m, batch), m)


def _sample(draw: Partial, key, dtype, batch: int, max_probes: int, rtol, offset, loop: str) -> _Moments:
  """One batch of `batch` probes, then (given `rtol`) more until the relative stderr reaches it."""
  zero = jnp.zeros([], dtype)
  m = _step(draw, _Moments(jnp.zeros([], jnp.int32), zero, zero, zero, key), batch)
  if rtol is None or max_probes < 2 * batch:
    return m
  rtol, offset = jnp.asarray(rtol, dtype), jnp.asarray(offset, dtype)
  if loop == "python":
    while bool(_more_jit(m, batch, max_probes, rtol, offset)):
      m = _step(draw, m, batch)
    return m
  return _while(draw, m, batch, max_probes, rtol, offset)


@partial(jax.jit, static_argnums=3)
def _unit_products(matvec, params, start, batch):
  """Σ_i e_iᵀ A e_i over i in [start, start + batch) ∩ [0, n), as one vmapped matvec."""
  eye = jax.nn.one_hot(start + jnp.arange(batch), B.size(params), dtype=B.scalar_dtype(params))  # rows past n: 0
  products = B.unstack(jax.vmap(matvec)(B.stack(B.from_matrix(eye, params), params)))
  return jnp.sum(eye * B.to_matrix(products))


@partial(jax.jit, static_argnums=2)
def _unit_products_map(matvec, params, batch):
  starts = jnp.arange(0, B.size(params), batch)
  return jnp.sum(jax.lax.map(lambda s: _unit_products(matvec, params, s, batch), starts))


def _exact(matvec: Partial, params: Any, batch: int, loop: str) -> TraceEstimate:
  n = B.size(params)
  batch = min(batch, n)
  if n <= batch:
    total = _unit_products(matvec, params, 0, batch)
  elif resolve_loop(loop, matvec, params) == "python":
    total = sum(_unit_products(matvec, params, s, batch) for s in range(0, n, batch))
  else:
    total = _unit_products_map(matvec, params, batch)
  return TraceEstimate(total, jnp.zeros_like(total), jnp.asarray(n, jnp.int32))


def _budget(num_samples: int, rtol: float | None, max_matvecs: int | None) -> int:
  if rtol is not None:
    check_positive("rtol", rtol)
  if max_matvecs is None:
    return num_samples if rtol is None else 100 * num_samples
  check_positive_int("max_matvecs", max_matvecs)
  if max_matvecs < num_samples:
    raise ValueError(f"max_matvecs={max_matvecs} is out of range; expected max_matvecs >= num_samples={num_samples}")
  return max_matvecs


def hutchinson_trace(
    matvec: Callable,
    params: Any,
    key: jax.Array,
    num_samples: int = 1,
    *,
    rtol: float | None = None,
    max_matvecs: int | None = None,
    loop: str = "auto",
) -> TraceEstimate:
  """tr(A) ≈ (1/S) Σ_s z_sᵀ A z_s with its standard error, z_s Rademacher.

  Draws `num_samples` probes; with `rtol`, batches of `num_samples` probes until
  stderr ≤ rtol · |value| or `max_matvecs` (default: num_samples, or 100 · num_samples with
  `rtol`) would be exceeded. If the dimension n ≤ that budget, the exact trace instead.
  `loop` ("auto" | "scan" | "python", see `loops.resolve_loop`) runs the batches.

  References: Hutchinson, 1989, A stochastic estimator of the trace of the influence matrix
  for Laplacian smoothing splines.
  """
  check_positive_int("num_samples", num_samples)
  budget = _budget(num_samples, rtol, max_matvecs)
  matvec = as_partial(matvec)
  if B.size(params) <= budget:
    return _exact(matvec, params, num_samples, loop)
  loop = "scan" if rtol is None else resolve_loop(loop, matvec, params)
  m = _sample(Partial(_hutchinson_draw, matvec, params), key, B.scalar_dtype(params), num_samples, budget,
              rtol, 0.0, loop)
  return TraceEstimate(m.mean, _stderr(m), m.count)


@partial(jax.jit, static_argnums=3)
def _sketch(matvec, params, key, k):
  """Q = orth(A S) as k rows, and tr(Qᵀ A Q): 2k matvecs."""
  sketch = jax.vmap(rademacher_like, in_axes=(0, None))(jax.random.split(key, k), params)
  q, _ = jnp.linalg.qr(B.to_matrix(B.unstack(jax.vmap(matvec)(sketch))).T)   # (n, k)
  rows = B.from_matrix(q.T, params)
  stacked = B.stack(rows, params)
  return rows, jnp.sum(jax.vmap(B.vdot)(stacked, jax.vmap(matvec)(stacked)))


def hutchpp_trace(
    matvec: Callable,
    params: Any,
    key: jax.Array,
    num_samples: int = 30,
    *,
    rtol: float | None = None,
    max_matvecs: int | None = None,
    loop: str = "auto",
) -> TraceEstimate:
  """Hutch++: exact trace on a sketched top subspace plus Hutchinson on the rest, with its stderr.

  With m = `num_samples` matvecs, k = m // 3 and g = m − 2k:
    Q = orth(A S) for Rademacher S (n × k);  G Rademacher (n × g);  P = I − Q Qᵀ;
    tr(A) ≈ tr(Qᵀ A Q) + (1/g) tr(Gᵀ P A P G).
  Its error falls as 1/m instead of 1/√m for matrices with decaying spectra (Hessian outliers).
  Given Q the first term is exact, so the standard error is the second term's (its probes'
  sample variance). With `rtol`, batches of g more probes of P A P until stderr ≤ rtol · |value|
  or `max_matvecs` (default 100 · m) would be exceeded; if the dimension n is within the budget
  (m without `rtol`), the exact trace instead. The n × k sketch is the extra memory.

  References: Meyer, Musco, Musco & Woodruff, 2021, Hutch++: Optimal stochastic trace
  estimation (arXiv:2010.09649).
  """
  check_positive_int("num_samples", num_samples)
  if num_samples < 3:
    raise ValueError(f"num_samples={num_samples} is out of range; expected num_samples >= 3")
  budget = _budget(num_samples, rtol, max_matvecs)
  matvec = as_partial(matvec)
  if B.size(params) <= budget:
    return _exact(matvec, params, num_samples, loop)
  k = num_samples // 3
  loop = "scan" if rtol is None else resolve_loop(loop, matvec, params)
  sketch_key, probe_key = jax.random.split(key)
  rows, top = _sketch(matvec, params, sketch_key, k)
  m = _sample(Partial(_residual_draw, matvec, rows, params), probe_key, B.scalar_dtype(params),
              num_samples - 2 * k, budget - 2 * k, rtol, top, loop)
  return TraceEstimate(top + m.mean, _stderr(m), m.count + 2 * k)
