"""Schedules: ours against the papers' formulas in plain Python; optax's re-exported as they are."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab_jax
from optlab_jax import schedules

STEPS = np.arange(0, 80)


def _evaluate(schedule):
  """The schedule at every step of STEPS, each count a traced int32 under jit."""
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(STEPS, jnp.int32)))


def _smith(t, base_lr, max_lr, step_size, scale):
  cycle = math.floor(1 + t / (2 * step_size))
  x = abs(t / step_size - 2 * cycle + 1)
  return base_lr + (max_lr - base_lr) * max(0.0, 1 - x) * scale(cycle, t)


@pytest.mark.parametrize("step_size", [7, 2.5])
@pytest.mark.parametrize(
    "name, kwargs, scale",
    [
        ("triangular", {}, lambda cycle, t: 1.0),
        ("triangular2", {}, lambda cycle, t: 1 / 2 ** (cycle - 1)),
        ("exp_range", {"gamma": 0.97}, lambda cycle, t: 0.97**t),
    ],
)
def test_cyclical_matches_smith(name, kwargs, scale, step_size):
  got = _evaluate(getattr(schedules, name)(0.01, 0.1, step_size, **kwargs))
  want = [_smith(int(t), 0.01, 0.1, step_size, scale) for t in STEPS]
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize("name, power", [("inverse_time_decay", 1.0), ("inverse_sqrt_decay", 0.5)])
def test_inverse_decays(name, power, staircase):
  got = _evaluate(getattr(schedules, name)(init_value=0.3, decay_rate=0.5, decay_steps=4, staircase=staircase))
  progress = [(t // 4 if staircase else t / 4) for t in STEPS]
  want = [0.3 / (1 + 0.5 * p) ** power for p in progress]
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_linear_warmup_around_cosine_decay_and_a_constant():
  cosine = schedules.cosine_decay_schedule(0.1, decay_steps=20)
  got = _evaluate(schedules.linear_warmup(cosine, warmup_steps=5, init_value=0.01))
  want = [0.01 + (0.1 - 0.01) * t / 5 if t < 5 else 0.05 * (1 + math.cos(math.pi * min(t - 5, 20) / 20))
          for t in STEPS]
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
  got = _evaluate(schedules.linear_warmup(0.2, warmup_steps=10))
  np.testing.assert_allclose(got, [0.2 * min(t, 10) / 10 for t in STEPS], rtol=1e-12)


def test_schedule_as_sgd_learning_rate_under_jit():
  lr = schedules.linear_warmup(schedules.triangular2(0.01, 0.05, step_size=4), warmup_steps=3)
  tx = optlab_jax.sgd(lr)
  a = jnp.asarray(np.diag([1.0, 3.0, 10.0]))

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(a @ params, state, params)
    return (optax.apply_updates(params, updates), state), None

  x0 = jnp.asarray([1.0, -2.0, 0.5])
  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, length=30))((x0, tx.init(x0)))
  x = np.asarray(x0)
  for t in range(30):
    rate = 0.01 * t / 3 if t < 3 else _smith(t - 3, 0.01, 0.05, 4, lambda cycle, _: 1 / 2 ** (cycle - 1))
    x = x - rate * np.diag([1.0, 3.0, 10.0]) @ x
  np.testing.assert_allclose(params, x, rtol=1e-12)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: schedules.triangular(-0.1, 0.1, 5), "base_lr"),
        (lambda: schedules.triangular(0.1, 0.01, 5), "max_lr"),
        (lambda: schedules.triangular2(0.01, 0.1, 0), "step_size"),
        (lambda: schedules.exp_range(0.01, 0.1, 5, gamma=0.0), "gamma"),
        (lambda: schedules.exp_range(0.01, 0.1, 5, gamma=1.5), "gamma"),
        (lambda: schedules.inverse_time_decay(-1.0, 0.5), "init_value"),
        (lambda: schedules.inverse_sqrt_decay(0.1, -0.5), "decay_rate"),
        (lambda: schedules.inverse_time_decay(0.1, 0.5, decay_steps=0), "decay_steps"),
        (lambda: schedules.linear_warmup(0.1, warmup_steps=0), "warmup_steps"),
        (lambda: schedules.linear_warmup(0.1, warmup_steps=2.5), "warmup_steps"),
        (lambda: schedules.linear_warmup(0.1, warmup_steps=3, init_value=-1.0), "init_value"),
    ],
)
def test_bad_arguments_raise_naming_them(build, name):
  with pytest.raises(ValueError, match=name):
    build()


def test_optax_schedules_are_re_exported_unchanged():
  for name in ["constant_schedule", "linear_schedule", "cosine_decay_schedule", "exponential_decay",
               "warmup_cosine_decay_schedule", "piecewise_constant_schedule", "join_schedules",
               "sgdr_schedule", "polynomial_schedule", "cosine_onecycle_schedule"]:
    assert getattr(schedules, name) is getattr(optax.schedules, name), name
  assert set(schedules.__all__) <= set(dir(schedules))
