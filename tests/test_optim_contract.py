"""The optimizer contract, checked for every name in the registry (no per-optimizer cases
except the tuning table below).

TUNING: per optimizer and problem, (learning_rate, steps, tolerance on the final loss).
Optimizers differ in their natural step size, so the table is the only special-casing.
"""

from __future__ import annotations

import inspect
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab_jax import optim
from tests import problems_for_tests as P

NAMES = optim.names()

# name -> {problem: (learning_rate, steps, tolerance on loss − minimum)}.
DEFAULT_TUNING = {"quadratic": (0.05, 1000, 1e-4), "rosenbrock": (0.02, 3000, 1e-3)}
TUNING: dict[str, dict[str, tuple[float, int, float]]] = {
    "sgd": {"quadratic": (0.015, 1000, 1e-4), "rosenbrock": (1e-3, 3000, 5e-2)},
    "adahessian": {"quadratic": (0.5, 1000, 1e-4), "rosenbrock": (2.0, 3000, 1e-3)},
    "sophia_g": {"quadratic": (0.01, 1000, 1e-4), "rosenbrock": (0.01, 3000, 1e-3)},
    # SAM/ASAM chatter inside their ρ-ball: the floor is about f at distance ρ along the sharpest axis.
    "sam": {"quadratic": (1e-3, 3000, 1e-3), "rosenbrock": (5e-4, 10000, 0.3)},
    "asam": {"quadratic": (2e-3, 3000, 1e-4), "rosenbrock": (2e-4, 10000, 0.5)},
    "adagrad": {"quadratic": (0.3, 1000, 1e-4), "rosenbrock": (1.0, 5000, 1e-3)},
    "amsgrad": {"quadratic": (0.3, 1000, 1e-4), "rosenbrock": (0.3, 5000, 1e-3)},
    "radam": {"quadratic": (0.02, 3000, 1e-4), "rosenbrock": (2e-3, 10000, 1e-3)},
    "novograd": {"quadratic": (1e-3, 1000, 1e-4), "rosenbrock": (1e-3, 3000, 1e-3)},
    # Steps of fixed relative size (RMS/trust-ratio normalised) leave a floor ∝ lr.
    "rmsprop": {"quadratic": (7e-4, 5000, 1e-4), "rosenbrock": (1e-3, 5000, 1e-3)},
    "adadelta": {"quadratic": (0.1, 5000, 1e-2), "rosenbrock": (0.05, 5000, 1e-2)},
    "lars": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": (4.0, 3000, 1e-2)},
    # Rosenbrock's leaves are scalars and x must cross 0, where LAMB's step lr·|x| vanishes:
    # it (and optax.lamb) stalls at f(0, 0) = 1.
    "lamb": {"rosenbrock": (0.03, 1000, 1.001)},
    # RAdam's un-normalised warm-up steps cap lr on Rosenbrock; Lookahead halves the progress.
    "ranger": {"quadratic": (0.04, 2000, 1e-4), "rosenbrock": (5e-3, 8000, 1e-3)},
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
    # Vector leaves make SOAP Adam with its reference β2 = 0.95, whose noise floor at lr 0.05 is above 1e-4.
    "soap": {"quadratic": (0.02, 1000, 1e-4)},
    # Learning-rate-free and self-tuning methods (optax's): lr = 1 is the method itself.
    "dadapt_adamw": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": (0.3, 3000, 1e-3)},
    "polyak_sgd": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": (1.0, 3000, 1e-3)},
    "cocob": {"quadratic": (1.0, 5000, 1e-4), "rosenbrock": (1.0, 5000, 1e-2)},
    "dog": {"quadratic": (1.0, 5000, 1e-4), "rosenbrock": (1.0, 5000, 2e-2)},
    # Mechanic's scale grows from s_init = 1e-6 by coin betting: slow on these two-leaf problems.
    "mechanize": {"quadratic": (1.0, 1000, 1e-2), "rosenbrock": (1.0, 3000, 0.5)},
    "adopt": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": (1.0, 3000, 1e-3)},
    "ademamix": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": (0.1, 3000, 1e-3)},
    "sm3": {"quadratic": (1.0, 1000, 1e-4), "rosenbrock": (1.0, 3000, 1e-3)},
    "yogi": {"rosenbrock": (0.3, 3000, 1e-3)},
    "schedule_free_adamw": {"quadratic": (0.3, 1000, 1e-4), "rosenbrock": (0.1, 3000, 1e-3)},
    "schedule_free_sgd": {"rosenbrock": (1e-3, 5000, 1e-3)},
    # Whitening P → (E m mᵀ)^(−1/2) normalises the step as the gradients vanish (as Adam does).
    "psgd_kron": {"quadratic": (0.01, 3000, 1e-4), "rosenbrock": (3e-3, 3000, 1e-3)},
    # Sign steps and Adafactor's relative steps have a fixed size ∝ lr: a floor ∝ lr.
    "sign_sgd": {"quadratic": (1e-3, 5000, 1e-3), "rosenbrock": (1e-3, 5000, 0.2)},
    "lion": {"quadratic": (1e-3, 5000, 2e-4), "rosenbrock": (1e-3, 5000, 1e-3)},
    "adafactor": {"quadratic": (0.01, 1000, 2e-3), "rosenbrock": (0.01, 3000, 5e-2)},
}
# Hyperparameters that set shapes or structure, so they cannot be traced by inject_hyperparams.
STRUCTURAL: dict[str, set[str]] = {"adahessian": {"block_size"}, "lbfgs": {"memory_size"},
                                  "lbfgs_b": {"memory_size"}, "natural_gradient": {"num_samples"}}


def tuning(name, problem):
  return {**DEFAULT_TUNING, **TUNING.get(name, {})}[problem]


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
@pytest.mark.parametrize("name", NAMES)
def test_converges(name, problem_name):
  lr, steps, tol = tuning(name, problem_name)
  problem = getattr(P, problem_name)(jnp.float64)
  params = run(optim.get(name)(lr), problem, steps)
  loss = float(problem.obj_fn(params))
  assert loss - problem.minimum <= tol, f"{name} on {problem_name}: loss {loss:.3e} > {tol:.0e}"


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager_and_compiles_once(name):
  problem = P.quadratic(jnp.float32)
  tx = optim.get(name)(1e-2)
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
@pytest.mark.parametrize("name", NAMES)
def test_state_structure_and_dtype_stable(name, dtype):
  problem = P.quadratic(dtype)
  tx = optim.get(name)(1e-2)
  state = tx.init(problem.params)
  params = problem.params
  first = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  for _ in range(3):
    updates, state = one_update(tx, problem, params, state=state)
    chex.assert_trees_all_equal_dtypes(updates, params)
    params = optax.apply_updates(params, updates)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == first
  for leaf in jax.tree.leaves(state):
    if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim > 0:
      assert leaf.dtype == dtype, f"state leaf of dtype {leaf.dtype} for {jnp.dtype(dtype)} params"


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_every_numeric_hyperparameter(name):
  problem = P.quadratic(jnp.float32)
  hp = numeric_hyperparams(name)
  plain = optim.get(name)(1e-2, **hp)
  static = STRUCTURAL.get(name, set())
  injected = optax.inject_hyperparams(optim.get(name), static_args=static)(learning_rate=1e-2, **hp)
  state_p, state_i = plain.init(problem.params), injected.init(problem.params)
  assert set(hp) | {"learning_rate"} <= set(state_i.hyperparams)
  params_p = params_i = problem.params
  update_i = jax.jit(lambda g, s, p: injected.update(g, s, p, **P.extra_args(problem, p)))
  for _ in range(3):
    up, state_p = one_update(plain, problem, params_p, state=state_p)
    ui, state_i = update_i(P.extra_args(problem, params_i)["grad"], state_i, params_i)
    chex.assert_trees_all_close(ui, up, rtol=1e-5, atol=1e-7)
    params_p, params_i = optax.apply_updates(params_p, up), optax.apply_updates(params_i, ui)


@pytest.mark.parametrize("name", NAMES)
def test_chain_with_clipping_clips_first(name):
  problem = P.quadratic(jnp.float64)
  grads = P.extra_args(problem, problem.params)["grad"]
  clipped = jax.tree.map(lambda g: g * 0.5 / optax.tree.norm(grads), grads)
  chained = optax.chain(optax.clip_by_global_norm(0.5), optim.get(name)(1e-2))
  u_chain, _ = one_update(chained, problem, grads=grads)
  u_direct, _ = one_update(optim.get(name)(1e-2), problem, grads=clipped)
  chex.assert_trees_all_close(u_chain, u_direct, rtol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_applies_mean_gradient(name):
  problem = P.quadratic(jnp.float64)
  g = P.extra_args(problem, problem.params)["grad"]
  g1, g2 = jax.tree.map(lambda x: 0.5 * x, g), jax.tree.map(lambda x: 1.5 * x, g)
  tx = optax.MultiSteps(optim.get(name)(1e-2), every_k_schedule=2, accumulator_dtype=jnp.float64)
  state = tx.init(problem.params)
  u1, state = one_update(tx, problem, grads=g1, state=state)
  u2, state = one_update(tx, problem, grads=g2, state=state)
  chex.assert_trees_all_close(u1, jax.tree.map(jnp.zeros_like, u1))
  expected, _ = one_update(optim.get(name)(1e-2), problem, grads=g)
  chex.assert_trees_all_close(u2, expected, rtol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_learning_rate(name):
  problem = P.quadratic(jnp.float64)
  const, _ = one_update(optim.get(name)(0.03), problem)
  sched, _ = one_update(optim.get(name)(optax.constant_schedule(0.03)), problem)
  chex.assert_trees_all_close(sched, const, rtol=1e-12)
  zero_first = optax.linear_schedule(0.0, 0.1, 10)
  u, _ = one_update(optim.get(name)(zero_first), problem)
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
INFINITY_MEANS_SOMETHING: dict[str, set[str]] = {"psgd_kron": {"max_skew_triangular"}}


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


@pytest.mark.parametrize("name", NAMES)
def test_integer_leaf_untouched_and_empty_subtree(name):
  problem = P.quadratic(jnp.float32)
  tree = {"float": problem.params, "step": jnp.arange(3, dtype=jnp.int32), "empty": {}}
  obj = lambda p: problem.obj_fn(p["float"])
  extra = dict(obj_fn=obj, model_fn=lambda p: problem.model_fn(p["float"]),
               output_loss_fn=problem.output_loss_fn, value_fn=obj)
  tx = optim.get(name)(1e-2)
  ref_tx = optim.get(name)(1e-2)
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
