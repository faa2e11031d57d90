"""Every registry optimizer in every wrapper users put it in, on a small Flax NNX classifier.

Each cell trains a 4-8-3 tanh MLP for 30 jitted full-batch steps with a train step that
passes every extra argument (`obj_fn`, `model_fn`, `output_loss_fn`, `value`, `grad`,
`value_fn`), and asserts that the loss falls, that the state keeps its types (no retrace) and that
the step traced once. An optimizer's default cells train side by side in one program. The matrix is
parametrised over `optim.names()`, so an optimizer added to the registry is covered.

TUNING: per optimizer, the learning rate (and hyperparameters) that trains in 30 steps.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from optlab_jax import optim

NAMES = optim.names()
STEPS = 30
F64 = jnp.float64

# name -> (learning_rate, other hyperparameters); unlisted: (0.05, {}).
TUNING: dict[str, tuple[float, dict]] = {
    "sgd": (0.5, {}),
    "adadelta": (5.0, {}),
    "adagrad": (0.2, {}),
    "lars": (1.0, {}),
    "lamb": (0.05, {}),
    "novograd": (0.05, {}),
    "kfac": (0.1, {}),
    "sam": (0.5, {}),
    "asam": (0.5, {"rho": 0.05}),
    "sophia_h": (0.05, {"update_interval": 1}),
    "sophia_g": (0.05, {"update_interval": 1}),
    # Newton-type steps: lr = 1 is the method itself.
    "newton_cg": (1.0, {"max_cg_iters": 10}),
    "gauss_newton": (1.0, {"max_cg_iters": 10}),
    "natural_gradient": (0.5, {"likelihood": "categorical", "max_cg_iters": 10}),
    "lbfgs": (1.0, {}),
    "lbfgs_b": (1.0, {}),
    # Learning-rate-free methods grow their step from a tiny first estimate; from the default
    # (1e-6) that takes more than 30 steps, so they start from 1e-2 here.
    "cocob": (1.0, {}),
    "dadapt_adamw": (1.0, {"estim_lr0": 1e-2}),
    "dog": (1.0, {"init_step_value": 1e-2}),
    # Prodigy's step size grows from estim_lr0 (1e-6: a bfloat16 step of 0, and too slow for
    # MultiSteps' 10 real steps); a larger start trains in 30.
    "prodigy": (1.0, {"estim_lr0": 1e-3}),
    "polyak_sgd": (1.0, {}),
    "schedule_free_sgd": (1.0, {}),
    # Mechanic's learned scale starts at s_init (1e-6): 30 steps need a larger start.
    "mechanize": (0.05, {"s_init": 1e-2}),
}


def tuning(name):
  return TUNING.get(name, (0.05, {}))


class MLP(nnx.Module):

  def __init__(self, dtype, rngs):
    self.hidden = nnx.Linear(4, 8, dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(8, 3, dtype=dtype, param_dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def data(dtype):
  """32 points in 4-d, labelled by a random linear teacher (3 classes)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 4))
  y = np.argmax(x @ rng.normal(size=(4, 3)), axis=1)
  return jnp.asarray(x, dtype), jnp.asarray(y)


def extra_args(graphdef, x, y, params):
  """Every extra argument any registry optimizer takes, at `params`."""
  model_fn = lambda p: nnx.merge(graphdef, p)(x)
  output_loss_fn = lambda logits: optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), y).mean()
  obj_fn = lambda p: output_loss_fn(model_fn(p))
  value, grad = jax.value_and_grad(obj_fn)(params)
  return dict(obj_fn=obj_fn, model_fn=model_fn, output_loss_fn=output_loss_fn, value=value,
              grad=grad, value_fn=obj_fn)


def is_kernel(params):
  return {layer: {"kernel": True, "bias": False} for layer in params}


class Trained(NamedTuple):
  start: Any         # the initial params
  params: Any        # the params after STEPS steps
  losses: np.ndarray  # the loss before each step, and after the last
  stable: bool       # the state kept its structure, shapes, dtypes and shardings: no retrace from it


def train(txs, dtype=jnp.float32):
  """STEPS jitted steps of every tx in `txs`, side by side in one program (one program per optimizer
  rather than one per wrapper roughly halves the compile time): ([Trained per tx], traces of the step)."""
  x, y = data(dtype)
  graphdef, state = nnx.split(MLP(dtype, nnx.Rngs(0)), nnx.Param)
  params = nnx.to_pure_dict(state)
  traces = []

  @jax.jit
  def step(params, opt_states):
    traces.append(1)
    out = []
    for tx, p, opt_state in zip(txs, params, opt_states):
      extra = extra_args(graphdef, x, y, p)
      updates, opt_state = tx.update(extra["grad"], opt_state, p, **extra)
      out.append((optax.apply_updates(p, updates), opt_state, extra["value"]))
    return [list(column) for column in zip(*out)]

  types = lambda tree: (jax.tree.structure(tree), [jax.typeof(x) for x in jax.tree.leaves(tree)])
  current, opt_states = [params] * len(txs), [tx.init(params) for tx in txs]
  first, losses = [types(s) for s in opt_states], []
  for _ in range(STEPS):
    current, opt_states, loss = step(current, opt_states)
    losses.append(np.asarray(loss, np.float64))
  losses.append([float(extra_args(graphdef, x, y, p)["value"]) for p in current])
  losses = np.asarray(losses)
  return [Trained(params, p, losses[:, i], first[i] == types(s)) for i, (p, s) in enumerate(zip(current, opt_states))], len(traces)


def build(name, wrapper):
  lr, kw = tuning(name)
  factory = optim.get(name)
  plain = lambda: factory(lr, **kw)
  inject = lambda: optax.inject_hyperparams(factory)(learning_rate=lr, **kw)
  if wrapper == "plain" or wrapper == "bfloat16":
    return plain()
  if wrapper == "inject":
    return inject()
  if wrapper == "clip_inject":
    return optax.chain(optax.clip_by_global_norm(1.0), inject())
  if wrapper == "multisteps_1":
    return optax.MultiSteps(plain(), every_k_schedule=1)
  if wrapper == "multisteps_3":
    return optax.MultiSteps(plain(), every_k_schedule=3)
  if wrapper == "apply_if_finite":
    return optax.apply_if_finite(plain(), max_consecutive_errors=3)
  if wrapper == "masked":
    # optax.masked passes the other leaves' updates through: the biases are frozen explicitly.
    bias = lambda p: jax.tree.map(lambda k: not k, is_kernel(p))
    return optim.with_full_params(optax.chain(
        optax.masked(plain(), is_kernel), optax.masked(optax.set_to_zero(), bias)))
  if wrapper == "multi_transform":
    labels = lambda p: jax.tree.map(lambda k: "opt" if k else "adam", is_kernel(p))
    return optim.with_full_params(optax.multi_transform({"opt": plain(), "adam": optax.adam(0.05)}, labels))
  raise ValueError(wrapper)


FUNCTIONAL = ["plain", "inject", "clip_inject", "multisteps_1", "multisteps_3", "apply_if_finite",
              "masked", "multi_transform", "bfloat16"]
# The thin entries over optax's own transforms (optax tests its wrappers on them), and the
# combinators of other registry optimizers (a box projection, clipping, a switch, stale gradients),
# whose own tests compare them with optax's parts.
THIN = {n for n in NAMES if optim.get(n).__module__.rsplit(".", 1)[-1] in
        ("muon", "schedule_free", "learning_rate_free", "adam_variants", "sign_and_factored", "projected", "clipped",
         "switch", "delayed")}
# Cells the default run leaves to `-m slow`, each covered there by a faster test of the same code:
# plain (test_optim_contract's jit and convergence tests), multisteps_1 (multisteps_3, the same
# wrapper plus accumulation), clip_inject (test_optim_updates' clipping test and the inject cell),
# bfloat16 (test_optim_contract's bfloat16 state test); for the thin entries also MultiSteps,
# apply_if_finite, multi_transform and nnx.Optimizer: their one wrapper code (`optax_alias`) is
# exercised by the inject and masked cells, and multi_transform and nnx by every other optimizer.
_SLOW = {"plain", "multisteps_1", "clip_inject", "bfloat16"}
_SLOW_THIN = _SLOW | {"multisteps_3", "apply_if_finite", "multi_transform"}


def _slow(name, wrapper):
  return wrapper in (_SLOW_THIN if name in THIN else _SLOW)


def _cells():
  for name in NAMES:
    for wrapper in FUNCTIONAL:
      marks = [pytest.mark.slow] if _slow(name, wrapper) else [pytest.mark.xdist_group(f"wrappers_{name}")]
      yield pytest.param(name, wrapper, marks=marks, id=f"{name}-{wrapper}")


@functools.cache
def _default_cells(name):
  """{wrapper: Trained} for the default run's wrappers of `name`, trained in one program, and its traces."""
  wrappers = [w for w in FUNCTIONAL if not _slow(name, w)]
  runs, traces = train([build(name, w) for w in wrappers])
  return dict(zip(wrappers, runs)), traces


@pytest.mark.parametrize("name, wrapper", list(_cells()))
def test_trains_in_wrapper(name, wrapper):
  if _slow(name, wrapper):
    (run,), traces = train([build(name, wrapper)], jnp.bfloat16 if wrapper == "bfloat16" else jnp.float32)
    others_stable = True
  else:
    runs, traces = _default_cells(name)
    run, others_stable = runs[wrapper], all(r.stable for w, r in runs.items() if w != wrapper)
  assert run.stable, f"{name} in {wrapper}: the state changed type across steps, so the jitted step retraces"
  assert traces == 1 or not others_stable, f"{name} in {wrapper}: the jitted step traced {traces} times"
  losses, start, params = run.losses, run.start, run.params
  assert np.all(np.isfinite(losses)), f"{name} in {wrapper}: non-finite loss {losses}"
  assert losses[-1] < 0.9 * losses[0], f"{name} in {wrapper}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
  if wrapper == "masked":
    for layer in params:
      np.testing.assert_array_equal(params[layer]["bias"], start[layer]["bias"])
      assert not np.array_equal(params[layer]["kernel"], start[layer]["kernel"])
  for leaf, leaf0 in zip(jax.tree.leaves(params), jax.tree.leaves(start)):
    assert leaf.dtype == leaf0.dtype


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in THIN else []) for n in NAMES])
def test_trains_in_nnx_optimizer(name):
  lr, kw = tuning(name)
  x, y = data(jnp.float32)
  model = MLP(jnp.float32, nnx.Rngs(0))
  graphdef, _ = nnx.split(model, nnx.Param)
  optimizer = nnx.Optimizer(model, optim.get(name)(lr, **kw), wrt=nnx.Param)
  traces = []

  @nnx.jit
  def step(model, optimizer):
    traces.append(1)
    extra = extra_args(graphdef, x, y, nnx.state(model, nnx.Param))
    optimizer.update(model, extra["grad"], **extra)
    return extra["value"]

  losses = [float(step(model, optimizer)) for _ in range(STEPS)]
  assert traces == [1], f"{name}: nnx.jit step traced {len(traces)} times"
  assert np.isfinite(losses[-1]) and losses[-1] < 0.9 * losses[0], f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"


@pytest.mark.parametrize("name, arg", [("adahessian", "block_size"), ("natural_gradient", "num_samples"),
                                       ("lbfgs", "memory_size"), ("lbfgs_b", "memory_size")])
def test_injecting_a_shape_hyperparameter_asks_for_static_args(name, arg):
  params = {"w": jnp.ones((2, 3))}
  with pytest.raises(ValueError, match=re.escape(f"static_args=({arg!r},)")):
    optax.inject_hyperparams(optim.get(name))(learning_rate=0.1, **{arg: 4}).init(params)
  state = optax.inject_hyperparams(optim.get(name), static_args=(arg,))(learning_rate=0.1, **{arg: 4}).init(params)
  assert arg not in state.hyperparams
  if arg == "memory_size":   # the static value sets the memory: 4 rows per leaf
    memory = [x for x in jax.tree.leaves(state.inner_state) if x.ndim == 3]
    assert memory and all(x.shape == (4, 2, 3) for x in memory)


@pytest.mark.parametrize("name", NAMES)
def test_map_params_finds_every_params_copy(name):
  params = {"a": jnp.ones((2, 3)), "b": {"c": jnp.ones(5)}}
  tx = optim.get(name)(tuning(name)[0], **tuning(name)[1])
  state = tx.init(params)
  tagged = optax.tree.map_params(tx, lambda _: "params", state, transform_non_params=lambda _: "other")
  tags, leaves = jax.tree.leaves(tagged), jax.tree.leaves(state)
  assert len(tags) == len(leaves)
  copies = [leaf.shape for tag, leaf in zip(tags, leaves) if tag == "params"]
  # Known counts: Adam's two moments; the Levenberg-Marquardt state holds only μ; L-BFGS's
  # line search keeps the gradient and its memory the last params and updates.
  expected = {"adam": 2, "newton_cg": 0, "gauss_newton": 0}
  if name in expected:
    assert copies == [(2, 3), (5,)] * expected[name]
  if name == "lbfgs":
    assert copies


SUBSET = {"hidden": {"kernel": False, "bias": False}, "out": {"kernel": True, "bias": False}}


def subset_solve(kind, wrapper, mu=1.0):
  """The update of Newton-CG / Gauss-Newton on the output kernel, and the dense oracle's."""
  x, y = data(F64)
  graphdef, state = nnx.split(MLP(F64, nnx.Rngs(0)), nnx.Param)
  params = nnx.to_pure_dict(state)
  extra = extra_args(graphdef, x, y, params)
  inner = {"newton_cg": optim.scale_by_newton_cg, "gauss_newton": optim.scale_by_gauss_newton}[kind](
      mu, max_cg_iters=200, cg_tol=1e-14)
  if wrapper == "masked":
    tx = optim.with_full_params(optax.masked(inner, SUBSET))
  else:
    labels = jax.tree.map(lambda s: "opt" if s else "adam", SUBSET)
    tx = optim.with_full_params(optax.multi_transform({"opt": inner, "adam": optax.adam(1e-3)}, labels))
  updates, _ = jax.jit(lambda p: tx.update(extra["grad"], tx.init(p), p, **extra))(params)
  flat, unravel = ravel_pytree(params)
  index = np.flatnonzero(ravel_pytree(jax.tree.map(lambda p, s: jnp.full(p.shape, s, F64), params, SUBSET))[0])
  g = ravel_pytree(extra["grad"])[0][index]
  if kind == "newton_cg":
    curv = jax.hessian(lambda v: extra["obj_fn"](unravel(v)))(flat)
  else:
    logits = extra["model_fn"](params)
    jac = jax.jacobian(lambda v: extra["model_fn"](unravel(v)).reshape(-1))(flat)
    h_out = jax.hessian(lambda z: extra["output_loss_fn"](z.reshape(logits.shape)))(logits.reshape(-1))
    curv = jac.T @ h_out @ jac
  block = np.asarray(curv)[np.ix_(index, index)]
  want = np.linalg.solve(block + mu * np.linalg.norm(g) * np.eye(index.size), g)
  return updates, want


@pytest.mark.parametrize("wrapper", ["masked", "multi_transform"])
@pytest.mark.parametrize("kind", ["newton_cg", "gauss_newton"])
def test_curvature_on_a_subset_is_the_dense_sub_block(kind, wrapper):
  updates, want = subset_solve(kind, wrapper)
  np.testing.assert_allclose(np.asarray(updates["out"]["kernel"]).reshape(-1), want, rtol=1e-6, atol=1e-8 * np.linalg.norm(want))


REAL_ONLY = ["adahessian", "sophia_h", "sophia_g", "sam", "asam", "newton_cg", "gauss_newton",
             "natural_gradient", "kfac", "lbfgs_b"]


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
@pytest.mark.parametrize("name", REAL_ONLY)
def test_curvature_optimizers_without_a_complex_form_refuse_complex_params(name, dtype):
  with pytest.raises(ValueError, match=jnp.dtype(dtype).name):
    optim.get(name)(0.1).init({"w": jnp.ones(3), "z": jnp.ones(3, dtype)})


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
def test_lbfgs_converges_on_a_complex_quadratic(dtype):
  """f(z) = zᴴAz − 2 Re(bᴴz), A Hermitian positive definite: the minimum is z* = A⁻¹b."""
  rng = np.random.default_rng(0)
  m = rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4))
  a = jnp.asarray(m.conj().T @ m + np.eye(4), dtype)
  b = jnp.asarray(rng.normal(size=4) + 1j * rng.normal(size=4), dtype)
  obj_fn = lambda p: jnp.real(jnp.vdot(p["z"], a @ p["z"])) - 2 * jnp.real(jnp.vdot(b, p["z"]))
  tx = optim.lbfgs(1.0)
  params = {"z": jnp.zeros(4, dtype)}
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    value, grad = jax.value_and_grad(obj_fn)(params)
    grad = jax.tree.map(jnp.conj, grad)   # optax's convention for complex parameters
    updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=obj_fn)
    return optax.apply_updates(params, updates), state

  first = jax.tree.map(lambda x: x.dtype, state)
  for _ in range(20):
    params, state = step(params, state)
  assert params["z"].dtype == dtype and jax.tree.map(lambda x: x.dtype, state) == first
  tol = 1e-5 if dtype == jnp.complex64 else 1e-12
  np.testing.assert_allclose(params["z"], np.linalg.solve(np.asarray(a), np.asarray(b)), atol=tol)
