"""What the incoming updates mean, for every registry optimizer.

An optimizer either uses its incoming updates as the gradient (the default: whatever a clipping
or an accumulation before it made of the gradient is what it steps on), or re-evaluates the
gradient itself from `obj_fn` (SAM and ASAM: the incoming updates only set the direction of
the perturbation). The data tells the cases apart: gradient norms 100× and 10× above the
clip, and micro-batch gradients that point in different directions.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from optlab_jax import optim
from tests import optim_problems as P
from tests.test_optim_contract import COMBINATORS
from tests.test_optim_wrappers import MLP, THIN, data, extra_args, tuning

NAMES = optim.names()
F64 = jnp.float64
# The incoming updates set only the perturbation's direction; the gradient is re-evaluated.
REEVALUATES = {"sam", "asam"}
# The direction depends only on each step's signs, so a rescaling of every step changes nothing.
SIGN_ONLY = {"sign_sgd"}
# The first step is zero (SOAP only collects statistics then; ADOPT only initialises v = g²),
# so one accumulation cycle cannot tell the mean from the last micro-batch; the clipping
# test's second step can.
ZERO_FIRST_STEP = {"adopt", "soap", "delayed"}  # delayed: no gradient has arrived at the first step


def problem(num_batches=1):
  """The wrapper suite's MLP in float64: params and, per micro-batch, a function params -> extra args."""
  x, y = data(F64)
  graphdef, state = nnx.split(MLP(F64, nnx.Rngs(0)), nnx.Param)
  params = nnx.to_pure_dict(state)
  batches = [(x[i::num_batches], y[i::num_batches]) for i in range(num_batches)]
  return params, [lambda p, b=b: extra_args(graphdef, *b, p) for b in batches]


# Sophia-H's steps saturate at ±lr (sign descent) on this data unless γh exceeds |m̂|.
UNSATURATED = {"sophia_h": {"gamma": 50.0}}


def build(name):
  lr, kw = tuning(name)
  return optim.get(name)(lr, **{**kw, **UNSATURATED.get(name, {})})


# SOAP's eigenbases of its rank-deficient early factors are fixed only up to rotations within
# degenerate eigenspaces, so a rounding-level change of its input moves its second step by
# ~3e-6 (measured), while clipped and unclipped steps differ by 2e-2.
TOLERANCE = {"soap": (1e-4, 1e-4)}   # name -> (rtol, atol)


def close(a, b, name=None):
  rtol, atol = TOLERANCE.get(name, (1e-9, 1e-12))
  return all(np.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_scaled(tx, params, extra_fn, scales, clip=None):
  """Params after each step of `tx` fed s_t ∇f(θ_t) (rescaled to norm `clip` when given)."""
  state, trajectory = tx.init(params), []
  for s in scales:
    extra = extra_fn(params)
    g = jax.tree.map(lambda x: s * x, extra["grad"])
    if clip is not None:
      norm = optax.tree.norm(g)
      g = jax.tree.map(lambda x: jnp.where(norm < clip, x, x * (clip / norm)), g)
    updates, state = tx.update(g, state, params, **extra)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
  return trajectory


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in COMBINATORS else []) for n in NAMES])
def test_gradient_clipping_before_the_optimizer(name):
  params, (extra_fn,) = problem()
  clip = 0.1 * float(optax.tree.norm(extra_fn(params)["grad"]))
  scales = (100.0, 10.0)   # ‖g‖ 1000× and ~100× the clip

  @jax.jit
  def runs(params):
    chained = run_scaled(optax.chain(optax.clip_by_global_norm(clip), build(name)), params, extra_fn, scales)
    return chained, run_scaled(build(name), params, extra_fn, scales, clip), run_scaled(build(name), params, extra_fn, scales)

  chained, clipped, unclipped = runs(params)
  if name in REEVALUATES:
    # Documented: only the direction of g enters, so clipping before it changes nothing.
    assert close(chained, unclipped, name), f"{name}: clipping before it changed the update"
    return
  assert close(chained, clipped, name), f"{name}: chain(clip, {name}) is not {name} fed the clipped gradient"
  if name not in SIGN_ONLY:
    assert not close(clipped, unclipped, name), f"{name}: the data cannot tell clipped from unclipped"


# The thin optax entries' MultiSteps cells run under `-m slow`: the clipping test above already
# proves each takes the incoming updates as its gradient, which is all MultiSteps relies on.
@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in THIN else []) for n in NAMES])
def test_multisteps_uses_the_mean_micro_batch_gradient(name):
  params, extra_fns = problem(num_batches=3)

  @jax.jit
  def updates_of(params):
    extras = [f(params) for f in extra_fns]
    grads = [e["grad"] for e in extras]
    tx = optax.MultiSteps(build(name), every_k_schedule=3, accumulator_dtype=F64)
    state = tx.init(params)
    for g, extra in zip(grads, extras):
      updates, state = tx.update(g, state, params, **extra)
    mean = jax.tree.map(lambda *g: sum(g) / 3, *grads)
    # Documented: the functions (obj_fn, model_fn, value_fn) are the last micro-batch's.
    expected, _ = build(name).update(mean, build(name).init(params), params, **extras[2])
    last, _ = build(name).update(grads[2], build(name).init(params), params, **extras[2])
    cosine = optax.tree.vdot(grads[0], grads[2]) / (optax.tree.norm(grads[0]) * optax.tree.norm(grads[2]))
    return updates, expected, last, cosine

  updates, expected, last, cosine = updates_of(params)
  assert cosine < 0.9, "micro-batch gradients must differ in direction"
  assert close(updates, expected, name), f"MultiSteps({name}) did not step on the mean micro-batch gradient"
  if name not in ZERO_FIRST_STEP:
    assert not close(expected, last, name), f"{name}: the data cannot tell the mean from the last micro-batch"


def test_sam_under_multisteps_perturbs_along_the_mean_and_steps_on_the_last_batch():
  params, extra_fns = problem(num_batches=3)
  extras = [f(params) for f in extra_fns]
  rho, lr = 0.05, 0.5
  tx = optax.MultiSteps(optim.sam(lr, rho=rho), every_k_schedule=3, accumulator_dtype=F64)
  state = tx.init(params)
  for extra in extras:
    updates, state = tx.update(extra["grad"], state, params, **extra)
  flat, unravel = ravel_pytree(params)
  mean = sum(ravel_pytree(e["grad"])[0] for e in extras) / 3
  last_obj = lambda v: extras[2]["obj_fn"](unravel(v))
  want = -lr * jax.grad(last_obj)(flat + rho * mean / jnp.linalg.norm(mean))
  np.testing.assert_allclose(ravel_pytree(updates)[0], want, rtol=1e-10)


def test_newton_cg_solves_with_the_clipped_gradient_as_right_hand_side():
  problem_ = P.quadratic(F64)
  flat, unravel = ravel_pytree(problem_.params)
  a = jax.hessian(lambda v: problem_.obj_fn(unravel(v)))(flat)
  g = a @ flat
  clip, mu = 0.01 * float(jnp.linalg.norm(g)), 0.5
  tx = optax.chain(optax.clip_by_global_norm(clip), optim.scale_by_newton_cg(mu, max_cg_iters=100, cg_tol=1e-14))
  d, _ = tx.update(unravel(g), tx.init(problem_.params), problem_.params, obj_fn=problem_.obj_fn)
  g_clipped = g * clip / jnp.linalg.norm(g)
  want = np.linalg.solve(a + mu * clip * np.eye(flat.size), g_clipped)
  np.testing.assert_allclose(ravel_pytree(d)[0], want, rtol=1e-8)


def test_newton_cg_without_updates_uses_the_gradient_of_obj_fn():
  problem_ = P.quadratic(F64)
  tx = optim.scale_by_newton_cg(0.5, max_cg_iters=100, cg_tol=1e-14)
  grad = jax.grad(problem_.obj_fn)(problem_.params)
  with_none, _ = tx.update(None, tx.init(problem_.params), problem_.params, obj_fn=problem_.obj_fn)
  with_grad, _ = tx.update(grad, tx.init(problem_.params), problem_.params, obj_fn=problem_.obj_fn)
  chex.assert_trees_all_close(with_none, with_grad, rtol=1e-12)
