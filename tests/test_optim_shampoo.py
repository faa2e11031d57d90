"""Shampoo (optim/shampoo.py, optim/kronecker.py) against a float64 numpy transcription of the
update rule (per-block loops over unpadded slices, scipy's fractional_matrix_power for the roots),
dense factor definitions, scipy's inverse roots, optax.adam on the fallback leaves, and Adam on an
ill-conditioned matrix quadratic."""

from __future__ import annotations

import itertools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

from optlab_jax import optim
from optlab_jax.optim import kronecker
from optlab_jax.optim.shampoo import scale_by_shampoo

F64 = jnp.float64


def tiny_model(seed: int = 0, n: int = 8, rows: int = 5):
  """Params with a matrix, a 3-d tensor, a vector and a scalar leaf; a smooth non-quadratic loss."""
  rng = np.random.default_rng(seed)
  x, z = rng.normal(size=(n, rows)), rng.normal(size=(n, 2, 3))
  y = rng.uniform(-0.5, 0.5, size=(n, 3))
  params = {"w": rng.normal(size=(rows, 3)) / 2, "t": rng.normal(size=(2, 3, 3)) / 2,
            "b": rng.normal(size=3) / 2, "s": np.asarray(0.1)}

  def loss(p):
    pred = x @ p["w"] + jnp.einsum("nij,ijk->nk", z, p["t"]) + p["b"][None] + p["s"]
    return 0.5 * jnp.mean(jnp.sum((jnp.tanh(pred) - y) ** 2, axis=1))

  return jax.tree.map(lambda a: jnp.asarray(a, F64), params), loss


def block_slices(shape, block_size):
  """Every block of a leaf as a tuple of slices (the oracle's own cut: no padding)."""
  per_axis = [[slice(s, min(s + (block_size or n), n)) for s in range(0, n, block_size or n)] for n in shape]
  return list(itertools.product(*per_axis))


def unfold(x, i):
  return np.moveaxis(x, i, 0).reshape(x.shape[i], -1)


def mode_product(x, m, i):
  """x ×_i m: multiplies axis i of x by the matrix m."""
  return np.moveaxis(np.tensordot(m, x, axes=(1, i)), 0, i)


def np_root(f, exponent, damping, scipy_power=False):
  """(F + ε λ_max I)^exponent, by numpy's eigh or by scipy's (Schur–Padé) fractional power."""
  shift = damping * max(np.linalg.eigvalsh(f)[-1], np.finfo(np.float64).tiny)
  if scipy_power:
    return np.real(scipy.linalg.fractional_matrix_power(f + shift * np.eye(len(f)), exponent))
  w, q = np.linalg.eigh(f + shift * np.eye(len(f)))
  return (q * w ** exponent) @ q.T


def shampoo_numpy(loss, params, steps, lr, b1, b2, eps, factor_decay, damping, every, graft,
                  block_size=None, max_dim=4096):
  """The docstring's update rule, loop by loop, in float64 numpy; returns the params trajectory."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  blocks = {k: block_slices(x.shape, block_size) for k, x in params.items() if x.ndim >= 2}
  blocks = {k: s for k, s in blocks.items() if max(sl.stop - sl.start for b in s for sl in b) <= max_dim}
  factors = {k: [[np.zeros((sl.stop - sl.start,) * 2) for sl in b] for b in s] for k, s in blocks.items()}
  roots = {k: [[np.eye(sl.stop - sl.start) for sl in b] for b in s] for k, s in blocks.items()}
  weight = 1.0 if factor_decay == 1 else 1 - factor_decay
  grad_fn = jax.jit(jax.grad(loss))
  trajectory = []
  for t in range(1, steps + 1):
    grads = {k: np.asarray(g) for k, g in grad_fn(params).items()}
    for k, g in grads.items():
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      m_hat = m[k] / (1 - b1 ** t)
      adam = m_hat / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      if k not in blocks:
        d = m_hat if graft == "sgd" else adam
      else:
        d = np.zeros_like(g)
        for j, b in enumerate(blocks[k]):
          for i in range(g.ndim):
            u = unfold(g[b], i)
            factors[k][j][i] = factor_decay * factors[k][j][i] + weight * u @ u.T
            if (t - 1) % every == 0:
              roots[k][j][i] = np_root(factors[k][j][i], -1 / (2 * g.ndim), damping)
          direction = m_hat[b]
          for i in range(g.ndim):
            direction = mode_product(direction, roots[k][j][i], i)
          if graft != "none":
            reference = adam[b] if graft == "adam" else m_hat[b]
            direction = direction * np.linalg.norm(reference) / np.linalg.norm(direction)
          d[b] = direction
      params[k] = params[k] - lr * d
    trajectory.append({k: x.copy() for k, x in params.items()})
  return trajectory


def run_steps(tx, params, loss, steps):
  """`steps` jitted updates; returns the params trajectory and the final state."""
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    u, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, u), state

  trajectory = []
  for _ in range(steps):
    params, state = step(params, state)
    trajectory.append(params)
  return trajectory, state


CONFIGS = {
    # Gupta et al.'s Shampoo: sums of G Gᵀ, no momentum, no grafting, roots every step.
    "paper": dict(b1=0.0, factor_decay=1.0, graft="none", precondition_every=1, damping=1e-3),
    "adam_graft_blocked": dict(b1=0.9, factor_decay=0.9, graft="adam", precondition_every=2,
                               damping=1e-4, block_size=2),
    "sgd_graft": dict(b1=0.5, factor_decay=0.95, graft="sgd", precondition_every=3, damping=1e-4),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_trajectory_matches_numpy_transcription(config):
  kw = {"b2": 0.99, "eps": 1e-8, "block_size": None, **CONFIGS[config]}
  params, loss = tiny_model()
  lr, steps = 0.05, 6
  tx = optim.get("shampoo")(lr, precond_dtype="float64", **kw)
  got, _ = run_steps(tx, params, loss, steps)
  want = shampoo_numpy(loss, params, steps, lr, kw["b1"], kw["b2"], kw["eps"], kw["factor_decay"],
                       kw["damping"], kw["precondition_every"], kw["graft"], kw["block_size"])
  for t, (g, w) in enumerate(zip(got, want)):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-9, atol=1e-12, err_msg=f"step {t + 1}, leaf {k}")


def test_newton_roots_give_the_eigh_trajectory():
  params, loss = tiny_model(1)
  kw = dict(precondition_every=2, block_size=2, precond_dtype="float64")
  eigh, _ = run_steps(optim.get("shampoo")(0.05, **kw), params, loss, 5)
  newton, _ = run_steps(optim.get("shampoo")(0.05, inverse_root="newton", **kw), params, loss, 5)
  chex.assert_trees_all_close(newton[-1], eigh[-1], rtol=1e-7)


@pytest.mark.parametrize("block_size", [None, 2])
def test_factors_equal_dense_definitions(block_size):
  params, loss = tiny_model(2)
  tx = scale_by_shampoo(factor_decay=1.0, block_size=block_size, precond_dtype="float64")
  state, update = tx.init(params), jax.jit(tx.update)
  sums = {k: {} for k in ("w", "t")}
  for step in range(3):
    g = jax.tree.map(lambda x: x * (step + 1), jax.grad(loss)(params))
    _, state = update(g, state, params)
    for k in sums:
      for j, b in enumerate(block_slices(g[k].shape, block_size)):
        for i in range(g[k].ndim):
          u = unfold(np.asarray(g[k])[b], i)
          sums[k][j, i] = sums[k].get((j, i), 0) + u @ u.T
  for k in sums:
    factors = kronecker.unpack(state.factors[k], params[k].shape, block_size)
    for (j, i), dense in sums[k].items():
      n = len(dense)  # padded rows and columns of a short block stay zero
      np.testing.assert_allclose(factors[i][j][:n, :n], dense, rtol=1e-12)
      assert not np.any(factors[i][j][n:]) and not np.any(factors[i][j][:, n:])


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_inverse_root_matches_scipy(method):
  rng = np.random.default_rng(3)
  a = rng.normal(size=(2, 6, 4))
  f = np.einsum("nax,nbx->nab", a, a)  # rank 4 of 6: the damping makes it definite
  root = jax.jit(lambda f, e: kronecker.inverse_root(f, e, 1e-3, method))  # e traced, as when injected
  for exponent in (-0.25, -1 / 6, -0.5):
    got = root(jnp.asarray(f), exponent)
    for n in range(2):
      np.testing.assert_allclose(got[n], np_root(f[n], exponent, 1e-3, scipy_power=True), rtol=1e-7, atol=1e-9)


def test_fallback_leaves_are_adam():
  """Vectors, scalars, empty leaves and a matrix over max_precond_dim follow optax.adam."""
  params, loss = tiny_model(4)
  params = {**params, "empty": jnp.zeros((0, 3), F64)}
  loss_with_empty = lambda p: loss(p) + jnp.sum(p["empty"])
  tx = optim.get("shampoo")(0.03, max_precond_dim=2)
  got, _ = run_steps(tx, params, loss_with_empty, 4)
  want, _ = run_steps(optax.adam(0.03), params, loss_with_empty, 4)
  chex.assert_trees_all_close(got, want, rtol=1e-12)


def matrix_quadratic(seed=0, shape=(8, 6), condition=1e3):
  """f(W) = ½ tr((W − W*)ᵀ A (W − W*) B) with rotated A, B of condition number `condition`."""
  rng = np.random.default_rng(seed)
  def spd(n):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return jnp.asarray(q @ np.diag(np.logspace(0, np.log10(condition), n)) @ q.T)
  a, b = spd(shape[0]), spd(shape[1])
  target = jnp.asarray(rng.normal(size=shape))
  loss = lambda p: 0.5 * jnp.trace((p["w"] - target).T @ a @ (p["w"] - target) @ b)
  return {"w": jnp.zeros(shape, F64)}, loss


def best_late_loss(name, params, loss, lrs, steps, window=50, **kw):
  """min over `lrs` of the median loss over the last `window` of `steps` (one compiled, vmapped
  program over lr). Not the last step's loss: near the optimum Adam-type steps oscillate (SOAP at
  lr 0.3 on `matrix_quadratic`: 0.001 to 358 within its last 50 steps), so that loss is the phase
  of the oscillation, which rounding moves from one CPU to another."""
  def late(lr):
    tx = optim.get(name)(lr, **kw)
    def step(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      p = optax.apply_updates(p, u)
      return (p, s), loss(p)
    _, losses = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return jnp.median(losses[-window:])
  losses = jax.jit(jax.vmap(late))(jnp.asarray(lrs, F64))
  return float(jnp.min(jnp.where(jnp.isfinite(losses), losses, jnp.inf)))


def test_beats_adam_on_ill_conditioned_matrix_quadratic():
  """A rotated Kronecker-structured Hessian: Adam's diagonal cannot undo the rotation, Shampoo's
  factors (L ∝ A D Dᵀ A, R ∝ B Dᵀ D B) can; at equal steps and a tuned lr it gets far lower."""
  params, loss = matrix_quadratic()
  lrs = [0.003, 0.01, 0.03, 0.1, 0.3]
  initial = float(loss(params))
  adam = best_late_loss("adam", params, loss, lrs, 150)
  shampoo = best_late_loss("shampoo", params, loss, lrs, 150, precondition_every=5)
  assert shampoo < 1e-3 * initial and shampoo < 0.1 * adam, (initial, adam, shampoo)


def test_non_finite_gradient_leaves_factors_and_roots_finite():
  params, loss = tiny_model(5)
  tx = scale_by_shampoo(precondition_every=1, precond_dtype="float64")
  state, update = tx.init(params), jax.jit(tx.update)
  g = jax.grad(loss)(params)
  _, state = update(g, state, params)
  bad = {**g, "w": g["w"].at[0, 0].set(jnp.nan), "t": g["t"].at[0, 0, 0].set(jnp.inf)}
  _, after = update(bad, state, params)
  chex.assert_trees_all_equal(after.factors, state.factors)
  assert all(bool(jnp.all(jnp.isfinite(r))) for r in jax.tree.leaves(after.roots))


def test_zero_size_and_integer_leaves_left_alone():
  params = {"w": jnp.ones((3, 2), F64), "empty": jnp.zeros((0, 4), F64), "step": jnp.arange(3)}
  tx = optim.get("shampoo")(0.1)
  state = tx.init(params)
  grads = {"w": jnp.ones((3, 2), F64), "empty": jnp.zeros((0, 4), F64), "step": jnp.zeros(3, jnp.int32)}
  u, _ = jax.jit(tx.update)(grads, state, params)
  assert u["empty"].shape == (0, 4) and u["step"].dtype == jnp.int32
  np.testing.assert_array_equal(u["step"], 0)
  assert bool(jnp.all(jnp.isfinite(u["w"])))


@pytest.mark.parametrize("kw, name", [
    (dict(block_size=0), "block_size"), (dict(max_precond_dim=0), "max_precond_dim"),
    (dict(exponent=0.5), "exponent"), (dict(exponent=-2.0), "exponent"),
    (dict(exponent=-0.3, inverse_root="newton"), "exponent"), (dict(damping=-1e-3), "damping"),
    (dict(factor_decay=0.0), "factor_decay"), (dict(graft="adagrad"), "graft"),
    (dict(inverse_root="qr"), "inverse_root"), (dict(precond_dtype="float16"), "precond_dtype"),
])
def test_bad_arguments_raise_naming_them(kw, name):
  with pytest.raises(ValueError, match=name):
    optim.get("shampoo")(0.1, **kw)


def test_inject_hyperparams_traces_every_numeric_default_on_a_matrix():
  """precondition_every, factor_decay, damping, exponent… traced: same numbers as the plain alias."""
  params, loss = tiny_model(6)
  kw = dict(precondition_every=2, exponent=-0.25)
  plain, _ = run_steps(optim.get("shampoo")(0.05, block_size=2, **kw), params, loss, 4)
  # block_size sets shapes: passed explicitly, it must be static (traced, it raises naming itself).
  injected_tx = optax.inject_hyperparams(optim.get("shampoo"), static_args=("block_size",))
  injected, state = run_steps(injected_tx(learning_rate=0.05, block_size=2, **kw), params, loss, 4)
  assert {"precondition_every", "factor_decay", "exponent"} <= set(state.hyperparams)
  chex.assert_trees_all_close(injected[-1], plain[-1], rtol=1e-10)
  with pytest.raises(ValueError, match="block_size"):
    jax.jit(lambda b: scale_by_shampoo(block_size=b))(2)


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_on_cpu_each_blocks_decomposition_is_its_own_lapack_call(name):
  """jaxlib's batched CPU eigh/QR kernels wait on XLA's thread pool from inside it; two at once hung
  Shampoo and SOAP with `block_size` on a 2-core machine (`kronecker._per_block`). Lowered for CPU,
  every LAPACK call of a blocked leaf's refresh must take one block, not the (N, b, b) stack."""
  params = {"w": jnp.ones((12, 10), F64)}
  tx = optim.get(name)(1e-3, block_size=4, precondition_every=1)
  text = jax.jit(tx.update).lower(params, tx.init(params), params).as_text()
  operands = re.findall(r"custom_call @(lapack_\w+)\([^)]*\)[^\n]*:\s*\((tensor<[^>]*>)", text)
  assert {call for call, _ in operands} >= ({"lapack_dsyevd_ffi"} | ({"lapack_dgeqrf_ffi"} if name == "soap" else set()))
  assert {shape for _, shape in operands} == {"tensor<4x4xf64>"}, operands  # one 4×4 block, not 9 of them
