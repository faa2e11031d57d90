"""mnist1d: the arrays are the package's `make_dataset`; the MLP and 1-D CNN against numpy."""

from __future__ import annotations

import random

import jax
import numpy as np
import scipy.special
from mnist1d.data import get_dataset_args, make_dataset

from optlab_jax import problems, train
from optlab_jax.problems import mnist1d


def nll_reference(logits, labels):
  return np.mean(scipy.special.logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels])


def conv1d_reference(x, kernel, bias, stride, pad):
  """[n, length, c_in] × [size, c_in, c_out] cross-correlation with zero padding (PyTorch's Conv1d)."""
  xp = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
  size = kernel.shape[0]
  out_len = (x.shape[1] + 2 * pad - size) // stride + 1
  out = np.stack([np.einsum("nkc,kco->no", xp[:, i * stride:i * stride + size], kernel) for i in range(out_len)], 1)
  return out + bias


def test_arrays_equal_make_dataset_and_global_rng_is_untouched():
  random.seed(123)
  np.random.seed(123)
  before = (random.random(), np.random.rand())
  random.seed(123)
  np.random.seed(123)
  data = mnist1d.load(7)
  assert (random.random(), np.random.rand()) == before
  args = get_dataset_args()
  args.seed = 7
  ref = make_dataset(args)
  np.testing.assert_array_equal(data["train"]["x"], ref["x"])
  np.testing.assert_array_equal(data["test"]["x"], ref["x_test"])
  np.testing.assert_array_equal(data["train"]["y"], ref["y"])
  np.testing.assert_array_equal(data["test"]["y"], ref["y_test"])
  assert data["train"]["x"].shape == (4000, 40) and data["test"]["x"].shape == (1000, 40)


def test_mlp_and_cnn_match_numpy():
  mlp = problems.build("mnist1d_mlp", hidden=(16,), data_seed=7, dtype="float64")
  cnn = problems.build("mnist1d_cnn", data_seed=7, dtype="float64")
  assert mlp.likelihood == cnn.likelihood == "categorical" and train.has_conv(cnn) and not train.has_conv(mlp)
  test = mnist1d.load(7)["test"]
  p = jax.jit(mlp.init_params)(jax.random.key(0))
  layers = p["layers"]
  h = np.maximum(test["x"] @ np.asarray(layers[0]["kernel"]) + np.asarray(layers[0]["bias"]), 0)
  logits = h @ np.asarray(layers[1]["kernel"]) + np.asarray(layers[1]["bias"])
  metrics = jax.jit(mlp.eval_metrics)(p)
  np.testing.assert_allclose(metrics["test_loss"], nll_reference(logits, test["y"]), rtol=1e-10)
  np.testing.assert_allclose(metrics["test_accuracy"], np.mean(logits.argmax(1) == test["y"]), rtol=1e-6)

  p = jax.jit(cnn.init_params)(jax.random.key(1))
  assert sum(a.size for a in jax.tree.leaves(p)) == 150 + 1900 + 1900 + 1260  # the paper's CNN: 5,210
  h = test["x"][:, :, None]
  for i, (_, _, stride, pad) in enumerate(mnist1d.CNN_LAYERS):
    conv = p["convs"][i]
    h = np.maximum(conv1d_reference(h, np.asarray(conv["kernel"]), np.asarray(conv["bias"]), stride, pad), 0)
  assert h.shape == (1000, 5, 25)
  logits = h.reshape(1000, -1) @ np.asarray(p["head"]["kernel"]) + np.asarray(p["head"]["bias"])
  metrics = jax.jit(cnn.eval_metrics)(p)
  np.testing.assert_allclose(metrics["test_loss"], nll_reference(logits, test["y"]), rtol=1e-10)
