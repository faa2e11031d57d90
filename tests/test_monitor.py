"""Monitor values against the dense Hessian / GGN of tiny float64 models at the same step."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature
from optlab_jax.curvature.loops import apply
from optlab_jax import optim
from optlab_jax.monitor import METRICS, Monitor, preconditioned_stability_edge, stability_edge
from tests import curvature_models as M

LR = 0.05


def _setup(model: str, steps: int = 3):
  """A few optax.adam steps (any optax transform must work), then the dense oracles there."""
  model_fn, output_loss_fn, params = M.MODELS[model](jax.random.key(0))
  obj = M.obj_fn(model_fn, output_loss_fn)
  tx = optax.adam(LR)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(obj)(params)
    updates, new_state = tx.update(grads, state, params)
    return grads, updates, new_state

  for _ in range(steps):
    _, updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  grads, updates, new_state = step(params, state)
  flat, unravel = ravel_pytree(params)
  hess = np.asarray(jax.jit(jax.hessian(lambda x: obj(unravel(x))))(flat))
  jac = np.asarray(jax.jit(jax.jacobian(lambda x: model_fn(unravel(x)).ravel()))(flat))
  outputs = model_fn(params)
  h_out = np.asarray(jax.jit(jax.hessian(lambda y: output_loss_fn(y.reshape(outputs.shape))))(outputs.ravel()))
  monitor_args = dict(loss_fn=lambda p, b: obj(p), model_fn=lambda p, b: model_fn(p),
                      output_loss_fn=lambda o, b: output_loss_fn(o), learning_rate=LR)
  ctx = dict(params=params, grads=grads, updates=updates, state=new_state, hess=hess,
             ggn=jac.T @ h_out @ jac, g=ravel_pytree(grads)[0], u=ravel_pytree(updates)[0])
  return monitor_args, ctx


def _call(monitor, ctx, step=7):
  return monitor(ctx["params"], ctx["grads"], ctx["updates"], ctx["state"], None, step)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_monitor_matches_dense_oracles(model):
  args, ctx = _setup(model)
  metrics = [m for m in METRICS if m != "trace"]
  out = _call(Monitor(metrics, lanczos_iters=80, top_k=3, **args), ctx)
  eig, vec = np.linalg.eigh(ctx["hess"])
  g, u, h = np.asarray(ctx["g"]), np.asarray(ctx["u"]), ctx["hess"]
  nu = ravel_pytree(ctx["state"][0].nu)[0]
  count = int(ctx["state"][0].count)
  d = 1.0 / np.sqrt(np.sqrt(np.asarray(nu) / (1 - 0.999**count)) + 1e-8)
  expected = {
      "lambda_max": eig[-1], "lambda_min": eig[0], "eos_ratio": LR * eig[-1] / 2,
      "preconditioned_lambda_max": np.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1],
      "directional_sharpness": u @ h @ u / (u @ u),
      "gradient_correlation": -(g @ u) / (np.linalg.norm(g) * np.linalg.norm(u)),
      "top_k_gradient_fraction": np.sum((vec[:, -3:].T @ g) ** 2) / (g @ g),
      "ggn_lambda_max": np.linalg.eigvalsh(ctx["ggn"])[-1],
  }
  assert set(out) == set(metrics)
  for name, value in expected.items():
    np.testing.assert_allclose(float(out[name]), value, rtol=1e-6, err_msg=name)


def test_trace_within_three_standard_errors():
  args, ctx = _setup("mlp")
  samples = 400
  out = _call(Monitor(["trace"], trace_samples=samples, **args), ctx)
  h = ctx["hess"]
  # Rademacher Hutchinson variance per probe: 2 Σ_{i≠j} H_ij².
  stderr = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / samples)
  assert abs(float(out["trace"]) - np.trace(h)) < 3 * stderr


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_jitted_and_host_paths_agree(model):
  args, ctx = _setup(model)
  monitor = Monitor(["lambda_max", "lambda_min", "trace", "directional_sharpness"], lanczos_iters=30, **args)
  host = _call(monitor, ctx)
  inside = jax.jit(lambda p, g, u, s: monitor(p, g, u, s, None, 7))(ctx["params"], ctx["grads"], ctx["updates"], ctx["state"])
  for name in host:
    np.testing.assert_allclose(float(inside[name]), float(host[name]), rtol=1e-9, err_msg=name)


def test_conv_on_cpu_runs_python_loop_and_compiles_once():
  args, ctx = _setup("cnn")
  monitor = Monitor(["lambda_max", "directional_sharpness"], lanczos_iters=10, **args)
  hess = jax.tree_util.Partial(monitor._hvp_at, ctx["params"], None)
  assert curvature.resolve_loop("auto", hess, ctx["params"]) == ("python" if jax.default_backend() == "cpu" else "scan")
  _call(monitor, ctx, step=1)
  compiled = apply._cache_size()
  moved = jax.tree.map(lambda x: x * 1.01, ctx["params"])
  monitor(moved, ctx["grads"], ctx["updates"], ctx["state"], None, 2)
  assert apply._cache_size() == compiled, "a second monitor call at new params recompiled the matvec"


def test_eos_ratio_reads_injected_learning_rate():
  args, ctx = _setup("mlp")
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.3)
  state = tx.init(ctx["params"])
  out = Monitor(["lambda_max", "eos_ratio"], lanczos_iters=40, **args)(
      ctx["params"], ctx["grads"], ctx["updates"], state, None, 0)
  np.testing.assert_allclose(float(out["eos_ratio"]), 0.3 * float(out["lambda_max"]) / 2, rtol=1e-6)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="unknown monitor metrics"):
    Monitor(["sharpness"], loss_fn=lambda p, b: 0.0)
  with pytest.raises(ValueError, match="model_fn"):
    Monitor(["ggn_lambda_max"], loss_fn=lambda p, b: 0.0)
  with pytest.raises(ValueError, match="top_k"):
    Monitor(["top_k_gradient_fraction"], loss_fn=lambda p, b: 0.0, lanczos_iters=5, top_k=6)
  args, ctx = _setup("mlp", steps=1)
  with pytest.raises(ValueError, match="Adam family"):
    Monitor(["preconditioned_lambda_max"], **args)(ctx["params"], ctx["grads"], ctx["updates"], (), None, 0)


def _late_growth(tx, lam, steps=600):
  """|x_T| / |x_{T/2}| of `tx` on ½·lam·x²: > 1 past the edge, < 1 before it.

  x₀ = 1e-100 keeps an adaptive preconditioner at its floor (√v ≪ eps = 1, so P = 1) through
  the early bias-corrected transient, so the method runs as its linearisation.
  """
  def body(carry, _):
    x, state = carry
    u, state = tx.update(lam * x, state, x)
    return (x + u, state), jnp.abs(x[0])
  x0 = jnp.full([1], 1e-100)
  _, path = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
  return path[-1] / path[steps // 2]


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "learning_rate": 0.1},
    {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9},
    {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True},
    {"name": "sgd", "learning_rate": 0.1, "momentum": 0.5, "weight_decay": 0.3},
])
def test_stability_edge_is_where_sgd_on_a_quadratic_diverges(optimizer):
  edge = stability_edge(optimizer)
  tx = optim.get("sgd")(**{k: v for k, v in optimizer.items() if k != "name"})
  growth = jax.jit(lambda lam: _late_growth(tx, lam))
  assert float(growth(0.98 * edge)) < 1e-3 and float(growth(1.02 * edge)) > 1e3
  assert preconditioned_stability_edge(optimizer) is None


@pytest.mark.parametrize("optimizer", [
    {"name": "adam", "learning_rate": 0.1, "eps": 1.0},
    {"name": "nadam", "learning_rate": 0.1, "eps": 1.0},
    {"name": "adagrad", "learning_rate": 0.1, "initial_accumulator_value": 1.0},
    {"name": "rmsprop", "learning_rate": 0.1, "eps": 1.0, "momentum": 0.8},
])
def test_preconditioned_edge_is_where_a_frozen_preconditioner_diverges(optimizer):
  # P = 1 here (see _late_growth), so λ_max(P⁻¹H) = lam.
  edge = preconditioned_stability_edge(optimizer)
  tx = optim.get(optimizer["name"])(**{k: v for k, v in optimizer.items() if k != "name"})
  growth = jax.jit(lambda lam: _late_growth(tx, lam))
  assert float(growth(0.98 * edge)) < 1e-3 and float(growth(1.02 * edge)) > 1e3
  assert stability_edge(optimizer) is None


def test_stability_edges_closed_forms_and_none():
  lr = 0.1
  assert stability_edge({"name": "sgd", "learning_rate": lr}) == pytest.approx(2 / lr)
  assert stability_edge({"name": "sgd", "learning_rate": lr, "momentum": 0.9}) == pytest.approx(3.8 / lr)
  adam = {"name": "adam", "learning_rate": lr, "b1": 0.9}
  assert preconditioned_stability_edge(adam) == pytest.approx(3.8 / (0.1 * lr))  # Cohen et al. 2022
  assert preconditioned_stability_edge({"name": "sophia_g", "learning_rate": lr}) == pytest.approx(
      (2 + 2 * 0.965) / (0.035 * lr))  # b1 from sophia_g's own default
  schedule = {"name": "constant_schedule", "value": lr}
  for name in ("sgd", "adam"):
    assert stability_edge({"name": name, "learning_rate": schedule}) is None
    assert preconditioned_stability_edge({"name": name, "learning_rate": schedule}) is None
  for name in ("lamb", "novograd", "lars", "radam", "newton_cg"):
    assert stability_edge({"name": name, "learning_rate": lr}) is None
    assert preconditioned_stability_edge({"name": name, "learning_rate": lr}) is None
