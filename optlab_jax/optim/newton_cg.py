"""Newton-CG: damped Newton steps from truncated CG on Hessian-vector products, LM-adapted damping.

`levenberg_marquardt_step` (damped truncated CG plus the ratio test) is shared with Gauss-Newton.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks, curvature
from optlab_jax.optim import base
from optlab_jax.optim.conjugate_gradient import conjugate_gradient
from optlab_jax.optim.registry import register

__all__ = ["LevenbergMarquardtState", "levenberg_marquardt_step", "scale_by_newton_cg", "newton_cg"]

# Ratio thresholds of the damping rule (Moré, 1978): below _ACCEPT the step is rejected,
# below _LOW the model was too optimistic (more damping), above _HIGH it was good (less).
_ACCEPT, _LOW, _HIGH = 1e-4, 0.25, 0.75
_GROW, _SHRINK = 4.0, 0.5
# Below this many ulps of |f| the measured decrease f(θ) − f(θ − d) is rounding noise; the
# quadratic model is then trusted (ρ = 1), so convergence does not stall at ~√eps.
_NOISE_ULPS = 1e3


class LevenbergMarquardtState(NamedTuple):
  """State of `scale_by_newton_cg` and `scale_by_gauss_newton` (`levenberg_marquardt_step`)."""
  damping: jax.Array   # μ, a scalar in the params' dtype: the damping is λ = μ‖g‖, adapted from ρ.


def init_damping(name: str, damping: Any) -> Callable[[Any], LevenbergMarquardtState]:
  """The init of a `levenberg_marquardt_step` transform: μ = `damping` in the params' dtype."""

  def init_fn(params):
    base.check_real(name, params)
    return LevenbergMarquardtState(jnp.asarray(damping, base.params_dtype(params)))

  return init_fn


def check_damped_solver(damping: Any, max_cg_iters: Any, cg_tol: Any) -> None:
  """`ValueError` unless damping > 0, max_cg_iters is an integer ≥ 1 and cg_tol ∈ [0, 1]."""
  checks.check_positive("damping", damping)
  checks.check_positive_int("max_cg_iters", max_cg_iters)
  checks.check_in_range("cg_tol", cg_tol, 0.0, 1.0)


def levenberg_marquardt_step(
    obj_fn: Callable[[Any], jax.Array],
    params: Any,
    grad: Any,
    matvec: Callable[[Any], Any],
    damping: jax.Array,
    *,
    max_cg_iters: Any,
    cg_tol: Any,
) -> tuple[Any, jax.Array]:
  """One step on the model m(d) = f − gᵀd + ½ dᵀC d, C the symmetric `matvec`, damped and tested.

  With λ = μ‖g‖ (μ = `damping`), truncated CG solves (C + λI) d = g to the relative
  residual η = min(cg_tol, ‖g‖) within `max_cg_iters` matvecs, inside the ball
  ‖d‖ ≤ 1/μ = ‖g‖/λ (a bound no solution exceeds when C ⪰ 0); on negative curvature it
  follows that direction to the boundary (Steihaug), so d always lowers the model. With
  pred = gᵀd − ½ dᵀC d (C d read off the CG residual) and ρ = (f(θ) − f(θ − d)) / pred:
    ρ < 1e-4: the step is rejected (d = 0);    ρ < 1/4: μ ← 4μ;    ρ > 3/4: μ ← μ/2.
  Returns (d, next μ), μ kept in [eps, 1/eps] of its dtype.
  """
  dtype = damping.dtype
  grad_norm = optax.tree.norm(grad).astype(dtype)
  lam = damping * grad_norm
  solve = conjugate_gradient(matvec, grad, max_iters=max_cg_iters, damping=lam, radius=1.0 / damping,
                             tol=jnp.minimum(jnp.asarray(cg_tol, dtype), grad_norm))
  d = solve.x
  # C d = (g − r) − λ d, so gᵀd − ½ dᵀC d = ½ (gᵀd + dᵀr + λ‖d‖²).
  g_d, d_r, d_d = (optax.tree.vdot(a, b).astype(dtype) for a, b in ((grad, d), (d, solve.residual), (d, d)))
  predicted = 0.5 * (g_d + d_r + lam * d_d)
  value = obj_fn(params).astype(dtype)
  rho = (value - obj_fn(optax.tree.sub(params, d)).astype(dtype)) / predicted
  rho = jnp.where(predicted <= _NOISE_ULPS * jnp.finfo(dtype).eps * jnp.abs(value), jnp.ones_like(rho), rho)
  rho = jnp.where(jnp.isnan(rho), -jnp.inf, rho)   # an overflowing trial point is a failure
  mu = jnp.where(rho < _LOW, damping * _GROW, jnp.where(rho > _HIGH, damping * _SHRINK, damping))
  eps = jnp.finfo(dtype).eps
  accept = rho > _ACCEPT
  return jax.tree.map(lambda x: jnp.where(accept, x, jnp.zeros_like(x)), d), jnp.clip(mu, eps, 1.0 / eps).astype(dtype)


def scale_by_newton_cg(
    damping: float = 1.0,
    max_cg_iters: int = 50,
    cg_tol: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
  """Damped Newton direction d ≈ (H + λI)⁻¹ g by truncated CG. Needs `obj_fn=` in `update`.

  g is the incoming update (the gradient, as clipped or accumulated by the transforms
  before this one); v ↦ H v is the HVP of `obj_fn` at θ (`curvature.hvp_fn`), and the ratio
  test evaluates `obj_fn`. Under `optax.MultiSteps` g is the mean micro-batch gradient while
  H and f are the last micro-batch's. `updates=None` takes g = ∇f from the HVPs' own
  linearisation, for a standalone solver. The step is `levenberg_marquardt_step` with
  C = H: λ = μ‖g‖ (Yamashita & Fukushima; Fan & Yuan), CG to the relative residual min(cg_tol, ‖g‖) inside the ball
  ‖d‖ ≤ 1/μ; if CG meets negative curvature (pᵀ(H + λI)p ≤ 0, near a saddle) it follows
  that direction to the ball's boundary (Steihaug), so −d is never uphill; the ratio ρ of
  actual to predicted decrease rejects bad steps and adapts μ (×4 below 1/4, ×½ above 3/4).
  λ → 0 as ‖g‖ → 0 and the CG tolerance ≤ ‖g‖, so convergence is quadratic near a strict
  minimum. The ratio is that of the full step −d, so `learning_rate = 1` is the natural setting.

  References: Nocedal & Wright, Numerical Optimization, 2nd ed., §7.1 (Newton-CG) and
  Algorithm 7.2 (Steihaug); Moré, 1978, The Levenberg-Marquardt algorithm: implementation
  and theory; Martens, 2010, Deep learning via Hessian-free optimization; Fan & Yuan, 2005,
  On the quadratic convergence of the Levenberg-Marquardt method without nonsingularity.
  """
  check_damped_solver(damping, max_cg_iters, cg_tol)

  def update_fn(updates, state, params=None, *, obj_fn=None, **extra_args):
    del extra_args
    checks.require_extra_arg("obj_fn", obj_fn, example="obj_fn=lambda p: loss(p, batch)")
    if updates is None:
      updates, hess = curvature.hvp_fn(obj_fn, params, return_grad=True)
    else:
      hess = curvature.hvp_fn(obj_fn, params)
    d, mu = levenberg_marquardt_step(obj_fn, params, updates, hess, state.damping,
                                     max_cg_iters=max_cg_iters, cg_tol=cg_tol)
    return d, LevenbergMarquardtState(mu)

  return optax.GradientTransformationExtraArgs(init_damping("newton_cg", damping), update_fn)


@register("newton_cg")
def newton_cg(
    learning_rate: optax.ScalarOrSchedule,
    damping: float = 1.0,
    max_cg_iters: int = 50,
    cg_tol: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
  """Newton-CG: θ ← θ − lr · d with d from `scale_by_newton_cg` (lr = 1: a damped Newton step)."""
  return base.alias(scale_by_newton_cg(damping, max_cg_iters, cg_tol), learning_rate=learning_rate)
