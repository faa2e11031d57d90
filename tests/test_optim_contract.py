"""The optimizer contract, checked for every name in the registry (no per-optimizer cases
except the tuning table below).

TUNING: per optimizer and problem, (learning_rate, steps, tolerance on the final loss).
Optimizers differ in their natural step size, so the table is the only special-casing.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import optim
from tests import mechanic_numpy as M
from tests import optim_problems as P

NAMES = optim.names()
# Registry optimizers built from another registry optimizer (a box projection, clipping, a switch,
# stale gradients): their contract cells run under -m slow (the base's own cells and each one's
# test file, against optax's parts, cover the same code), but for the cheap argument checks.
COMBINATORS = {"projected", "clipped", "switch", "delayed"}
NAMES_SLOW_COMBINATORS = [pytest.param(n, marks=pytest.mark.slow) if n in COMBINATORS else n for n in NAMES]

class Floor(NamedTuple):
  """The loss the method itself settles at, computed from the problem (a cycle's loss, or a
  reference transcription's after the same steps): the final loss must lie within a factor 2 of it
  either way (so the method's own limit, not slow convergence, is what is measured)."""
  why: str
  value: Callable[[P.Problem], float]


def _minimizer_hessian(problem: P.Problem) -> tuple[np.ndarray, np.ndarray]:
  """(x*, H(x*)) by Newton's method on the dense Hessian (exact in one step on the quadratic)."""
  flat, unravel = ravel_pytree(problem.params)
  hessian = jax.jit(jax.hessian(lambda v: problem.obj_fn(unravel(v))))
  newton = jax.jit(lambda x: x - jnp.linalg.solve(hessian(x), jax.grad(lambda v: problem.obj_fn(unravel(v)))(x)))
  x = jax.lax.fori_loop(0, 30, lambda _, x: newton(x), flat)
  return np.asarray(x), np.asarray(hessian(x))


def sam_floor(lr: float, rho: float, eta: float | None = None) -> Floor:
  """SAM on a quadratic settles into a 2-cycle ±a along the sharpest axis (λ, v): with the
  perturbation ρ·sign(x) there, x ← x − lr λ (x + ρ sign x) has the cycle a = lr λ ρ / (2 − lr λ)
  and loss ½ λ a². ASAM's perturbation ρ T² g/‖T g‖ (T = |x*| + eta) has length ρ ‖T v‖ along v."""
  def value(problem):
    x_star, hess = _minimizer_hessian(problem)
    eigenvalues, vectors = np.linalg.eigh(hess)
    lam, v = eigenvalues[-1], vectors[:, -1]
    radius = rho if eta is None else rho * np.linalg.norm((np.abs(x_star) + eta) * v)
    a = lr * lam * radius / (2 - lr * lam)
    return 0.5 * lam * a * a
  return Floor(f"SAM 2-cycle along λ_max (lr={lr}, rho={rho})", value)


def mechanic_floor(lr: float, steps: int) -> Floor:
  """Mechanic learns the scale of the base's accumulated steps by coin betting, an O(1/√T)
  guarantee, not the linear rate the other cells ask for (its scale absorbs the base lr, so no lr
  helps): Algorithm 1 as printed, in numpy over Adam(lr), after the same steps."""
  return Floor(f"Mechanic's Algorithm 1 (numpy), {steps} steps",
               lambda problem: M.gap_as_printed(problem.params, problem.obj_fn, problem.minimum, lr, steps))


# name -> {problem: (learning_rate, steps, tolerance on loss − minimum or a Floor, extra kwargs)}.
DEFAULT_TUNING = {"quadratic": (0.05, 1000, 1e-4), "rosenbrock": (0.02, 3000, 1e-3)}
TUNING: dict[str, dict[str, tuple]] = {
    "sgd": {"quadratic": (0.015, 1000, 1e-4), "rosenbrock": (1.5e-3, 20000, 1e-3)},
    "projected": {"quadratic": (0.015, 1000, 1e-4), "rosenbrock": (1.5e-3, 20000, 1e-3)},  # sgd, no bounds
    "clipped": {"quadratic": (0.015, 1000, 1e-4), "rosenbrock": (1.5e-3, 20000, 1e-3)},  # sgd, clipped to norm 1
    # sgd on gradients one step stale: stable below 1/λ_max, half sgd's edge, so half its lr
    "delayed": {"quadratic": (0.007, 1000, 1e-4), "rosenbrock": (7e-4, 40000, 1e-3)},
    "adahessian": {"quadratic": (0.5, 1000, 1e-4), "rosenbrock": (2.0, 3000, 1e-3)},
    "sophia_g": {"quadratic": (0.01, 1000, 1e-4), "rosenbrock": (0.01, 3000, 1e-3)},
    # SAM/ASAM chatter in their ρ-ball: the 2-cycle's loss, computed from H at the minimum.
    "sam": {"quadratic": (1e-3, 10000, sam_floor(1e-3, 0.05)), "rosenbrock": (5e-4, 10000, sam_floor(5e-4, 0.05))},
    "asam": {"quadratic": (2e-3, 3000, sam_floor(2e-3, 0.5, 0.01)),
             "rosenbrock": (5e-4, 10000, sam_floor(5e-4, 0.05, 0.01), {"rho": 0.05})},
    "adagrad": {"quadratic": (0.3, 1000, 1e-4), "rosenbrock": (1.0, 5000, 1e-3)},
    "amsgrad": {"quadratic": (0.3, 1000, 1e-4), "rosenbrock": (0.3, 5000, 1e-3)},
    "radam": {"quadratic": (0.02, 3000, 1e-4), "rosenbrock": (2e-3, 10000, 1e-3)},
    "novograd": {"quadratic": (1e-3, 1000, 1e-4), "rosenbrock": (1e-3, 3000, 1e-3)},
    "rmsprop": {"quadratic": (7e-4, 5000, 1e-4), "rosenbrock": (1e-3, 5000, 1e-3)},
    # AdaDelta's first steps are √eps-sized: it needs many of them, at an lr below GD's edge 2/λ_max.
    "adadelta": {"quadratic": (0.015, 20000, 1e-4), "rosenbrock": (0.01, 20000, 1e-3)},
    # Trust-ratio methods take steps of fixed relative size lr·‖p‖, a floor ∝ lr at a constant
    # rate; with a decaying rate (cosine) they converge.
    "lars": {"quadratic": ("cosine", 1.0, 1000, 1e-4), "rosenbrock": ("cosine", 4.0, 3000, 1e-3)},
    "lamb": {"quadratic": ("cosine", 0.03, 3000, 1e-4), "rosenbrock": ("cosine", 0.03, 3000, 1e-3)},
    # RAdam's un-normalised warm-up steps cap lr on Rosenbrock; Lookahead halves the progress.
    "ranger": {"quadratic": (0.04, 3000, 1e-4), "rosenbrock": (5e-3, 8000, 1e-3)},
    # No Linear/Conv kernels here: K-FAC falls back to the gradient, i.e. SGD with momentum 0.9.
    "kfac": {"quadratic": (0.01, 1000, 1e-4), "rosenbrock": (1e-3, 3000, 1e-3)},
    # Newton-type steps: lr = 1 is the method itself.
    "newton_cg": {"quadratic": (1.0, 20, 1e-10), "rosenbrock": (1.0, 100, 1e-10)},
    "gauss_newton": {"quadratic": (1.0, 20, 1e-10), "rosenbrock": (1.0, 50, 1e-10)},
    "lbfgs": {"quadratic": (1.0, 50, 1e-10), "rosenbrock": (1.0, 100, 1e-10)},
    "lbfgs_b": {"quadratic": (1.0, 50, 1e-10), "rosenbrock": (1.0, 100, 1e-10)},
    # One label draw per output: the Monte-Carlo Fisher is nearly singular in random
    # directions, so the damping (1.0) bounds the step and lr must stay below 2λ/L.
    "natural_gradient": {"quadratic": (0.01, 1000, 1e-4), "rosenbrock": (0.01, 3000, 1e-3)},
    "adafactor": {"quadratic": ("cosine", 0.1, 1000, 1e-4), "rosenbrock": ("cosine", 0.03, 5000, 1e-3)},
    "ademamix": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": ("cosine", 1.0, 3000, 1e-3)},
    "adopt": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": (1.0, 3000, 1e-3)},
    "yogi": {"rosenbrock": (0.1, 3000, 1e-3)},
    "sm3": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": ("cosine", 3.0, 3000, 1e-3)},
    "psgd_kron": {"quadratic": ("cosine", 0.01, 1000, 1e-4), "rosenbrock": ("cosine", 0.01, 3000, 1e-3)},
    # Schedule-free replaces the schedule: a constant lr, below its divergence edge (0.01 on Rosenbrock).
    "schedule_free_adamw": {"quadratic": (0.3, 1000, 1e-4), "rosenbrock": (0.1, 3000, 1e-3)},
    "schedule_free_sgd": {"quadratic": (0.1, 1000, 1e-4), "rosenbrock": (5e-3, 5000, 1e-3)},
    # Sign methods step ±lr per coordinate, chattering at a floor set by lr: a cosine decay
    # converges. sign_sgd moves only along diagonals, so Rosenbrock's curved valley takes many steps.
    "lion": {"quadratic": ("cosine", 0.01, 1000, 1e-4), "rosenbrock": ("cosine", 0.01, 3000, 1e-3)},
    "sign_sgd": {"quadratic": ("cosine", 0.01, 1000, 1e-4), "rosenbrock": ("cosine", 1e-3, 10000, 1e-3)},
    # Parameter-free methods: lr is a multiplier of the estimated step (1 is the method itself).
    "dadapt_adamw": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": ("cosine", 1.0, 3000, 1e-3)},
    "polyak_sgd": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": (1.0, 3000, 1e-3)},
    "dog": {"quadratic": (3.0, 1000, 1e-4), "rosenbrock": ("cosine", 1.5, 10000, 1e-3)},
    # COCOB's first steps are capped by alpha (100) and lr = 1 is the method itself: many steps.
    "cocob": {"quadratic": (1.0, 1500, 1e-4), "rosenbrock": (1.0, 30000, 1e-3)},
    "mechanize": {"quadratic": (0.05, 1000, mechanic_floor(0.05, 1000)),
                  "rosenbrock": (0.02, 3000, mechanic_floor(0.02, 3000))},
}
# Schedule-free's update is a difference of params (x_new − x), so a traced b1 that rounds the
# interpolation differently moves it by a float32 ulp of |params| (≈2.4e-7 at |x| ≈ 2), not of the
# update: allowed this many ulps of max |params| in the inject_hyperparams comparison.
PARAMS_ULPS: dict[str, int] = {"schedule_free_adamw": 2, "schedule_free_sgd": 2}
# Hyperparameters that set shapes or structure, so they cannot be traced by inject_hyperparams.
STRUCTURAL: dict[str, set[str]] = {"adahessian": {"block_size"}, "lbfgs": {"memory_size"},
                                  "lbfgs_b": {"memory_size"}, "natural_gradient": {"num_samples"}}


def tuning(name, problem) -> tuple:
  """(learning rate or schedule, steps, tolerance or Floor, kwargs) of `name` on `problem`."""
  entry = {**DEFAULT_TUNING, **TUNING.get(name, {})}[problem]
  if entry[0] == "cosine":
    entry = (optax.cosine_decay_schedule(entry[1], entry[2]), *entry[2:])
  return (*entry, {})[:4]


def build(name, learning_rate, problem: P.Problem, **kwargs):
  """The registry optimizer, given the problem's likelihood where it takes one."""
  if "likelihood" in inspect.signature(optim.get(name)).parameters:
    kwargs.setdefault("likelihood", problem.likelihood)
  return optim.get(name)(learning_rate, **kwargs)


def run(tx, problem: P.Problem, steps: int):
  """`steps` updates of `tx` on `problem`, in one jitted lax.scan; returns final params."""

  def step(carry, _):
    params, state = carry
    extra = P.extra_args(problem, params)
    updates, state = tx.update(extra["grad"], state, params, **extra)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))((problem.params, tx.init(problem.params)))
  return params


def numeric_hyperparams(name) -> dict:
  """Numeric keyword defaults of the alias (bools, None and structural ones excluded)."""
  sig = inspect.signature(optim.get(name))
  out = {}
  for k, p in sig.parameters.items():
    d = p.default
    if k == "learning_rate" or isinstance(d, bool) or k in STRUCTURAL.get(name, set()):
      continue
    if isinstance(d, (int, float)):
      out[k] = d
  return out


def one_update(tx, problem, params=None, grads=None, state=None):
  params = problem.params if params is None else params
  extra = P.extra_args(problem, params)
  grads = extra["grad"] if grads is None else grads
  state = tx.init(params) if state is None else state
  return tx.update(grads, state, params, **extra)


@pytest.mark.parametrize("problem_name", ["quadratic", "rosenbrock"])
@pytest.mark.parametrize("name", NAMES_SLOW_COMBINATORS)
def test_converges(name, problem_name):
  lr, steps, tol, kwargs = tuning(name, problem_name)
  problem = getattr(P, problem_name)(jnp.float64)
  params = run(build(name, lr, problem, **kwargs), problem, steps)
  gap = float(problem.obj_fn(params)) - problem.minimum
  if isinstance(tol, Floor):
    floor = tol.value(problem)
    assert floor / 2 <= gap <= 2 * floor, f"{name} on {problem_name}: loss {gap:.3e}, floor ({tol.why}) {floor:.3e}"
  else:
    assert gap <= tol, f"{name} on {problem_name}: loss {gap:.3e} > {tol:.0e}"


@pytest.mark.parametrize("name", NAMES_SLOW_COMBINATORS)
def test_jit_matches_eager_and_compiles_once(name):
  problem = P.quadratic(jnp.float32)
  tx = build(name, 1e-2, problem)
  traces = []

  def update(grads, state, params):
    traces.append(1)
    extra = P.extra_args(problem, params)
    return tx.update(grads, state, params, **extra)

  state = tx.init(problem.params)
  grads = P.extra_args(problem, problem.params)["grad"]
  eager_updates, eager_state = update(grads, state, problem.params)
  jitted = jax.jit(update)
  jit_updates, jit_state = jitted(grads, state, problem.params)
  chex.assert_trees_all_close(jit_updates, eager_updates, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(jit_state, eager_state, rtol=1e-5, atol=1e-7)
  params = optax.apply_updates(problem.params, jit_updates)
  jitted(grads, jit_state, params)
  assert len(traces) == 2, "second jitted call retraced (1 eager + 1 traced expected)"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", NAMES_SLOW_COMBINATORS)
def test_state_structure_and_dtype_stable(name, dtype):
  problem = P.quadratic(dtype)
  tx = build(name, 1e-2, problem)
  state = tx.init(problem.params)
  params = problem.params
  first = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  step = jax.jit(lambda params, state: one_update(tx, problem, params, state=state))
  for _ in range(3):
    updates, state = step(params, state)
    chex.assert_trees_all_equal_dtypes(updates, params)
    params = optax.apply_updates(params, updates)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == first
  for leaf in jax.tree.leaves(state):
    if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim > 0:
      assert leaf.dtype == dtype, f"state leaf of dtype {leaf.dtype} for {jnp.dtype(dtype)} params"


@pytest.mark.parametrize("name", NAMES_SLOW_COMBINATORS)
def test_inject_hyperparams_every_numeric_hyperparameter(name):
  problem = P.quadratic(jnp.float32)
  hp = numeric_hyperparams(name)
  plain = build(name, 1e-2, problem, **hp)
  static = STRUCTURAL.get(name, set())
  if "likelihood" in inspect.signature(optim.get(name)).parameters:
    hp = {**hp, "likelihood": problem.likelihood}
  injected = optax.inject_hyperparams(optim.get(name), static_args=static)(learning_rate=1e-2, **hp)
  state_p, state_i = plain.init(problem.params), injected.init(problem.params)
  assert set(numeric_hyperparams(name)) | {"learning_rate"} <= set(state_i.hyperparams)
  params_p = params_i = problem.params
  update_i = jax.jit(lambda g, s, p: injected.update(g, s, p, **P.extra_args(problem, p)))
  update_p = jax.jit(lambda p, s: one_update(plain, problem, p, state=s))
  for _ in range(3):
    up, state_p = update_p(params_p, state_p)
    ui, state_i = update_i(P.extra_args(problem, params_i)["grad"], state_i, params_i)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(params_p))
    atol = max(1e-7, PARAMS_ULPS.get(name, 0) * float(np.spacing(np.float32(scale))))
    chex.assert_trees_all_close(ui, up, rtol=1e-5, atol=atol)
    params_p, params_i = optax.apply_updates(params_p, up), optax.apply_updates(params_i, ui)


# These two are `-m slow`: tests/test_optim_updates.py checks the same for every optimizer, more
# strictly (two steps on an MLP, against a hand computation, with data that tells the cases apart).
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_chain_with_clipping_clips_first(name):
  problem = P.quadratic(jnp.float64)
  grads = P.extra_args(problem, problem.params)["grad"]
  clipped = jax.tree.map(lambda g: g * 0.5 / optax.tree.norm(grads), grads)
  chained = optax.chain(optax.clip_by_global_norm(0.5), build(name, 1e-2, problem))
  u_chain, _ = one_update(chained, problem, grads=grads)
  u_direct, _ = one_update(build(name, 1e-2, problem), problem, grads=clipped)
  chex.assert_trees_all_close(u_chain, u_direct, rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_multisteps_applies_mean_gradient(name):
  problem = P.quadratic(jnp.float64)
  g = P.extra_args(problem, problem.params)["grad"]
  g1, g2 = jax.tree.map(lambda x: 0.5 * x, g), jax.tree.map(lambda x: 1.5 * x, g)
  tx = optax.MultiSteps(build(name, 1e-2, problem), every_k_schedule=2, accumulator_dtype=jnp.float64)
  state = tx.init(problem.params)
  u1, state = one_update(tx, problem, grads=g1, state=state)
  u2, state = one_update(tx, problem, grads=g2, state=state)
  chex.assert_trees_all_close(u1, jax.tree.map(jnp.zeros_like, u1))
  expected, _ = one_update(build(name, 1e-2, problem), problem, grads=g)
  chex.assert_trees_all_close(u2, expected, rtol=1e-10)


@pytest.mark.parametrize("name", NAMES_SLOW_COMBINATORS)
def test_schedule_learning_rate(name):
  problem = P.quadratic(jnp.float64)
  const, _ = one_update(build(name, 0.03, problem), problem)
  sched, _ = one_update(build(name, optax.constant_schedule(0.03), problem), problem)
  chex.assert_trees_all_close(sched, const, rtol=1e-12)
  zero_first = optax.linear_schedule(0.0, 0.1, 10)
  u, _ = one_update(build(name, zero_first, problem), problem)
  assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))


# The bad value each kind of numeric hyperparameter gets, by name. A numeric hyperparameter
# whose name matches no rule fails `test_bad_hyperparameters_raise_naming_argument`: add a rule
# here and a check in the factory.
_DECAYS = ("b1", "b2", "b3", "beta", "momentum", "decay", "factor_decay", "slow_step_size",
           "decrease_factor", "cg_tol", "slope_rtol", "hessian_power")
_NONNEGATIVE = ("eps", "weight_decay", "initial_accumulator", "damping", "rho", "kl_clip", "gamma",
                "clip_threshold", "trust_coefficient", "eta", "threshold", "initial_scale")
_COUNTS = ("period", "interval", "every", "size", "iters", "samples", "steps", "dim")


# Per-optimizer bad values, for hyperparameters whose name says nothing of their range.
BAD_VALUES: dict[str, dict[str, object]] = {
    "psgd_kron": {"preconditioner_lr": 0.0, "init_scale": 0.0, "prob_max": 1.5, "prob_min": -0.1, "prob_decay": -1.0,
                  "prob_flat_start": -1.0, "max_size_triangular": 0, "max_skew_triangular": 0.0,
                  "min_ndim_triangular": 0},
    "muon": {"adam_b1": 1.5, "adam_b2": 1.5, "adam_eps_root": -1.0, "adam_weight_decay": -1.0, "consistent_rms": -1.0},
    "schedule_free_adamw": {"weight_lr_power": -1.0},
    "schedule_free_sgd": {"weight_lr_power": -1.0},
    "prodigy": {"estim_lr0": 0.0, "estim_lr_coef": 0.0},
    "dadapt_adamw": {"estim_lr0": 0.0},
    "dog": {"init_step_value": 0.0},
    "cocob": {"alpha": 0.0},
    "mechanize": {"s_init": 0.0, "num_betas": 0},
    "polyak_sgd": {"max_learning_rate": 0.0, "f_min": math.nan},
    "ademamix": {"alpha": -1.0},
    "adafactor": {"min_dim_size_to_factor": 0, "clipping_threshold": -1.0, "decay_offset": -1},
    "projected": {"lower": math.nan, "upper": math.nan},
    "switch": {"switch_step": -1, "second_learning_rate": -1.0},
    "clipped": {"max_norm": 0.0},
    "delayed": {"tau": -1},
}


def _bad_value(key: str, name: str = ""):
  if key in BAD_VALUES.get(name, {}):
    return BAD_VALUES[name][key]
  if key == "seed":
    return 1.5
  if key == "exponent":  # a preconditioner's power lies in [-1, 0)
    return 0.5
  if key.startswith(_DECAYS):
    return 1.5
  if key.startswith(_NONNEGATIVE):
    return -1.0
  if key.endswith(_COUNTS):
    return 0
  return None


# Hyperparameters for which +inf means something, so the inf check skips them.
INFINITY_MEANS_SOMETHING: dict[str, set[str]] = {"psgd_kron": {"max_skew_triangular"}, "projected": {"lower", "upper"}}


def _is_numeric(parameter: inspect.Parameter) -> bool:
  """A numeric default (bools excluded), or a None default whose annotation names a number
  (`momentum: float | None = None`): either way a number the user may pass."""
  default = parameter.default
  if isinstance(default, bool):
    return False
  if isinstance(default, (int, float)):
    return True
  return default is None and bool(re.search(r"\b(float|int)\b", str(parameter.annotation)))


def numeric_parameters(name) -> list[str]:
  """Every numeric hyperparameter of the alias' signature except learning_rate."""
  params = inspect.signature(optim.get(name)).parameters
  return [k for k, p in params.items() if k != "learning_rate" and _is_numeric(p)]


def test_numeric_parameters_reads_the_signature():
  assert numeric_parameters("sgd") == ["momentum", "weight_decay"]
  assert "seed" in numeric_parameters("sophia_h") and "weight_decay_mask" not in numeric_parameters("sophia_h")


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameters_raise_naming_argument(name):
  factory = optim.get(name)
  for bad in (-1.0, math.inf, math.nan):
    with pytest.raises(ValueError, match="learning_rate"):
      factory(bad)
  unruled = [k for k in numeric_parameters(name) if _bad_value(k, name) is None]
  assert not unruled, f"{name}: no bad-value rule for {unruled}; add one to _bad_value or BAD_VALUES"
  for key in numeric_parameters(name):
    with pytest.raises(ValueError, match=f"{key}="):
      factory(1e-2, **{key: _bad_value(key, name)})
    if key not in INFINITY_MEANS_SOMETHING.get(name, set()):
      with pytest.raises(ValueError, match=f"{key}="):
        factory(1e-2, **{key: math.inf})


@pytest.mark.parametrize("name", NAMES)
def test_bad_choices_raise_naming_argument(name):
  params = inspect.signature(optim.get(name)).parameters
  for key in [k for k, p in params.items() if isinstance(p.default, str)]:
    with pytest.raises(ValueError, match=f"{key}='no_such_choice'"):
      optim.get(name)(1e-2, **{key: "no_such_choice"})


@pytest.mark.parametrize("name", NAMES_SLOW_COMBINATORS)
def test_integer_leaf_untouched_and_empty_subtree(name):
  problem = P.quadratic(jnp.float32)
  tree = {"float": problem.params, "step": jnp.arange(3, dtype=jnp.int32), "empty": {}}
  obj = lambda p: problem.obj_fn(p["float"])
  extra = dict(obj_fn=obj, model_fn=lambda p: problem.model_fn(p["float"]),
               output_loss_fn=problem.output_loss_fn, value_fn=obj)
  tx = build(name, 1e-2, problem)
  ref_tx = build(name, 1e-2, problem)
  state, ref_state = tx.init(tree), ref_tx.init(problem.params)
  params, ref_params = tree, problem.params
  for _ in range(2):
    value, g = jax.value_and_grad(problem.obj_fn)(params["float"])
    grads = {"float": g, "step": jnp.zeros(3, jnp.int32), "empty": {}}
    u, state = tx.update(grads, state, params, value=value, grad=grads, **extra)
    ru, ref_state = ref_tx.update(g, ref_state, ref_params, **P.extra_args(problem, ref_params))
    params, ref_params = optax.apply_updates(params, u), optax.apply_updates(ref_params, ru)
  np.testing.assert_array_equal(params["step"], np.arange(3))
  assert params["step"].dtype == jnp.int32
  chex.assert_trees_all_close(params["float"], ref_params, rtol=1e-5)


LIKELIHOOD_NAMES = [n for n in NAMES if "likelihood" in inspect.signature(optim.get(n)).parameters]


def test_likelihood_optimizers_are_found():
  assert {"natural_gradient", "sophia_g", "kfac"} <= set(LIKELIHOOD_NAMES)


@pytest.mark.parametrize("name", LIKELIHOOD_NAMES)
def test_one_default_likelihood_and_outputs_that_contradict_it_raise(name):
  from optlab_jax import curvature
  assert inspect.signature(optim.get(name)).parameters["likelihood"].default == curvature.DEFAULT_LIKELIHOOD
  # A one-output Flax NNX Linear model (K-FAC samples only for captured layers).
  graphdef, params = nnx.split(nnx.Linear(3, 1, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
  x = jnp.ones((5, 3), jnp.float64)
  outputs = lambda p: nnx.merge(graphdef, p)(x)
  obj_fn = lambda p: jnp.mean(outputs(p) ** 2)
  cases = [("categorical", outputs, r"likelihood='categorical' needs model outputs of logits"),
           ("gaussian", lambda p: jnp.sum(outputs(p)), r"likelihood='gaussian' needs model outputs with a leading batch"),
           ("gaussian", lambda p: outputs(p).astype(jnp.int32), r"likelihood='gaussian' needs floating-point")]
  for likelihood, model_fn, message in cases:
    tx = optim.get(name)(1e-2, likelihood=likelihood, **({"update_interval": 1} if name == "sophia_g" else {}))
    with pytest.raises(ValueError, match=message):
      tx.update(jax.grad(obj_fn)(params), tx.init(params), params, obj_fn=obj_fn, model_fn=model_fn,
                output_loss_fn=lambda o: jnp.mean(o ** 2))
