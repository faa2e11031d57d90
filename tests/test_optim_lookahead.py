"""Lookahead with slow weights in the state: against optax.lookahead (slow weights in params)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import optlab_jax
from optlab_jax import checks
from optlab_jax.optim.lookahead import with_lookahead
from tests import optim_problems as P


def _ours(tx, problem, steps):
  """Params and slow weights after each of `steps` jitted updates of our drop-in transform."""
  update = jax.jit(tx.update)
  params, state = problem.params, tx.init(problem.params)
  fast, slow = [], []
  for _ in range(steps):
    updates, state = update(jax.grad(problem.obj_fn)(params), state, params)
    params = optax.apply_updates(params, updates)
    fast.append(params)
    slow.append(state.slow)
  return fast, slow


def _optax(inner, sync_period, slow_step_size, problem, steps):
  """The same with optax.lookahead, whose params are LookaheadParams(fast, slow)."""
  tx = optax.lookahead(inner, sync_period, slow_step_size)
  params = optax.LookaheadParams.init_synced(problem.params)
  state = tx.init(params)
  fast, slow = [], []
  for _ in range(steps):
    updates, state = tx.update(jax.grad(problem.obj_fn)(params.fast), state, params)
    params = optax.apply_updates(params, updates)
    fast.append(params.fast)
    slow.append(params.slow)
  return fast, slow


@pytest.mark.parametrize(
    "inner, sync_period, slow_step_size",
    [
        (lambda: optax.adam(0.05), 5, 0.5),
        (lambda: optax.sgd(0.01, momentum=0.9), 3, 0.3),
        (lambda: optax.rmsprop(0.01), 4, 0.8),
    ],
)
def test_fast_params_match_optax_lookahead(inner, sync_period, slow_step_size):
  problem = P.quadratic(jnp.float64, seed=1)
  ours_fast, ours_slow = _ours(with_lookahead(inner(), sync_period, slow_step_size), problem, 23)
  ref_fast, ref_slow = _optax(inner(), sync_period, slow_step_size, problem, 23)
  for got, want in zip(ours_fast, ref_fast):
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-14)
  for got, want in zip(ours_slow, ref_slow):
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-14)
  # The synchronisation really moved the weights: the trajectory differs from the inner's alone.
  alone, _ = _ours(with_lookahead(inner(), sync_period, 1.0), problem, 23)
  assert float(optax.tree.norm(optax.tree.sub(alone[-1], ours_fast[-1]))) > 1e-3


def test_alias_is_lookahead_around_adam():
  problem = P.quadratic(jnp.float64, seed=2)
  ours, _ = _ours(optlab_jax.lookahead(0.05, sync_period=4, slow_step_size=0.6, b1=0.8, b2=0.99, eps=1e-6),
                  problem, 20)
  ref, _ = _optax(optax.adam(0.05, b1=0.8, b2=0.99, eps=1e-6), 4, 0.6, problem, 20)
  chex.assert_trees_all_close(ours, ref, rtol=1e-10, atol=1e-14)


def test_slow_step_size_one_is_the_inner_optimizer():
  problem = P.quadratic(jnp.float64)
  ours, _ = _ours(with_lookahead(optax.adam(0.05), 3, 1.0), problem, 12)
  inner, state, params = optax.adam(0.05), None, problem.params
  state = inner.init(params)
  for got in ours:
    updates, state = inner.update(jax.grad(problem.obj_fn)(params), state, params)
    params = optax.apply_updates(params, updates)
    chex.assert_trees_all_close(got, params, rtol=1e-12)


def test_sync_period_and_step_size_traced_under_inject_hyperparams():
  problem = P.quadratic(jnp.float64, seed=3)
  tx = optax.inject_hyperparams(optlab_jax.lookahead)(learning_rate=0.05, sync_period=5, slow_step_size=0.5)
  traces = []

  def update(grads, state, params):
    traces.append(1)
    return tx.update(grads, state, params)

  update = jax.jit(update)
  for sync_period, slow_step_size in [(3, 0.25), (4, 0.7)]:
    params, state = problem.params, tx.init(problem.params)
    hyperparams = dict(state.hyperparams, sync_period=jnp.asarray(sync_period),
                       slow_step_size=jnp.asarray(slow_step_size, jnp.float64))
    state = state._replace(hyperparams=hyperparams)
    ref, _ = _optax(optax.adam(0.05), sync_period, slow_step_size, problem, 13)
    for want in ref:
      updates, state = update(jax.grad(problem.obj_fn)(params), state, params)
      params = optax.apply_updates(params, updates)
      chex.assert_trees_all_close(params, want, rtol=1e-10, atol=1e-14)
  assert len(traces) == 1, "new sync_period / slow_step_size values must not retrace"


def _sgd_from_obj_fn(learning_rate):
  """An inner transform that ignores its input and differentiates `obj_fn` itself."""

  def update_fn(updates, state, params=None, *, obj_fn=None, **extra_args):
    checks.require_extra_arg("obj_fn", obj_fn, example="obj_fn=lambda p: loss(p, batch)")
    return jax.tree.map(lambda g: -learning_rate * g, jax.grad(obj_fn)(params)), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def test_extra_args_reach_the_inner_transform():
  problem = P.quadratic(jnp.float64)
  tx = with_lookahead(_sgd_from_obj_fn(0.01), 3, 0.5)
  params, state = problem.params, tx.init(problem.params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  ref, _ = _optax(optax.sgd(0.01), 3, 0.5, problem, 10)
  for want in ref:
    updates, state = tx.update(zeros, state, params, obj_fn=problem.obj_fn)
    params = optax.apply_updates(params, updates)
    chex.assert_trees_all_close(params, want, rtol=1e-10, atol=1e-14)
  with pytest.raises(ValueError, match="obj_fn"):
    tx.update(zeros, state, params)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(sync_period=0), "sync_period"),
        (dict(sync_period=2.5), "sync_period"),
        (dict(slow_step_size=0.0), "slow_step_size"),
        (dict(slow_step_size=1.5), "slow_step_size"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    with_lookahead(optax.sgd(0.1), **kwargs)
  with pytest.raises(ValueError, match=name):
    optlab_jax.lookahead(0.1, **kwargs)
