"""Monitor values against the dense Hessian / GGN of tiny float64 models at the same step."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature
from optlab_jax import monitor as monitor_module
from optlab_jax.curvature.loops import apply
from optlab_jax import optim
from optlab_jax.optim import preconditioner
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


# The CNN's oracle under -m slow: test_jitted_and_host_paths_agree[cnn] checks its host (Python-loop)
# path against the jitted one, which the MLP's oracle checks against dense matrices.
@pytest.mark.parametrize("model", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_monitor_matches_dense_oracles(model):
  args, ctx = _setup(model)
  metrics = [m for m in METRICS if m != "trace"]
  out = _call(Monitor(metrics, lanczos_iters=80, top_k=3, optimizer={"name": "adam"}, **args), ctx)
  eig, vec = np.linalg.eigh(ctx["hess"])
  g, u, h = np.asarray(ctx["g"]), np.asarray(ctx["u"]), ctx["hess"]
  nu = ravel_pytree(ctx["state"][0].nu)[0]
  count = int(ctx["state"][0].count)
  d = 1.0 / np.sqrt(np.sqrt(np.asarray(nu) / (1 - 0.999**count)) + 1e-8)
  expected = {
      "lambda_max": eig[-1], "lambda_min": eig[0], "eos_ratio": LR * eig[-1] / 2,
      "preconditioned_lambda_max": np.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1],
      # Cohen et al. 2022's edge for Adam, (2 + 2β1)/((1 − β1) lr), with optax.adam's β1 = 0.9.
      "preconditioned_eos_ratio": np.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1] * 0.1 * LR / 3.8,
      "directional_sharpness": u @ h @ u / (u @ u),
      "gradient_correlation": -(g @ u) / (np.linalg.norm(g) * np.linalg.norm(u)),
      "top_k_gradient_fraction": np.sum((vec[:, -3:].T @ g) ** 2) / (g @ g),
      "ggn_lambda_max": np.linalg.eigvalsh(ctx["ggn"])[-1],
  }
  assert set(out) == set(metrics)
  for name, value in expected.items():
    np.testing.assert_allclose(float(out[name]), value, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_gradient_correlation_alone_needs_no_curvature(model):
  # Asked for alone, no matvec exists for the loop rule to inspect; it used to crash there.
  args, ctx = _setup(model)
  g, u = np.asarray(ctx["g"]), np.asarray(ctx["u"])
  out = _call(Monitor(["gradient_correlation"], **args), ctx)
  np.testing.assert_allclose(float(out["gradient_correlation"]), -(g @ u) / (np.linalg.norm(g) * np.linalg.norm(u)),
                             rtol=1e-6)


def test_trace_within_three_standard_errors_it_reports():
  args, ctx = _setup("mlp")
  samples = 40
  out = _call(Monitor(["trace"], trace_samples=samples, **args), ctx)
  h = ctx["hess"]
  # Rademacher Hutchinson variance per probe: 2 Σ_{i≠j} H_ij²; 40 probes estimate it within ~50%.
  stderr = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / samples)
  assert abs(float(out["trace"]) - np.trace(h)) < 3 * float(out["trace_stderr"])
  assert 0.5 < float(out["trace_stderr"]) / stderr < 1.5
  exact = _call(Monitor(["trace"], trace_samples=h.shape[0], **args), ctx)    # unit vectors: exact
  assert abs(float(exact["trace"]) - np.trace(h)) < 1e-10 * abs(np.trace(h)) and float(exact["trace_stderr"]) == 0


# The MLP under -m slow: both its paths are lax.scan; the CNN's host path is the Python loop.
@pytest.mark.parametrize("model", [pytest.param("mlp", marks=pytest.mark.slow), "cnn"])
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
  hess = jax.tree_util.Partial(monitor_module._hvp_at(monitor.loss_fn), ctx["params"], None)
  assert curvature.resolve_loop("auto", hess, ctx["params"]) == ("python" if jax.default_backend() == "cpu" else "scan")
  _call(monitor, ctx, step=1)
  compiled = apply._cache_size()
  moved = jax.tree.map(lambda x: x * 1.01, ctx["params"])
  monitor(moved, ctx["grads"], ctx["updates"], ctx["state"], None, 2)
  assert apply._cache_size() == compiled, "a second monitor call at new params recompiled the matvec"


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="unknown monitor metrics"):
    Monitor(["sharpness"], loss_fn=lambda p, b: 0.0)
  with pytest.raises(ValueError, match="model_fn"):
    Monitor(["ggn_lambda_max"], loss_fn=lambda p, b: 0.0)
  with pytest.raises(ValueError, match="top_k"):
    Monitor(["top_k_gradient_fraction"], loss_fn=lambda p, b: 0.0, lanczos_iters=5, top_k=6)
  args, ctx = _setup("mlp", steps=1)
  with pytest.raises(ValueError, match=r"need Monitor\(optimizer="):
    Monitor(["preconditioned_lambda_max"], **args)
  with pytest.raises(ValueError, match="preconditioned_eos_ratio needs"):
    Monitor(["preconditioned_eos_ratio"], optimizer={"name": "sgd"}, preconditioner=lambda s: s, **args)


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


# name -> (hyperparameters, numpy transcription of the update rule's denominator P from the state
# node). Non-default hyperparameters check that they reach the preconditioner.
def _adam_p(s, b2=0.99, eps=1e-3):
  return np.sqrt(s.nu / (1 - b2 ** int(s.count))) + eps


PRECONDITIONED = {
    "adam": (dict(b2=0.99, eps=1e-3), _adam_p),
    "nadam": (dict(b2=0.99, eps=1e-3), _adam_p),
    "adamw": (dict(b2=0.99, eps=1e-3), _adam_p),
    "adam_l2": (dict(b2=0.99, eps=1e-3), _adam_p),
    "lazy_adam": (dict(b2=0.99, eps=1e-3), _adam_p),
    "amsgrad": (dict(eps=1e-3, eps_root=1e-4), lambda s: np.sqrt(s.nu_max + 1e-4) + 1e-3),
    "adagrad": (dict(eps=1e-3), lambda s: np.sqrt(s.sum_of_squares + 1e-3)),
    "rmsprop": (dict(eps=1e-3, decay=0.8), lambda s: np.sqrt(s.nu + 1e-3)),
    "rmsprop_centered": (dict(eps=1e-3, decay=0.8, centered=True, bias_correction=True),
                         lambda s: np.sqrt(s.nu / (1 - 0.8 ** int(s.count)) - (s.mu / (1 - 0.8 ** int(s.count))) ** 2 + 1e-3)),
    "rmsprop_eps_outside": (dict(eps=1e-3, decay=0.8, eps_in_sqrt=False), lambda s: np.sqrt(s.nu) + 1e-3),
    # Two estimates in 3 steps (steps 1 and 3), the square root raised to k = 0.5.
    "adahessian": (dict(b2=0.9, eps=1e-3, hessian_power=0.5, update_interval=2),
                   lambda s: np.sqrt(s.nu / (1 - 0.9 ** 2)) ** 0.5 + 1e-3),
    "sophia_h": (dict(eps=1e-3, update_interval=1), lambda s: np.maximum(0.01 * s.nu, 1e-3)),
    "sophia_g": (dict(eps=1e-3, update_interval=1), lambda s: np.maximum(0.05 * s.nu, 1e-3)),
}


def _steps(tx, model_fn, obj, params, steps=3):
  state = tx.init(params)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=obj, model_fn=model_fn))
  for _ in range(steps):
    updates, state = update(jax.grad(obj)(params), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _node_fields(state):
  """The fields of the first optimizer-statistics node of `state`, raveled to numpy."""
  is_node = lambda x: hasattr(x, "_fields") and ("nu" in x._fields or "sum_of_squares" in x._fields)
  node = next(x for x in jax.tree.leaves(state, is_leaf=is_node) if is_node(x))
  return type("Fields", (), {k: np.asarray(ravel_pytree(getattr(node, k))[0]) if k != "count" else int(node.count)
                             for k in node._fields if k != "key"})


@pytest.mark.parametrize("case", sorted(PRECONDITIONED))
def test_each_optimizer_exposes_its_own_preconditioner(case):
  """P from `preconditioner_fn` equals the numpy transcription of the optimizer's update rule (Adam's
  formula, the monitor's old guess for every state with `nu` and `count`, fails for Sophia and
  AdaHessian with hessian_power; the dense check of λ_max(P^{-1/2} H P^{-1/2}) is below)."""
  name = case.split("_centered")[0].split("_eps_outside")[0]
  hp, expected_p = PRECONDITIONED[case]
  model_fn, output_loss_fn, params = M.tiny_mlp(jax.random.key(1))
  obj = M.obj_fn(model_fn, output_loss_fn)
  params, state = _steps(optim.get(name)(1e-2, **hp), model_fn, obj, params)
  got = ravel_pytree(preconditioner.preconditioner_fn(name, **hp)(state))[0]
  np.testing.assert_allclose(np.asarray(got), expected_p(_node_fields(state)), rtol=1e-12)


@pytest.mark.parametrize("case", ["sophia_h", "adahessian"])
def test_preconditioned_lambda_max_matches_dense_matrix(case):
  hp, expected_p = PRECONDITIONED[case]
  model_fn, output_loss_fn, params = M.tiny_mlp(jax.random.key(1))
  obj = M.obj_fn(model_fn, output_loss_fn)
  params, state = _steps(optim.get(case)(1e-2, **hp), model_fn, obj, params)
  d = 1 / np.sqrt(expected_p(_node_fields(state)))
  hess = np.asarray(M.dense_hessian(obj, params))
  monitor = Monitor(["preconditioned_lambda_max"], lambda q, b: obj(q), optimizer={"name": case, **hp}, lanczos_iters=80)
  got = monitor(params, None, None, state, None, 0)["preconditioned_lambda_max"]
  np.testing.assert_allclose(float(got), np.linalg.eigvalsh(d[:, None] * hess * d[None, :])[-1], rtol=1e-6)


def test_preconditioner_reads_injected_hyperparameters_through_wrappers():
  model_fn, output_loss_fn, params = M.tiny_mlp(jax.random.key(1))
  obj = M.obj_fn(model_fn, output_loss_fn)
  injected = optax.inject_hyperparams(optim.get("adam"))(learning_rate=1e-2, b2=0.9)
  _, state = _steps(optax.chain(optax.clip_by_global_norm(1.0), injected), model_fn, obj, params)
  got = ravel_pytree(preconditioner.preconditioner_fn("adam", b2=0.999)(state))[0]  # the live b2 wins
  np.testing.assert_allclose(np.asarray(got), _adam_p(_node_fields(state), b2=0.9, eps=1e-8), rtol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "lamb", "novograd", "lars", "radam", "newton_cg", "kfac"])
def test_optimizers_without_a_diagonal_preconditioner_refuse(name):
  with pytest.raises(ValueError, match=f"optimizer '{name}' has no diagonal preconditioner"):
    Monitor(["preconditioned_lambda_max"], lambda p, b: 0.0, optimizer={"name": name})


def test_eos_ratio_uses_the_optimizers_own_edge():
  """eos_ratio = λ_max / edge against the dense λ_max; the edge is the optimizer's own: 2/lr for GD,
  (2 + 2β)/lr for heavy ball, also with lr and β injected (a vmapped sweep's case)."""
  args, ctx = _setup("mlp")
  lam = np.linalg.eigvalsh(ctx["hess"])[-1]
  heavy_ball = Monitor(["eos_ratio"], lanczos_iters=80, optimizer={"name": "sgd", "momentum": 0.9}, **args)
  np.testing.assert_allclose(float(_call(heavy_ball, ctx)["eos_ratio"]), LR * lam / 3.8, rtol=1e-6)
  injected = optax.inject_hyperparams(optim.get("sgd"))(learning_rate=0.3, momentum=0.5)
  out = jax.jit(lambda p, s: heavy_ball(p, None, None, s, None, 0))(ctx["params"], injected.init(ctx["params"]))
  np.testing.assert_allclose(float(out["eos_ratio"]), 0.3 * lam / 3.0, rtol=1e-6)
  no_lr = {k: v for k, v in args.items() if k != "learning_rate"}
  for optimizer, kwargs, edge in [({"name": "sgd"}, args, 2 / LR),
                                  ({"name": "sgd", "momentum": 0.9, "nesterov": True}, args, 3.8 / (2.8 * LR)),
                                  ({"name": "adam"}, args, 2 / LR),   # no edge on λ_max(H): GD's, as documented
                                  (None, args, 2 / LR),
                                  ({"name": "sgd", "learning_rate": 0.2, "momentum": 0.9}, no_lr, 3.8 / 0.2)]:
    monitor = Monitor(["eos_ratio"], optimizer=optimizer, **kwargs)
    np.testing.assert_allclose(float(monitor._edge((), 0, False)), edge, rtol=1e-12, err_msg=str(optimizer))


def test_optimizer_groups_of_one_problem_trace_the_shared_program_once(monkeypatch):
  """A sweep's groups differ in their optimizer: the metrics that never read opt_state are one
  program traced once for all of them, with the numbers of each group's own inlined monitor and
  the quadratic's closed form (full-batch Hessian A, λ_max = condition)."""
  from optlab_jax import problems, train

  problem, lrs, metrics = problems.build("quadratic", dim=4, condition=10.0), np.array([0.05, 0.1]), (
      "lambda_max", "eos_ratio", "gradient_correlation")
  probe = lambda name: Monitor(metrics, problem.loss, optimizer={"name": name, "learning_rate": 0.05}, lanczos_iters=4)
  fit = lambda name, monitor: train.fit_vmapped(problem, optim.get(name), {"learning_rate": lrs}, np.arange(2),
                                                steps=4, monitor=monitor, monitor_every=2, loop="scan")
  traces, measure = [], monitor_module._measure_shared
  monkeypatch.setattr(monitor_module, "_measure_shared", lambda *a: traces.append(a[0]) or measure(*a))
  shared = {name: fit(name, probe(name)) for name in ("sgd", "adam")}
  assert len(traces) == 1
  for name, histories in shared.items():
    inlined = probe(name)
    unshared = fit(name, lambda *a: inlined(*a))  # a plain function: train jits it into a program of its own
    for history, reference, lr in zip(histories, unshared, lrs):
      for metric in metrics:
        np.testing.assert_allclose(history.monitor[metric], reference.monitor[metric], rtol=1e-6, err_msg=metric)
      np.testing.assert_allclose(history.monitor["lambda_max"], 10.0, rtol=1e-5)
      np.testing.assert_allclose(history.monitor["eos_ratio"], lr * 10.0 / 2, rtol=1e-5)  # GD's edge 2/lr
  assert len(traces) == 3  # the two inlined monitors traced their own
