"""hvp, hvp_fn, ggn_fn, linearize_transpose against dense jax.hessian / jax.jacobian oracles (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature
from tests.curvature_models import case, dense, rel_err

MODELS = ["mlp", "cnn"]


@pytest.mark.parametrize("name", MODELS)
def test_hvp_fn_matches_dense_hessian(name):
  c = case(name)
  got = np.asarray(dense(curvature.hvp_fn(c.obj_fn, c.params), c.params))
  assert rel_err(got, c.hessian) < 1e-8


@pytest.mark.parametrize("name", MODELS)
def test_hvp_returns_hessian_product_and_gradient_of_the_same_call(name):
  c = case(name)
  v = jax.random.normal(jax.random.key(3), (c.hessian.shape[0],), jnp.float64)
  grad, hv = curvature.hvp(c.obj_fn, c.params, c.unravel(v), return_grad=True)
  assert rel_err(hv, c.unravel(jnp.asarray(c.hessian @ np.asarray(v)))) < 1e-8
  assert rel_err(grad, jax.grad(c.obj_fn)(c.params)) < 1e-12
  assert rel_err(curvature.hvp(c.obj_fn, c.params, c.unravel(v)), hv) == 0.0


def test_hvp_fn_gradient_and_vmap_over_vectors_under_jit():
  c = case("mlp")
  vs = jax.random.normal(jax.random.key(4), (3, c.hessian.shape[0]), jnp.float64)

  @jax.jit
  def products(params, vs):
    grad, matvec = curvature.hvp_fn(c.obj_fn, params, return_grad=True)
    return grad, jax.vmap(lambda v: ravel_pytree(matvec(c.unravel(v)))[0])(vs)

  grad, hvs = products(c.params, vs)
  assert rel_err(grad, jax.grad(c.obj_fn)(c.params)) < 1e-12
  assert rel_err(hvs, jnp.asarray(np.asarray(vs) @ c.hessian)) < 1e-8


def _dense_ggn(c):
  flat, _ = ravel_pytree(c.params)
  jac = jax.jacobian(lambda x: c.model_fn(c.unravel(x)))(flat)          # (B, C, n)
  outputs = c.model_fn(c.params)
  h_out = jax.hessian(c.output_loss_fn)(outputs)                         # (B, C, B, C)
  jac = np.asarray(jac).reshape(-1, flat.size)
  return jac.T @ np.asarray(h_out).reshape(jac.shape[0], jac.shape[0]) @ jac


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian"])
@pytest.mark.parametrize("name", MODELS)
def test_ggn_fn_matches_jacobian_output_hessian_jacobian(name, likelihood):
  c = case(name, likelihood=likelihood)
  got = np.asarray(dense(curvature.ggn_fn(c.model_fn, c.output_loss_fn, c.params), c.params))
  want = _dense_ggn(c)
  assert rel_err(got, want) < 1e-8
  assert np.linalg.eigvalsh(want)[0] > -1e-12 * np.abs(want).max()  # convex losses: G ⪰ 0


def test_ggn_equals_hessian_for_a_linear_model():
  # A linear model has no second-order term, so Jᵀ H_out J is the whole Hessian.
  x = jax.random.normal(jax.random.key(0), (10, 4), jnp.float64)
  y = jax.random.randint(jax.random.key(1), (10,), 0, 3, jnp.int32)
  params = {"w": jax.random.normal(jax.random.key(2), (4, 3), jnp.float64)}
  model_fn = lambda p: x @ p["w"]
  loss_fn = lambda f: curvature.nll(f, y, "categorical")
  hessian = jax.hessian(lambda w: loss_fn(x @ w))(params["w"]).reshape(12, 12)
  got = dense(curvature.ggn_fn(model_fn, loss_fn, params), params)
  assert rel_err(got, hessian) < 1e-12


def test_linearize_transpose_gives_jacobian_and_its_transpose():
  c = case("cnn")
  flat, _ = ravel_pytree(c.params)
  jac = np.asarray(jax.jacobian(lambda x: c.model_fn(c.unravel(x)))(flat)).reshape(-1, flat.size)
  outputs, jvp, vjp = curvature.linearize_transpose(c.model_fn, c.params)
  v = jax.random.normal(jax.random.key(5), flat.shape, jnp.float64)
  u = jax.random.normal(jax.random.key(6), outputs.shape, jnp.float64)
  assert rel_err(jvp(c.unravel(v)).reshape(-1), jac @ np.asarray(v)) < 1e-12
  assert rel_err(vjp(u), c.unravel(jnp.asarray(jac.T @ np.asarray(u).reshape(-1)))) < 1e-12
  assert rel_err(outputs, c.model_fn(c.params)) == 0.0
