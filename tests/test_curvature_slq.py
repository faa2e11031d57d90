"""SLQ quadrature, moments and density against tr(Hᵏ)/n from the dense Hessian and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

from optlab_jax import curvature
from tests.curvature_models import case


def test_each_probe_quadrature_reproduces_its_quadratic_forms_exactly():
  c = case("mlp")
  nodes, weights = curvature.slq_quadrature(c.hvp, c.params,
                                            jax.random.key(0), num_iters=3, num_probes=2)
  assert np.allclose(np.sum(weights, axis=1), 1.0)
  n = c.hessian.shape[0]
  for p, probe_key in enumerate(jax.random.split(jax.random.key(0), 2)):
    z = np.asarray(ravel_pytree(curvature.rademacher_like(jax.random.split(probe_key)[0], c.params))[0])
    for k in range(1, 6):                                                  # exact up to 2m − 1 = 5
      want = z @ np.linalg.matrix_power(c.hessian, k) @ z / n
      assert abs(np.sum(weights[p] * nodes[p] ** k) - want) < 1e-9 * np.abs(want).max(initial=1e-12)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_moments_within_probe_error_of_exact_traces(name):
  c = case(name)
  num_probes, n = 60, c.hessian.shape[0]
  got = curvature.slq_moments(c.hvp, c.params, jax.random.key(1),
                              num_iters=8, num_probes=num_probes)
  for k in range(1, 5):
    a = np.linalg.matrix_power(c.hessian, k)
    se = np.sqrt(2.0 * (np.sum(a * a) - np.sum(np.diag(a) ** 2)) / num_probes) / n
    assert abs(got[k - 1] - np.trace(a) / n) < 3.0 * se


def test_density_integrates_to_one_with_broadened_moments():
  c = case("mlp")
  matvec = c.hvp
  key, sigma = jax.random.key(2), 0.02
  grid, density = curvature.slq_density(matvec, c.params, key, 8, 4, num_points=4000, sigma=sigma)
  m1, m2 = curvature.slq_moments(matvec, c.params, key, 8, 4, max_order=2)
  integrate = lambda f: np.trapezoid(f * np.asarray(density), np.asarray(grid))
  assert abs(integrate(1.0) - 1.0) < 1e-6
  assert abs(integrate(np.asarray(grid)) - m1) < 1e-6
  assert abs(integrate(np.asarray(grid) ** 2) - (m2 + sigma**2)) < 1e-6   # N(θ, σ²) adds σ²


def test_gaussian_density_matches_scipy():
  nodes = jnp.asarray([[0.0, 1.0], [2.0, -1.0]], jnp.float64)
  weights = jnp.asarray([[0.25, 0.75], [0.5, 0.5]], jnp.float64)
  grid = jnp.linspace(-3.0, 4.0, 50, dtype=jnp.float64)
  want = sum(float(w) * stats.norm.pdf(np.asarray(grid), float(t), 0.3)
             for ts, ws in zip(nodes, weights) for t, w in zip(ts, ws)) / 2
  np.testing.assert_allclose(curvature.gaussian_density(nodes, weights, grid, 0.3), want, rtol=1e-12)


def test_python_loop_and_scan_give_the_same_quadrature():
  c = case("cnn")
  matvec = c.hvp
  py = curvature.slq_quadrature(matvec, c.params, jax.random.key(3), 8, 2, loop="python")
  xla = curvature.slq_quadrature(matvec, c.params, jax.random.key(3), 8, 2, loop="scan")
  np.testing.assert_allclose(py[0], xla[0], rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(py[1], xla[1], rtol=1e-8, atol=1e-13)
