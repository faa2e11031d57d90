"""Power iteration against numpy.linalg.eigvalsh, PyHessian's loop in numpy, and across loop paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature
from tests.curvature_models import case, rel_err


def _dense_matvec(a, unravel):
  a = jnp.asarray(a)
  return lambda v: unravel(a @ ravel_pytree(v)[0])


def _pyhessian_loop(a, v, num_iters, tol):
  # PyHessian's hessian.eigenvalues(top_n=1) on a dense matrix, written out in numpy.
  v = v / np.linalg.norm(v)
  eigenvalue, iters = None, 0
  for _ in range(num_iters):
    hv = a @ v
    iters += 1
    tmp = v @ hv
    v = hv / np.linalg.norm(hv)
    if eigenvalue is not None and abs(eigenvalue - tmp) <= tol * abs(eigenvalue):
      return tmp, iters
    eigenvalue = tmp
  return eigenvalue, iters


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_stops_like_pyhessian_with_its_defaults(name):
  c = case(name)
  key = jax.random.key(0)
  value, _, iters = curvature.power_iteration(c.hvp, c.params, key)
  v0 = np.asarray(ravel_pytree(curvature.rademacher_like(jax.random.key(0), c.params))[0])
  want, want_iters = _pyhessian_loop(c.hessian, v0, 100, 1e-3)
  assert int(iters) == want_iters
  assert abs(value - want) < 1e-10 * abs(want)


def test_converges_to_the_dominant_eigenpair():
  c = case("mlp")
  matvec = c.hvp
  value, vector, _ = curvature.power_iteration(matvec, c.params, jax.random.key(1), 2000, tol=1e-14)
  eig = np.linalg.eigvalsh(c.hessian)
  dominant = eig[np.argmax(np.abs(eig))]
  assert abs(value - dominant) < 1e-6 * abs(dominant)
  assert rel_err(matvec(vector), jax.tree.map(lambda x: value * x, vector)) < 1e-3


def test_dominant_negative_eigenvalue_is_returned_signed_and_extremes_recover_both_ends():
  c = case("mlp")
  negated = curvature.hvp_fn(lambda p: -c.obj_fn(p), c.params)         # spectrum of −H
  eig = np.linalg.eigvalsh(-c.hessian)
  assert abs(eig[0]) > abs(eig[-1])                                       # the dominant one is negative
  value, _, _ = curvature.power_iteration(negated, c.params, jax.random.key(2), 2000, tol=1e-14)
  assert abs(value - eig[0]) < 1e-6 * abs(eig[0])
  lam_max, lam_min = curvature.power_extremes(negated, c.params, jax.random.key(3), 3000, tol=1e-15)
  assert abs(lam_min - eig[0]) < 1e-6 * abs(eig[0])
  assert abs(lam_max - eig[-1]) < 1e-6 * abs(eig[0])


def test_deflation_and_shift_on_a_known_spectrum():
  flat, unravel = ravel_pytree({"a": jnp.zeros((6,), jnp.float64), "b": jnp.zeros((2, 2), jnp.float64)})
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 10)))
  eig = np.array([-9.0, 6.0, 4.0, 2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0])
  a = q @ np.diag(eig) @ q.T
  matvec = _dense_matvec(a, unravel)
  params = unravel(flat)
  top = jax.vmap(unravel)(jnp.asarray(q[:, :1].T))                          # eigenvector of −9
  value, _, _ = curvature.power_iteration(matvec, params, jax.random.key(4), 500, 1e-15, deflate=top)
  assert abs(value - 6.0) < 1e-9
  value, _, _ = curvature.power_iteration(matvec, params, jax.random.key(5), 500, 1e-15, shift=-9.0)
  assert abs(value - 6.0) < 1e-9                                          # farthest from the shift


def test_python_loop_and_while_loop_agree_on_a_conv_model():
  c = case("cnn")
  matvec = c.hvp
  py = curvature.power_iteration(matvec, c.params, jax.random.key(6), 40, 1e-6, loop="python")
  xla = curvature.power_iteration(matvec, c.params, jax.random.key(6), 40, 1e-6, loop="scan")
  assert int(py[2]) == int(xla[2])
  assert abs(py[0] - xla[0]) < 1e-12 * abs(xla[0]) and rel_err(py[1], xla[1]) < 1e-10
