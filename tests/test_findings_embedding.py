"""Claim 17, LazyAdam vs Adam on sparse embeddings, asserted at a small size (issue #12).

The references are not the optimizer under test: the rows a batch indexes are read off its x, the
initial params are recomputed from the seed, and Adam is optax's own transform.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab_jax import findings, optim, problems, train

STEPS, EVERY = 300, 30


@pytest.fixture(scope="module")
def runs():
  """The problem, its init params and {optimizer name: History} for Adam and LazyAdam (seed 0)."""
  problem = problems.build("embedding_regression", num_users=200, num_items=200, dim=4, rank=2, num_train=3000,
                           num_test=1000, popularity_exponent=1.5)
  # fit's own init program: one step of lr-0 SGD (a separately jitted init differs in the last bit).
  initial = train.fit(problem, optim.get("sgd")(learning_rate=0.0), steps=1, batch_size=32).params
  histories = {name: train.fit(problem, optim.get(name)(learning_rate=3e-2), steps=STEPS, batch_size=32,
                               monitor=findings.idle_rows, monitor_every=EVERY)
               for name in ("adam", "lazy_adam")}
  return problem, initial, histories


def test_idle_rows_counts_rows_outside_the_batch():
  params = {"users": jnp.zeros((5, 2)), "items": jnp.zeros((4, 2))}
  updates = {"users": jnp.asarray([[0, 0], [1, 0], [0, 0], [0, 2], [3, 3]], jnp.float32),
             "items": jnp.asarray([[1, 0], [0, 0], [0, 1], [0, 0]], jnp.float32)}
  batch = {"x": jnp.asarray([[0, 1], [4, 1], [0, 3]], jnp.int32)}
  # Users 1, 2, 3 and items 0, 2 are not indexed; of them users 1, 3 and items 0, 2 moved.
  counts = jax.jit(findings.idle_rows)(params, None, updates, None, batch, 0)
  assert (int(counts["idle_rows"]), int(counts["idle_rows_moved"])) == (5, 4)


def test_lazy_adam_moves_only_the_rows_a_batch_indexes(runs):
  _, _, histories = runs
  lazy, adam = histories["lazy_adam"].monitor, histories["adam"].monitor
  assert np.all(lazy["idle_rows"] > 300)  # most of the 400 rows are idle on each step
  np.testing.assert_array_equal(lazy["idle_rows_moved"], 0)
  # Adam moves every idle row that has momentum from an earlier batch: most of them, later on.
  assert np.all(adam["idle_rows_moved"][1:] > 0.5 * adam["idle_rows"][1:])


def test_rows_never_in_the_data_stay_bit_identical(runs):
  problem, initial, histories = runs
  for name, history in histories.items():
    frozen = findings.frozen_rows(initial, history.params, problem.data["train"]["x"])
    assert frozen["unseen"] >= 20
    # Adam too: a row with no gradient ever has m = v = 0, so its update 0 / (0 + eps) is exactly 0.
    assert frozen["unseen_frozen"] == 1.0, name
    assert frozen["seen_frozen"] < 0.1, name  # the few in the data but in no batch of 300 stay too


def test_lazy_adam_fits_as_well_as_adam(runs):
  problem, initial, histories = runs
  start = float(problem.loss(initial, problem.data["test"]))
  adam, lazy = (histories[name].final["test_loss"] for name in ("adam", "lazy_adam"))
  assert adam < 0.5 * start
  assert abs(lazy / adam - 1) < 0.25, (lazy, adam)  # full config: 1.04–1.06
