"""SOAP (optim/soap.py, optim/kronecker.py) against a float64 numpy transcription of the authors'
reference code (per-block loops over unpadded slices, numpy eigh and QR), dense factor definitions,
optax.adam on the fallback leaves, and Adam on an ill-conditioned matrix quadratic.

SOAP is invariant to the signs of its eigenvectors, but not to the basis chosen inside a repeated
eigenvalue; the models here keep every factor's spectrum simple (a matrix leaf has at most one
more row than columns, so L = G Gᵀ of the first gradient has a single zero eigenvalue)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab_jax import optim
from optlab_jax.optim import kronecker
from optlab_jax.optim.soap import scale_by_soap
from tests.test_optim_shampoo import (F64, best_late_loss, block_slices, matrix_quadratic, mode_product,
                                      run_steps, tiny_model, unfold)


def soap_numpy(grad_fn, params, steps, lr, b1, b2, eps, factor_decay, every, block_size=None):
  """The reference code's step, block by block, in float64 numpy; `grad_fn(params, s)` gives the
  gradient at call s. Returns the params trajectory."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  decay = b2 if factor_decay is None else factor_decay
  # Per leaf, per block: slices, second moment (rotated), factors, eigenbases ([] = identity).
  blocks = {k: block_slices(x.shape, block_size) if x.ndim >= 2 else [()] for k, x in params.items()}
  m = {k: np.zeros_like(x) for k, x in params.items()}
  v = {k: [np.zeros(x[b].shape) for b in blocks[k]] for k, x in params.items()}
  factors = {k: [[np.zeros((n, n)) for n in x[b].shape] for b in blocks[k]] for k, x in params.items()}
  bases = {k: [[] for _ in blocks[k]] for k in params}
  trajectory = []
  for s in range(steps):  # s: Adam steps taken before this call
    grads = {k: np.asarray(g) for k, g in grad_fn(params, s).items()}
    for k, g in grads.items():
      d = np.zeros_like(g)
      if s > 0:
        m[k] = b1 * m[k] + (1 - b1) * g
      for j, b in enumerate(blocks[k]):
        q = bases[k][j]
        if s > 0:
          g_rot, m_rot = g[b], m[k][b]
          for i, qi in enumerate(q):
            g_rot, m_rot = mode_product(g_rot, qi.T, i), mode_product(m_rot, qi.T, i)
          v[k][j] = b2 * v[k][j] + (1 - b2) * g_rot ** 2
          n = (m_rot / (1 - b1 ** s)) / (np.sqrt(v[k][j] / (1 - b2 ** s)) + eps)
          for i, qi in enumerate(q):
            n = mode_product(n, qi, i)
          d[b] = n
        if g.ndim < 2:
          continue
        for i in range(g.ndim):
          u = unfold(g[b], i)
          factors[k][j][i] = decay * factors[k][j][i] + (1 - decay) * u @ u.T
        if s == 0:
          bases[k][j] = [np.linalg.eigh(f)[1][:, ::-1] for f in factors[k][j]]
        elif s % every == 0:
          for i, (f, qi) in enumerate(zip(factors[k][j], q)):
            order = np.argsort(-np.diag(qi.T @ f @ qi))
            v[k][j] = np.take(v[k][j], order, axis=i)
            q[i] = np.linalg.qr(f @ qi[:, order])[0]
      params[k] = params[k] - lr * d
    trajectory.append({k: x.copy() for k, x in params.items()})
  return trajectory


CONFIGS = {
    "reference_defaults": dict(b1=0.95, b2=0.95, factor_decay=None, precondition_every=2),
    "blocked": dict(b1=0.9, b2=0.99, factor_decay=0.9, precondition_every=3, block_size=2),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_trajectory_matches_numpy_transcription(config):
  kw = {"eps": 1e-8, "block_size": None, **CONFIGS[config]}
  params, loss = tiny_model(rows=4)
  lr, steps = 0.02, 7
  got, _ = run_steps(optim.get("soap")(lr, precond_dtype="float64", **kw), params, loss, steps)
  grad_fn = jax.jit(jax.grad(loss))
  want = soap_numpy(lambda p, s: grad_fn(p), params, steps, lr, kw["b1"], kw["b2"], kw["eps"], kw["factor_decay"],
                    kw["precondition_every"], kw["block_size"])
  for t, (g, w) in enumerate(zip(got, want)):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-6, atol=1e-12, err_msg=f"step {t + 1}, leaf {k}")


def test_eigen_order_changes_are_followed():
  """Gradients whose dominant row and column move mid-run: each refresh must re-sort Q's columns
  by the factors' eigenvalues and permute v with them (the transcription does both)."""
  rng = np.random.default_rng(7)
  base_g = rng.normal(size=(6, 4, 3))
  scale = np.ones((6, 4, 3))
  scale[:3, 0] *= 4.0
  scale[3:, 3] *= 6.0
  scale[3:, :, 2] *= 5.0
  stream = [{"w": jnp.asarray(g)} for g in base_g * scale]
  params = {"w": jnp.zeros((4, 3), F64)}
  kw = dict(b1=0.9, b2=0.95, eps=1e-8, factor_decay=0.5, precondition_every=1)
  tx = optim.get("soap")(0.1, precond_dtype="float64", **kw)
  state, update, got = tx.init(params), jax.jit(tx.update), []
  p = params
  for g in stream:
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    got.append(p)
  want = soap_numpy(lambda _, s: stream[s], params, len(stream), 0.1, kw["b1"], kw["b2"], kw["eps"],
                    kw["factor_decay"], kw["precondition_every"])
  for t, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_allclose(g["w"], w["w"], rtol=1e-8, atol=1e-12, err_msg=f"step {t + 1}")


def test_padded_coordinates_stay_apart_in_the_eigenbasis():
  """A padded block whose real part is rank-deficient: the zero eigenvalue of the real part and the
  padding are degenerate in F, so without separating them eigh could mix the two."""
  u = np.asarray([0.6, 0.8, 0.0])
  f = jnp.asarray(np.outer(u, u))[None]
  pad = np.asarray([[0.0, 0.0, 1.0]])
  q = kronecker.eigenbasis(f, pad)[0]
  np.testing.assert_allclose(np.abs(q[:, -1]), [0, 0, 1], atol=1e-12)
  np.testing.assert_allclose(np.abs(q[:, 0]), [0.6, 0.8, 0], atol=1e-12)
  # A refresh from a basis with the padding before the real null vector (both have F q = 0).
  start = jnp.asarray([[0.0, 0.6, 0.8], [0.0, 0.8, -0.6], [1.0, 0.0, 0.0]])[None]
  q_new, order = kronecker.power_qr_basis(f, start, pad)
  np.testing.assert_array_equal(order[0], [1, 2, 0])
  np.testing.assert_allclose(np.abs(q_new[0][:, -1]), [0, 0, 1], atol=1e-12)


def test_factors_and_first_eigenbasis_equal_dense_definitions():
  params, loss = tiny_model(1, rows=4)
  tx = scale_by_soap(factor_decay=0.8, precondition_every=100, precond_dtype="float64")
  state, update = tx.init(params), jax.jit(tx.update)
  ema = [0.0, 0.0]
  for step in range(3):
    g = jax.tree.map(lambda x: x * (step + 1), jax.grad(loss)(params))["w"]
    _, state = update({**jax.grad(loss)(params), "w": g}, state, params)
    dense = (np.asarray(g) @ np.asarray(g).T, np.asarray(g).T @ np.asarray(g))
    ema = [0.8 * e + 0.2 * d for e, d in zip(ema, dense)]
    if step == 0:
      first = [np.linalg.eigh(d)[1][:, ::-1] for d in ema]
      for q, want in zip(kronecker.unpack(state.bases["w"], (4, 3), None), first):  # columns up to sign
        np.testing.assert_allclose(np.abs(q[0].T @ want), np.eye(len(want)), atol=1e-10)
  for f, want in zip(kronecker.unpack(state.factors["w"], (4, 3), None), ema):
    np.testing.assert_allclose(f[0], want, rtol=1e-12)


def test_fallback_leaves_are_adam_from_the_second_step():
  """Vectors, scalars, empty leaves, a matrix over max_precond_dim: the first update is zero (as for
  every leaf), then optax.adam's updates on the same gradients."""
  params, loss = tiny_model(2, rows=4)
  params = {**params, "empty": jnp.zeros((0, 3), F64)}
  loss_with_empty = lambda p: loss(p) + jnp.sum(p["empty"])
  got, _ = run_steps(optim.get("soap")(0.03, max_precond_dim=2), params, loss_with_empty, 4)
  want, _ = run_steps(optax.adam(0.03, b1=0.95, b2=0.95), params, loss_with_empty, 3)
  chex.assert_trees_all_equal(got[0], params)
  chex.assert_trees_all_close(got[1:], want, rtol=1e-12)


def test_beats_adam_on_ill_conditioned_matrix_quadratic():
  """The rotated Kronecker Hessian of `matrix_quadratic`: Adam in the factors' eigenbasis gets
  orders of magnitude below Adam in the original coordinates at equal steps, betas and tuned lr.
  (Both take sign-like steps at first; the gap opens once the basis has settled, so 400 steps.)"""
  params, loss = matrix_quadratic()
  lrs = [0.003, 0.01, 0.03, 0.1, 0.3]
  initial = float(loss(params))
  adam = best_late_loss("adam", params, loss, lrs, 400, b1=0.95, b2=0.99)
  soap = best_late_loss("soap", params, loss, lrs, 400, b1=0.95, b2=0.99, precondition_every=5)
  assert soap < 1e-5 * initial and soap < 0.01 * adam, (initial, adam, soap)


def test_non_finite_gradient_leaves_factors_and_bases_finite():
  params, loss = tiny_model(3, rows=4)
  tx = scale_by_soap(precondition_every=1, precond_dtype="float64")
  state, update = tx.init(params), jax.jit(tx.update)
  g = jax.grad(loss)(params)
  _, state = update(g, state, params)
  bad = {**g, "w": g["w"].at[0, 0].set(jnp.nan), "t": g["t"].at[0, 0, 0].set(jnp.inf)}
  _, after = update(bad, state, params)
  chex.assert_trees_all_equal(after.factors, state.factors)
  assert all(bool(jnp.all(jnp.isfinite(q))) for q in jax.tree.leaves(after.bases))


def test_zero_size_and_integer_leaves_left_alone():
  params = {"w": jnp.ones((3, 2), F64), "empty": jnp.zeros((0, 4), F64), "step": jnp.arange(3)}
  tx = optim.get("soap")(0.1)
  state, update = tx.init(params), jax.jit(tx.update)
  grads = {"w": jnp.ones((3, 2), F64), "empty": jnp.zeros((0, 4), F64), "step": jnp.zeros(3, jnp.int32)}
  for _ in range(2):
    u, state = update(grads, state, params)
  assert u["empty"].shape == (0, 4) and u["step"].dtype == jnp.int32
  np.testing.assert_array_equal(u["step"], 0)
  assert bool(jnp.all(jnp.isfinite(u["w"])))


@pytest.mark.parametrize("kw, name", [
    (dict(block_size=0), "block_size"), (dict(max_precond_dim=0), "max_precond_dim"),
    (dict(factor_decay=1.0), "factor_decay"), (dict(precondition_every=0), "precondition_every"),
    (dict(precond_dtype="bfloat16"), "precond_dtype"),
])
def test_bad_arguments_raise_naming_them(kw, name):
  with pytest.raises(ValueError, match=name):
    optim.get("soap")(0.1, **kw)


def test_inject_hyperparams_traces_every_numeric_default_on_a_matrix():
  params, loss = tiny_model(4, rows=4)
  kw = dict(precondition_every=2, factor_decay=0.9)
  plain, _ = run_steps(optim.get("soap")(0.02, **kw), params, loss, 5)
  injected, state = run_steps(optax.inject_hyperparams(optim.get("soap"))(learning_rate=0.02, **kw),
                              params, loss, 5)
  assert {"precondition_every", "factor_decay", "b2"} <= set(state.hyperparams)
  chex.assert_trees_all_close(injected[-1], plain[-1], rtol=1e-10)
