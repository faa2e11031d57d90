"""char_transformer: corpus and split from pydoc_data directly, causality, loss at init, finite differences."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.flatten_util import ravel_pytree
from pydoc_data.topics import topics

from optlab_jax import problems
from optlab_jax.problems import char_transformer

TINY = dict(seq_len=8, width=8, num_layers=2, num_heads=2, mlp_ratio=2, dtype="float64")


def nll_reference(logits, labels):
  logits, labels = np.asarray(logits), np.asarray(labels)
  picked = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return np.mean(scipy.special.logsumexp(logits, axis=-1) - picked)


def test_corpus_split_and_batches():
  text = "".join(topics[k] for k in sorted(topics))
  vocab, train, test = char_transformer.load()
  assert vocab == "".join(sorted(set(text)))
  assert "".join(vocab[i] for i in np.concatenate([train, test])) == text
  assert len(test) == round(0.1 * len(text))
  problem = problems.build("char_transformer", **TINY)
  assert problem.likelihood == "categorical" and problem.info["uniform_loss"] == math.log(len(vocab))
  batch = jax.jit(problem.sample_batch, static_argnums=1)(jax.random.key(0), 5)
  train_text = text[:len(train)]
  for x, y in zip(np.asarray(batch["x"]), np.asarray(batch["y"])):
    window = "".join(vocab[i] for i in x) + vocab[y[-1]]
    assert window in train_text and np.array_equal(x[1:], y[:-1])
  full = problem.sample_batch(jax.random.key(0), None)
  assert full["x"].shape == ((len(train) - 1) // 8, 8)
  with pytest.raises(ValueError, match="^num_heads=3 does not divide width=8"):
    problems.build("char_transformer", width=8, num_heads=3)


def test_loss_at_init_causal_and_metrics_match_numpy():
  problem = problems.build("char_transformer", **TINY)
  params = jax.jit(problem.init_params)(jax.random.key(1))
  batch = jax.jit(problem.sample_batch, static_argnums=1)(jax.random.key(1), 16)
  # GPT-2's init (std 0.02) keeps the logits small: the loss starts at about ln(vocab).
  assert abs(float(jax.jit(problem.loss)(params, batch)) - math.log(103)) < 0.01
  params = jax.tree.map(lambda p: p + 0.3 * np.random.default_rng(0).normal(size=p.shape), params)
  model = jax.jit(problem.model_fn)
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, 103)
  base = model(params, tokens)
  for k in (0, 3, 7):
    changed = model(params, tokens.at[:, k].set((tokens[:, k] + 1) % 103))
    np.testing.assert_array_equal(changed[:, :k], base[:, :k])  # earlier positions never see token k
    assert np.abs(changed[:, k] - base[:, k]).min() > 1e-6
  # Metrics over every non-overlapping window of the test split.
  _, _, test = char_transformer.load()
  starts = np.arange((len(test) - 1) // 8) * 8
  x, y = test[starts[:, None] + np.arange(8)], test[starts[:, None] + np.arange(1, 9)]
  logits = np.asarray(model(params, jnp.asarray(x)))
  metrics = jax.jit(problem.eval_metrics)(params)
  np.testing.assert_allclose(metrics["test_loss"], nll_reference(logits, y), rtol=1e-10)
  np.testing.assert_allclose(metrics["test_accuracy"], np.mean(logits.argmax(-1) == y), rtol=1e-6)


def test_gradient_equals_finite_difference():
  problem = problems.build("char_transformer", **TINY)
  params = jax.jit(problem.init_params)(jax.random.key(3))
  params = jax.tree.map(lambda p: p + 0.2 * np.random.default_rng(1).normal(size=p.shape), params)
  batch = jax.jit(problem.sample_batch, static_argnums=1)(jax.random.key(4), 3)
  flat, unravel = ravel_pytree(params)
  f = jax.jit(lambda z: problem.loss(unravel(z), batch))
  grad = jax.jit(jax.grad(f))(flat)
  for seed in range(3):
    v = jax.random.normal(jax.random.key(10 + seed), flat.shape, jnp.float64)
    eps = 1e-6
    fd = (f(flat + eps * v) - f(flat - eps * v)) / (2 * eps)
    np.testing.assert_allclose(grad @ v, fd, rtol=1e-7)
