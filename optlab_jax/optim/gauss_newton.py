"""Gauss-Newton (Levenberg-Marquardt) and natural gradient: CG on a damped GGN or Monte-Carlo Fisher.

Both curvature matrices are positive semi-definite, so (C + λI)⁻¹ g is always a descent
direction. Gauss-Newton can evaluate its objective (output_loss_fn ∘ model_fn), so it
adapts λ by the ratio test shared with Newton-CG; the natural gradient's Fisher samples
labels from the model and has no data loss to test against, so its λ is fixed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from optlab_jax import checks, curvature
from optlab_jax.optim import base
from optlab_jax.optim.conjugate_gradient import conjugate_gradient
from optlab_jax.optim.newton_cg import LevenbergMarquardtState, check_damped_solver, init_damping, levenberg_marquardt_step
from optlab_jax.optim.registry import register

__all__ = [
    "ScaleByNaturalGradientState",
    "scale_by_gauss_newton",
    "scale_by_natural_gradient",
    "gauss_newton",
    "natural_gradient",
]

_MODEL_FN_EXAMPLE = "model_fn=lambda p: model.apply(p, batch_x)"


class ScaleByNaturalGradientState(NamedTuple):
  """State of `scale_by_natural_gradient`."""
  key: jax.Array   # raw uint32 PRNG key for the next draw of labels from the model.


def scale_by_gauss_newton(
    damping: float = 1.0,
    max_cg_iters: int = 50,
    cg_tol: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
  """Levenberg-Marquardt direction d ≈ (G + λI)⁻¹ g by CG. Needs `model_fn=` and `output_loss_fn=`.

  G = Jᵀ H_out J (`curvature.ggn_fn`), J the Jacobian of model_fn at θ and H_out the
  Hessian of output_loss_fn at its outputs (for a sum of squared residuals, G = 2 JᵀJ).
  g is the incoming update. The step is `levenberg_marquardt_step` with C = G and
  f = output_loss_fn ∘ model_fn: λ = μ‖g‖, CG to the relative residual min(cg_tol, ‖g‖),
  and the ratio ρ of actual to predicted decrease rejects bad steps and adapts μ, so the
  fit converges from starts where the undamped Gauss-Newton step diverges. lr = 1 is the
  natural setting.

  References: Levenberg, 1944; Marquardt, 1963, An algorithm for least-squares estimation
  of nonlinear parameters; Nocedal & Wright, Numerical Optimization, 2nd ed., §10.3;
  Schraudolph, 2002, Fast curvature matrix-vector products for second-order gradient
  descent; Martens, 2010, Deep learning via Hessian-free optimization.
  """
  check_damped_solver(damping, max_cg_iters, cg_tol)

  def update_fn(updates, state, params=None, *, model_fn=None, output_loss_fn=None, **extra_args):
    del extra_args
    checks.require_extra_arg("model_fn", model_fn, example=_MODEL_FN_EXAMPLE)
    checks.require_extra_arg("output_loss_fn", output_loss_fn,
                           example="output_loss_fn=lambda out: loss(out, batch_y)")
    ggn = curvature.ggn_fn(model_fn, output_loss_fn, params)
    d, mu = levenberg_marquardt_step(lambda p: output_loss_fn(model_fn(p)), params, updates, ggn,
                                     state.damping, max_cg_iters=max_cg_iters, cg_tol=cg_tol)
    return d, LevenbergMarquardtState(mu)

  return optax.GradientTransformationExtraArgs(init_damping("gauss_newton", damping), update_fn)


def scale_by_natural_gradient(
    damping: float = 1.0,
    max_cg_iters: int = 50,
    cg_tol: float = 1e-10,
    likelihood: str = curvature.DEFAULT_LIKELIHOOD,
    num_samples: int | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """Natural-gradient direction d = (F̂ + λI)⁻¹ g by CG. Needs `model_fn=` in `update`.

  F̂ is the true Fisher of the model's predictive distribution p(y | f(θ)) (`likelihood`:
  "gaussian" N(f, I), or "categorical" softmax over the last axis; outputs carry a leading
  batch axis), estimated with `num_samples` (None: 1; static, it sets a shape) label draws
  per example from the model itself
  (`curvature.fisher_fn`), a fresh key each step; E[F̂] is the GGN of the mean negative
  log-likelihood. g is the incoming update, λ = `damping` is fixed, and CG runs to the
  relative residual `cg_tol` within `max_cg_iters` matvecs.

  References: Amari, 1998, Natural gradient works efficiently in learning; Martens, 2020,
  New insights and perspectives on the natural gradient method.
  """
  check_damped_solver(damping, max_cg_iters, cg_tol)
  num_samples = base.static_int("num_samples", num_samples, 1)
  curvature.check_likelihood(likelihood)
  checks.check_seed("seed", seed)

  def init_fn(params):
    base.check_real("natural_gradient", params)
    return ScaleByNaturalGradientState(jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, *, model_fn=None, **extra_args):
    del extra_args
    checks.require_extra_arg("model_fn", model_fn, example=_MODEL_FN_EXAMPLE)
    key, sample_key = jax.random.split(state.key)
    fisher = curvature.fisher_fn(model_fn, params, sample_key, likelihood=likelihood, num_samples=num_samples)
    d = conjugate_gradient(fisher, updates, max_iters=max_cg_iters, tol=cg_tol, damping=damping).x
    return d, ScaleByNaturalGradientState(key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("gauss_newton")
def gauss_newton(
    learning_rate: optax.ScalarOrSchedule,
    damping: float = 1.0,
    max_cg_iters: int = 50,
    cg_tol: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
  """Gauss-Newton (Levenberg-Marquardt): θ ← θ − lr · (G + λI)⁻¹ g (see `scale_by_gauss_newton`)."""
  return base.alias(scale_by_gauss_newton(damping, max_cg_iters, cg_tol), learning_rate=learning_rate)


@register("natural_gradient")
def natural_gradient(
    learning_rate: optax.ScalarOrSchedule,
    damping: float = 1.0,
    max_cg_iters: int = 50,
    cg_tol: float = 1e-10,
    likelihood: str = curvature.DEFAULT_LIKELIHOOD,
    num_samples: int | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """Natural gradient: θ ← θ − lr · (F̂ + λI)⁻¹ g (see `scale_by_natural_gradient`)."""
  return base.alias(
      scale_by_natural_gradient(damping, max_cg_iters, cg_tol, likelihood, num_samples, seed),
      learning_rate=learning_rate,
  )
