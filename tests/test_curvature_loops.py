"""Loop selection: convolutions found in (nested) jaxprs, and the auto / scan / python rules."""

import jax
import jax.numpy as jnp
import pytest

from optlab_jax import curvature
from tests.curvature_models import obj_fn, tiny_cnn, tiny_mlp


def _conv(x):
  w = jnp.ones((3, 3, 1, 1), x.dtype)
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_has_primitive_finds_convolutions_nested_in_jit_and_control_flow():
  x = jnp.ones((1, 4, 4, 1), jnp.float32)
  assert curvature.has_primitive(_conv, "conv_general_dilated", x)
  nested = lambda x: jax.lax.cond(True, jax.jit(_conv), lambda y: y, x)
  assert curvature.has_primitive(nested, "conv_general_dilated", x)
  assert not curvature.has_primitive(jnp.tanh, "conv_general_dilated", x)


def _model(factory):
  model_fn, output_loss_fn, params = factory(jax.random.key(0))
  return obj_fn(model_fn, output_loss_fn), params


def test_auto_picks_python_for_conv_matvecs_on_cpu_and_scan_otherwise():
  (cnn_obj, cnn_params), (mlp_obj, mlp_params) = _model(tiny_cnn), _model(tiny_mlp)
  cpu = jax.devices()[0].platform == "cpu"
  assert curvature.resolve_loop("auto", curvature.hvp_fn(cnn_obj, cnn_params), cnn_params) == (
      "python" if cpu else "scan")
  assert curvature.resolve_loop("auto", curvature.hvp_fn(mlp_obj, mlp_params), mlp_params) == "scan"
  traced = jax.jit(lambda p: jnp.asarray(
      curvature.resolve_loop("auto", curvature.hvp_fn(cnn_obj, p), p) == "scan"))
  assert traced(cnn_params)


def test_explicit_choices_and_errors():
  mlp_obj, mlp_params = _model(tiny_mlp)
  matvec = curvature.hvp_fn(mlp_obj, mlp_params)
  assert curvature.resolve_loop("python", matvec, mlp_params) == "python"
  with pytest.raises(ValueError, match="loop='fast'"):
    curvature.resolve_loop("fast", matvec, mlp_params)
  with pytest.raises(ValueError, match="cannot run under jit"):
    jax.jit(lambda p: curvature.lanczos(curvature.hvp_fn(mlp_obj, p), p, jax.random.key(0), 4,
                                        loop="python").alphas)(mlp_params)
