"""Problems: each number against an independent reference (jax.hessian, scipy, scikit-learn, numpy)."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler

from optlab_jax import problems, train
from optlab_jax.problems import digits


def jitted(problem):
  """The problem's functions, jitted: one compile each instead of one per eager op."""
  return types.SimpleNamespace(
      init=jax.jit(problem.init_params),
      sample=jax.jit(problem.sample_batch, static_argnums=1),
      model=jax.jit(problem.model_fn),
      loss=jax.jit(problem.loss),
      grad=jax.jit(jax.grad(problem.loss)),
      metrics=jax.jit(problem.eval_metrics),
  )


def mlp_reference(params, x, activation=np.maximum):
  """The MLP forward pass in numpy, from the params dict."""
  layers = [params["layers"][i] for i in sorted(params["layers"])]
  for layer in layers[:-1]:
    x = activation(np.asarray(x) @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"]), 0.0)
  return x @ np.asarray(layers[-1]["kernel"]) + np.asarray(layers[-1]["bias"])


def conv_same_reference(x, kernel, bias, stride):
  """NHWC × HWIO convolution with XLA's SAME padding (extra padding at the high end), in numpy."""
  n, h, w, _ = x.shape
  size = kernel.shape[0]
  out_h, out_w = -(-h // stride), -(-w // stride)
  pad_h, pad_w = max((out_h - 1) * stride + size - h, 0), max((out_w - 1) * stride + size - w, 0)
  xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  out = np.zeros((n, out_h, out_w, kernel.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      patch = xp[:, i * stride:i * stride + size, j * stride:j * stride + size, :]
      out[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, kernel)
  return out + np.asarray(bias)


def cross_entropy_reference(logits, labels):
  return np.mean(scipy.special.logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels])


def test_names_and_registry_errors():
  assert problems.names() == [
      "char_transformer", "cubic", "deep_chain", "digits_cnn", "digits_mlp", "embedding_regression", "mnist1d_cnn",
      "mnist1d_mlp", "online_linear",
      "pinn_burgers", "pinn_poisson", "plateau", "quadratic", "rosenbrock", "saddle", "tanh_vanishing",
      "teacher_student", "xcos",
  ]
  with pytest.raises(ValueError, match="unknown problem 'quadratc'; did you mean 'quadratic'"):
    problems.get("quadratc")
  with pytest.raises(ValueError, match="^conditon=3.0 is not an option of problem 'quadratic'; did you mean 'condition'"):
    problems.build("quadratic", conditon=3.0)
  with pytest.raises(ValueError, match="^condition=0.5 is out of range"):
    problems.build("quadratic", condition=0.5)
  with pytest.raises(ValueError, match="^batch_size=0 is out of range"):
    problems.build("quadratic").sample_batch(jax.random.key(0), 0)


@pytest.mark.parametrize("dim,condition", [(5, 10.0), (12, 1e3)])
def test_quadratic_hessian_spectrum_and_minimum(dim, condition):
  problem = problems.build("quadratic", dim=dim, condition=condition, data_seed=3, dtype="float64")
  f = jitted(problem)
  full = f.sample(jax.random.key(0), None)
  x0 = f.init(jax.random.key(1))
  hessian = jax.jit(jax.hessian(lambda x: problem.loss({"x": x}, full)))(x0["x"])
  eig = np.linalg.eigvalsh(np.asarray(hessian))
  np.testing.assert_allclose([eig.min(), eig.max()], [1.0, condition], rtol=1e-10)
  np.testing.assert_allclose(eig, np.geomspace(1.0, condition, dim), rtol=1e-10)
  x_star = np.linalg.solve(np.asarray(full["x"]), np.asarray(full["y"]))  # R x* = b
  assert abs(float(f.loss({"x": jnp.asarray(x_star)}, full))) < 1e-20
  np.testing.assert_allclose(f.grad({"x": jnp.asarray(x_star)}, full)["x"], 0.0, atol=1e-10)
  assert problem.minimum == 0.0
  # ½ (x − x*)ᵀ H (x − x*) is the whole function, and eval_metrics reports it.
  d = np.asarray(x0["x"]) - x_star
  np.testing.assert_allclose(f.metrics(x0)["loss"], 0.5 * d @ np.asarray(hessian) @ d, rtol=1e-10)


def test_quadratic_minibatch_is_scaled_sum_of_its_rows():
  problem = problems.build("quadratic", dim=8, dtype="float64")
  f = jitted(problem)
  x = f.init(jax.random.key(0))
  batch = f.sample(jax.random.key(5), 3)
  rows, targets = np.asarray(problem.data["train"]["x"]), np.asarray(problem.data["train"]["y"])
  index = [int(np.flatnonzero((rows == r).all(axis=1))[0]) for r in np.asarray(batch["x"])]
  np.testing.assert_array_equal(np.asarray(batch["y"]), targets[index])
  residual = rows[index] @ np.asarray(x["x"]) - targets[index]
  np.testing.assert_allclose(f.loss(x, batch), 0.5 * 8 / 3 * np.sum(residual**2), rtol=1e-12)


@pytest.mark.parametrize("dim", [2, 5])
def test_rosenbrock_matches_scipy(dim):
  problem = problems.build("rosenbrock", dim=dim, dtype="float64")
  f = jitted(problem)
  x = f.init(jax.random.key(0))
  np.testing.assert_array_equal(x["x"], np.resize([-1.2, 1.0], dim))
  batch = f.sample(jax.random.key(0), 16)
  for point in (np.asarray(x["x"]), np.linspace(-1.0, 1.5, dim)):
    p = {"x": jnp.asarray(point)}
    np.testing.assert_allclose(f.loss(p, batch), scipy.optimize.rosen(point), rtol=1e-12)
    np.testing.assert_allclose(f.grad(p, batch)["x"], scipy.optimize.rosen_der(point), rtol=1e-12)
  assert float(f.metrics({"x": jnp.ones(dim)})["loss"]) == 0.0
  noisy = problems.build("rosenbrock", dim=dim, init_noise=0.1, dtype="float64")
  assert not np.allclose(noisy.init_params(jax.random.key(0))["x"], x["x"])


def test_digits_split_and_standardisation():
  data = digits.load()
  assert data["train"]["x"].shape == (1437, 64) and data["test"]["x"].shape == (360, 64)
  raw = load_digits()
  order = np.random.default_rng(digits.SPLIT_SEED).permutation(1797)
  train, test = order[digits.NUM_TEST:], order[:digits.NUM_TEST]
  assert len(np.intersect1d(train, test)) == 0
  scaler = StandardScaler().fit(raw.data[train])  # scale 1 where a pixel is constant
  np.testing.assert_allclose(data["train"]["x"], scaler.transform(raw.data[train]), atol=1e-12)
  np.testing.assert_allclose(data["test"]["x"], scaler.transform(raw.data[test]), atol=1e-12)
  np.testing.assert_array_equal(data["train"]["y"], raw.target[train])
  np.testing.assert_array_equal(data["test"]["y"], raw.target[test])
  varying = data["train"]["x"].std(axis=0) > 0
  np.testing.assert_allclose(data["train"]["x"].mean(axis=0), 0.0, atol=1e-12)
  np.testing.assert_allclose(data["train"]["x"].std(axis=0)[varying], 1.0, rtol=1e-12)
  np.testing.assert_array_equal(data["train"]["x"][:, ~varying], 0.0)
  assert set(np.unique(data["test"]["y"])) == set(range(10))


def test_digits_mlp_loss_and_metrics_match_numpy():
  problem = problems.build("digits_mlp", hidden=(16, 8), dtype="float64")
  f = jitted(problem)
  params = f.init(jax.random.key(2))
  assert all(isinstance(leaf, jax.Array) and leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
  assert params["layers"][0]["kernel"].shape == (64, 16) and params["layers"][2]["kernel"].shape == (8, 10)
  batch = f.sample(jax.random.key(3), 32)
  assert batch["x"].shape == (32, 64) and batch["y"].shape == (32,)
  logits = mlp_reference(params, batch["x"])
  np.testing.assert_allclose(f.model(params, batch["x"]), logits, rtol=1e-12)
  np.testing.assert_allclose(f.loss(params, batch), cross_entropy_reference(logits, np.asarray(batch["y"])), rtol=1e-12)
  np.testing.assert_allclose(f.loss(params, batch), problem.output_loss_fn(f.model(params, batch["x"]), batch), rtol=1e-12)
  test = digits.load()["test"]
  test_logits = mlp_reference(params, test["x"])
  metrics = f.metrics(params)
  np.testing.assert_allclose(metrics["test_loss"], cross_entropy_reference(test_logits, test["y"]), rtol=1e-10)
  np.testing.assert_allclose(metrics["test_accuracy"], np.mean(test_logits.argmax(1) == test["y"]), rtol=1e-6)
  assert problem.likelihood == "categorical" and not train.has_conv(problem)


def test_hand_set_linear_model_accuracy():
  problem = problems.build("digits_mlp", hidden=(), dtype="float64")
  params = {"layers": {0: {"kernel": np.zeros((64, 10)), "bias": np.eye(10)[3]}}}  # always predicts a 3
  metrics = jax.jit(problem.eval_metrics)(params)
  test_y = digits.load()["test"]["y"]
  np.testing.assert_allclose(metrics["test_accuracy"], np.mean(test_y == 3), rtol=1e-6)
  expected = np.log(9.0 + np.e) - np.where(test_y == 3, 1.0, 0.0)
  np.testing.assert_allclose(metrics["test_loss"], expected.mean(), rtol=1e-12)


def test_digits_cnn_matches_numpy_convolutions():
  problem = problems.build("digits_cnn", channels=(3, 4), dtype="float64")
  assert train.has_conv(problem)
  f = jitted(problem)
  params = f.init(jax.random.key(0))
  batch = f.sample(jax.random.key(1), 5)
  assert batch["x"].shape == (5, 8, 8, 1)
  x = np.asarray(batch["x"])
  h = np.maximum(conv_same_reference(x, np.asarray(params["conv1"]["kernel"]), params["conv1"]["bias"], 1), 0)
  h = np.maximum(conv_same_reference(h, np.asarray(params["conv2"]["kernel"]), params["conv2"]["bias"], 2), 0)
  logits = h.reshape(5, -1) @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
  np.testing.assert_allclose(f.model(params, batch["x"]), logits, rtol=1e-10)
  np.testing.assert_allclose(f.loss(params, batch), cross_entropy_reference(logits, np.asarray(batch["y"])), rtol=1e-12)


def test_teacher_student_data_and_loss():
  kw = dict(input_dim=6, output_dim=2, teacher_hidden=(4,), student_hidden=(5,), num_train=4000, num_test=50, dtype="float64")
  clean, noisy = problems.build("teacher_student", noise=0.0, **kw), problems.build("teacher_student", noise=0.3, **kw)
  x = np.asarray(clean.data["train"]["x"])
  np.testing.assert_allclose(np.cov(x.T), np.eye(6), atol=0.08)
  np.testing.assert_array_equal(x, noisy.data["train"]["x"])
  noise = np.asarray(noisy.data["train"]["y"] - clean.data["train"]["y"])
  np.testing.assert_allclose(noise.std(), 0.3, rtol=0.03)
  f = jitted(noisy)
  params = f.init(jax.random.key(0))
  batch = f.sample(jax.random.key(1), 64)
  outputs = mlp_reference(params, batch["x"], activation=lambda z, _: np.tanh(z))
  np.testing.assert_allclose(f.model(params, batch["x"]), outputs, rtol=1e-12)
  expected = 0.5 * np.mean(np.sum((outputs - np.asarray(batch["y"])) ** 2, axis=1))
  np.testing.assert_allclose(f.loss(params, batch), expected, rtol=1e-12)
  metrics = f.metrics(params)
  test_outputs = mlp_reference(params, noisy.data["test"]["x"], activation=lambda z, _: np.tanh(z))
  test_error = test_outputs - np.asarray(noisy.data["test"]["y"])
  np.testing.assert_allclose(metrics["test_loss"], 0.5 * np.mean(np.sum(test_error**2, axis=1)), rtol=1e-12)
  assert noisy.likelihood == "gaussian" and set(metrics) == {"loss", "test_loss"}


@pytest.mark.parametrize("name", ["quadratic", "digits_mlp", "teacher_student"])
def test_batches_and_init_are_jittable_and_vmappable(name):
  problem = problems.build(name, dtype="float64")
  f = jitted(problem)
  a, b = f.sample(jax.random.key(7), 4), f.sample(jax.random.key(7), 4)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  train_x = np.asarray(problem.data["train"]["x"])
  assert all((train_x == row).all(axis=1).any() for row in np.asarray(a["x"]))
  jax.tree.map(np.testing.assert_array_equal, f.sample(jax.random.key(0), None), problem.data["train"])
  keys = jax.random.split(jax.random.key(0), 3)
  stacked = jax.jit(jax.vmap(problem.init_params))(keys)
  for i in range(3):
    jax.tree.map(lambda s, p: np.testing.assert_allclose(s[i], p, rtol=1e-12), stacked, f.init(keys[i]))
