"""The thin registry entries over optax against optax's own aliases, and schedule-free evaluation.

Each case runs 20 float64 steps of ours and of optax's alias, with matched non-default
hyperparameters (so a mis-wired or dropped argument shows), on a least-squares problem with a
matrix leaf (so Muon orthogonalises and Adafactor factors) and a vector leaf, and asks for the
parameter trajectory to agree to 1e-10 relative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from optax import contrib

from optlab_jax import optim

STEPS = 20
MASK = {"w": True, "b": False}


def least_squares(dtype=jnp.float64):
  """½‖X W + b − Y‖² / n with W 6×5 and b 5; returns (params, obj_fn)."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(32, 6)), rng.normal(size=(32, 5))
  params = {"w": jnp.asarray(rng.normal(size=(6, 5)) * 0.3, dtype), "b": jnp.asarray(rng.normal(size=5), dtype)}
  obj_fn = lambda p: 0.5 * jnp.mean(jnp.sum((jnp.asarray(x, dtype) @ p["w"] + p["b"][None] - y) ** 2, axis=-1))
  return params, obj_fn


def _mechanize_pair():
  ours = optim.mechanize(0.01, base="adam", base_kwargs=dict(b1=0.8), weight_decay=0.02, s_init=1e-4, num_betas=4)
  return ours, contrib.mechanize(optax.adam(0.01, b1=0.8), weight_decay=0.02, s_init=1e-4, num_betas=4)


# id -> (ours, optax's), built lazily so that a construction error fails one case only.
CASES = {
    "muon": lambda: (
        optim.muon(0.02, ns_steps=4, beta=0.9, weight_decay=0.01, adam_b1=0.8, adam_weight_decay=0.1),
        contrib.muon(0.02, ns_steps=4, beta=0.9, weight_decay=0.01, adam_b1=0.8, adam_weight_decay=0.1),
    ),
    "muon_consistent_rms": lambda: (optim.muon(0.02, nesterov=False, consistent_rms=0.2),
                                    contrib.muon(0.02, nesterov=False, consistent_rms=0.2)),
    "schedule_free_adamw": lambda: (optim.schedule_free_adamw(0.05, 5, 0.8, 0.99, 1e-6, 0.01, 1.5),
                                    contrib.schedule_free_adamw(0.05, 5, 0.8, 0.99, 1e-6, 0.01, 1.5)),
    "schedule_free_sgd": lambda: (optim.schedule_free_sgd(0.1, None, 0.8, 0.01, 1.0),
                                  contrib.schedule_free_sgd(0.1, None, 0.8, 0.01, 1.0)),
    "prodigy": lambda: (optim.prodigy(0.5, 0.8, 0.99, 0.9, 1e-6, 1e-4, 2.0, 0.01, safeguard_warmup=True),
                        contrib.prodigy(0.5, (0.8, 0.99), 0.9, 1e-6, 1e-4, 2.0, 0.01, True)),
    "dadapt_adamw": lambda: (optim.dadapt_adamw(0.5, 0.8, 0.99, 1e-6, 1e-4, 0.01),
                             contrib.dadapt_adamw(0.5, (0.8, 0.99), 1e-6, 1e-4, 0.01)),
    "dog": lambda: (optim.dog(0.5, "distance", 1e-3, 1e-6, 0.01, MASK),
                    contrib.dog(0.5, ("distance", 1e-3), 1e-6, 0.01, MASK)),
    "dog_heuristic": lambda: (optim.dog(0.5, init_step_value=1e-2), contrib.dog(0.5, ("heuristic", 1e-2))),
    "cocob": lambda: (optim.cocob(1.0, 50.0, 1e-6, 0.01, MASK), contrib.cocob(0.5, 50.0, 1e-6, 0.01, MASK)),
    "mechanize": _mechanize_pair,
    "polyak_sgd": lambda: (optim.polyak_sgd(1.0, 2.0, 0.1, 1e-6), optax.polyak_sgd(2.0, 1.0, 0.1, 1e-6)),
    "polyak_sgd_plus": lambda: (optim.polyak_sgd(variant="sps+"), optax.polyak_sgd(variant="sps+")),
    "adopt": lambda: (optim.adopt(0.02, 0.8, 0.99, 1e-5, nesterov=True),
                      contrib.adopt(0.02, 0.8, 0.99, 1e-5, nesterov=True)),
    "ademamix": lambda: (optim.ademamix(0.02, 0.8, 0.99, 0.995, 3.0, 1e-6, 1e-9, weight_decay=0.01,
                                        weight_decay_mask=MASK),
                         contrib.ademamix(0.02, 0.8, 0.99, 0.995, 3.0, 1e-6, 1e-9, weight_decay=0.01, mask=MASK)),
    "lion": lambda: (optim.lion(0.01, 0.8, 0.95, weight_decay=0.05, weight_decay_mask=MASK),
                     optax.lion(0.01, 0.8, 0.95, weight_decay=0.05, mask=MASK)),
    "adafactor": lambda: (
        optim.adafactor(0.05, min_dim_size_to_factor=4, decay_rate=0.7, clipping_threshold=0.5,
                        momentum=0.8, dtype_momentum=jnp.float64, weight_decay_rate=0.01, eps=1e-20),
        optax.adafactor(0.05, min_dim_size_to_factor=4, decay_rate=0.7, clipping_threshold=0.5,
                        momentum=0.8, dtype_momentum=jnp.float64, weight_decay_rate=0.01, eps=1e-20),
    ),
    "adafactor_unfactored": lambda: (optim.adafactor(0.05, multiply_by_parameter_scale=False, factored=False),
                                     optax.adafactor(0.05, multiply_by_parameter_scale=False, factored=False)),
    "adan": lambda: (optim.adan(0.02, 0.9, 0.8, 0.95, 1e-6, 1e-7, 0.01, MASK),
                     optax.adan(0.02, 0.9, 0.8, 0.95, 1e-6, 1e-7, 0.01, MASK)),
    "adabelief": lambda: (optim.adabelief(0.02, 0.8, 0.99, 1e-10, 1e-12, nesterov=True),
                          optax.adabelief(0.02, 0.8, 0.99, 1e-10, 1e-12, nesterov=True)),
    "yogi": lambda: (optim.yogi(0.05, 0.8, 0.99, 1e-4), optax.yogi(0.05, 0.8, 0.99, 1e-4)),
    "sm3": lambda: (optim.sm3(0.1, 0.8), optax.sm3(0.1, 0.8)),
    "madgrad": lambda: (optim.madgrad(0.02, 0.8, 0.01, 1e-5), contrib.madgrad(0.02, 0.8, 0.01, 1e-5)),
    "sign_sgd": lambda: (optim.sign_sgd(0.01), optax.sign_sgd(0.01)),
}


def trajectory(tx, params, obj_fn, steps: int = STEPS) -> jax.Array:
  """Flat params after each of `steps` full-batch updates of `tx`, shape (steps, dim)."""

  def step(carry, _):
    params, state = carry
    value, grad = jax.value_and_grad(obj_fn)(params)
    updates, state = tx.update(grad, state, params, value=value)
    params = optax.apply_updates(params, updates)
    return (params, state), ravel_pytree(params)[0]

  return jax.jit(lambda c: jax.lax.scan(step, c, length=steps)[1])((params, tx.init(params)))


THIN = ["muon", "schedule_free_adamw", "schedule_free_sgd", "prodigy", "dadapt_adamw", "dog", "cocob",
        "mechanize", "adopt", "ademamix", "lion", "adafactor", "adan", "adabelief", "yogi", "sm3", "madgrad",
        "polyak_sgd", "sign_sgd"]


def test_every_thin_entry_is_registered_and_has_a_case():
  assert set(THIN) <= set(optim.names())
  assert set(THIN) <= set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_optax_for_20_steps(case):
  ours, theirs = CASES[case]()
  params, obj_fn = least_squares()
  want = np.asarray(trajectory(theirs, params, obj_fn))
  got = np.asarray(trajectory(ours, params, obj_fn))
  err = np.max(np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1))
  assert err <= 1e-10, f"{case}: relative error {err:.2e}"
  # The run moved (so the agreement is not the trivial one of two idle optimizers).
  assert np.linalg.norm(want[-1] - ravel_pytree(params)[0]) > 1e-3



@pytest.mark.parametrize("name", ["cocob", "polyak_sgd"])
def test_learning_rate_multiplies_the_step_where_optax_does_not(name):
  """optax puts lr on g before the step is estimated: COCOB's bet then ignores it and Polyak's step
  grows by 1/lr (it diverged at lr = 0.1 on a λ = 100 quadratic). A bug that does the same fails."""
  params, obj_fn = least_squares()
  x0 = ravel_pytree(params)[0]
  first_step = lambda tx: np.asarray(trajectory(tx, params, obj_fn, steps=1))[0] - x0
  full = first_step(optim.get(name)(1.0))
  np.testing.assert_allclose(first_step(optim.get(name)(0.25)), 0.25 * full, rtol=1e-12)
  theirs = contrib.cocob(0.25) if name == "cocob" else optax.polyak_sgd(scaling=0.25)
  assert not np.allclose(first_step(theirs), 0.25 * full, rtol=1e-3)

# --- Schedule-free runs are evaluated at the averaged point x, not at the training point y. ---

def _teacher_student():
  from optlab_jax import problems
  return problems.build("teacher_student", input_dim=5, output_dim=2, teacher_hidden=(3,), student_hidden=(6,),
                        num_train=64, num_test=32, dtype="float64")


def _hand_loop(problem, seed, steps=12, batch=16):
  """optax's schedule_free_adamw with the runner's documented keys; evals at optax's x and at y."""
  tx = contrib.schedule_free_adamw(0.05, b1=0.8)
  init_key, data_key = jax.random.split(jax.random.key(seed))
  params = problem.init_params(init_key)
  state = tx.init(params)
  for t in range(steps):
    b = problem.sample_batch(jax.random.fold_in(data_key, np.int32(t)), batch)
    grads = jax.grad(problem.loss)(params, b)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return problem.eval_metrics(contrib.schedule_free_eval_params(state, params)), problem.eval_metrics(params)


def test_runner_evaluates_schedule_free_at_the_averaged_point():
  from optlab_jax import train
  problem = _teacher_student()
  kw = dict(steps=12, batch_size=16, eval_every=6)
  single = train.fit(problem, optim.schedule_free_adamw(0.05, b1=0.8), seed=0, **kw)
  vmapped = train.fit_vmapped(problem, lambda **hp: optim.schedule_free_adamw(0.05, b1=0.8), {}, [0, 1], **kw)
  for seed, history in ((0, single), (0, vmapped[0]), (1, vmapped[1])):
    at_x, at_y = _hand_loop(problem, seed)
    for name, value in at_x.items():
      np.testing.assert_allclose(history.final[name], float(value), rtol=1e-9)
      np.testing.assert_allclose(history.eval[name][-1], float(value), rtol=1e-9)
      assert abs(float(value) - float(at_y[name])) > 1e-6 * abs(float(value))  # x and y differ here


def test_eval_params_finds_the_state_inside_wrappers_and_keeps_integer_leaves():
  params, obj_fn = least_squares()
  tree = {**params, "step": jnp.arange(3, dtype=jnp.int32)}
  grads = {**jax.grad(obj_fn)(params), "step": jnp.zeros(3, jnp.int32)}
  tx = optax.inject_hyperparams(optim.schedule_free_sgd)(learning_rate=0.1)
  state = tx.init(tree)
  for _ in range(3):
    updates, state = tx.update(grads, state, tree)
    tree = optax.apply_updates(tree, updates)
  x = optim.schedule_free_eval_params(state, tree)
  ref = contrib.schedule_free_sgd(0.1)
  ref_params, ref_state = params, ref.init(params)
  for _ in range(3):
    u, ref_state = ref.update(jax.grad(obj_fn)(params), ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, u)
  want = contrib.schedule_free_eval_params(ref_state, ref_params)
  for k in params:
    np.testing.assert_allclose(x[k], want[k], rtol=1e-12)
  np.testing.assert_array_equal(x["step"], np.arange(3))
  assert x["step"].dtype == jnp.int32
  # Any other optimizer's state: the params themselves.
  assert optim.schedule_free_eval_params(optax.adam(0.1).init(params), params) is params
