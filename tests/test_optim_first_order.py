"""The first-order family against optax's aliases and, where optax has none or ours differs
on purpose, against the update rule computed step by step in numpy.

Each optax comparison runs 20 float64 steps of ours and of optax's alias, with matched
non-default hyperparameters (so a mis-wired argument shows), on the rotated quadratic of
condition 100, and asks for the whole parameter trajectory to agree to 1e-10 relative.
"""

from __future__ import annotations

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import optim
from tests import optim_problems as P

STEPS = 20
MASK = {"a": True, "b": {"c": False}}           # for the quadratic's two leaves
NOT_MASK = {"a": False, "b": {"c": True}}

# id -> (ours, optax's), built lazily so that a construction error fails one case only.
CASES = {
    "sgd": lambda: (optim.sgd(0.01), optax.sgd(0.01)),
    "sgd_momentum": lambda: (optim.sgd(0.01, momentum=0.8), optax.sgd(0.01, momentum=0.8)),
    "sgd_nesterov": lambda: (optim.sgd(0.01, 0.8, nesterov=True), optax.sgd(0.01, 0.8, nesterov=True)),
    "adagrad": lambda: (optim.adagrad(0.3, 0.2, 1e-6), optax.adagrad(0.3, 0.2, 1e-6)),
    "adadelta": lambda: (
        optim.adadelta(0.5, rho=0.8, eps=1e-5, weight_decay=0.01, weight_decay_mask=MASK),
        optax.adadelta(0.5, rho=0.8, eps=1e-5, weight_decay=0.01, weight_decay_mask=MASK),
    ),
    "rmsprop": lambda: (optim.rmsprop(3e-3, 0.95, 1e-6, 0.1), optax.rmsprop(3e-3, 0.95, 1e-6, 0.1)),
    "rmsprop_centered": lambda: (
        optim.rmsprop(3e-3, 0.95, centered=True, bias_correction=True),
        optax.rmsprop(3e-3, 0.95, centered=True, bias_correction=True),
    ),
    "rmsprop_momentum": lambda: (
        optim.rmsprop(3e-3, eps=1e-4, eps_in_sqrt=False, momentum=0.8),
        optax.rmsprop(3e-3, eps=1e-4, eps_in_sqrt=False, momentum=0.8),
    ),
    "rmsprop_centered_nesterov": lambda: (
        optim.rmsprop(3e-3, centered=True, momentum=0.8, nesterov=True),
        optax.rmsprop(3e-3, centered=True, momentum=0.8, nesterov=True),
    ),
    "adam": lambda: (optim.adam(0.05, 0.8, 0.99, 1e-6, 1e-9), optax.adam(0.05, 0.8, 0.99, 1e-6, 1e-9)),
    "amsgrad": lambda: (optim.amsgrad(0.05, 0.8, 0.99, 1e-6), optax.amsgrad(0.05, 0.8, 0.99, 1e-6)),
    "amsgrad_uncorrected": lambda: (
        optim.amsgrad(0.05, bias_correction_mu=False, bias_correction_nu=False),
        optax.amsgrad(0.05, bias_correction_mu=False, bias_correction_nu=False),
    ),
    "adamw": lambda: (
        optim.adamw(0.05, 0.8, 0.99, weight_decay=0.1, weight_decay_mask=MASK),
        optax.adamw(0.05, 0.8, 0.99, weight_decay=0.1, mask=MASK),
    ),
    "nadam": lambda: (optim.nadam(0.05, 0.8, 0.99), optax.nadam(0.05, 0.8, 0.99)),
    "radam": lambda: (
        optim.radam(0.02, 0.8, 0.99, threshold=4.0), optax.radam(0.02, 0.8, 0.99, threshold=4.0)
    ),
    "lars": lambda: (
        optim.lars(1.0, 0.01, MASK, 0.002, 1e-9, NOT_MASK, momentum=0.8),
        optax.lars(1.0, 0.01, MASK, 0.002, 1e-9, NOT_MASK, momentum=0.8),
    ),
    "lars_nesterov": lambda: (optim.lars(1.0, nesterov=True), optax.lars(1.0, nesterov=True)),
    "lamb": lambda: (
        optim.lamb(0.05, 0.8, 0.99, 1e-5, weight_decay=0.01, weight_decay_mask=MASK),
        optax.lamb(0.05, 0.8, 0.99, 1e-5, weight_decay=0.01, mask=MASK),
    ),
    "novograd": lambda: (optim.novograd(1e-3, 0.8, 0.5, 1e-5, weight_decay=0.01),
                         optax.novograd(1e-3, 0.8, 0.5, 1e-5, weight_decay=0.01)),
}


def trajectory(tx, problem: P.Problem, steps: int = STEPS) -> jax.Array:
  """Flat params after each of `steps` full-batch updates of `tx`, shape (steps, dim)."""

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(problem.obj_fn)(params), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), ravel_pytree(params)[0]

  run = jax.jit(lambda c: jax.lax.scan(step, c, length=steps)[1])
  return run((problem.params, tx.init(problem.params)))


def max_relative_error(got, want) -> float:
  """max_t ‖got_t − want_t‖ / ‖want_t‖ over the rows of two trajectories."""
  got, want = np.asarray(got), np.asarray(want)
  return float(np.max(np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_optax_alias_for_20_steps(case):
  ours, theirs = CASES[case]()
  problem = P.quadratic(jnp.float64)
  want = trajectory(theirs, problem)
  assert max_relative_error(trajectory(ours, problem), want) <= 1e-10
  # The run moved (so the agreement is not the trivial one of two idle optimizers).
  assert np.linalg.norm(want[-1] - ravel_pytree(problem.params)[0]) > 1e-3


# Documented deliberate differences: optax name -> ours, and defaults that differ.
RENAMED = {"mask": "weight_decay_mask"}
DIFFERENT_DEFAULTS = {("adadelta", "learning_rate"): (None, 1.0)}
NADAM_IS_ALWAYS_NESTEROV = {("nadam", "nesterov")}


@pytest.mark.parametrize(
    "name", ["sgd", "adagrad", "adadelta", "rmsprop", "adam", "amsgrad", "adamw", "nadam", "radam",
             "lars", "lamb", "novograd"]
)
def test_hyperparameter_names_and_defaults_match_optax(name):
  ours = inspect.signature(optim.get(name)).parameters
  for key, param in inspect.signature(getattr(optax, name)).parameters.items():
    if (name, key) in NADAM_IS_ALWAYS_NESTEROV:
      continue
    mine = ours[RENAMED.get(key, key)]
    want = DIFFERENT_DEFAULTS.get((name, key), (param.default, param.default))[1]
    assert mine.default == want, f"{name}: {key}={mine.default!r}, optax's {param.default!r}"
    assert mine.kind == param.kind, f"{name}: {key} is {mine.kind.name}, optax's is {param.kind.name}"


def test_adadelta_default_learning_rate_is_one_and_descends():
  problem = P.quadratic(jnp.float64)
  ours = trajectory(optim.adadelta(), problem)
  assert max_relative_error(ours, trajectory(optax.adadelta(1.0), problem)) <= 1e-10
  # optax's default (learning_rate=None) skips the sign flip: its first step is our negative.
  grads = jax.grad(problem.obj_fn)(problem.params)
  u_ours, _ = optim.adadelta().update(grads, optim.adadelta().init(problem.params), problem.params)
  u_optax, _ = optax.adadelta().update(grads, optax.adadelta().init(problem.params), problem.params)
  chex.assert_trees_all_close(u_optax, jax.tree.map(jnp.negative, u_ours), rtol=1e-12)
  assert problem.obj_fn(optax.apply_updates(problem.params, u_ours)) < problem.obj_fn(problem.params)


# --- Learning rate outside (ours) or inside (optax) the momentum trace, under a schedule. ---

def _rmsprop_direction(g, w, state):
  """RMSProp's s_t for decay 0.9, eps 1e-8 (eps inside the root), per leaf."""
  v = state.get("v", np.zeros_like(g)) * 0.9 + 0.1 * g * g
  state["v"] = v
  return g / np.sqrt(v + 1e-8)


def _lars_direction(g, w, state):
  """LARS's s_t for weight decay 0.01 and trust coefficient 0.002, per leaf."""
  g = g + 0.01 * w
  return 0.002 * np.linalg.norm(w) / np.linalg.norm(g) * g


MOMENTUM_CASES = {
    "rmsprop": (lambda lr: optim.rmsprop(lr, momentum=0.8), lambda lr: optax.rmsprop(lr, momentum=0.8),
                _rmsprop_direction),
    "lars": (lambda lr: optim.lars(lr, 0.01, trust_coefficient=0.002, momentum=0.8),
             lambda lr: optax.lars(lr, 0.01, trust_coefficient=0.002, momentum=0.8), _lars_direction),
}


@pytest.mark.parametrize("name", sorted(MOMENTUM_CASES))
def test_momentum_learning_rate_order_under_a_schedule(name):
  """Ours: u_t = −lr_t m_t with m_t = β m_{t-1} + s_t; optax: u_t = β u_{t-1} − lr_t s_t."""
  ours_fn, optax_fn, direction = MOMENTUM_CASES[name]
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=5), "v": rng.normal(size=3)}
  grads = [{k: rng.normal(size=x.shape) for k, x in params.items()} for _ in range(4)]
  schedule = optax.linear_schedule(0.5, 0.1, 3)
  lrs = [float(schedule(jnp.asarray(t, jnp.int32))) for t in range(4)]  # as the transform's int32 count
  jparams = jax.tree.map(jnp.asarray, params)
  for tx, inside in ((ours_fn(schedule), False), (optax_fn(schedule), True)):
    state, trace, dir_state = tx.init(jparams), {k: 0.0 for k in params}, {k: {} for k in params}
    for lr, g in zip(lrs, grads):
      got, state = tx.update(jax.tree.map(jnp.asarray, g), state, jparams)
      for k in params:
        s = direction(g[k], params[k], dir_state[k])
        trace[k] = 0.8 * trace[k] + (lr * s if inside else s)
        np.testing.assert_allclose(got[k], -trace[k] if inside else -lr * trace[k], rtol=1e-10)
  # With a constant learning rate the two agree.
  problem = P.quadratic(jnp.float64)
  ours, theirs = trajectory(ours_fn(0.2), problem), trajectory(optax_fn(0.2), problem)
  assert max_relative_error(ours, theirs) <= 1e-10


# --- Adam + L2 (optax has no alias): the coupled-decay pseudocode, and the AdamW contrast. ---

def _numpy_adam_l2(x0, a, steps, lr, wd, mask, b1=0.9, b2=0.999, eps=1e-8):
  """Coupled L2 Adam on f(x) = ½ xᵀ A x: g ← ∇f + λ·mask·x, then Kingma & Ba's Algorithm 1."""
  x, m, v, out = x0.copy(), np.zeros_like(x0), np.zeros_like(x0), []
  for t in range(1, steps + 1):
    g = a @ x + wd * mask * x
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    x = x - lr * m_hat / (np.sqrt(v_hat) + eps)
    out.append(x)
  return np.stack(out)


def test_adam_l2_matches_coupled_l2_pseudocode():
  rng = np.random.default_rng(1)
  root = rng.normal(size=(7, 7))
  a = root @ root.T / 7 + np.eye(7)
  x0 = rng.normal(size=7)
  mask = np.array([1.0] * 4 + [0.0] * 3)
  problem = P.Problem({"a": jnp.asarray(x0[:4]), "b": {"c": jnp.asarray(x0[4:])}},
                      lambda p: 0.5 * ravel_pytree(p)[0] @ jnp.asarray(a) @ ravel_pytree(p)[0],
                      model_fn=None, output_loss_fn=None, minimum=0.0, likelihood=None)  # first order
  got = trajectory(optim.adam_l2(0.1, weight_decay=0.3, weight_decay_mask=MASK), problem, steps=5)
  want = _numpy_adam_l2(x0, a, 5, 0.1, 0.3, mask)
  np.testing.assert_allclose(got, want, rtol=1e-12)


def _updates(tx, grads, params):
  """The updates of `tx` for a sequence of gradients at fixed params (stacked)."""
  state, out = tx.init(params), []
  for g in grads:
    u, state = tx.update(g, state, params)
    out.append(u["w"])
  return np.stack(out)


def test_adamw_decay_is_not_divided_by_sqrt_v_but_adam_l2_decay_is():
  """Theory: AdamW adds −lr λ p to Adam's step whatever the gradient scale s; in Adam + L2 the
  decay passes through m̂/√v̂ ∝ 1/s (with eps = 0 exactly: λ at scale s ≡ λ/s at scale 1)."""
  lr, wd, steps = 0.1, 0.01, 6
  params = {"w": jnp.asarray([0.7, -1.3, 0.4])}
  unit = jax.random.normal(jax.random.key(0), (steps, 3), jnp.float64)
  for s in (1.0, 1000.0):
    grads = [{"w": s * g} for g in unit]
    adam_step = _updates(optim.adam(lr, eps=0.0), grads, params)
    decoupled = _updates(optim.adamw(lr, eps=0.0, weight_decay=wd), grads, params) - adam_step
    want = np.broadcast_to(-lr * wd * params["w"], decoupled.shape)
    np.testing.assert_allclose(decoupled, want, rtol=1e-10)
    coupled = _updates(optim.adam_l2(lr, eps=0.0, weight_decay=wd), grads, params)
    at_unit_scale = optim.adam_l2(lr, eps=0.0, weight_decay=wd / s)
    np.testing.assert_allclose(coupled, _updates(at_unit_scale, [{"w": g} for g in unit], params), rtol=1e-10)
    if s == 1000.0:
      # The coupled decay's effect on the step is ~1000x smaller than the decoupled one.
      assert np.max(np.abs(coupled - adam_step)) < 1e-2 * np.max(np.abs(decoupled))
  problem = P.quadratic(jnp.float64)
  adamw_run = trajectory(optim.adamw(0.05, weight_decay=0.1), problem)
  assert max_relative_error(trajectory(optim.adam_l2(0.05, weight_decay=0.1), problem), adamw_run) > 1e-3


def test_amsgrad_without_bias_correction_is_the_papers_algorithm():
  """Reddi et al. (2018), Algorithm 2, constant β1: v̂_t = max(v̂_{t−1}, v_t), no bias correction."""
  rng = np.random.default_rng(2)
  grads = rng.normal(size=(5, 4)) * np.array([1.0, 0.1, 10.0, 1.0])
  params = {"w": jnp.zeros(4, jnp.float64)}
  got = _updates(optim.amsgrad(0.1, 0.8, 0.9, bias_correction_mu=False, bias_correction_nu=False),
                 [{"w": jnp.asarray(g)} for g in grads], params)
  m, v, v_max = np.zeros(4), np.zeros(4), np.zeros(4)
  for t, g in enumerate(grads):
    m, v = 0.8 * m + 0.2 * g, 0.9 * v + 0.1 * g * g
    v_max = np.maximum(v_max, v)
    np.testing.assert_allclose(got[t], -0.1 * m / (np.sqrt(v_max) + 1e-8), rtol=1e-12)


@pytest.mark.parametrize(
    "factory, key, bad",
    [
        (lambda **kw: optim.rmsprop(0.1, **kw), "initial_scale", -1.0),
        (lambda **kw: optim.radam(0.1, **kw), "threshold", -1.0),
        (lambda **kw: optim.lars(0.1, **kw), "trust_coefficient", -1.0),
        (lambda **kw: optim.rmsprop(0.1, **kw), "momentum", 1.0),
        (lambda **kw: optim.lamb(0.1, **kw), "weight_decay", -0.1),
    ],
)
def test_bad_hyperparameter_raises_naming_it(factory, key, bad):
  with pytest.raises(ValueError, match=key):
    factory(**{key: bad})


def test_rmsprop_nesterov_without_momentum_raises():
  with pytest.raises(ValueError, match="momentum"):
    optim.rmsprop(0.1, nesterov=True)


@pytest.mark.parametrize(
    "name, kwargs", [("rmsprop", {"momentum": 0.8, "centered": True}), ("lars", {"momentum": 0.7})]
)
def test_momentum_works_under_inject_hyperparams(name, kwargs):
  problem = P.quadratic(jnp.float64)
  injected = optax.inject_hyperparams(optim.get(name))(0.01, **kwargs)
  assert "momentum" in injected.init(problem.params).hyperparams
  got = trajectory(injected, problem, steps=5)
  assert max_relative_error(got, trajectory(optim.get(name)(0.01, **kwargs), problem, steps=5)) <= 1e-12


def test_sgd_accumulator_dtype_keeps_float32_momentum_for_bfloat16_params():
  problem = P.quadratic(jnp.bfloat16)
  tx = optim.sgd(0.01, momentum=0.9, accumulator_dtype=jnp.float32)
  state = tx.init(problem.params)
  grads = jax.grad(problem.obj_fn)(problem.params)
  updates, state = tx.update(grads, state, problem.params)
  trace = [x for x in jax.tree.leaves(state) if x.ndim > 0]
  assert trace and all(x.dtype == jnp.float32 for x in trace)
  want = optax.sgd(0.01, 0.9, accumulator_dtype=jnp.float32)
  want_updates, _ = want.update(grads, want.init(problem.params), problem.params)
  chex.assert_trees_all_equal(updates, want_updates)
