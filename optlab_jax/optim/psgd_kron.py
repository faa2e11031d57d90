"""PSGD-Kron: SGD preconditioned by a Kronecker-factored P = QᵀQ fitted online by the PSGD criterion."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks, curvature
from optlab_jax.optim import base
from optlab_jax.optim.registry import register

__all__ = ["ScaleByPsgdKronState", "update_probability_schedule", "factor_is_triangular", "unpack_factors",
           "scale_by_psgd_kron", "psgd_kron"]

PRECONDITIONERS = ("whitening", "newton")
# The reference's defaults for the three structural options, used when they are None.
MAX_SIZE_TRIANGULAR, MAX_SKEW_TRIANGULAR, MIN_NDIM_TRIANGULAR = 8192, math.inf, 2


class ScaleByPsgdKronState(NamedTuple):
  """State of `scale_by_psgd_kron`."""
  count: jax.Array     # int32 scalar: updates applied so far.
  mu: optax.Updates    # momentum, EMA of the gradients (not debiased); tree of params.
  qs: Any              # per leaf, its factors Q_i (upper-triangular d_i×d_i, or a d_i vector: diagonal)
                       # raveled into one vector (see `unpack_factors`): a params-shaped tree of arrays.
  key: jax.Array       # raw PRNG key for the next fit decision and probes.


def update_probability_schedule(max_prob: Any = 1.0, min_prob: Any = 0.03, decay: Any = 0.001,
                                flat_start: Any = 200) -> Callable[[jax.Array], jax.Array]:
  """n ↦ min(max(max_prob · exp(−decay (n − flat_start)), min_prob), max_prob), as in the reference:
  every step fits P for the first ~flat_start steps, then ever fewer (3% from ~3,700 steps on)."""
  return lambda n: jnp.minimum(jnp.maximum(max_prob * jnp.exp(-decay * (n - flat_start)), min_prob), max_prob)


def factor_is_triangular(shape, max_size=None, max_skew=None, min_ndim=None) -> tuple[bool, ...]:
  """Per dimension: a triangular factor, or a diagonal one (size 1, above `max_size`, above `max_skew`
  times the second-largest dimension, or fewer than `min_ndim` dimensions). A scalar is one size-1 dim."""
  max_size = MAX_SIZE_TRIANGULAR if max_size is None else max_size
  max_skew = MAX_SKEW_TRIANGULAR if max_skew is None else max_skew
  min_ndim = MIN_NDIM_TRIANGULAR if min_ndim is None else min_ndim
  shape = tuple(shape) or (1,)
  second = sorted(shape)[-2] if len(shape) > 1 else 1
  return tuple(not (d == 1 or d > max_size or d > max_skew * second or len(shape) < min_ndim) for d in shape)


def unpack_factors(packed, shape, max_size=None, max_skew=None, min_ndim=None) -> tuple:
  """A leaf's factors (Q_1, …, Q_k) from their packed vector; () for a zero-size leaf."""
  if math.prod(shape) == 0:
    return ()
  out, start = [], 0
  for d, tri in zip(tuple(shape) or (1,), factor_is_triangular(shape, max_size, max_skew, min_ndim)):
    n = d * d if tri else d
    out.append(packed[start:start + n].reshape((d, d) if tri else (d,)))
    start += n
  return tuple(out)


def _pack(factors, dtype):
  return jnp.concatenate([f.ravel() for f in factors]).astype(dtype) if factors else jnp.zeros(0, dtype)


def _compute_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _along(x, axis, fn):
  """fn applied to the mode-`axis` unfolding of x (d_axis × rest), folded back."""
  y = jnp.moveaxis(x, axis, 0)
  return jnp.moveaxis(fn(y.reshape(y.shape[0], -1)).reshape(y.shape), 0, axis)


def _apply(qs, x, mode):
  """Q x ("q"), Q^{-T} x ("inv_t") or QᵀQ x ("p"), Q = ⊗ Q_i acting on each axis of x."""
  for axis, q in enumerate(qs):
    if q.ndim == 1:
      scale = {"q": q, "inv_t": 1.0 / q, "p": q * q}[mode]
      fn = lambda m, s=scale: s[:, None] * m
    elif mode == "q":
      fn = lambda m, q=q: q @ m
    elif mode == "inv_t":
      fn = lambda m, q=q: jax.scipy.linalg.solve_triangular(q, m, trans="T", lower=False)
    else:
      fn = lambda m, q=q: q.T @ (q @ m)
    x = _along(x, axis, fn)
  return x


def _gram(x, axis, diagonal):
  """X_(axis) X_(axis)ᵀ of the mode-axis unfolding, or only its diagonal."""
  m = jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
  return jnp.sum(m * m, axis=1) if diagonal else m @ m.T


def _norm_lower_bound(s):
  """The reference's cheap lower bound on ‖S‖₂ of a symmetric S: ‖S x̂‖ with x = S c, c S's largest column."""
  max_abs = jnp.max(jnp.abs(s))
  safe = jnp.where(max_abs > 0, max_abs, 1.0)
  a = s / safe
  x = a @ a[:, jnp.argmax(jnp.sum(a * a, axis=0))]
  x = x / jnp.where(jnp.linalg.norm(x) > 0, jnp.linalg.norm(x), 1.0)
  return jnp.where(max_abs > 0, max_abs * jnp.linalg.norm(a @ x), 0.0)


def _fit(qs, h, v, lr):  # qs: the unpacked factors
  """One PSGD step on the factors for the pair (v, h): A = Q h, B = Q^{-T} v, per factor
  Q_i ← Q_i − lr / ‖A_(i)A_(i)ᵀ + B_(i)B_(i)ᵀ‖ · triu(A_(i)A_(i)ᵀ − B_(i)B_(i)ᵀ) Q_i, then balanced."""
  if not qs:
    return qs
  dtype = qs[0].dtype
  work = _compute_dtype(dtype)
  qs_w = [q.astype(work) for q in qs]
  h, v = h.astype(work).reshape([q.shape[0] for q in qs]), v.astype(work).reshape([q.shape[0] for q in qs])
  a, b = _apply(qs_w, h, "q"), _apply(qs_w, v, "inv_t")
  new = []
  for i, q in enumerate(qs_w):
    t1, t2 = _gram(a, i, q.ndim == 1), _gram(b, i, q.ndim == 1)
    if q.ndim == 1:
      new.append(q - lr / jnp.maximum(jnp.max(jnp.abs(t1 + t2)), 1e-30) * (t1 - t2) * q)
    else:
      new.append(q - lr / jnp.maximum(_norm_lower_bound(t1 + t2), 1e-30) * jnp.triu(t1 - t2) @ q)
  if len(new) > 1:  # equal max-abs across factors; their Kronecker product is unchanged
    norms = jnp.stack([jnp.max(jnp.abs(q)) for q in new])
    gmean = jnp.exp(jnp.mean(jnp.log(norms)))
    new = [q * (gmean / n) for q, n in zip(new, norms)]
  # A non-finite gradient, probe or curvature product leaves the factors as they were.
  ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(q)) for q in new]))
  return tuple(jnp.where(ok, q, old).astype(dtype) for q, old in zip(new, qs))


def _precondition(qs, g):
  if not qs:
    return g
  work = _compute_dtype(g.dtype)
  pg = _apply([q.astype(work) for q in qs], g.astype(work).reshape([q.shape[0] for q in qs]), "p")
  return pg.reshape(g.shape).astype(g.dtype)


def scale_by_psgd_kron(
    b1: float = 0.9,
    preconditioner_lr: float = 0.1,
    init_scale: float = 1.0,
    update_probability: Any = None,
    prob_max: float = 1.0,
    prob_min: float = 0.03,
    prob_decay: float = 0.001,
    prob_flat_start: float = 200.0,
    max_size_triangular: int | None = None,
    max_skew_triangular: float | None = None,
    min_ndim_triangular: int | None = None,
    preconditioner: str = "whitening",
    mu_dtype: Any = None,
    precond_dtype: Any = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """PSGD-Kron direction. `preconditioner="newton"` needs `obj_fn=` in `update`.

  Update rule, per leaf (Q = Q_1 ⊗ … ⊗ Q_k, one factor per axis, each upper-triangular or diagonal
  as `factor_is_triangular` says; Q_0 = init_scale^(1/k) I):
    m_t = β1 m_{t-1} + (1 − β1) g_t
    with probability p_t (`update_probability`, default `update_probability_schedule` of the
    prob_* arguments at t): draw v ~ N(0, I) and fit Q to the pair (v, h) by one normalised
    step (lr = preconditioner_lr) on E[hᵀ P h + vᵀ P⁻¹ v], P = QᵀQ:
      "whitening": h = m_t, so P → (E m mᵀ)^{-1/2};   "newton": h = H v (HVP of obj_fn), so P → H⁻¹
    d_t = P m_t, scaled to ‖d‖ ≤ √(#params) over the whole tree, then clipped to [−1, 1] entry-wise.
  The fit is skipped (factors unchanged) when it would produce a non-finite factor. Zero-size
  leaves have no factors and pass through. Factors take `precond_dtype` (default the params')
  and are computed in at least float32.

  References: Li, 2018, Preconditioned stochastic gradient descent (IEEE TNNLS, arXiv:1512.04202);
  Li, 2019, Preconditioner on matrix Lie group for SGD (ICLR, arXiv:1809.10232); the Kron
  preconditioner of github.com/lixilinx/psgd_torch and its JAX port github.com/evanatyourservice/kron_jax.
  """
  checks.check_decay("b1", b1)
  checks.check_positive("preconditioner_lr", preconditioner_lr)
  checks.check_positive("init_scale", init_scale)
  if update_probability is not None and not callable(update_probability):
    checks.check_in_range("update_probability", update_probability, 0.0, 1.0)
  checks.check_in_range("prob_max", prob_max, 0.0, 1.0)
  checks.check_in_range("prob_min", prob_min, 0.0, 1.0)
  checks.check_nonnegative("prob_decay", prob_decay)
  checks.check_nonnegative("prob_flat_start", prob_flat_start)
  for name, value in (("max_size_triangular", max_size_triangular), ("min_ndim_triangular", min_ndim_triangular)):
    if value is not None:
      checks.check_positive_int(name, value)
  if max_skew_triangular is not None:
    checks.check_in_range("max_skew_triangular", max_skew_triangular, 0.0, lower_open=True, allow_inf=True)
  checks.check_seed("seed", seed)
  checks.check_choice("preconditioner", preconditioner, PRECONDITIONERS)
  if update_probability is None:
    update_probability = update_probability_schedule(prob_max, prob_min, prob_decay, prob_flat_start)
  always = not callable(update_probability) and isinstance(update_probability, (int, float)) and update_probability == 1
  structure = dict(max_size=max_size_triangular, max_skew=max_skew_triangular, min_ndim=min_ndim_triangular)

  def init_leaf(p):
    dtype = precond_dtype or p.dtype
    if p.size == 0:
      return jnp.zeros(0, dtype)
    kinds = factor_is_triangular(p.shape, **structure)
    scale = init_scale ** (1.0 / len(kinds))
    return _pack([scale * (jnp.eye(d, dtype=dtype) if tri else jnp.ones(d, dtype)) for d, tri in
                  zip(p.shape or (1,), kinds)], dtype)

  def unpack(packed, like):
    return unpack_factors(packed, like.shape, **structure)

  def init_fn(params):
    mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype or p.dtype), params)
    qs = jax.tree.map(init_leaf, params)
    return ScaleByPsgdKronState(jnp.zeros([], jnp.int32), mu, qs, jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, *, obj_fn=None, **extra_args):
    del extra_args
    if preconditioner == "newton":
      checks.require_extra_arg("obj_fn", obj_fn, example="obj_fn=lambda p: loss(p, batch)")
    count = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    key, prob_key, probe_key = jax.random.split(state.key, 3)

    leaves, treedef = jax.tree.flatten(mu)

    def fit(qs):
      keys = jax.random.split(probe_key, max(len(leaves), 1))
      probes = [jax.random.normal(k, x.shape, _compute_dtype(x.dtype)) for k, x in zip(keys, leaves)]
      if preconditioner == "newton":
        probes = jax.tree.map(lambda v, p: v.astype(p.dtype), treedef.unflatten(probes), params)
        targets, probes = jax.tree.leaves(curvature.hvp(obj_fn, params, probes)), jax.tree.leaves(probes)
      else:
        targets = leaves
      fitted = [_pack(_fit(unpack(q, m), h, v, preconditioner_lr), q.dtype)
                for q, m, h, v in zip(jax.tree.leaves(qs), leaves, targets, probes)]
      return treedef.unflatten(fitted)

    if always:
      qs = fit(state.qs)
    else:
      p = update_probability(count) if callable(update_probability) else update_probability
      qs = curvature.loops.cond(jax.random.uniform(prob_key) < p, fit, lambda qs: qs, state.qs)  # conv-safe on CPU
    direction = treedef.unflatten([_precondition(unpack(q, m), m) for q, m in zip(jax.tree.leaves(qs), leaves)])
    max_norm = jnp.sqrt(float(sum(x.size for x in jax.tree.leaves(direction))))
    scale = max_norm / jnp.maximum(max_norm, optax.tree.norm(direction))
    direction = jax.tree.map(lambda d: jnp.clip(d * scale.astype(d.dtype), -1.0, 1.0), direction)
    mu = optax.tree.cast(mu, mu_dtype) if mu_dtype is not None else mu
    return direction, ScaleByPsgdKronState(count, mu, qs, key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("psgd_kron")
def psgd_kron(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    preconditioner_lr: float = 0.1,
    init_scale: float = 1.0,
    update_probability: Any = None,
    prob_max: float = 1.0,
    prob_min: float = 0.03,
    prob_decay: float = 0.001,
    prob_flat_start: float = 200.0,
    max_size_triangular: int | None = None,
    max_skew_triangular: float | None = None,
    min_ndim_triangular: int | None = None,
    preconditioner: str = "whitening",
    mu_dtype: Any = None,
    precond_dtype: Any = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """PSGD-Kron: p ← p − lr (d_t + λ p), d_t from `scale_by_psgd_kron` (λ = weight_decay, as the reference)."""
  return base.alias(
      scale_by_psgd_kron(b1, preconditioner_lr, init_scale, update_probability, prob_max, prob_min, prob_decay,
                         prob_flat_start, max_size_triangular, max_skew_triangular, min_ndim_triangular,
                         preconditioner, mu_dtype, precond_dtype, seed),
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      learning_rate=learning_rate,
  )
