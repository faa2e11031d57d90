"""Lanczos and its Ritz pairs against numpy.linalg.eigvalsh of the dense Hessian (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature
from tests.curvature_models import case, rel_err

_rows = jax.vmap(lambda t: ravel_pytree(t)[0])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_top5_and_bottom5_match_eigvalsh_within_60_iterations(name):
  c = case(name)
  eig = np.linalg.eigvalsh(c.hessian)
  matvec = c.hvp
  got = curvature.lanczos_eigs(matvec, c.params, jax.random.key(0), 60, k=5)
  np.testing.assert_allclose(got.top_values, eig[::-1][:5], rtol=1e-6)
  np.testing.assert_allclose(got.bottom_values, eig[:5], rtol=1e-6)
  for values, vectors in ((got.top_values, got.top_vectors), (got.bottom_values, got.bottom_vectors)):
    y = np.asarray(_rows(vectors))                                         # (5, n) unit Ritz vectors
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-10)
    residual = y @ c.hessian - np.asarray(values)[:, None] * y
    assert np.max(np.linalg.norm(residual, axis=1)) < 1e-4 * np.max(np.abs(eig))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("reorth", ["full", "partial"])
def test_basis_is_orthonormal_and_tridiagonal_is_its_projection(name, reorth):
  # 60 steps on 185 / 113 dimensions: Ritz values converge, so plain Lanczos loses orthogonality.
  c = case(name)
  result = curvature.lanczos(c.hvp, c.params, jax.random.key(1), 60, reorth=reorth)
  q = np.asarray(_rows(result.basis))                                       # (60, n)
  t = np.asarray(curvature.tridiagonal(result.alphas, result.betas))
  passes = int(np.sum(result.reorthogonalised))
  if reorth == "full":
    np.testing.assert_allclose(q @ q.T, np.eye(60), atol=1e-12)
    np.testing.assert_allclose(t, q @ c.hessian @ q.T, atol=1e-12 * np.abs(c.hessian).max() * 10)
    assert passes == 60
  else:   # semi-orthogonal (Simon 1984): |q_jᵀ q_k| ≤ √ε, and T = QᵀAQ far below √ε‖A‖, in few passes.
    np.testing.assert_allclose(q @ q.T, np.eye(60), atol=np.sqrt(np.finfo(np.float64).eps))
    np.testing.assert_allclose(t, q @ c.hessian @ q.T, atol=1e-8 * np.abs(c.hessian).max())
    assert 1 <= passes <= 15


def test_breakdown_on_few_distinct_eigenvalues_restarts_and_keeps_exact_ritz_values():
  flat, unravel = ravel_pytree({"a": jnp.zeros((8,), jnp.float64), "b": jnp.zeros((2, 2), jnp.float64)})
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(12, 12)))
  a = q @ np.diag(np.repeat([3.0, 1.0, -2.0], 4)) @ q.T
  matvec = lambda v: unravel(jnp.asarray(a) @ ravel_pytree(v)[0])
  result = curvature.lanczos(matvec, unravel(flat), jax.random.key(2), 9)
  assert np.sum(np.asarray(result.betas) == 0.0) >= 2                       # Krylov space of dim 3
  basis = np.asarray(_rows(result.basis))
  np.testing.assert_allclose(basis @ basis.T, np.eye(9), atol=1e-12)
  theta = np.linalg.eigvalsh(np.asarray(curvature.tridiagonal(result.alphas, result.betas)))
  assert np.min(np.abs(theta[:, None] - np.array([3.0, 1.0, -2.0])[None, :]), axis=1).max() < 1e-10


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("reorth", ["partial", "none"])
def test_python_loop_and_scan_give_the_same_numbers(name, reorth):
  c = case(name)
  matvec = c.hvp
  py = curvature.lanczos(matvec, c.params, jax.random.key(3), 21, loop="python", reorth=reorth)
  xla = curvature.lanczos(matvec, c.params, jax.random.key(3), 21, loop="scan", reorth=reorth)
  np.testing.assert_allclose(py.alphas, xla.alphas, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(py.betas, xla.betas, rtol=1e-10)
  assert reorth == "none" or rel_err(py.basis, xla.basis) < 1e-10


def test_runs_under_jit_of_vmap_and_matches_eager():
  c = case("mlp")
  eager = curvature.lanczos_eigs(c.hvp, c.params, jax.random.key(4), 20, k=2)
  fn = lambda p, k: curvature.lanczos_eigs(curvature.hvp_fn(c.obj_fn, p), p, k, 20, k=2).top_values
  keys = jnp.stack([jax.random.key(4), jax.random.key(5)])
  batched = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(c.params, keys)
  np.testing.assert_allclose(batched[0], eager.top_values, rtol=1e-12)


def test_bad_arguments_raise():
  c = case("mlp")
  matvec = c.hvp
  with pytest.raises(ValueError, match="num_iters=186"):
    curvature.lanczos(matvec, c.params, jax.random.key(0), 186)
  with pytest.raises(ValueError, match="k=6"):
    curvature.lanczos_eigs(matvec, c.params, jax.random.key(0), 5, k=6)
  with pytest.raises(ValueError, match="reorth"):
    curvature.lanczos(matvec, c.params, jax.random.key(0), 5, reorth="selective")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_no_reorthogonalisation_keeps_extreme_ritz_values_and_no_basis(name):
  # 60 steps on 185 / 113 dimensions: orthogonality is lost (copies of converged values appear in
  # T), the extreme values stay those of the dense Hessian.
  c = case(name)
  eig = np.linalg.eigvalsh(c.hessian)
  got = curvature.lanczos_eigs(c.hvp, c.params, jax.random.key(0), 60, k=2, reorth="none")
  np.testing.assert_allclose([got.top_values[0], got.bottom_values[0]], [eig[-1], eig[0]], rtol=1e-6)
  assert got.top_vectors is None and got.bottom_vectors is None
  result = curvature.lanczos(c.hvp, c.params, jax.random.key(0), 60, reorth="none")
  assert result.basis is None and not np.any(result.reorthogonalised)
  partial = curvature.lanczos(c.hvp, c.params, jax.random.key(0), 60)
  np.testing.assert_allclose(result.alphas[:10], partial.alphas[:10], rtol=1e-10)   # before any pass


def test_no_reorthogonalisation_memory_does_not_grow_with_the_iterations():
  c = case("mlp")
  n = c.hessian.shape[0]
  def temp_vectors(reorth, steps):
    run = jax.jit(lambda p: curvature.lanczos(curvature.hvp_fn(c.obj_fn, p), p, jax.random.key(0), steps,
                                              reorth=reorth).alphas)
    return run.lower(c.params).compile().memory_analysis().temp_size_in_bytes / (8 * n)
  # 40 more steps: 40 more basis rows with partial re-orthogonalisation, none without.
  assert temp_vectors("partial", 60) - temp_vectors("partial", 20) >= 39
  assert abs(temp_vectors("none", 60) - temp_vectors("none", 20)) < 1


def test_no_reorthogonalisation_restarts_each_exhausted_krylov_space_with_exact_values():
  flat, unravel = ravel_pytree({"a": jnp.zeros((8,), jnp.float64), "b": jnp.zeros((2, 2), jnp.float64)})
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(12, 12)))
  a = q @ np.diag(np.repeat([3.0, 1.0, -2.0], 4)) @ q.T
  matvec = lambda v: unravel(jnp.asarray(a) @ ravel_pytree(v)[0])
  result = curvature.lanczos(matvec, unravel(flat), jax.random.key(2), 9, reorth="none")
  assert np.sum(np.asarray(result.betas) == 0.0) >= 2                       # blocks of 3
  theta = np.linalg.eigvalsh(np.asarray(curvature.tridiagonal(result.alphas, result.betas)))
  assert np.min(np.abs(theta[:, None] - np.array([3.0, 1.0, -2.0])[None, :]), axis=1).max() < 1e-10
