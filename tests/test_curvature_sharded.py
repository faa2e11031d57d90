"""hvp and Lanczos on params and batch sharded over a forced 8-device CPU mesh equal the 1-device numbers.

The mesh needs XLA_FLAGS set before jax is imported, so the check runs in a subprocess that
prints the relative differences as JSON; this test asserts on them.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    jax.config.update("jax_enable_x64", True)
    from optlab_jax import curvature

    assert len(jax.devices()) == 8
    mesh = Mesh(np.array(jax.devices()), ("d",))
    keys = jax.random.split(jax.random.key(0), 6)
    params = {"w1": jax.random.normal(keys[0], (8, 16), jnp.float64) / 3, "b1": jnp.zeros((16,), jnp.float64),
              "w2": jax.random.normal(keys[1], (16, 3), jnp.float64) / 4, "b2": jnp.zeros((3,), jnp.float64)}
    specs = {"w1": P(None, "d"), "b1": P("d"), "w2": P("d", None), "b2": P()}
    x = jax.random.normal(keys[2], (32, 8), jnp.float64)
    y = jax.random.randint(keys[3], (32,), 0, 3, jnp.int32)
    v = jax.tree.map(lambda p, k: jax.random.normal(k, p.shape, p.dtype), params,
                     dict(zip(sorted(params), jax.random.split(keys[4], 4))))

    def make_obj(x, y):
      def obj_fn(p):
        h = jnp.tanh(x @ p["w1"] + p["b1"].reshape(1, -1))
        return curvature.nll(h @ p["w2"] + p["b2"].reshape(1, -1), y, "categorical")
      return obj_fn

    def run(params, v, x, y, loop):
      obj_fn = make_obj(x, y)
      hv = curvature.hvp(obj_fn, params, v)
      lz = curvature.lanczos(curvature.hvp_fn(obj_fn, params), params, jax.random.key(1), 12, loop=loop)
      eigs = curvature.lanczos_eigs(curvature.hvp_fn(obj_fn, params), params, jax.random.key(1), 12, k=3,
                                    loop=loop)
      return hv, lz, eigs

    shard = lambda tree: jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), tree, specs)
    one = jax.devices()[0]
    local = jax.device_put((params, v, x, y), one)
    sharded = (shard(params), shard(v), jax.device_put(x, NamedSharding(mesh, P("d", None))),
               jax.device_put(y, NamedSharding(mesh, P("d"))))
    rel = lambda a, b: float(np.linalg.norm(np.ravel(ravel_pytree(a)[0]) - np.ravel(ravel_pytree(b)[0]))
                             / np.linalg.norm(np.ravel(ravel_pytree(b)[0])))
    out = {"w1_devices": len(sharded[0]["w1"].sharding.device_set)}
    for loop in ("scan", "python"):
      hv1, lz1, e1 = run(*local, loop)
      hv8, lz8, e8 = run(*sharded, loop)
      out[loop] = {"hvp": rel(hv8, hv1), "alphas": rel(lz8.alphas, lz1.alphas), "betas": rel(lz8.betas, lz1.betas),
                   "top": rel(e8.top_values, e1.top_values), "bottom": rel(e8.bottom_values, e1.bottom_values),
                   "hvp_devices": len(hv8["w1"].sharding.device_set)}
    jitted = jax.jit(lambda p, v, x, y: run(p, v, x, y, "scan"))
    hv8, lz8, e8 = jitted(*sharded)
    out["jit"] = {"hvp": rel(hv8, hv1), "top": rel(e8.top_values, e1.top_values)}
    print(json.dumps(out))
""")


# -m slow: tests/test_sharding.py's default run covers the same code through train.fit on 2x4 and
# 8x1 meshes (the monitor's Lanczos λ_max and Hutchinson trace equal one device's to 1e-10).
@pytest.mark.slow
def test_sharded_hvp_and_lanczos_equal_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["w1_devices"] == 8
  for loop in ("scan", "python"):
    assert out[loop]["hvp_devices"] == 8                    # the product stays sharded like params
    for name in ("hvp", "alphas", "betas", "top", "bottom"):
      assert out[loop][name] < 1e-10, (loop, name, out[loop][name])
  assert out["jit"]["hvp"] < 1e-10 and out["jit"]["top"] < 1e-10
