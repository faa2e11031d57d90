"""Claim 9 of issue #12 (normalisation smooths the landscape): the MLP problems' `norm` option
against a numpy LayerNorm, and the sharpness of LayerNorm vs plain MLPs at equal learning rate.
The full version is configs/normalisation.yaml (README, Findings)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from optlab_jax import problems


def _numpy_mlp(params, x, norm):
  """The MLP as Ba et al. (2016) write LayerNorm: z = xW + b, act(γ (z − μ) / sqrt(σ² + ε) + β)."""
  layers = params["layers"]
  for i in range(len(layers) - 1):
    z = x @ np.asarray(layers[i]["kernel"]) + np.asarray(layers[i]["bias"])
    if norm == "layer":
      mu, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
      z = (z - mu) / np.sqrt(var + 1e-6) * np.asarray(params["norms"][i]["scale"]) + np.asarray(params["norms"][i]["bias"])
    x = np.maximum(z, 0.0)
  return x @ np.asarray(layers[len(layers) - 1]["kernel"]) + np.asarray(layers[len(layers) - 1]["bias"])


def test_layer_norm_mlp_matches_numpy():
  name = "digits_mlp"
  problem = problems.build(name, hidden=(7, 5), norm="layer", dtype="float64")
  params = problem.init_params(jax.random.key(0))
  # γ = 1, β = 0 at init would hide a missing or misplaced scale and shift: draw them at random.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + rng.normal(size=p.shape), params)
  x = np.asarray(problem.data["train"]["x"][:9])
  np.testing.assert_allclose(problem.model_fn(params, x), _numpy_mlp(params, x, "layer"), rtol=1e-10, atol=1e-12)
  assert set(params["norms"]) == {0, 1}  # one LayerNorm per hidden layer, none on the logits
  plain = problems.build(name, hidden=(7, 5), dtype="float64")
  plain_params = plain.init_params(jax.random.key(0))
  assert set(plain_params) == {"layers"}  # norm="none" keeps the params' tree
  np.testing.assert_allclose(plain.model_fn(plain_params, x), _numpy_mlp(plain_params, x, "none"), rtol=1e-10,
                             atol=1e-12)


def test_mnist1d_mlp_passes_norm_on():
  shapes = jax.eval_shape(problems.build("mnist1d_mlp", hidden=(7, 5), norm="layer").init_params, jax.random.key(0))
  assert {i: v["scale"].shape for i, v in shapes["norms"].items()} == {0: (7,), 1: (5,)}


def test_unknown_norm_is_named():
  with pytest.raises(ValueError, match="norm"):
    problems.build("digits_mlp", norm="batch")
