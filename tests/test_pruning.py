"""Pruning against numpy: magnitude masks (global and per layer), masked training keeps pruned
weights at exactly 0, IMP rewinds the survivors to θ_k of a hand-written optax loop."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest

from optlab_jax import problems, pruning, train

STEPS, REWIND, BATCH = 12, 3, 32


def random_params(seed: int):
  """Two kernels (one 3-D, like a convolution's) and their biases, continuous: no ties."""
  rng = np.random.default_rng(seed)
  return {"a": {"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=5)},
          "b": {"kernel": rng.normal(size=(2, 5, 3)), "bias": rng.normal(size=3)}}


def numpy_top(scores: np.ndarray, keep: int) -> np.ndarray:
  """The `keep` largest scores, as a mask: scores at or above the keep-th largest."""
  return scores >= np.sort(scores.ravel())[::-1][keep - 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.8])
def test_global_mask_keeps_the_largest_magnitudes_at_the_exact_density(seed, density):
  params = random_params(seed)
  mask = pruning.magnitude_mask(params, density)
  kernels = np.concatenate([np.abs(params[k]["kernel"]).ravel() for k in "ab"])
  keep = round(density * kernels.size)
  expected = numpy_top(kernels, keep)
  got = np.concatenate([mask[k]["kernel"].ravel() for k in "ab"])
  np.testing.assert_array_equal(got, expected)
  assert got.sum() == keep and pruning.density(mask) == keep / kernels.size
  assert all(mask[k]["bias"].all() for k in "ab")  # biases are never pruned
  assert pruning.prunable(params) == {"a": {"kernel": True, "bias": False}, "b": {"kernel": True, "bias": False}}
  assert mask["b"]["kernel"].shape == (2, 5, 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_layer_mask_keeps_the_largest_magnitudes_of_each_matrix(seed):
  params = random_params(seed)
  mask = pruning.magnitude_mask(params, 0.4, scope="layer")
  for k in "ab":
    w = np.abs(params[k]["kernel"])
    np.testing.assert_array_equal(mask[k]["kernel"], numpy_top(w, round(0.4 * w.size)))
  # the global mask differs: it gives the layers unequal shares (here, a's entries are not b's)
  assert not all(np.array_equal(pruning.magnitude_mask(params, 0.4)[k]["kernel"], mask[k]["kernel"]) for k in "ab")


def test_pruned_weights_stay_pruned_in_later_rounds():
  params = random_params(3)
  first = pruning.magnitude_mask(params, 0.5)
  # the survivors' magnitudes shuffled: the next mask must pick among survivors only
  grown = jax.tree.map(lambda p, m: np.where(m, p, 100.0), params, first)
  second = pruning.magnitude_mask(grown, 0.25, mask=first)
  kernels = lambda t: np.concatenate([t[k]["kernel"].ravel() for k in "ab"])
  scores = np.where(kernels(first), np.abs(kernels(grown)), -np.inf)
  np.testing.assert_array_equal(kernels(second), numpy_top(scores, round(0.25 * scores.size)))
  assert not (kernels(second) & ~kernels(first)).any()
  with pytest.raises(ValueError, match="survive"):
    pruning.magnitude_mask(params, 0.6, mask=first)
  with pytest.raises(ValueError, match="scope"):
    pruning.magnitude_mask(params, 0.5, scope="row")


@functools.cache
def small_mlp():
  return problems.build("digits_mlp", hidden=(8, 8), dtype="float64")


@pytest.mark.parametrize("tx", [optax.adam(1e-2), optax.sgd(0.1, momentum=0.9), optax.adamw(1e-2, weight_decay=0.1)],
                         ids=["adam", "sgd_momentum", "adamw"])
def test_pruned_weights_stay_exactly_zero_through_training(tx):
  problem = small_mlp()
  init = problem.init_params(jax.random.key(0))
  mask = pruning.magnitude_mask(init, 0.3)
  start = pruning.apply_mask(init, mask)
  trained = train.fit(problem, pruning.masked(tx, mask), steps=20, batch_size=BATCH, params=start).params
  plain = train.fit(problem, tx, steps=20, batch_size=BATCH, params=start).params
  for t, p, m in zip(jax.tree.leaves(trained), jax.tree.leaves(plain), jax.tree.leaves(mask)):
    t, p, m = np.asarray(t), np.asarray(p), np.asarray(m)
    assert (t[~m] == 0.0).all()
    assert (t[m] != 0.0).all()  # the survivors (and biases) train
    if (~m).any():
      assert (p[~m] != 0.0).mean() > 0.9  # without the mask, the optimizer regrows pruned weights


def reference_rewind(problem, tx, seed: int):
  """θ_k by a plain optax loop on the documented batches (train's docstring)."""
  init_key, data_key = jax.random.split(jax.random.key(seed))
  params = problem.init_params(init_key)
  state = tx.init(params)
  for t in range(REWIND):
    batch = problem.sample_batch(jax.random.fold_in(data_key, t), BATCH)
    updates, state = tx.update(jax.grad(problem.loss)(params, batch), state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_imp_rewinds_the_survivors_to_theta_k_and_prunes_the_trained_weights():
  problem, seeds = small_mlp(), [0, 1]
  run = pruning.imp(problem, lambda: optax.sgd(0.05, momentum=0.9), {}, seeds, steps=STEPS, rounds=2, rate=0.5,
                    rewind_step=REWIND, batch_size=BATCH, reinit=False)  # the control: test_findings_lottery
  for i, seed in enumerate(seeds):
    theta_k = reference_rewind(problem, optax.sgd(0.05, momentum=0.9), seed)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-12), run.rewind, theta_k)
    trained = run.dense[i].params
    for r in run.rounds:
      mask, start = (jax.tree.map(lambda x: np.asarray(x[i]), t) for t in (r.masks, r.start))
      # every round rewinds to the same θ_k: survivors bit for bit, the rest 0
      jax.tree.map(lambda s, th, m: np.testing.assert_array_equal(s, np.where(m, np.asarray(th)[i], 0.0)),
                   start, run.rewind, mask)
      # the mask prunes the last trained network's weights, among the previous round's survivors
      jax.tree.map(np.testing.assert_array_equal, mask, pruning.magnitude_mask(
          trained, 0.5 ** (run.rounds.index(r) + 1), mask=None if r is run.rounds[0] else prev))
      for leaf, m in zip(jax.tree.leaves(r.ticket[i].params), jax.tree.leaves(mask)):
        assert (np.asarray(leaf)[~m] == 0.0).all()
      prev, trained = mask, r.ticket[i].params
  assert [r.density for r in run.rounds] == pytest.approx([0.5, 0.25], abs=0.01)
  assert len(run.rounds[0].ticket[0].loss) == STEPS - REWIND and run.rounds[0].reinit == []
