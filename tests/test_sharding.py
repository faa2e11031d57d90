"""Training on a device mesh (`optlab_jax.sharding`) against one device, on a forced 8-device CPU.

The mesh needs XLA_FLAGS set before jax is imported, so each check runs in ONE subprocess per
script that prints its results as JSON; the tests assert on them:
  - optax's own sharding checks for every registry optimizer, params sharded over an explicit
    8-device axis: init from a ShapeDtypeStruct; state types (sharding included) equal after
    init and update, eager and jitted; the update equal to one device's;
  - `train.fit` on a 2×4 (data×model) and an 8×1 mesh equals one device, 10 steps, for one
    optimizer of each kind, the random ones included (Hutchinson probes, sampled labels, K-FAC);
    every registry optimizer under -m slow;
  - params and optimizer state shardings leaf by leaf, against specs written out by hand;
  - the monitor's λ_max and trace on the mesh equal one device; every curvature estimator and
    monitor metric on an explicit 2×4 mesh (sharding-in-types) equals one device;
  - a batch that does not divide over the data axis, and a mesh larger than the machine, are
    ValueErrors that say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from optlab_jax import monitor as monitors, optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The 27 optimizers of the issue and SM3 (its packed accumulators replicate, as Shampoo's and SOAP's
# Kronecker blocks do: those under -m slow with the rest) get optax's sharding checks by default.
EXPLICIT_DEFAULT = ("sgd", "adagrad", "adadelta", "rmsprop", "adam", "amsgrad", "adamw", "adam_l2", "nadam", "radam",
                    "lars", "lamb", "novograd", "lookahead", "ranger", "lazy_adam", "adahessian", "sophia_h",
                    "sophia_g", "newton_cg", "sam", "asam", "gauss_newton", "natural_gradient", "kfac", "lbfgs",
                    "lbfgs_b", "sm3")
# SOAP's eigenbasis of a rank-deficient Kronecker factor (every non-square leaf's, at its first
# refresh) is not unique: a 1e-15 relative change of the inputs moves its 10-step trajectory by
# ~10% on one device (Shampoo's roots: ~1e-12), so a mesh's other rounding picks another, equally
# valid basis. On the meshes it is held to its own sensitivity to rounding, not to 1e-10.
ROUNDING_SENSITIVE = {"soap": "its eigenbasis of a rank-deficient factor is not unique"}
# The random ones (Hutchinson probes, sampled labels, K-FAC's) and a plain one; the rest (psgd_kron,
# newton_cg, lbfgs_b, lookahead and every other registry optimizer) under -m slow, to keep the suite
# in its 15 minutes: the state rule they rely on is checked leaf by leaf below, lbfgs_b's memory too.
TRAJECTORY_DEFAULT = ("adam", "adahessian", "natural_gradient", "kfac")

PRELUDE = textwrap.dedent("""
    import inspect, json, resource, sys, traceback
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    from optlab_jax import optim, problems, train
    assert len(jax.devices()) == 8

    def build(name, problem, lr=1e-2):
      kw = {"likelihood": problem.likelihood} if "likelihood" in inspect.signature(optim.get(name)).parameters else {}
      return optim.get(name)(lr, **kw)

    def rel(a, b):
      a, b = (np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)]) for t in (a, b))
      return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

    @__import__("functools").cache
    def problem(dtype):
      return problems.build("teacher_student", input_dim=8, output_dim=4, teacher_hidden=(4,), student_hidden=(16,),
                            num_train=64, num_test=32, dtype=dtype)

    def guarded(fn, *args):
      # fn(*args), or {"error": its traceback's tail}: one failure does not hide the other results.
      try:
        return fn(*args)
      except Exception:
        return {"error": traceback.format_exc()[-1500:]}

    MESHES = {"2x4": {"data": 2, "model": 4, "min_shard_bytes": 0}, "8x1": {"data": 8}}

    def trajectories(name, dtype="float64", meshes=MESHES):
      pb = problem(dtype)
      tx = build(name, pb)
      one = train.fit(pb, tx, steps=10, batch_size=16, mesh={"data": 1})
      out = {}
      for key, mesh in meshes.items():
        h = train.fit(pb, tx, steps=10, batch_size=16, mesh=mesh)
        out[key] = {"params": rel(h.params, one.params), "loss": rel(h.loss, one.loss),
                    "finite": bool(np.isfinite(one.loss).all())}
      return out
""")

EXPLICIT = textwrap.dedent("""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    def extra(params):
      model_fn = lambda p: jnp.tanh(p) * 2.0           # outputs (2, 8, 4): a leading batch axis of 2
      output_loss_fn = lambda o: 0.5 * jnp.mean(jnp.sum((o - 0.5) ** 2, axis=(1, 2)))
      obj_fn = lambda p: output_loss_fn(model_fn(p))
      value, grad = jax.value_and_grad(obj_fn)(params)
      return dict(obj_fn=obj_fn, model_fn=model_fn, output_loss_fn=output_loss_fn, value=value, grad=grad,
                  value_fn=obj_fn)

    def explicit(name):
      class Gaussian: likelihood = "gaussian"
      tx, res = build(name, Gaussian), {}
      try:
        res["abstract_init"] = tx.init(jax.ShapeDtypeStruct((2, 8, 4), jnp.float32)) is not None
      except Exception as e:
        res["abstract_init"] = f"{type(e).__name__}: {e}"[:300]
      plain = jnp.linspace(-1, 1, 64, dtype=jnp.float32).reshape(2, 8, 4)
      one_device = tx.update(extra(plain)["grad"], tx.init(plain), plain, **extra(plain))[0]
      mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
      with jax.set_mesh(mesh):
        try:
          params = jax.device_put(jnp.linspace(-1, 1, 64, dtype=jnp.float32).reshape(2, 8, 4),
                                  NamedSharding(mesh, P(None, "x")))
          types = lambda t: jax.tree.map(lambda x: str(jax.typeof(x)), t)
          s0 = tx.init(params)
          u1, s1 = tx.update(extra(params)["grad"], s0, params, **extra(params))
          res["update_types"] = types(s0) == types(s1)
          res["update_vs_one_device"] = rel(u1, one_device)
          # Every leaf shaped like the params is sharded like them (none gathered onto each device).
          res["unsharded_params_shaped"] = sum(t.endswith("[2,8,4]") for t in jax.tree.leaves(types(s1)))
          res["jit_init_types"] = types(jax.jit(tx.init)(params)) == types(s0)
          jitted = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra(p)))
          res["jit_update_types"] = types(jitted(extra(params)["grad"], s0, params)[1]) == types(s1)
        except Exception as e:
          res["error"] = f"{type(e).__name__}: {e}"[:300]
      return res
""")

DEFAULT = PRELUDE + textwrap.dedent("""
    from jax.sharding import NamedSharding, PartitionSpec as P
    from optlab_jax import monitor as monitors, sharding
    names = sys.argv[1].split(",")
    out = {}
    # adam on both meshes; the others on 2x4 (data and model sharded at once): 8x1 under -m slow.
    out["trajectory"] = {n: guarded(trajectories, n, "float64", MESHES if n == "adam" else {"2x4": MESHES["2x4"]})
                         for n in names}
    out["trajectory32"] = {n: guarded(trajectories, n, "float32", {"2x4": MESHES["2x4"]}) for n in ("natural_gradient",)}
    pb = problem("float64")

    def specs(name):
      # (path, shape, dtype, spec, devices) of every leaf of the state after one step of the program fit compiles.
      placement = sharding.placement(MESHES["2x4"], {"x": jax.ShapeDtypeStruct((16, 8), jnp.float64)})
      init, step = train._point_fns(pb, lambda hp, name=name: build(name, pb), 16, placement)
      state = jax.jit(init)(np.int32(0), {})
      state = jax.jit(step)(state, {}, pb.data, np.int32(0))[0]
      flat = jax.tree_util.tree_flatten_with_path(state)[0]
      return [(jax.tree_util.keystr(k), list(x.shape), str(x.dtype),
               [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec],
               len(x.sharding.device_set)) for k, x in flat]
    out["specs"] = {n: guarded(specs, n) for n in ("adam", "lbfgs_b", "adahessian")}

    def monitored():
      # The monitor's Lanczos lambda_max and Hutchinson trace (random probes) on each mesh vs one device.
      mon = monitors.Monitor(["lambda_max", "trace"], pb.loss, lanczos_iters=12, trace_samples=3, seed=1)
      kw = dict(steps=6, batch_size=16, monitor=mon, monitor_every=3)
      one = train.fit(pb, optax.sgd(0.05), mesh={"data": 1}, **kw)
      out = {"values": {m: np.asarray(one.monitor[m]).tolist() for m in ("lambda_max", "trace")}}
      for key, mesh in MESHES.items():
        h = train.fit(pb, optax.sgd(0.05), mesh=mesh, **kw)
        out[key] = {m: rel(h.monitor[m], one.monitor[m]) for m in ("lambda_max", "trace")}
      return out
    out["monitor"] = guarded(monitored)

    def explicit_curvature():
      # Every curvature estimator and monitor metric on a 2x4 explicit mesh (params over "model",
      # the batch over "data", sharding-in-types) vs one device, float64: relative differences.
      from jax.sharding import AxisType
      from optlab_jax import curvature, monitor as monitors
      pb = problem("float64")
      params = pb.init_params(jax.random.key(0))
      batch = jax.tree.map(lambda x: x[:16], pb.data["train"])
      model_fn = lambda p, b: pb.model_fn(p, b["x"])
      tx = optax.adam(1e-2)
      key = jax.random.key(4)

      def measure(params, batch):
        # The estimators the monitor does not call (it runs the HVP, GGN, Lanczos scan, Hutchinson
        # trace and SLQ quadrature itself), then every monitor metric.
        obj = lambda p: pb.loss(p, batch)
        hess = curvature.hvp_fn(obj, params)
        fisher = curvature.fisher_fn(lambda p: model_fn(p, batch), params, key, likelihood="gaussian", num_samples=2)
        grads = jax.grad(obj)(params)
        updates, state = tx.update(grads, tx.init(params), params)
        out = {"fisher": fisher(grads),
               "hutchinson_diag": curvature.hutchinson_diag(hess, params, key, 3),
               "hutchpp_trace": curvature.hutchpp_trace(hess, params, key, 6).value,
               "exact_trace": curvature.hutchinson_trace(hess, params, key, 256).value,   # n = 212 <= 256
               "power_iteration": curvature.power_iteration(hess, params, key, 30)[0]}
        mon = monitors.Monitor(monitors.METRICS, pb.loss, model_fn=model_fn, output_loss_fn=pb.output_loss_fn,
                               optimizer={"name": "adam", "learning_rate": 1e-2}, lanczos_iters=8, top_k=4,
                               trace_samples=2, seed=3)
        out |= {f"monitor.{k}": v for k, v in mon(params, grads, updates, state, batch, 3).items()}
        return out

      def measure_host_loop(params, batch):
        # loop="python" drives its compiled matvec from the host, so it stays out of measure's program.
        hess = jax.jit(curvature.hvp_fn(lambda p: pb.loss(p, batch), params))
        return {"lanczos_python": curvature.lanczos_eigs(hess, params, key, 10, loop="python").top_values}

      # One program per placement (eager dispatch of every estimator over 8 devices took a minute).
      jitted = jax.jit(measure)
      measure = lambda p, b: jitted(p, b) | measure_host_loop(p, b)
      one = measure(params, batch)
      mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
      with jax.set_mesh(mesh):
        spec = lambda p: P(*([None] * (p.ndim - 1)), "model") if p.shape[-1] % 4 == 0 else P()
        sharded = jax.tree.map(lambda p: jax.device_put(p, NamedSharding(mesh, spec(p))), params)
        on_mesh = measure(sharded, jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P("data"))), batch))
      return {name: rel(on_mesh[name], one[name]) for name in one}
    out["explicit_curvature"] = guarded(explicit_curvature)

    def errors():
      out = {}
      for label, mesh, batch in (("batch", {"data": 8}, 12), ("devices", {"data": 4, "model": 4}, 16)):
        try:
          train.fit(pb, optax.sgd(0.1), steps=2, batch_size=batch, mesh=mesh)
          out[label] = None
        except ValueError as e:
          out[label] = str(e)
      # No mesh given: all 8 devices on data when the batch divides over them, else one device.
      out["default_undivided_ran"] = bool(np.isfinite(train.fit(pb, optax.sgd(0.1), steps=2, batch_size=12).loss).all())
      return out
    out["errors"] = guarded(errors)
    out["cpu_seconds"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    print(json.dumps(out))
""")

SLOW = PRELUDE + textwrap.dedent("""
    import dataclasses

    def rounding(name, dtype="float64"):
      # One device, the training inputs changed by 1e-15 relative (what a mesh's other summation
      # order does to the gradients): the trajectory's own sensitivity to rounding.
      pb = problem(dtype)
      x = pb.data["train"]["x"]
      noise = 1 + 1e-15 * jax.random.normal(jax.random.key(7), x.shape, x.dtype)
      moved = dataclasses.replace(pb, data={**pb.data, "train": {**pb.data["train"], "x": x * noise}})
      tx = build(name, pb)
      one = train.fit(pb, tx, steps=10, batch_size=16, mesh={"data": 1})
      return rel(train.fit(moved, tx, steps=10, batch_size=16, mesh={"data": 1}).params, one.params)

    names = sys.argv[1].split(",") if len(sys.argv) > 1 else optim.names()
    out = {n: guarded(trajectories, n) for n in names}
    out["rounding"] = {n: guarded(rounding, n) for n in ROUNDING_SENSITIVE + ("shampoo", "adam")}
    print(json.dumps(out))
""").replace("ROUNDING_SENSITIVE", repr(tuple(ROUNDING_SENSITIVE)))
EXPLICIT_SCRIPT = PRELUDE + EXPLICIT + textwrap.dedent("""
    print(json.dumps({n: guarded(explicit, n) for n in sys.argv[1].split(",")}))
""")


def _run(script: str, *args: str) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=1800)
  if proc.returncode:
    return {"crashed": proc.stderr[-3000:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


# The tests of each default script run on one xdist worker (the suite's `--dist loadgroup`), so it
# runs once per session, beside the other script on the other worker; its crash is reported by each test.
# (The explicit checks add the group "sharding_explicit"; xdist joins the names into a group of their own.)
pytestmark = pytest.mark.xdist_group("sharding")


@pytest.fixture(scope="session")
def default_results() -> dict:
  out = _run(DEFAULT, ",".join(TRAJECTORY_DEFAULT))
  assert "crashed" not in out, out.get("crashed")
  return out


@pytest.fixture(scope="session")
def explicit_results() -> dict:
  out = _run(EXPLICIT_SCRIPT, ",".join(EXPLICIT_DEFAULT))
  assert "crashed" not in out, out.get("crashed")
  return out


def _ok(result):
  assert not (isinstance(result, dict) and "error" in result), result["error"]
  return result


@pytest.fixture(scope="session")
def slow_explicit_results() -> dict:
  out = _run(EXPLICIT_SCRIPT, ",".join(n for n in optim.names() if n not in EXPLICIT_DEFAULT))
  assert "crashed" not in out, out.get("crashed")
  return out


def _explicit_marks(name: str) -> list:
  return [pytest.mark.xdist_group("sharding_explicit")] if name in EXPLICIT_DEFAULT else [pytest.mark.slow]


@pytest.mark.parametrize("name", [pytest.param(n, marks=_explicit_marks(n)) for n in optim.names()])
def test_optax_sharding_checks_with_explicit_mesh(request, name):
  found = request.getfixturevalue("explicit_results" if name in EXPLICIT_DEFAULT else "slow_explicit_results")
  res = _ok(found[name])
  assert res["abstract_init"] is True, res
  assert "error" not in res, res["error"]
  assert res["update_types"] and res["jit_init_types"] and res["jit_update_types"], res
  assert res["unsharded_params_shaped"] == 0, res
  assert res["update_vs_one_device"] < 1e-6, res


def _assert_equal_to_one_device(out: dict, tol: float) -> None:
  for mesh, diffs in out.items():
    assert diffs["finite"], mesh
    assert diffs["params"] < tol and diffs["loss"] < tol, (mesh, diffs)


@pytest.mark.parametrize("name", TRAJECTORY_DEFAULT)
def test_fit_on_meshes_equals_one_device(default_results, name):
  _assert_equal_to_one_device(_ok(default_results["trajectory"][name]), 1e-10)


@pytest.mark.parametrize("name", ["natural_gradient"])
def test_fit_on_meshes_equals_one_device_float32(default_results, name):
  _assert_equal_to_one_device(_ok(default_results["trajectory32"][name]), 1e-5)


# By hand: the 2x4 rule with min_shard_bytes=0 shards each leaf along its largest axis that 4 divides.
PARAM_SPECS = {"[0]['bias']": ["model"], "[0]['kernel']": [None, "model"],
               "[1]['bias']": ["model"], "[1]['kernel']": ["model", None]}


def _expected(path: str, shape: list, dtype: str) -> list:
  """The spec of a leaf, padded with None to its rank: replicated for scalars, keys and other small leaves."""
  param = next((k for k in PARAM_SPECS if path.endswith(k)), None)
  if param is None or "key" in dtype:
    return [None] * len(shape)
  spec = PARAM_SPECS[param]
  return [None] * (len(shape) - len(spec)) + spec   # a memory of past vectors: extra leading axes unsharded


@pytest.mark.parametrize("name", ["adam", "lbfgs_b", "adahessian"])
def test_params_and_state_shardings_leaf_by_leaf(default_results, name):
  rows = _ok(default_results["specs"][name])
  sharded = 0
  for path, shape, dtype, spec, devices in rows:
    assert devices == 8, path
    spec = spec + [None] * (len(shape) - len(spec))
    assert spec == _expected(path, shape, dtype), (path, shape, spec)
    sharded += "model" in spec
  assert sharded >= 8   # the params and at least one params-shaped tree of state


def test_monitor_lambda_max_and_trace_equal_one_device(default_results):
  out = _ok(default_results["monitor"])
  for mesh in ("2x4", "8x1"):
    assert out[mesh]["lambda_max"] < 1e-10 and out[mesh]["trace"] < 1e-10, (mesh, out[mesh])
  assert min(out["values"]["lambda_max"]) > 0


def test_curvature_and_monitor_on_an_explicit_mesh_equal_one_device(default_results):
  diffs = _ok(default_results["explicit_curvature"])
  assert {"fisher", "hutchinson_diag", "hutchpp_trace", "exact_trace", "power_iteration", "lanczos_python",
          "monitor.spectral_density", "monitor.preconditioned_lambda_max", "monitor.ggn_lambda_max"} <= set(diffs)
  assert sum(name.startswith("monitor.") for name in diffs) >= len(monitors.METRICS), sorted(diffs)
  assert max(diffs.values()) < 1e-10, diffs


def test_batch_that_does_not_divide_over_data_is_a_clear_error(default_results):
  errors = _ok(default_results["errors"])
  assert errors["batch"] is not None and "12 examples does not divide" in errors["batch"] and "data=8" in errors["batch"]
  assert errors["devices"] is not None and "needs 16 devices" in errors["devices"]
  assert errors["default_undivided_ran"]


@pytest.mark.slow
def test_fit_on_meshes_equals_one_device_every_optimizer():
  results = _run(SLOW)
  assert "crashed" not in results, results["crashed"]
  rounding = results.pop("rounding")
  assert sorted(results) == optim.names()
  assert rounding["shampoo"] < 1e-10 and rounding["adam"] < 1e-10, rounding   # the others: continuous
  tolerance = lambda n: 3 * rounding[n] if n in ROUNDING_SENSITIVE else 1e-10
  bad = {n: r for n, r in results.items() if "error" in r or not all(
      d["finite"] and d["params"] < tolerance(n) and d["loss"] < tolerance(n) for d in r.values())}
  assert not bad, bad
  assert all(rounding[n] > 1e-6 for n in ROUNDING_SENSITIVE), rounding   # still sensitive: else back to 1e-10
