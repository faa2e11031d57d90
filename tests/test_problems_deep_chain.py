"""deep_chain: gradient norms against the closed form √L·|w|^{L−1}·|w^L − 1|·‖Σ‖_F, per-layer
gradients against the matrix formula in numpy, inits against their variances."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from optlab_jax import problems


def full_grad(problem, params):
  batch = problem.sample_batch(jax.random.key(0), None)
  return jax.jit(jax.grad(problem.loss))(params, batch)


@pytest.mark.parametrize("depth,width,w", [(10, 1, 0.5), (10, 1, 1.5), (6, 3, 0.8), (6, 3, 1.2)])
def test_identity_chain_gradient_norm_closed_form(depth, width, w):
  problem = problems.build("deep_chain", depth=depth, width=width, weight_scale=w, dtype="float64")
  params = problem.init_params(jax.random.key(0))
  x = np.asarray(problem.data["train"]["x"])
  sigma = x.T @ x / len(x)
  grads = full_grad(problem, params)
  layer_norm = abs(w) ** (depth - 1) * abs(w**depth - 1) * np.linalg.norm(sigma)
  for l in range(depth):
    np.testing.assert_allclose(np.linalg.norm(grads["layers"][l]), layer_norm, rtol=1e-10)
  total = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(total, np.sqrt(depth) * layer_norm, rtol=1e-10)
  assert problem.likelihood == "gaussian" and problem.minimum == 0.0


@pytest.mark.parametrize("init", ["orthogonal", "xavier", "kaiming"])
def test_linear_chain_gradient_equals_matrix_formula(init):
  depth, width = 5, 4
  problem = problems.build("deep_chain", depth=depth, width=width, init=init, weight_scale=1.1, dtype="float64")
  params = jax.jit(problem.init_params)(jax.random.key(3))
  ws = [np.asarray(params["layers"][l]) for l in range(depth)]
  x = np.asarray(problem.data["train"]["x"])
  sigma = x.T @ x / len(x)
  prod = lambda mats: functools.reduce(np.matmul, mats, np.eye(width))
  residual = sigma @ (prod(ws) - np.eye(width))
  grads = full_grad(problem, params)
  for i in range(depth):
    expected = prod(ws[:i]).T @ residual @ prod(ws[i + 1:]).T
    np.testing.assert_allclose(grads["layers"][i], expected, rtol=1e-10, atol=1e-13)
  if init == "orthogonal":  # orthogonal Q_l: every layer's norm is |w|^{L−1}·‖(w^L·Q − I)Σ‖_F
    q = prod(ws) / 1.1**depth
    norm = 1.1 ** (depth - 1) * np.linalg.norm((1.1**depth * q - np.eye(width)) @ sigma)
    np.testing.assert_allclose([np.linalg.norm(g) for g in grads["layers"].values()], norm, rtol=1e-10)


def test_tanh_chain_and_init_variances():
  problem = problems.build("deep_chain", depth=3, width=2, activation="tanh", init="xavier", dtype="float64")
  params = jax.jit(problem.init_params)(jax.random.key(0))
  batch = jax.jit(problem.sample_batch, static_argnums=1)(jax.random.key(0), 8)
  h = np.asarray(batch["x"])
  for l in range(3):
    h = np.tanh(h @ np.asarray(params["layers"][l]))
  np.testing.assert_allclose(jax.jit(problem.loss)(params, batch), 0.5 * np.mean(np.sum((h - np.asarray(batch["y"])) ** 2, 1)),
                             rtol=1e-12)
  assert problem.minimum is None
  # Xavier: Var = 2 / (fan_in + fan_out) = 1/d; Kaiming: 2/d (d = 64, over 8 layers).
  for init, var in (("xavier", 1 / 64), ("kaiming", 2 / 64)):
    deep = problems.build("deep_chain", depth=8, width=64, init=init, weight_scale=2.0, dtype="float64")
    leaves = np.stack(jax.tree.leaves(jax.jit(deep.init_params)(jax.random.key(1))))
    np.testing.assert_allclose(leaves.var(), 4 * var, rtol=0.03)
  with pytest.raises(ValueError, match="^init='he' is not supported"):
    problems.build("deep_chain", init="he")
