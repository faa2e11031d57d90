"""Loop selection: convolutions found in (nested) jaxprs, and the auto / scan / python rules."""

import re

import jax
import jax.numpy as jnp
import numpy as np
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


# ---------------------------------------------------------------- loops.cond: no conv cliff on CPU

def _conv_loss(params, x, y):
  """A 3×3 conv + dense classifier; x (batch, 6, 6, 1), integer labels y."""
  h = jnp.tanh(jax.lax.conv_general_dilated(x, params["w"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  logits = h.reshape(x.shape[0], -1) @ params["d"]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _conv_data(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  params = {"w": jax.random.normal(k[0], (3, 3, 1, 2), jnp.float64) / 3, "d": jax.random.normal(k[1], (32, 3), jnp.float64) / 6}
  return params, jax.random.normal(k[2], (5, 6, 6, 1), jnp.float64), jax.random.randint(k[3], (5,), 0, 3)


def _branch_hessian_probe(cond):
  """A jitted program whose branch is an HVP of the conv loss along a probe drawn from a typed key."""
  def program(params, x, y, key, take):
    def branch(params, key):
      probe = jax.tree.map(lambda p, k: jax.random.normal(k, p.shape, p.dtype), params,
                           dict(zip(params, jax.random.split(key, len(params)))))
      return curvature.hvp(lambda p: _conv_loss(p, x, y), params, probe), jax.random.split(key)[0]
    return cond(take, branch, lambda params, key: (params, key), params, key)
  return jax.jit(program)


def _computations(hlo: str) -> dict[str, str]:
  """Compiled HLO text's computations: name -> body."""
  blocks, name = {}, None
  for line in hlo.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      name = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
      blocks[name.lstrip("%")] = ""
    elif name is not None:
      blocks[name.lstrip("%")] += line + "\n"
  return blocks


def _convolutions_in_branches(hlo: str) -> int:
  """Convolutions in computations reachable from a `conditional`'s branches."""
  blocks = _computations(hlo)
  called = lambda body: re.findall(r"(?:branch_computations=\{|calls=|to_apply=|body=|condition=|, )%([\w.\-]+)", body)
  todo = [n for body in blocks.values() for line in body.splitlines() if "conditional(" in line
          for n in re.findall(r"%([\w.\-]+)", line.split("branch_computations=")[1].split("}")[0])]
  seen = set()
  while todo:
    name = todo.pop()
    if name in seen or name not in blocks:
      continue
    seen.add(name)
    todo += called(blocks[name])
  return sum(blocks[n].count(" convolution(") for n in seen)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the host path is CPU's only")
def test_cond_runs_a_conv_branch_outside_control_flow_with_the_same_numbers():
  params, x, y = _conv_data()
  key = jax.random.key(7)
  ours, reference = _branch_hessian_probe(curvature.loops.cond), _branch_hessian_probe(jax.lax.cond)
  for take in (True, False):
    got, want = ours(params, x, y, key, take), reference(params, x, y, key, take)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=0), got[0], want[0])
    np.testing.assert_array_equal(jax.random.key_data(got[1]), jax.random.key_data(want[1]))
  fast = ours.lower(params, x, y, key, True).compile().as_text()
  slow = reference.lower(params, x, y, key, True).compile().as_text()
  assert _convolutions_in_branches(slow) > 0  # the walk finds what lax.cond leaves in a branch
  assert _convolutions_in_branches(fast) == 0 and "python_cpu_callback" in fast
  # vmapped (a sweep of runs): each run's branch still matches
  batched = jax.vmap(ours, in_axes=(None, None, None, 0, None))(params, x, y, jax.random.split(key, 2), True)
  for i, k in enumerate(jax.random.split(key, 2)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-13), batched[0], reference(params, x, y, k, True)[0])


def test_cond_leaves_branches_without_convolutions_to_lax_cond():
  dense = lambda p, k: (jax.tree.map(jnp.tanh, p), k)
  program = lambda p, k: curvature.loops.cond(True, dense, lambda p, k: (p, k), p, k)
  args = ({"a": jnp.ones(3)}, jax.random.key(0))
  assert curvature.has_primitive(program, "cond", *args)
  assert not curvature.has_primitive(program, "pure_callback", *args)
  assert not curvature.has_primitive(program, "platform_index", *args)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the host path is CPU's only")
def test_an_every_k_steps_optimizer_on_a_cnn_keeps_its_hvp_out_of_control_flow(monkeypatch):
  import optax
  from optlab_jax import optim
  params, x, y = _conv_data(1)
  tx = optim.adahessian(0.1, update_interval=2)

  def run(steps=5):
    @jax.jit
    def step(params, state, x, y):
      obj_fn = lambda p: _conv_loss(p, x, y)
      updates, state = tx.update(jax.grad(obj_fn)(params), state, params, obj_fn=obj_fn)
      return optax.apply_updates(params, updates), state
    p, s = params, tx.init(params)
    for _ in range(steps):
      p, s = step(p, s, x, y)
    return p, step.lower(params, tx.init(params), x, y).compile().as_text()

  got, fast = run()
  monkeypatch.setattr(curvature.loops, "cond", jax.lax.cond)  # the plain cond, as a reference
  want, slow = run()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), got, want)
  assert _convolutions_in_branches(slow) > 0 and _convolutions_in_branches(fast) == 0


def _consume_once_lowering(platform: str, vmapped: bool = False) -> str:
  fn = lambda x: (jnp.sum(x * x), 2.0 * x)
  call = lambda i, x: curvature.loops.consume_once(i, fn, x)
  if vmapped:
    call = jax.vmap(call, in_axes=(None, 0))
  x = jnp.ones((3, 4) if vmapped else (4,), jnp.float32)
  return jax.jit(call).trace(jnp.int32(0), x).lower(lowering_platforms=(platform,)).as_text()


def test_consume_once_puts_fn_behind_a_counter_branch_on_cpu_only():
  x = jnp.arange(4.0)
  total, doubled = jax.jit(lambda i, x: curvature.loops.consume_once(i, lambda x: (jnp.sum(x * x), 2.0 * x), x))(
      jnp.int32(3), x)
  assert float(total) == 14.0 and np.array_equal(doubled, 2.0 * np.arange(4.0))
  # On CPU: a two-way branch on `counter >= 0`, fn in both arms; elsewhere fn once, no predicate.
  cpu, cuda = _consume_once_lowering("cpu"), _consume_once_lowering("cuda")
  assert cpu.count("stablehlo.compare GE") == 1 and cpu.count("stablehlo.reduce(") == 2
  assert "stablehlo.compare" not in cuda and cuda.count("stablehlo.reduce(") == 1
  # Under vmap the counter stays unbatched, so the branch is not turned into a select of both arms.
  batched = _consume_once_lowering("cpu", vmapped=True)
  assert batched.count("stablehlo.compare GE") == 1 and "stablehlo.select" not in batched
