"""Claim 9 of issue #12 (normalisation smooths the landscape): the MLP problems' `norm` option
against numpy's LayerNorm and BatchNorm, and the sharpness of BatchNorm vs plain deep MLPs at equal
learning rate. The full version is configs/normalisation.yaml (README, Findings)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from optlab_jax import findings, monitor, problems, train


def _numpy_mlp(params, x, norm):
  """The MLP as Ba et al. (2016) write LayerNorm, z = xW + b, act(γ (z − μ) / sqrt(σ² + ε) + β) with μ, σ² over
  the features (ε = 1e-6), and Ioffe & Szegedy (2015) BatchNorm in training mode: μ, σ² of each feature over
  the batch (ε = 1e-5)."""
  layers = params["layers"]
  for i in range(len(layers) - 1):
    z = x @ np.asarray(layers[i]["kernel"]) + np.asarray(layers[i]["bias"])
    if norm != "none":
      axis, eps = (-1, 1e-6) if norm == "layer" else (0, 1e-5)
      mu, var = z.mean(axis, keepdims=True), z.var(axis, keepdims=True)
      z = (z - mu) / np.sqrt(var + eps) * np.asarray(params["norms"][i]["scale"]) + np.asarray(params["norms"][i]["bias"])
    x = np.maximum(z, 0.0)
  return x @ np.asarray(layers[len(layers) - 1]["kernel"]) + np.asarray(layers[len(layers) - 1]["bias"])


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_normalised_mlp_matches_numpy(norm):
  name = "digits_mlp"
  problem = problems.build(name, hidden=(7, 5), norm=norm, dtype="float64")
  params = problem.init_params(jax.random.key(0))
  # γ = 1, β = 0 at init would hide a missing or misplaced scale and shift: draw them at random.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + rng.normal(size=p.shape), params)
  x = np.asarray(problem.data["train"]["x"][:9])
  np.testing.assert_allclose(problem.model_fn(params, x), _numpy_mlp(params, x, norm), rtol=1e-10, atol=1e-12)
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
    problems.build("digits_mlp", norm="group")


@pytest.mark.parametrize("name", ["digits_mlp", "mnist1d_mlp"])
def test_batch_norm_keeps_a_deep_mlp_flatter_along_training(name):
  """Santurkar et al. (2018) at test size: four ReLU layers of 32, SGD lr 0.02 (edge 2/lr = 100, never
  reached), batch 128, 1000 steps, 3 seeds. Without normalisation λ_max grows 11–23× from step 25 to
  the last third; with BatchNorm it starts 2.4–5× higher but grows only 1.05–2.7×, and ends 0.29–0.72×
  the plain net's in every seed (measured; 0.30–0.75 over seeds 3–6, the margin left for other CPUs'
  rounding). The control is the early sharpness: BatchNorm's lower λ_max comes from training, not
  from a flatter start."""
  sharpness = {}
  for norm in ("none", "batch"):
    problem = problems.build(name, hidden=(32,) * 4, norm=norm)
    mon = monitor.Monitor(["lambda_max"], problem.loss, lanczos_iters=20)
    histories = train.fit_vmapped(problem, optax.sgd, {"learning_rate": np.float32([0.02] * 3)}, [0, 1, 2],
                                  steps=1000, batch_size=128, monitor=mon, monitor_every=25)
    sharpness[norm] = np.array([
        (h.monitor["lambda_max"][0], np.median(findings.tail(h.monitor_steps, np.asarray(h.monitor["lambda_max"]), 1 / 3)))
        for h in histories
    ])  # [seed, (step 25, last third)]
  (plain_early, plain_late), (batch_early, batch_late) = sharpness["none"].T, sharpness["batch"].T
  ratio = batch_late / plain_late
  assert np.all(ratio < 0.9) and np.median(ratio) < 0.7, sharpness
  assert np.all(batch_early > 1.5 * plain_early), sharpness  # control: BatchNorm does not start flatter
  assert np.all(plain_late / plain_early > 3 * batch_late / batch_early), sharpness
