"""Landscapes: critical points have zero gradient and the stated Hessian signature (jax.hessian);
values and gradients equal the hand-derived formulas."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab_jax import problems

# name, options, f(x) and its gradient derived by hand, in numpy.
CASES = [
    ("cubic", {}, lambda x: x[0] ** 3, lambda x: 3 * x**2),
    ("saddle", {}, lambda z: z[0] ** 2 - z[1] ** 2, lambda z: np.array([2 * z[0], -2 * z[1]])),
    ("xcos", {}, lambda x: x[0] * np.cos(np.pi * x[0]),
     lambda x: np.cos(np.pi * x) - np.pi * x * np.sin(np.pi * x)),
    ("plateau", {"power": 2}, lambda w: (w[0] ** 2 - 1) ** 2, lambda w: 4 * w * (w**2 - 1)),
    ("plateau", {}, lambda w: (w[0] ** 7 - 1) ** 2, lambda w: 14 * w**6 * (w**7 - 1)),
    ("plateau", {"power": 8}, lambda w: (w[0] ** 8 - 1) ** 2, lambda w: 16 * w**7 * (w**8 - 1)),
    ("tanh_vanishing", {}, lambda x: np.tanh(x[0]), lambda x: 1 - np.tanh(x) ** 2),
]
IDS = [f"{name}-{options}" for name, options, *_ in CASES]


def signature(hessian, tol=1e-9):
  eig = np.linalg.eigvalsh(np.atleast_2d(hessian))
  return (int(np.sum(eig > tol)), int(np.sum(eig < -tol)), int(np.sum(np.abs(eig) <= tol)))


@pytest.mark.parametrize("name,options,f,grad", CASES, ids=IDS)
def test_critical_points_values_and_gradients(name, options, f, grad):
  problem = problems.build(name, dtype="float64", **options)
  assert problem.likelihood is None
  params = problem.init_params(jax.random.key(0))
  loss = lambda x: problem.loss({"x": x}, problem.sample_batch(jax.random.key(0)))
  value_and_grad, hessian = jax.jit(jax.value_and_grad(loss)), jax.jit(jax.hessian(loss))
  points = problem.info["critical_points"]
  for point in points:
    x = jnp.asarray(point["x"], jnp.float64)
    np.testing.assert_allclose(value_and_grad(x)[1], 0.0, atol=1e-12)
    assert signature(hessian(x)) == point["hessian_signature"], point
  rng = np.random.default_rng(0)
  for x in [np.asarray(params["x"])] + [rng.uniform(-1.5, 1.5, params["x"].shape) for _ in range(3)]:
    value, g = value_and_grad(jnp.asarray(x))
    np.testing.assert_allclose(value, f(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g, grad(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jax.jit(problem.eval_metrics)({"x": jnp.asarray(x)})["loss"], f(x), rtol=1e-12)


def test_signatures_stated_and_starts():
  kinds = {name: [p["hessian_signature"] for p in problems.build(name).info["critical_points"]]
           for name in ("cubic", "saddle", "xcos", "plateau", "tanh_vanishing")}
  assert kinds == {"cubic": [(0, 0, 1)], "saddle": [(1, 1, 0)], "xcos": [(0, 1, 0), (1, 0, 0), (0, 1, 0), (1, 0, 0)],
                   "plateau": [(1, 0, 0), (0, 0, 1)], "tanh_vanishing": []}
  # x·cos(πx) on the chapter's [−1, 2]: the listed global minimum is the grid's, the local one [−1, 0.5]'s.
  grid = np.linspace(-1.0, 2.0, 300001)
  values = grid * np.cos(np.pi * grid)
  info = problems.build("xcos").info
  np.testing.assert_allclose(info["critical_points"][3]["x"][0], grid[values.argmin()], atol=1e-5)
  np.testing.assert_allclose(info["global_minimum"], values.min(), rtol=1e-9)
  left = grid < 0.5
  np.testing.assert_allclose(info["critical_points"][1]["x"][0], grid[left][values[left].argmin()], atol=1e-5)
  # d2l: f'(4) = 1 − tanh²(4) ≈ 0.0013 at the tanh example's start.
  tanh = problems.build("tanh_vanishing", dtype="float64")
  g = jax.grad(lambda p: tanh.loss(p, {"x": None}))(tanh.init_params(jax.random.key(0)))
  np.testing.assert_allclose(g["x"], [0.0013409506830258655], rtol=1e-12)
  assert math.isclose(tanh.info["infimum"], -1.0)
  noisy = problems.build("saddle", start=(0.5, 0.0), init_noise=0.1, dtype="float64")
  keys = jax.random.split(jax.random.key(1), 3)
  starts = jax.vmap(noisy.init_params)(keys)["x"]
  noise = np.asarray(jax.vmap(lambda k: jax.random.normal(k, (2,), jnp.float64))(keys))
  np.testing.assert_allclose(starts, np.array([[0.5, 0.0]]) + 0.1 * noise, rtol=1e-12)
  with pytest.raises(ValueError, match="^start=.* expected 2"):
    problems.build("saddle", start=(1.0,))
  with pytest.raises(ValueError, match="^power=1 is out of range"):
    problems.build("plateau", power=1)
