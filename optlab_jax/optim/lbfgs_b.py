"""L-BFGS-B: limited-memory BFGS on box constraints, as a two-metric projected quasi-Newton method.

Simplification of Byrd et al. (1995), which finds the generalised Cauchy point of the full
limited-memory model along the projected-gradient path and then minimises that model over
the variables still free there (a 2m × 2m compact-form solve). Here the Cauchy point is
that of the seed model B₀ = I/γ, which is P(θ − γ g) in closed form: the variables it puts
on a bound form the active set and take that projected-gradient step; the free ones take
the two-loop L-BFGS direction built from the pairs restricted to the free set (so once the
active set is identified, this is L-BFGS on the face, with its superlinear rate). An Armijo
search along the projection arc θ(t) = P(θ − t·lr·d) keeps every iterate feasible and f
monotone (Bertsekas's two-metric projection method with a quasi-Newton metric)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks
from optlab_jax.optim import base
from optlab_jax.optim.conjugate_gradient import axpy
from optlab_jax.optim.registry import register

__all__ = ["ScaleByLbfgsBState", "scale_by_lbfgs_b", "scale_by_projected_backtracking", "lbfgs_b"]

Bound = Any  # None (unbounded), a number, or a tree shaped like params (leaves broadcast to each leaf).


class ScaleByLbfgsBState(NamedTuple):
  """State of `scale_by_lbfgs_b`."""
  count: jax.Array      # int32: updates so far; the newest pair sits in row (count − 1) mod memory_size.
  params: optax.Params  # θ_{k−1}, for s = θ_k − θ_{k−1}.
  grad: optax.Updates   # g_{k−1}, for y = g_k − g_{k−1}.
  s: optax.Updates      # the last memory_size steps s_i, each leaf with a leading axis of size memory_size.
  y: optax.Updates      # the matching gradient changes y_i, same layout.


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _as_tree(bound: Bound, params: Any, fill: float) -> Any:
  """`bound` as a tree shaped like params, each leaf in its param's dtype (masked leaves kept)."""
  bound = fill if bound is None else bound
  if jax.tree_util.treedef_is_leaf(jax.tree.structure(bound)) and jnp.ndim(bound) == 0:
    return jax.tree.map(lambda x: x if _is_masked(x) else jnp.full_like(x, bound), params, is_leaf=_is_masked)
  # full_like + b: each bound leaf takes its param's sharding (a replicated bound beside a sharded
  # param is a type error under sharding-in-types).
  return jax.tree.map(lambda x, b: x if _is_masked(x) else jnp.full_like(x, 0) + jnp.asarray(b, x.dtype),
                      params, bound, is_leaf=_is_masked)


def _project(params: Any, lower: Any, upper: Any) -> Any:
  return jax.tree.map(jnp.clip, params, lower, upper)


def _step_into_box(params: Any, new: Any, lower: Any, upper: Any) -> Any:
  """new − θ, one ulp closer to θ where θ + (new − θ) would round out of the box.

  s = fl(new − θ) errs by at most ulp(s)/2, so θ + s exceeds new by at most that much and
  θ + nextafter(s) lands on the inner side of new: one correction suffices.
  """
  def leaf(x, n, lo, hi):
    s = n - x
    z = x + s
    s = jnp.where(z > hi, jnp.nextafter(s, jnp.full_like(s, -jnp.inf)), s)
    return jnp.where(z < lo, jnp.nextafter(s, jnp.full_like(s, jnp.inf)), s)
  return jax.tree.map(leaf, params, new, lower, upper)


def _rows_dot(a: Any, b: Any) -> jax.Array:
  """(⟨a_i, b_i⟩)_i for two stacks of vectors: shape (memory_size,)."""
  return sum(jnp.sum(x * y, axis=tuple(range(1, x.ndim))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _row(stack: Any, i: jax.Array) -> Any:
  return jax.tree.map(lambda x: x[i], stack)


def _positive_curvature(sy: jax.Array, yy: jax.Array) -> jax.Array:
  """Rows whose pair may enter BFGS: s_iᵀy_i > eps·y_iᵀy_i (the skip rule of L-BFGS-B)."""
  return (sy > jnp.finfo(sy.dtype).eps * yy) & (yy > 0)


def _inverse_curvatures(s: Any, y: Any) -> jax.Array:
  """ρ_i = 1/(s_iᵀy_i) per memory row, 0 for rows without positive curvature."""
  sy, yy = _rows_dot(s, y), _rows_dot(y, y)
  valid = _positive_curvature(sy, yy)
  return jnp.where(valid, 1.0 / jnp.where(valid, sy, 1.0), 0.0)


def _seed_scale(s: Any, y: Any, order: jax.Array, projected_grad_norm: jax.Array) -> jax.Array:
  """γ = sᵀy/yᵀy of the newest row (`order`: newest first) with positive curvature, else 1/‖θ − P(θ − g)‖."""
  sy, yy = _rows_dot(s, y)[order], _rows_dot(y, y)[order]
  valid = _positive_curvature(sy, yy)
  k = jnp.argmax(valid)
  fallback = 1.0 / jnp.where(projected_grad_norm > 0, projected_grad_norm, 1.0)
  return jnp.where(valid[k], sy[k] / jnp.where(valid[k], yy[k], 1.0), fallback)


def _two_loop(grad: Any, s: Any, y: Any, rho: jax.Array, gamma: jax.Array, order: jax.Array) -> Any:
  """H g by the L-BFGS two-loop recursion; `order` lists memory rows newest first, ρ_i = 0 skips row i."""

  def backward(q, i):
    alpha = rho[i] * optax.tree.vdot(_row(s, i), q)
    return axpy(-alpha, _row(y, i), q), alpha

  q, alphas = jax.lax.scan(backward, grad, order)

  def forward(r, i_alpha):
    i, alpha = i_alpha
    beta = rho[i] * optax.tree.vdot(_row(y, i), r)
    return axpy(alpha - beta, _row(s, i), r), None

  r, _ = jax.lax.scan(forward, jax.tree.map(lambda x: gamma.astype(x.dtype) * x, q), (order[::-1], alphas[::-1]))
  return r


def scale_by_lbfgs_b(lower: Bound = None, upper: Bound = None,
                     memory_size: int | None = None) -> optax.GradientTransformation:
  """Projected L-BFGS direction d on the box lower ≤ θ ≤ upper (see the module docstring).

  g is the incoming update (as clipped or accumulated by the transforms before this one) and
  `memory_size` (None: 10) is static, since it sets the memory's shape. With H₀ = γI, γ = sᵀy / yᵀy of the newest stored pair with
  sᵀy > eps·yᵀy (γ = 1/‖θ − P(θ − g)‖ before there is one: a unit first step, as in
  L-BFGS-B), the active set A holds the variables at a bound in the Cauchy point P(θ − γg)
  of the model with B₀ = I/γ (the model's minimiser along the projected-gradient path),
  F the rest:
    d_F = H_F g_F,   d_A = γ g_A   (so the step θ − d puts A on its bounds),
  H_F the two-loop recursion over the stored pairs restricted to F (pairs with
  s_Fᵀy_F ≤ eps·y_Fᵀy_F skipped). Free variables at a bound whose d_i points out of the box
  get d_i = 0, and if that left g_Fᵀd_F ≤ 0, d_F = γ g_F; so −d is a descent direction
  along the projection arc.

  References: Byrd, Lu, Nocedal & Zhu, 1995, A limited memory algorithm for bound
  constrained optimization; Bertsekas, 1982, Projected Newton methods for optimization
  problems with simple constraints; Nocedal, 1980, Updating quasi-Newton matrices with
  limited storage.
  """
  memory_size = base.static_int("memory_size", memory_size, 10)

  def init_fn(params):
    base.check_real("lbfgs_b", params)
    stack = base.stacked_zeros(memory_size, params)
    return ScaleByLbfgsBState(jnp.zeros([], jnp.int32), params, optax.tree.zeros_like(params), stack, stack)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    grad = updates
    lo, hi = _as_tree(lower, params, -jnp.inf), _as_tree(upper, params, jnp.inf)
    row = state.count % memory_size
    # The pair of the previous step (s = 0 at the first call, so it is never used).
    s = jax.tree.map(lambda m, x, x0: m.at[row].set(x - x0), state.s, params, state.params)
    y = jax.tree.map(lambda m, g, g0: m.at[row].set(g - g0), state.y, grad, state.grad)

    # H₀ = γI from the newest pair with positive curvature (a unit step before there is one).
    order = (row - jnp.arange(memory_size)) % memory_size
    gamma = _seed_scale(s, y, order, optax.tree.norm(optax.tree.sub(params, _project(optax.tree.sub(params, grad), lo, hi))))
    # Active: at a bound in the Cauchy point P(θ − γ g) of the model with B₀ = I/γ.
    active = jax.tree.map(lambda x, g, l, u: (x - gamma * g <= l) | (x - gamma * g >= u), params, grad, lo, hi)
    free = lambda v: jax.tree.map(lambda a, x: jnp.where(a, jnp.zeros_like(x), x), active, v)
    free_rows = lambda stack: jax.tree.map(lambda a, x: jnp.where(a[None], jnp.zeros_like(x), x), active, stack)
    s_f, y_f = free_rows(s), free_rows(y)
    rho = _inverse_curvatures(s_f, y_f)
    d_free = _two_loop(free(grad), s_f, y_f, rho, gamma, order)
    outward = jax.tree.map(lambda x, d, l, u: ((x <= l) & (d > 0)) | ((x >= u) & (d < 0)), params, d_free, lo, hi)
    d_free = jax.tree.map(lambda o, d: jnp.where(o, jnp.zeros_like(d), d), outward, d_free)
    descent = optax.tree.vdot(grad, d_free) > 0
    d_free = jax.tree.map(lambda d, g: jnp.where(descent, d, gamma * g), d_free, free(grad))
    direction = jax.tree.map(lambda a, d, g: jnp.where(a, gamma * g, d).astype(g.dtype), active, d_free, grad)
    return direction, ScaleByLbfgsBState(state.count + 1, params, grad, s, y)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_projected_backtracking(
    lower: Bound = None,
    upper: Bound = None,
    max_backtracking_steps: int = 20,
    slope_rtol: float = 1e-4,
    decrease_factor: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
  """Armijo backtracking along the projection arc. Needs `value=`, `grad=`, `value_fn=`.

  For the incoming update u, θ(t) = P(θ + t u) with P the projection onto the box, and the
  returned update is θ(t) − θ for the first t in 1, β, β², … (β = decrease_factor, at most
  `max_backtracking_steps` reductions) with
    f(θ(t)) ≤ f(θ) + slope_rtol · gᵀ(θ(t) − θ).
  If none passes (for a descent direction, only once the decrease is below the rounding of
  f) the update is P(θ) − θ: zero from a feasible θ, so f never increases. θ(t) is in the
  box whatever t, so every iterate is feasible (θ₀ included after one step).

  References: Bertsekas, 1976, On the Goldstein-Levitin-Polyak gradient projection method;
  Nocedal & Wright, Numerical Optimization, 2nd ed., §16.7.
  """
  checks.check_positive_int("max_backtracking_steps", max_backtracking_steps)
  checks.check_in_range("slope_rtol", slope_rtol, 0.0, 1.0, upper_open=True)
  checks.check_in_range("decrease_factor", decrease_factor, 0.0, 1.0, lower_open=True, upper_open=True)

  def update_fn(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args):
    del extra_args
    checks.require_extra_arg("value", value, example="value=loss, grad=grads, value_fn=lambda p: loss(p, batch)")
    checks.require_extra_arg("grad", grad, example="value=loss, grad=grads")
    checks.require_extra_arg("value_fn", value_fn, example="value_fn=lambda p: loss(p, batch)")
    grad = base.like_params(grad, params)
    lo, hi = _as_tree(lower, params, -jnp.inf), _as_tree(upper, params, jnp.inf)
    dtype = jnp.result_type(value)
    step_at = lambda t: _step_into_box(params, _project(axpy(t, updates, params), lo, hi), lo, hi)

    def sufficient(t):
      step = step_at(t)
      bound = value + slope_rtol * optax.tree.vdot(grad, step)
      return value_fn(optax.tree.add(params, step)) <= bound

    def body(carry):
      i, t, _ = carry
      t = (t * decrease_factor).astype(dtype)
      return i + 1, t, sufficient(t)

    one = jnp.ones([], dtype)
    _, t, passed = jax.lax.while_loop(lambda c: ~c[2] & (c[0] < max_backtracking_steps), body,
                                      (jnp.zeros([], jnp.int32), one, sufficient(one)))
    return step_at(jnp.where(passed, t, jnp.zeros_like(t))), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@register("lbfgs_b")
def lbfgs_b(
    learning_rate: optax.ScalarOrSchedule,
    lower: Bound = None,
    upper: Bound = None,
    memory_size: int | None = None,
    max_backtracking_steps: int = 20,
    slope_rtol: float = 1e-4,
    decrease_factor: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
  """L-BFGS-B: θ ← P(θ − t · lr · d), d from `scale_by_lbfgs_b`, t by `scale_by_projected_backtracking`.

  Takes `value=`, `grad=` and `value_fn=` in `update`, as `optax.lbfgs`; lr = 1 is the
  natural setting. The direction uses the incoming updates; the search evaluates f through
  `value_fn` and its slope from `grad=`. Integer leaves of params are left untouched.
  """
  checks.check_learning_rate(learning_rate)
  return base.integer_leaves_untouched(optax.chain(
      scale_by_lbfgs_b(lower, upper, memory_size),
      optax.scale_by_learning_rate(learning_rate),
      scale_by_projected_backtracking(lower, upper, max_backtracking_steps, slope_rtol, decrease_factor),
  ))
