"""Landscape tools against closed forms, numpy transcriptions and plain Python loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import landscape, landscape_plots, problems, results, train
from optlab_jax.monitor import Monitor, layer_names
from optlab_jax.problems import models


def _quadratic(dim=6):
  """The registry's quadratic and its dense A, b: f(x) = ½‖Rx − b‖² = ½ xᵀAx − bᵀRx + ½‖b‖²."""
  problem = problems.build("quadratic", dim=dim, condition=30.0, dtype="float64")
  rows, targets = np.asarray(problem.data["train"]["x"]), np.asarray(problem.data["train"]["y"])
  return problem, rows, targets


def _quadratic_loss(problem):
  return lambda p, data: problem.metrics_fn(data, p)["loss"]


def test_slice_2d_of_a_quadratic_equals_the_closed_form():
  problem, rows, targets = _quadratic()
  theta = problem.init_params(jax.random.key(0))
  u, v = (landscape.random_direction(jax.random.key(k), theta, one_dim="include") for k in (1, 2))
  xs, ys = np.linspace(-1.0, 1.5, 7), np.linspace(-2.0, 1.0, 5)
  got = landscape.slice_2d(_quadratic_loss(problem), theta, u, v, xs, ys, args=(problem.data,))
  t, du, dv = (np.asarray(d["x"]) for d in (theta, u, v))
  a, g = rows.T @ rows, rows.T @ (rows @ t - targets)
  f0 = 0.5 * np.sum((rows @ t - targets) ** 2)
  x, y = np.meshgrid(xs, ys)
  want = f0 + x * (g @ du) + y * (g @ dv) + 0.5 * (x**2 * (du @ a @ du) + 2 * x * y * (du @ a @ dv) + y**2 * (dv @ a @ dv))
  assert got.shape == (len(ys), len(xs))
  np.testing.assert_allclose(got, want, rtol=1e-10)
  line = landscape.slice_1d(_quadratic_loss(problem), theta, u, xs, args=(problem.data,), chunk_size=3)
  np.testing.assert_allclose(line, f0 + xs * (g @ du) + 0.5 * xs**2 * (du @ a @ du), rtol=1e-10)


def _numpy_filter_normalize(d, w, one_dim):
  if w.ndim <= 1:
    return np.zeros_like(d) if one_dim == "ignore" else d * np.linalg.norm(w) / (np.linalg.norm(d) + 1e-10)
  out = np.empty_like(d)
  for j in range(w.shape[-1]):  # the filter axis of Flax's (in, out) and HWIO kernels is the last one
    out[..., j] = d[..., j] * np.linalg.norm(w[..., j]) / (np.linalg.norm(d[..., j]) + 1e-10)
  return out


@pytest.mark.parametrize("one_dim", ["ignore", "include"])
def test_filter_normalisation_equals_numpy(one_dim):
  rng = np.random.default_rng(0)
  shapes = {"dense": {"kernel": (7, 4), "bias": (4,)}, "conv": {"kernel": (3, 3, 2, 5), "bias": (5,)}, "ln": {"scale": (4,)}}
  params = jax.tree.map(lambda s: rng.normal(size=s), shapes, is_leaf=lambda s: isinstance(s, tuple))
  direction = jax.tree.map(lambda s: rng.normal(size=s), shapes, is_leaf=lambda s: isinstance(s, tuple))
  got = landscape.filter_normalize(jax.tree.map(jnp.asarray, direction), jax.tree.map(jnp.asarray, params),
                                   one_dim=one_dim)
  want = jax.tree.map(lambda d, w: _numpy_filter_normalize(d, w, one_dim), direction, params)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-300), got, want)
  layer = landscape.filter_normalize(direction, params, normalization="layer")
  k, dk = params["conv"]["kernel"], direction["conv"]["kernel"]
  np.testing.assert_allclose(layer["conv"]["kernel"], dk * np.linalg.norm(k) / (np.linalg.norm(dk) + 1e-10), rtol=1e-12)


def test_random_direction_matches_every_filter_norm_of_a_flax_cnn():
  init, _ = models.functional(lambda rngs: models.CNN((8, 8, 1), (3, 4), 10, dtype=jnp.float64, rngs=rngs))
  params = jax.jit(init)(jax.random.key(0))
  d = landscape.random_direction(jax.random.key(1), params)
  for name in ("conv1", "conv2", "head"):
    kernel, dk = np.asarray(params[name]["kernel"]), np.asarray(d[name]["kernel"])
    norms = lambda k: np.sqrt(np.sum(k.reshape(-1, k.shape[-1]) ** 2, axis=0))  # one per output unit
    np.testing.assert_allclose(norms(dk), norms(kernel), rtol=1e-8)
    assert not np.any(np.asarray(d[name]["bias"]))


def test_interpolation_of_a_convex_function_is_monotonic_with_the_closed_form_values():
  problem, rows, targets = _quadratic()
  start = problem.init_params(jax.random.key(3))
  solution = {"x": jnp.asarray(np.linalg.solve(rows, targets))}
  alphas = np.linspace(0.0, 1.0, 11)
  out = landscape.interpolate(_quadratic_loss(problem), start, solution, alphas, args=(problem.data,))
  f0 = 0.5 * np.sum((rows @ np.asarray(start["x"]) - targets) ** 2)
  np.testing.assert_allclose(out.values, (1 - alphas) ** 2 * f0, rtol=1e-9, atol=1e-12)
  assert bool(out.is_monotonic) and float(out.max_bump) <= 1e-12


def test_interpolation_across_a_double_well_is_not_monotonic():
  double_well = lambda p: {"loss": jnp.sum((p["x"] ** 2 - 1) ** 2), "x": p["x"][0]}
  alphas = np.linspace(0.0, 1.0, 21)  # from x = −1 to x = 1: the loss rises from 0 to 1 at x = 0
  out = landscape.interpolate(double_well, {"x": jnp.array([-1.0])}, {"x": jnp.array([1.0])}, alphas)
  np.testing.assert_allclose(out.values["x"], 2 * alphas - 1, atol=1e-12)
  np.testing.assert_allclose(out.values["loss"], ((2 * alphas - 1) ** 2 - 1) ** 2, atol=1e-12)
  np.testing.assert_allclose(out.max_bump, 1.0, atol=1e-12)
  assert not bool(out.is_monotonic)


def test_max_bump_and_barrier_against_brute_force():
  values = np.random.default_rng(1).normal(size=30)
  brute = max(values[j] - values[i] for i in range(30) for j in range(i + 1, 30))
  np.testing.assert_allclose(landscape.max_bump(values), max(brute, 0.0), rtol=1e-12)
  ts = np.linspace(0, 1, 30)
  np.testing.assert_allclose(landscape.barrier(ts, values), max(values - (1 - ts) * values[0] - ts * values[-1]))


def _ring(p):
  """Two minima at (±1, 0) on a ring valley; the straight line between them climbs to 1 at (0, 0)."""
  x, y = p["w"][0], p["w"][1]
  return (x * x + y * y - 1) ** 2 + 0.1 * y * y - 0.1 * y * (1 - x * x)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_connect_finds_a_curve_with_a_lower_barrier_than_the_line(optimizer):
  a, b = {"w": jnp.array([-1.0, 0.0])}, {"w": jnp.array([1.0, 0.0])}
  for p in (a, b):  # both ends are minima: zero gradient, positive definite Hessian
    np.testing.assert_allclose(jax.grad(_ring)(p)["w"], 0.0, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(jax.hessian(lambda w: _ring({"w": w}))(p["w"])) > 0)
  lr = {"adam": 0.05, "sgd": 0.1}[optimizer]
  out = landscape.connect(_ring, a, b, optimizer=optimizer, learning_rate=lr, steps=300, num_points=41)
  ts = np.linspace(0, 1, 41)
  np.testing.assert_allclose(out.line, (((2 * ts - 1) ** 2) - 1) ** 2, atol=1e-12)
  np.testing.assert_allclose(out.line_barrier, 1.0, atol=1e-12)
  theta = np.asarray(out.control["w"])
  points = (1 - ts)[:, None] ** 2 * np.array([-1.0, 0]) + (2 * ts * (1 - ts))[:, None] * theta + ts[:, None] ** 2 * np.array([1.0, 0])
  np.testing.assert_allclose(out.curve, [float(_ring({"w": jnp.asarray(q)})) for q in points], rtol=1e-10, atol=1e-12)
  assert float(out.curve_barrier) < 0.15, (out.curve_barrier, theta)
  assert out.train_loss.shape == (300,)


def test_connect_names_bad_arguments():
  a = {"w": jnp.zeros(2)}
  with pytest.raises(ValueError, match="adamm"):
    landscape.connect(_ring, a, a, optimizer="adamm")
  with pytest.raises(ValueError, match="steps"):
    landscape.connect(_ring, a, a, steps=0)


def test_vmapped_and_chunked_grids_equal_a_python_loop_over_points():
  problem = problems.build("digits_mlp", hidden=(8,), dtype="float64")
  params = problem.init_params(jax.random.key(0))
  dx, dy = (landscape.random_direction(jax.random.key(k), params) for k in (1, 2))
  xs, ys = np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)
  metrics = lambda p, data: problem.metrics_fn(data, p)
  point = jax.jit(metrics)
  loop = {name: np.zeros((3, 4)) for name in ("loss", "test_loss", "test_accuracy")}
  for i, y in enumerate(ys):
    for j, x in enumerate(xs):
      shifted = jax.tree.map(lambda p, a, b: np.asarray(p) + x * np.asarray(a) + y * np.asarray(b), params, dx, dy)
      for name, value in point(shifted, problem.data).items():
        loop[name][i, j] = value
  for kwargs in ({"chunk_size": None}, {}, {"chunk_size": 5}, {"chunk_size": 5, "loop": "python"}):
    got = landscape.slice_2d(metrics, params, dx, dy, xs, ys, args=(problem.data,), **kwargs)
    for name in loop:
      np.testing.assert_allclose(got[name], loop[name], rtol=1e-10, err_msg=f"{name} {kwargs}")


def _conv_loss(p, x):
  y = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.mean(jnp.tanh(y) ** 2)


@pytest.mark.parametrize("loop", ["auto", "scan"])
def test_chunked_conv_grid_equals_pointwise_values_on_both_loops(loop):
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 2), jnp.float64)
  params = {"k": jax.random.normal(jax.random.key(1), (3, 3, 2, 3), jnp.float64)}
  d = landscape.random_direction(jax.random.key(2), params)
  alphas = [0.0, 0.5, 1.0]
  want = [_conv_loss({"k": np.asarray(params["k"]) + a * np.asarray(d["k"])}, x) for a in alphas]
  got = landscape.slice_1d(_conv_loss, params, d, alphas, args=(x,), chunk_size=2, loop=loop)
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_pca_directions_equal_numpys_svd_of_the_centred_trajectory():
  rng = np.random.default_rng(2)
  steps = 9
  trajectory = {"a": rng.normal(size=(steps, 3, 2)) * np.arange(1, 7).reshape(3, 2), "b": rng.normal(size=(steps, 4))}
  out = landscape.pca_directions(jax.tree.map(jnp.asarray, trajectory))
  x = np.concatenate([trajectory["a"].reshape(steps, -1), trajectory["b"]], axis=1)
  _, s, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
  got = np.stack([np.concatenate([np.ravel(d["a"]), np.ravel(d["b"])]) for d in out.directions])
  signs = np.sign(np.sum(got * vt[:2], axis=1))
  np.testing.assert_allclose(got, vt[:2] * signs[:, None], atol=1e-10)
  np.testing.assert_allclose(out.coords, (x - x[-1]) @ got.T, atol=1e-10)
  np.testing.assert_allclose(out.explained_variance, s[:2] ** 2 / np.sum(s**2), rtol=1e-10)
  assert np.all(got[np.arange(2), np.argmax(np.abs(got), axis=1)] > 0)  # the documented sign convention


def test_bad_arguments_name_themselves():
  params = {"x": jnp.ones(3)}
  with pytest.raises(ValueError, match="normalization"):
    landscape.random_direction(jax.random.key(0), params, normalization="filters")
  with pytest.raises(ValueError, match="alphas"):
    landscape.interpolate(lambda p: jnp.sum(p["x"]), params, params, [0.0, 0.5, 0.2])
  with pytest.raises(ValueError, match="chunk_size"):
    landscape.slice_1d(lambda p: jnp.sum(p["x"]), params, params, [0.0, 1.0], chunk_size=0)
  with pytest.raises(ValueError, match="at least 2"):
    landscape.pca_directions({"x": jnp.ones((1, 3))})


def _tiny_classifier():
  """A 4 → 5 → 3 tanh MLP (43 params) on fixed data, its loss, and its dense Hessian's eigenvalues."""
  keys = jax.random.split(jax.random.key(5), 5)
  params = {"l1": {"w": jax.random.normal(keys[0], (4, 5), jnp.float64), "b": 0.1 * jax.random.normal(keys[1], (5,), jnp.float64)},
            "l2": {"w": jax.random.normal(keys[2], (5, 3), jnp.float64), "b": jnp.zeros(3, jnp.float64)}}
  x, y = jax.random.normal(keys[3], (12, 4), jnp.float64), jax.random.randint(keys[4], (12,), 0, 3)

  def loss(p, batch=None):
    logits = jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"][None]) @ p["l2"]["w"] + p["l2"]["b"][None]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0])

  flat, unravel = ravel_pytree(params)
  hess = np.asarray(jax.jit(jax.hessian(lambda v: loss(unravel(v))))(flat))
  return params, loss, hess


def test_monitor_spectral_density_and_layer_lambda_max_match_the_dense_hessian():
  params, loss, hess = _tiny_classifier()
  n = hess.shape[0]
  out = Monitor(["spectral_density", "layer_lambda_max"], loss, lanczos_iters=n, slq_probes=2)(
      params, params, params, None, None, 3)
  nodes, weights = np.asarray(out["spectral_density"])
  assert nodes.shape == weights.shape == (2, n)
  eig = np.linalg.eigvalsh(hess)
  for probe in range(2):  # n Lanczos steps: the quadrature nodes are H's n eigenvalues
    np.testing.assert_allclose(np.sort(nodes[probe]), eig, atol=1e-8 * np.abs(eig).max())
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-10)
  # ravel_pytree orders leaves as tree.flatten does: l1/b (5), l1/w (20), l2/b (3), l2/w (15).
  blocks = [np.r_[0:25], np.r_[25:43]]
  want = [np.linalg.eigvalsh(hess[np.ix_(b, b)])[-1] for b in blocks]
  np.testing.assert_allclose(out["layer_lambda_max"], want, rtol=1e-8)
  assert layer_names(params) == ["l1", "l2"]


@pytest.mark.parametrize("vmapped", [False, True])
def test_array_valued_monitor_metrics_reach_the_history(vmapped):
  problem, rows, _ = _quadratic(dim=5)
  monitor = Monitor(["spectral_density", "layer_lambda_max", "lambda_max"], problem.loss, lanczos_iters=5)
  kwargs = dict(steps=4, monitor=monitor, monitor_every=2)
  if vmapped:
    histories = train.fit_vmapped(problem, lambda learning_rate: optax.sgd(learning_rate), {"learning_rate": [0.01, 0.02]},
                                  [0, 1], **kwargs)
  else:
    histories = [train.fit(problem, optax.sgd(0.01), **kwargs)]
  eig = np.linalg.eigvalsh(rows.T @ rows)  # the quadratic's Hessian, the same at every step
  for history in histories:
    density = history.monitor["spectral_density"]
    assert density.shape == (2, 2, 1, 5) and history.monitor["layer_lambda_max"].shape == (2, 1)
    np.testing.assert_allclose(np.sort(density[:, 0, 0], axis=-1), np.broadcast_to(eig, (2, 5)), rtol=1e-8)
    np.testing.assert_allclose(history.monitor["layer_lambda_max"][:, 0], eig[-1], rtol=1e-8)
    np.testing.assert_allclose(history.monitor["lambda_max"], eig[-1], rtol=1e-8)


def test_spectral_density_figure_draws_the_gaussian_mixture_and_the_exact_eigenvalues():
  nodes, weights = np.array([[0.0, 1.0, 5.0]]), np.array([[0.5, 0.3, 0.2]])
  exact = np.array([0.0, 0.9, 1.1, 5.0])
  fig = landscape_plots.spectral_density(nodes, weights, exact=exact, sigma=0.1)
  slq, reference, ticks = fig.axes[0].get_lines()
  grid = slq.get_xdata()
  mixture = lambda c, w: np.sum(w * np.exp(-0.5 * ((grid[:, None] - c) / 0.1) ** 2), axis=1) / (0.1 * np.sqrt(2 * np.pi))
  np.testing.assert_allclose(slq.get_ydata(), np.maximum(mixture(nodes[0], weights[0]), 1e-12), rtol=1e-6)
  np.testing.assert_allclose(reference.get_ydata(), np.maximum(mixture(exact, 0.25), 1e-12), rtol=1e-6)
  np.testing.assert_allclose(ticks.get_xdata(), exact)
  assert fig.axes[0].get_yscale() == "log" and grid[0] <= -0.5 and grid[-1] >= 5.5


def test_plot_directory_draws_the_monitor_density_and_every_saved_landscape(tmp_path):
  history = train.History(
      loss=np.ones(4), eval_steps=np.array([4]), eval={"loss": np.ones(1)}, monitor_steps=np.array([2, 4]),
      monitor={"spectral_density": np.stack([np.stack([[[0.0, 2.0]], [[0.5, 0.5]]])] * 2),
               "layer_lambda_max": np.array([[1.0, 2.0], [1.5, 2.5]])}, final={"loss": 1.0},
      status="ok", diverged_at=None, params=None, loop="scan", wall_time=1.0, compile_time=0.1)
  cfg = {"problem": {"name": "quadratic"}, "optimizer": {"name": "sgd", "learning_rate": 0.1}, "train": {"steps": 4},
         "monitor": None, "seed": 0}
  record = results.Store(tmp_path).add(cfg, "sgd", history)
  xs, ys = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
  trajectory = np.array([[0.5, 0.5], [0.2, 0.1], [0.0, 0.0]])
  landscape_plots.save(tmp_path, "run0", slice2d_xs=xs, slice2d_ys=ys, slice2d_loss=1 + np.add.outer(ys**2, xs**2),
                       trajectory=trajectory, explained=[0.9, 0.05], interp_alphas=xs, interp_loss=xs**2)
  paths = landscape_plots.plot_directory(tmp_path)
  assert sorted(p.name for p in paths) == sorted([f"spectral_density_{record['point']}.png", "landscape_run0_slice2d.png",
                                                  f"layer_lambda_max_{record['point']}.png", "landscape_run0_interpolation.png"])
  assert all(p.stat().st_size > 10_000 for p in paths)
  fig = landscape_plots.contour(xs, ys, 1 + np.add.outer(ys**2, xs**2), trajectory=trajectory)
  path_line = fig.axes[0].get_lines()[0]
  np.testing.assert_allclose(np.c_[path_line.get_xdata(), path_line.get_ydata()], trajectory)
