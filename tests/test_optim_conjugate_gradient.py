"""Truncated CG against dense numpy linear algebra: exact solves, Krylov (Galerkin) iterates, Steihaug stops."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab_jax.optim.conjugate_gradient import conjugate_gradient

N = 12


def _split(x):
  return {"a": x[:5], "b": {"c": x[5:].reshape(7, 1)}}


def _join(tree):
  return jnp.concatenate([tree["a"], tree["b"]["c"].reshape(-1)])


def _matvec(a):
  a = jnp.asarray(a)
  return lambda v: _split(a @ _join(v))


def _symmetric(eigs, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
  return q @ np.diag(eigs) @ q.T


def _galerkin(a, b, k):
  """argmin of ½xᵀAx − bᵀx over the Krylov space span{b, Ab, …, A^{k−1}b}, and its basis."""
  if k == 0:
    return np.zeros_like(b), np.zeros((len(b), 0))
  krylov = np.stack([np.linalg.matrix_power(a, j) @ b for j in range(k)], axis=1)
  q, _ = np.linalg.qr(krylov)
  return q @ np.linalg.solve(q.T @ a @ q, q.T @ b), q


def _model(a, b, x):
  return 0.5 * x @ a @ x - b @ x


@pytest.mark.parametrize("damping", [0.0, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_spd_solve_matches_numpy(seed, damping):
  a = _symmetric(np.logspace(-1, 2, N), seed)
  b = np.random.default_rng(seed + 10).normal(size=N)
  out = conjugate_gradient(_matvec(a), _split(jnp.asarray(b)), max_iters=100, tol=1e-13, damping=damping)
  expected = np.linalg.solve(a + damping * np.eye(N), b)
  np.testing.assert_allclose(_join(out.x), expected, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(_join(out.residual), b - (a + damping * np.eye(N)) @ _join(out.x), atol=1e-10)
  assert not bool(out.negative_curvature)
  assert int(out.iterations) <= 2 * N


@pytest.mark.parametrize("k", [1, 3, 6])
def test_truncated_iterate_is_krylov_minimiser(k):
  a = _symmetric(np.logspace(0, 3, N), 2)
  b = np.random.default_rng(3).normal(size=N)
  out = conjugate_gradient(_matvec(a), _split(jnp.asarray(b)), max_iters=k, tol=0.0)
  assert int(out.iterations) == k
  np.testing.assert_allclose(_join(out.x), _galerkin(a, b, k)[0], rtol=1e-8, atol=1e-10)


def _indefinite():
  eigs = np.concatenate([np.linspace(1.0, 4.0, N - 2), [-0.5, -3.0]])
  return _symmetric(eigs, 4), np.random.default_rng(5).normal(size=N)


def _first_indefinite_step(a, b):
  """k* = the first k where the Krylov-projected QₖᵀAQₖ stops being positive definite."""
  for k in range(1, N + 1):
    _, q = _galerkin(a, b, k)
    if np.linalg.eigvalsh(q.T @ a @ q)[0] <= 0:
      return k
  raise AssertionError("no negative curvature met")


def test_indefinite_stops_at_negative_curvature_with_last_iterate():
  a, b = _indefinite()
  k_star = _first_indefinite_step(a, b)
  assert k_star > 1, "the problem should meet negative curvature after some positive steps"
  out = conjugate_gradient(_matvec(a), _split(jnp.asarray(b)), max_iters=100, tol=1e-12)
  assert bool(out.negative_curvature)
  assert int(out.iterations) == k_star
  x = np.asarray(_join(out.x))
  np.testing.assert_allclose(x, _galerkin(a, b, k_star - 1)[0], rtol=1e-8, atol=1e-10)
  assert _model(a, b, x) < 0.0 and b @ x > 0.0   # a descent step of the model, never uphill


def test_indefinite_with_radius_follows_negative_curvature_to_the_boundary():
  a, b = _indefinite()
  k_star = _first_indefinite_step(a, b)
  last = _galerkin(a, b, k_star - 1)[0]
  radius = 3.0 * np.linalg.norm(last) + 1.0
  out = conjugate_gradient(_matvec(a), _split(jnp.asarray(b)), max_iters=100, tol=1e-12, radius=radius)
  x = np.asarray(_join(out.x))
  assert bool(out.negative_curvature) and int(out.iterations) == k_star
  np.testing.assert_allclose(np.linalg.norm(x), radius, rtol=1e-10)
  assert _model(a, b, x) < _model(a, b, last) - 1.0   # further down than the last iterate
  _, q = _galerkin(a, b, k_star)
  np.testing.assert_allclose(q @ (q.T @ x), x, atol=1e-9)   # x stays in the Krylov space K_{k*}
  np.testing.assert_allclose(_join(out.residual), b - a @ x, atol=1e-9)


def test_negative_curvature_at_first_step():
  a, _ = _indefinite()
  eigs, vecs = np.linalg.eigh(a)
  b = vecs[:, 0]                                   # eigenvector of λ = −3
  out = conjugate_gradient(_matvec(a), _split(jnp.asarray(b)), max_iters=10, tol=1e-12)
  assert bool(out.negative_curvature) and int(out.iterations) == 1
  np.testing.assert_array_equal(_join(out.x), np.zeros(N))
  out = conjugate_gradient(_matvec(a), _split(jnp.asarray(b)), max_iters=10, tol=1e-12, radius=2.0)
  np.testing.assert_allclose(_join(out.x), 2.0 * b, rtol=1e-12)
  assert eigs[0] == pytest.approx(-3.0)


def test_radius_binds_on_spd_system():
  a = _symmetric(np.logspace(-2, 1, N), 6)
  b = np.random.default_rng(7).normal(size=N)
  full = np.linalg.solve(a, b)
  radius = 0.5 * np.linalg.norm(full)
  out = conjugate_gradient(_matvec(a), _split(jnp.asarray(b)), max_iters=100, tol=1e-12, radius=radius)
  x = np.asarray(_join(out.x))
  assert not bool(out.negative_curvature)
  np.testing.assert_allclose(np.linalg.norm(x), radius, rtol=1e-10)
  assert _model(a, b, x) < 0.0


def test_jit_vmap_traced_arguments_and_float32_dtype():
  a = _symmetric(np.logspace(0, 1, N), 8)
  bs = np.random.default_rng(9).normal(size=(3, N))
  matvec = _matvec(a.astype(np.float32))

  @jax.jit
  @jax.vmap
  def solve(b, damping):
    return conjugate_gradient(matvec, _split(b), max_iters=jnp.int32(50), tol=1e-6, damping=damping).x

  dampings = jnp.asarray([0.0, 0.1, 1.0], jnp.float32)
  out = solve(jnp.asarray(bs, jnp.float32), dampings)
  chex.assert_trees_all_equal_dtypes(out, _split(jnp.zeros(N, jnp.float32)))
  for i in range(3):
    expected = np.linalg.solve(a + float(dampings[i]) * np.eye(N), bs[i])
    np.testing.assert_allclose(_join(jax.tree.map(lambda x: x[i], out)), expected, rtol=1e-4, atol=1e-5)


def test_zero_right_hand_side_returns_zero_without_matvecs():
  out = conjugate_gradient(_matvec(np.eye(N)), _split(jnp.zeros(N)), max_iters=10, tol=1e-8)
  assert int(out.iterations) == 0
  np.testing.assert_array_equal(_join(out.x), np.zeros(N))
