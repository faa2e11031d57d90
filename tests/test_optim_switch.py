"""switch: optax's Adam for the first k updates, then a fresh optax L-BFGS from the params at the switch."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from optlab_jax import optim
from tests import optim_problems as P


def _run(tx, obj_fn, params, steps, runner_args=True):
  """`steps` jitted updates with the extra args the runner passes (optax's L-BFGS takes only its
  line search's: `runner_args=False`); the final params."""

  def step(carry, _):
    p, state = carry
    value, grad = jax.value_and_grad(obj_fn)(p)
    extra = {"obj_fn": obj_fn, "model_fn": None} if runner_args else {}
    updates, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=obj_fn, **extra)
    return (optax.apply_updates(p, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))((params, tx.init(params)))
  return params


def test_adam_then_a_fresh_lbfgs_from_the_params_at_the_switch():
  problem = P.rosenbrock()
  got = _run(optim.switch(0.01, switch_step=7, second_learning_rate=0.5), problem.obj_fn, problem.params, 12)
  at_switch = _run(optax.adam(0.01), problem.obj_fn, problem.params, 7)
  want = _run(optax.lbfgs(0.5), problem.obj_fn, at_switch, 5, runner_args=False)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_named_kwargs_and_transforms_build_the_phases():
  problem = P.quadratic()
  named = optim.switch(0.1, first="sgd", second="sgd", switch_step=2, first_kwargs={"momentum": 0.9},
                       second_learning_rate=0.05)
  given = optim.switch(0.1, first=optax.sgd(0.1, momentum=0.9), second=optax.sgd(0.05), switch_step=2)
  chex.assert_trees_all_close(_run(named, problem.obj_fn, problem.params, 5),
                              _run(given, problem.obj_fn, problem.params, 5), rtol=1e-6)


@pytest.mark.parametrize("bad, match", [
    ({"first": "adma"}, "first"), ({"second": 3}, "second"), ({"switch_step": -1}, "switch_step"),
    ({"first": optax.adam(0.1), "first_kwargs": {"b1": 0.5}}, "first_kwargs"),
])
def test_bad_arguments_name_themselves(bad, match):
  with pytest.raises(ValueError, match=match):
    optim.switch(0.1, **bad)
