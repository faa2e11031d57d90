"""Hutchinson diagonal/trace and Hutch++ against the dense Hessian/GGN and Rademacher variance
formulas; their standard errors against the true value over many seeds; `rtol` on quadratics
with a chosen spectrum; the exact path against jnp.trace(jax.hessian)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature
from tests.curvature_models import case


def _trace_variance(a):
  # Var[zᵀAz] for Rademacher z and symmetric A: 2 (‖A‖_F² − Σ A_ii²).
  return 2.0 * (np.sum(a * a) - np.sum(np.diag(a) ** 2))


def test_diag_mean_within_three_standard_errors_of_exact_diagonal():
  c = case("mlp")
  h, num_samples = c.hessian, 4000
  got = ravel_pytree(curvature.hutchinson_diag(c.hvp, c.params,
                                               jax.random.key(0), num_samples))[0]
  # Var[z_i (Hz)_i] = Σ_{j≠i} H_ij².
  se = np.sqrt((np.sum(h * h, axis=1) - np.diag(h) ** 2) / num_samples)
  z = np.abs(np.asarray(got) - np.diag(h)) / se
  assert np.mean(z < 3.0) > 0.97 and np.max(z) < 4.5


def test_trace_unbiased_and_variance_shrinks_as_one_over_samples():
  c = case("cnn")
  matvec = c.hvp
  exact, var = np.trace(c.hessian), _trace_variance(c.hessian)
  keys = jax.random.split(jax.random.key(1), 2000)
  for num_samples in (1, 8):
    est = np.asarray(jax.jit(jax.vmap(lambda k: curvature.hutchinson_trace(matvec, c.params, k, num_samples).value))(keys))
    assert abs(est.mean() - exact) < 3.0 * np.sqrt(var / num_samples / keys.shape[0])
    # Sample variance of 2000 draws: relative spread about √(2/2000) plus kurtosis; 20% is ample.
    assert abs(est.var() / (var / num_samples) - 1.0) < 0.2


def _dense_ggn(c):
  ggn = curvature.ggn_fn(c.model_fn, c.output_loss_fn, c.params)
  flat, unravel = ravel_pytree(c.params)
  eye = jnp.eye(flat.size, dtype=flat.dtype)
  return ggn, np.asarray(jax.jit(jax.vmap(lambda e: ravel_pytree(ggn(unravel(e)))[0]))(eye))


def test_hutchpp_is_exact_when_the_sketch_spans_a_low_rank_matrix():
  c = case("mlp")
  ggn, dense = _dense_ggn(c)
  rank = np.linalg.matrix_rank(dense)
  assert rank <= 32                                     # batch 16 × (3 classes − 1)
  got = curvature.hutchpp_trace(ggn, c.params, jax.random.key(2), num_samples=3 * (rank + 1)).value
  assert abs(got - np.trace(dense)) < 1e-8 * abs(np.trace(dense))


def test_hutchpp_unbiased_and_beats_hutchinson_on_a_decaying_spectrum():
  c = case("mlp")
  keys, budget = jax.random.split(jax.random.key(3), 500), 30
  run = lambda matvec: np.asarray(jax.jit(jax.vmap(
      lambda k: curvature.hutchpp_trace(matvec, c.params, k, budget).value))(keys))
  hpp = run(c.hvp)
  assert abs(hpp.mean() - np.trace(c.hessian)) < 3.0 * hpp.std() / np.sqrt(keys.shape[0])
  ggn, dense = _dense_ggn(c)
  hpp = run(ggn)
  assert abs(hpp.mean() - np.trace(dense)) < 3.0 * hpp.std() / np.sqrt(keys.shape[0])
  assert hpp.var() < 0.5 * _trace_variance(dense) / budget


ESTIMATORS = {"hutchinson": curvature.hutchinson_trace, "hutchpp": curvature.hutchpp_trace}


@pytest.mark.parametrize("name, estimator, num_samples", [("cnn", "hutchinson", 1), ("mlp", "hutchinson", 10),
                                                          ("cnn", "hutchpp", 6), ("mlp", "hutchpp", 30)])
def test_true_trace_within_three_standard_errors_in_95_percent_of_100_seeds(name, estimator, num_samples):
  # 1 probe (Hutchinson) and g = 2 residual probes (Hutch++ with 6) report the bound-based error.
  c = case(name)
  fn = ESTIMATORS[estimator]
  est = jax.jit(jax.vmap(lambda k: fn(c.hvp, c.params, k, num_samples)))(jax.random.split(jax.random.key(7), 100))
  z = np.abs(np.asarray(est.value) - np.trace(c.hessian)) / np.asarray(est.stderr)
  assert np.mean(z <= 3.0) >= 0.95
  assert np.all(np.asarray(est.num_matvecs) == num_samples)


def test_exact_path_equals_trace_of_jax_hessian():
  c = case("mlp")                                                          # 185 params
  exact = np.trace(c.hessian)
  for est in (curvature.hutchinson_trace(c.hvp, c.params, jax.random.key(0), 200),   # one batch
              curvature.hutchpp_trace(c.hvp, c.params, jax.random.key(0), 30, rtol=0.1, max_matvecs=185)):
    assert abs(est.value - exact) < 1e-12 * abs(exact)
    assert est.stderr == 0.0 and est.num_matvecs == 185
  cnn = case("cnn")                                                        # batches on the host loop
  est = curvature.hutchinson_trace(cnn.hvp, cnn.params, jax.random.key(0), 16, rtol=0.1, max_matvecs=200)
  assert abs(est.value - np.trace(cnn.hessian)) < 1e-12 * abs(np.trace(cnn.hessian))


N = 400
FLAT = np.linspace(0.0, 1.0, N)                                           # top 80 within 20% of λ_max
OUTLIERS = np.concatenate([np.linspace(0.0, 1.0, N - 5), [30.0, 40.0, 50.0, 60.0, 70.0]])


def _quadratic(eigs):
  """½ xᵀAx with A = Q diag(eigs) Qᵀ (random Q), split over two leaves: its HVP and tr(A)."""
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(eigs.size, eigs.size)))
  a = jnp.asarray((q * eigs) @ q.T)
  params = {"w": jnp.zeros((eigs.size // 2,), jnp.float64), "b": jnp.zeros((eigs.size - eigs.size // 2,), jnp.float64)}
  flat = lambda p: jnp.concatenate([p["w"], p["b"]])
  return curvature.hvp_fn(lambda p: 0.5 * flat(p) @ (a @ flat(p)), params), params, float(np.sum(eigs))


@pytest.mark.parametrize("estimator, spectrum", [("hutchinson", "flat"), ("hutchpp", "flat"), ("hutchpp", "outliers")])
def test_rtol_stops_at_the_relative_standard_error_and_delivers_it(estimator, spectrum):
  matvec, params, exact = _quadratic(FLAT if spectrum == "flat" else OUTLIERS)
  rtol, budget, fn = 0.005, 300, ESTIMATORS[estimator]
  est = jax.jit(jax.vmap(lambda k: fn(matvec, params, k, 30, rtol=rtol, max_matvecs=budget)))(
      jax.random.split(jax.random.key(1), 100))
  value, stderr, used = (np.asarray(x) for x in est)
  assert np.all(stderr <= rtol * np.abs(value)) and np.all(used <= budget) and np.mean(used > 30) >= 0.5
  err = np.abs(value - exact) / exact
  # A relative standard error of 0.5% puts about 68% of runs within 0.5%, and nearly all within 1.5%
  # (stopping on a noisy variance estimate fattens the tail a little).
  assert np.mean(err <= rtol) >= 0.55 and np.mean(err <= 3 * rtol) >= 0.95


def test_rtol_out_of_budget_says_so_and_host_loop_matches_while_loop():
  matvec, params, exact = _quadratic(OUTLIERS)     # Hutchinson needs ~4000 probes for 0.5% here
  runs = [curvature.hutchinson_trace(matvec, params, jax.random.key(2), 30, rtol=0.005, max_matvecs=300, loop=loop)
          for loop in ("scan", "python")]
  for got in runs:
    assert got.num_matvecs == 300 and got.stderr > 0.005 * abs(got.value)
    assert abs(got.value - exact) < 4 * got.stderr
  np.testing.assert_allclose(runs[0].value, runs[1].value, rtol=1e-12)
  np.testing.assert_allclose(runs[0].stderr, runs[1].stderr, rtol=1e-12)


def test_bad_arguments_raise():
  c = case("mlp")
  with pytest.raises(ValueError, match="rtol=0"):
    curvature.hutchinson_trace(c.hvp, c.params, jax.random.key(0), 4, rtol=0.0)
  with pytest.raises(ValueError, match="max_matvecs=3"):
    curvature.hutchpp_trace(c.hvp, c.params, jax.random.key(0), 6, max_matvecs=3)
  with pytest.raises(ValueError, match="num_samples=2"):
    curvature.hutchpp_trace(c.hvp, c.params, jax.random.key(0), 2)
