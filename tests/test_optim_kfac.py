"""K-FAC (optim/kfac.py, optim/kfac_capture.py) against float64 references built independently:
a hand-written forward pass with jax.grad w.r.t. additive output perturbations, dense Kronecker
products and solves in numpy, jax.jacobian Fisher blocks, and a numpy im2col."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from optlab_jax import curvature, optim
from optlab_jax.optim import kfac_capture as kc
from optlab_jax.optim.kfac import _damped_inverses, scale_by_kfac

F64 = jnp.float64


class TinyMLP(nnx.Module):
  def __init__(self, sizes, rngs, norm=False):
    self.l1 = nnx.Linear(sizes[0], sizes[1], param_dtype=F64, rngs=rngs)
    self.ln = nnx.LayerNorm(sizes[1], param_dtype=F64, rngs=rngs) if norm else None
    self.l2 = nnx.Linear(sizes[1], sizes[2], param_dtype=F64, rngs=rngs)

  def __call__(self, x):
    h = self.l1(x)
    return self.l2(jnp.tanh(self.ln(h) if self.ln is not None else h))


def tiny_mlp(seed, n=5, sizes=(3, 4, 3), norm=False):
  graphdef, params = nnx.split(TinyMLP(sizes, nnx.Rngs(seed), norm))
  x = jax.random.normal(jax.random.key(seed + 10), (n, sizes[0]), F64)
  y = jax.random.randint(jax.random.key(seed + 20), (n,), 0, sizes[2])
  return params, (lambda p: nnx.merge(graphdef, p)(x)), x, y


@jax.jit
def by_hand(params, x, targets, likelihood="categorical"):
  """[(ā, δ)] of both layers: inputs with a ones column, δ = ∂ nll / ∂(layer output), via jax.grad."""
  p = nnx.to_pure_dict(params)
  (w1, b1), (w2, b2) = [(p[k]["kernel"], p[k]["bias"][None]) for k in ("l1", "l2")]
  h = jnp.tanh(x @ w1 + b1)
  loss = lambda z1, z2: curvature.nll(jnp.tanh(x @ w1 + b1 + z1) @ w2 + b2 + z2, targets, likelihood)
  zeros = lambda w: jnp.zeros((x.shape[0], w.shape[1]), F64)
  d1, d2 = jax.grad(loss, argnums=(0, 1))(zeros(w1), zeros(w2))
  ones = jnp.ones((x.shape[0], 1), F64)
  return [(jnp.hstack([x, ones]), d1), (jnp.hstack([h, ones]), d2)]


def sampled_targets(seed, outputs, likelihood="categorical"):
  """The labels `scale_by_kfac(seed=seed)` draws at its first update."""
  return curvature.sample_targets(jax.random.split(jax.random.PRNGKey(seed))[1], outputs, likelihood)


def vec_index(params, prefix=""):
  """Positions in ravel_pytree(params) of vec([W; b]) (row-major) of the layer at `prefix`."""
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  sizes = [leaf.size for leaf in jax.tree.leaves(params)]
  offsets = np.cumsum([0] + sizes)
  position = lambda name: next(i for i, p in enumerate(paths) if p.startswith(f"{prefix}['{name}']"))
  k, b = position("kernel"), position("bias")
  return np.concatenate([offsets[k] + np.arange(sizes[k]), offsets[b] + np.arange(sizes[b])])


def first_update(tx, params, grads=None, **extra):
  """tx.update at tx.init(params), jitted; zero grads by default."""
  grads = jax.tree.map(jnp.zeros_like, params) if grads is None else grads
  return jax.jit(lambda g, p: tx.update(g, tx.init(p), p, **extra))(grads, params)


@functools.partial(jax.jit, static_argnums=0)
def loss_grad(model_fn, params, targets):
  return jax.grad(lambda p: curvature.nll(model_fn(p), targets, "categorical"))(params)


def damped_kron(a, g, damping):
  pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
  return np.kron(a + pi * np.sqrt(damping) * np.eye(len(a)), g + np.sqrt(damping) / pi * np.eye(len(g)))


def test_captured_inputs_and_output_gradients_match_jax_grad(seed=0):
  params, model_fn, x, y = tiny_mlp(seed)
  layers = kc.find_layers(params)
  assert [l.name for l in layers] == ["l1/kernel", "l2/kernel"] and all(l.bias is not None for l in layers)
  targets = sampled_targets(seed, model_fn(params))
  output_grad_fn = lambda o: jax.grad(curvature.nll)(o, targets, "categorical")
  _, captured = jax.jit(lambda p: kc.capture(model_fn, p, layers, output_grad_fn))(params)
  for c, (a, delta) in zip(captured, by_hand(params, x, targets)):
    np.testing.assert_allclose(c.a, a, rtol=1e-13)
    np.testing.assert_allclose(c.g / c.num_examples, delta, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("seed,empirical", [(0, False), (1, True)])
def test_preconditioner_is_blockwise_inverse_of_damped_a_kron_g(seed, empirical):
  """The map grads -> update (its dense Jacobian) is block diagonal over the layers, each block
  ((A + π√λ I) ⊗ (G + √λ/π I))⁻¹ with A = (1/N) Σ ā āᵀ, G = N Σ δ δᵀ from the hand-built ā, δ."""
  damping = 0.05
  params, model_fn, x, y = tiny_mlp(seed)
  out_loss = lambda o: curvature.nll(o, y, "categorical")
  tx = scale_by_kfac(damping=damping, inverse_every=1, kl_clip=None, empirical=empirical, seed=seed)
  state0 = tx.init(params)
  flat, unravel = ravel_pytree(params)

  def update(g):
    u, state = tx.update(unravel(g), state0, params, model_fn=model_fn, output_loss_fn=out_loss)
    return ravel_pytree(u)[0], state

  dense, state = jax.jit(jax.jacobian(update, has_aux=True))(jnp.zeros_like(flat))
  targets = y if empirical else sampled_targets(seed, model_fn(params))
  expected = np.zeros(dense.shape)
  for j, (name, (a_bar, delta)) in enumerate(zip(("l1", "l2"), by_hand(params, x, targets))):
    a_bar, delta, n = np.asarray(a_bar), np.asarray(delta), len(a_bar)
    a, g = a_bar.T @ a_bar / n, n * delta.T @ delta
    np.testing.assert_allclose(state.a_factors[j], a, rtol=1e-12)
    np.testing.assert_allclose(state.g_factors[j], g, rtol=1e-12, atol=1e-15)
    index = vec_index(params, f"['{name}']")
    expected[np.ix_(index, index)] = np.linalg.inv(damped_kron(a, g, damping))
  np.testing.assert_allclose(dense, expected, rtol=1e-9, atol=1e-11)


def test_one_example_a_kron_g_equals_sampled_fisher_outer_product():
  """One example, one label draw: the Fisher estimate ∇ℓ̃ ∇ℓ̃ᵀ of a layer is (ā⊗g)(ā⊗g)ᵀ =
  ā āᵀ ⊗ g gᵀ exactly, the gradient taken by jax.grad of the nll of the same sampled label."""
  params, model_fn, _, _ = tiny_mlp(3, n=1)
  tx = scale_by_kfac(inverse_every=1, kl_clip=None, seed=3)
  _, state = first_update(tx, params, model_fn=model_fn)
  grad = np.asarray(ravel_pytree(loss_grad(model_fn, params, sampled_targets(3, model_fn(params))))[0])
  for j, name in enumerate(("l1", "l2")):
    g_layer = grad[vec_index(params, f"['{name}']")]
    np.testing.assert_allclose(np.kron(state.a_factors[j], state.g_factors[j]), np.outer(g_layer, g_layer),
                               rtol=1e-10, atol=1e-15)


def test_linear_gaussian_fisher_is_exactly_a_kron_expected_g():
  """A linear layer s = Wᵀa + b, Gaussian likelihood (unit variance), N = 6 examples.
  The exact Fisher of the mean nll, F = (1/N) Σ_n J_nᵀ J_n (J_n = ∂s_n/∂vec[W; b] by
  jax.jacobian), equals A ⊗ E_y[G] for any N: J_n = ā_nᵀ ⊗ I and E_y[g gᵀ] = I. We test
  F == A ⊗ I to 1e-12 with the captured A, and that the sampled G averages to I (4000 draws)."""
  layer = nnx.Linear(4, 3, param_dtype=F64, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(layer)
  x = jax.random.normal(jax.random.key(1), (6, 4), F64)
  model_fn = lambda p: nnx.merge(graphdef, p)(x)
  flat, unravel = ravel_pytree(params)
  jac = np.asarray(jax.jit(jax.jacobian(lambda v: model_fn(unravel(v))))(flat))  # (N, 3, P)
  fisher = np.einsum("nop,noq->pq", jac, jac) / len(x)
  index = vec_index(params)
  tx = scale_by_kfac(likelihood="gaussian", kl_clip=None)
  _, state = first_update(tx, params, model_fn=model_fn)
  np.testing.assert_allclose(np.kron(state.a_factors[0], np.eye(3)), fisher[np.ix_(index, index)],
                             rtol=1e-12, atol=1e-14)

  layers = kc.find_layers(params)

  def sampled_g(key):
    grad_fn = lambda o: jax.grad(curvature.nll)(o, curvature.sample_targets(key, o, "gaussian"), "gaussian")
    return kc.kronecker_factors(kc.capture(model_fn, params, layers, grad_fn)[1][0])[1]

  mean_g = jax.jit(jax.vmap(sampled_g))(jax.random.split(jax.random.key(2), 4000)).mean(axis=0)
  np.testing.assert_allclose(mean_g, np.eye(3), atol=0.05)  # entry std ≤ √(2/(6·4000)) ≈ 0.009


class TinyCNN(nnx.Module):
  def __init__(self, padding, strides, rngs):
    self.conv = nnx.Conv(2, 3, (3, 3), strides=strides, padding=padding, param_dtype=F64, rngs=rngs)
    self.head = nnx.Linear(3, 4, param_dtype=F64, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.mean(jax.nn.relu(self.conv(x)), axis=(1, 2)))


def im2col(x, k, stride, padding):
  """Rows (n, i, j) of the k×k patches of NHWC x, features in kernel order (ki, kj, c), by loops."""
  pads = {"VALID": [(0, 0)] * 2, "CIRCULAR": [((k - 1) // 2, k // 2)] * 2}.get(padding)
  if padding == "SAME":
    total = [max((-(-h // stride) - 1) * stride + k - h, 0) for h in x.shape[1:3]]
    pads = [(t // 2, t - t // 2) for t in total]
  xp = np.pad(x, [(0, 0), *pads, (0, 0)], mode="wrap" if padding == "CIRCULAR" else "constant")
  rows = []
  for n in range(x.shape[0]):
    for i in range(0, xp.shape[1] - k + 1, stride):
      for j in range(0, xp.shape[2] - k + 1, stride):
        rows.append(xp[n, i:i + k, j:j + k, :].reshape(-1))
  return np.array(rows)


@pytest.mark.parametrize("padding,strides", [("SAME", 2), ("VALID", 1), ("CIRCULAR", 1)])
def test_conv_kfc_factors_match_numpy_im2col(padding, strides):
  """KFC: A = mean over (examples × locations) of [patch, 1][patch, 1]ᵀ against a loop im2col;
  and the captured rows reproduce the kernel gradient, Σ_r ā_r δ_rᵀ = [∇W; ∇b] (jax.grad)."""
  graphdef, params = nnx.split(TinyCNN(padding, strides, nnx.Rngs(0)))
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 6, 2), F64))
  y = jnp.array([1, 3])
  model_fn = lambda p: nnx.merge(graphdef, p)(jnp.asarray(x))
  loss_fn = lambda o: curvature.nll(o, y, "categorical")
  _, captured = jax.jit(lambda p: kc.capture(model_fn, p, kc.find_layers(p), jax.grad(loss_fn)))(params)
  conv = captured[0]
  patches = np.hstack([im2col(x, 3, strides, padding), np.ones((conv.a.shape[0], 1))])
  np.testing.assert_allclose(conv.a, patches, rtol=1e-13)
  np.testing.assert_allclose(kc.kronecker_factors(conv)[0], patches.T @ patches / len(patches), rtol=1e-12)
  grads = nnx.to_pure_dict(loss_grad(model_fn, params, y))["conv"]
  kernel_grad = np.vstack([grads["kernel"].reshape(-1, 3), grads["bias"][None]])
  np.testing.assert_allclose(conv.a.T @ conv.g / conv.num_examples, kernel_grad, rtol=1e-10, atol=1e-14)


def test_inverses_refresh_every_n_steps_and_follow_injected_damping():
  """inverse_every=3: steps 1, 2 reuse step 0's inverses; step 3 recomputes them from the EMA
  factors with the damping injected at that step (numpy inverse); the injected, jitted alias
  matches the plain one step for step while the damping is unchanged."""
  params, model_fn, x, y = tiny_mlp(4, n=8)
  grad_fn = lambda p: loss_grad(model_fn, p, y)
  plain = optim.kfac(0.1, damping=1e-2, inverse_every=3)
  injected = optax.inject_hyperparams(optim.kfac)(learning_rate=0.1, damping=1e-2, inverse_every=3)
  update = jax.jit(lambda tx, g, s, p: tx.update(g, s, p, model_fn=model_fn), static_argnums=0)
  p_plain, s_plain = params, plain.init(params)
  p_inj, s_inj = params, injected.init(params)
  inverses = []
  for step in range(4):
    if step == 3:
      s_inj.hyperparams["damping"] = jnp.asarray(0.2, F64)
    u, s_plain = update(plain, grad_fn(p_plain), s_plain, p_plain)
    ui, s_inj = update(injected, grad_fn(p_inj), s_inj, p_inj)
    if step < 3:
      chex.assert_trees_all_close(ui, u, rtol=1e-10)
    p_plain, p_inj = optax.apply_updates(p_plain, u), optax.apply_updates(p_inj, ui)
    inverses.append(s_inj.inner_state[0])
  for j in range(2):
    for step in (1, 2):
      np.testing.assert_array_equal(inverses[step].a_inverses[j], inverses[0].a_inverses[j])
    a, g = np.asarray(inverses[3].a_factors[j]), np.asarray(inverses[3].g_factors[j])
    pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
    shift = np.sqrt(0.2)
    np.testing.assert_allclose(inverses[3].a_inverses[j], np.linalg.inv(a + pi * shift * np.eye(len(a))), rtol=1e-9)
    np.testing.assert_allclose(inverses[3].g_inverses[j], np.linalg.inv(g + shift / pi * np.eye(len(g))), rtol=1e-9)


def test_kl_clip_scales_kfac_directions_by_nu():
  """ν = min(1, √(κ / (η² |Σ dᵀg|))) on the K-FAC leaves (numpy, from the unclipped d); the
  LayerNorm leaves, in no Linear layer, keep d = g (the fallback) and are not clipped."""
  params, model_fn, x, y = tiny_mlp(5, norm=True)
  grads = loss_grad(model_fn, params, y)
  d, dc = (first_update(scale_by_kfac(kl_clip=k, learning_rate=0.3), params, grads, model_fn=model_fn)[0]
           for k in (None, 1e-4))
  d, dc, g = (nnx.to_pure_dict(t) for t in (d, dc, grads))
  kl = 0.3**2 * abs(sum(np.vdot(d[l][k], g[l][k]) for l in ("l1", "l2") for k in ("kernel", "bias")))
  nu = min(1.0, np.sqrt(1e-4 / kl))
  assert nu < 0.5
  chex.assert_trees_all_close(dc["ln"], g["ln"], rtol=0, atol=0)
  layers = ("l1", "l2")
  chex.assert_trees_all_close({l: dc[l] for l in layers}, {l: jax.tree.map(lambda v: nu * v, d[l]) for l in layers},
                              rtol=1e-12)


def test_missing_model_fn_and_uncaptured_kernels():
  params, model_fn, x, y = tiny_mlp(6)
  tx = optim.kfac(0.1)
  grads = loss_grad(model_fn, params, y)
  with pytest.raises(ValueError, match="model_fn"):
    tx.update(grads, tx.init(params), params)
  # A model_fn that rebuilds the kernels hides them from the capture: all leaves fall back.
  copied_fn = lambda p: model_fn(jax.tree.map(lambda v: v + 0.0, p))
  sbk = scale_by_kfac()
  with pytest.warns(UserWarning, match="fall back"):
    d, _ = first_update(sbk, params, grads, model_fn=copied_fn)
  chex.assert_trees_all_close(d, grads, rtol=0, atol=0)


def test_a_layer_called_inside_model_fns_own_transformation_raises_and_the_callers_does_not():
  # A PINN's residuals hold the network's input derivatives: its layers run inside model_fn's own
  # jax.vmap(jax.grad(...)), where the outputs depend on a kernel through more than the layer's
  # outputs, so A ⊗ G is no Fisher block (before the check: a leaked-tracer error).
  graphdef, params = nnx.split(TinyMLP((3, 4, 1), nnx.Rngs(5)))
  x = jax.random.normal(jax.random.key(9), (5, 3), F64)
  net = lambda p, xs: nnx.merge(graphdef, p)(xs)
  slopes = lambda p: jax.vmap(jax.grad(lambda xi: net(p, xi[None])[0, 0]))(x)  # (5, 3): ∇_x u per point
  sbk = scale_by_kfac(likelihood="gaussian")
  with pytest.raises(ValueError, match="K-FAC cannot precondition layer 'l1/kernel'.*inside a JAX transformation"):
    first_update(sbk, params, model_fn=slopes)
  # Control: a transformation around the whole update is the caller's (seeds vmapped): no error, and
  # each model's direction is the one its own update gives.
  stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
  grads = jax.tree.map(jnp.ones_like, stacked)
  step = lambda g, p: sbk.update(g, sbk.init(p), p, model_fn=lambda q: net(q, x))[0]
  batched = jax.jit(jax.vmap(step))(grads, stacked)
  for i in range(2):
    take = lambda tree: jax.tree.map(lambda a: a[i], tree)
    chex.assert_trees_all_close(take(batched), jax.jit(step)(take(grads), take(stacked)), rtol=1e-10)


def test_nnx_optimizer_step_equals_functional_update():
  model = TinyMLP((3, 4, 3), nnx.Rngs(7))
  x = jax.random.normal(jax.random.key(8), (6, 3), F64)
  y = jnp.array([0, 1, 2, 0, 1, 2])
  loss = lambda m: curvature.nll(m(x), y, "categorical")
  graphdef, params = nnx.split(model)
  model_fn = lambda p: nnx.merge(graphdef, p)(x)
  tx = optim.kfac(0.1)
  updates, _ = first_update(tx, params, nnx.grad(loss)(model), model_fn=model_fn)
  expected = nnx.to_pure_dict(optax.apply_updates(params, updates))
  optimizer = nnx.Optimizer(model, optim.kfac(0.1), wrt=nnx.Param)
  nnx.jit(lambda m, o: o.update(m, nnx.grad(loss)(m), model_fn=model_fn))(model, optimizer)
  chex.assert_trees_all_close(nnx.to_pure_dict(nnx.state(model)), expected, rtol=1e-12)


def full_batch_trainer(problem, tx, steps):
  """Jitted (params -> training losses before each of `steps` full-batch updates of tx)."""
  def run(data, params):
    extra = problem.extra_args(data["train"])

    def step(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(extra["obj_fn"])(params)
      updates, state = tx.update(grads, state, params, **extra)
      return (optax.apply_updates(params, updates), state), loss

    return jax.lax.scan(step, (params, tx.init(params)), length=steps)[1]

  run = jax.jit(run)
  return lambda params: np.asarray(run(problem.data, params))


def test_digits_mlp_kfac_reaches_adam_final_loss_in_fewer_steps():
  """Digits MLP 64-64-64-10 (problems.digits_mlp, float32, full batch of 1,437), init seeds 0-2.
  Adam at lr 3e-2 (the best of 1e-3, 3e-3, 1e-2, 3e-2 after 200 steps) runs 100 steps; K-FAC
  with its defaults and lr 0.1 must reach Adam's final training loss in under half as many.
  Measured: Adam's final loss 8.2e-6 / 4.7e-6 / 8.6e-6, reached by K-FAC at steps 32 / 36 / 32."""
  from optlab_jax.problems.digits import digits_mlp

  problem = digits_mlp()
  adam, kfac = (full_batch_trainer(problem, tx, 100) for tx in (optim.adam(3e-2), optim.kfac(0.1)))
  for seed in range(3):
    params = problem.init_params(jax.random.key(seed))
    adam_losses, kfac_losses = adam(params), kfac(params)
    reached = np.nonzero(kfac_losses <= adam_losses[-1])[0]
    assert reached.size and reached[0] < 50, (seed, adam_losses[-1], kfac_losses[::10])


@pytest.mark.parametrize("injected", [False, True])
def test_covariance_every_factors_are_the_ema_over_refresh_steps_only(injected):
  """covariance_every=3 over 7 steps of a moving model: the factors after step t are the EMA,
  β_s = min(0.95, s/(s+1)), of the hand-built (ā, δ) factors at steps 0, 3, 6 only (the params
  of those steps), unchanged in between; traced by inject_hyperparams too (a `lax.cond`)."""
  params, model_fn, x, y = tiny_mlp(9, n=6)
  out_loss = lambda o: curvature.nll(o, y, "categorical")
  make = optax.inject_hyperparams(scale_by_kfac) if injected else scale_by_kfac
  tx = make(covariance_every=3, inverse_every=2, kl_clip=None, empirical=True)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, model_fn=model_fn, output_loss_fn=out_loss))
  state, expected, refreshes = tx.init(params), None, 0
  for t in range(7):
    if t % 3 == 0:
      hats = [(a.T @ a / len(a), len(a) * d.T @ d) for a, d in by_hand(params, x, y)]
      beta = min(0.95, refreshes / (refreshes + 1))
      expected = hats if expected is None else [
          (beta * a0 + (1 - beta) * a, beta * g0 + (1 - beta) * g) for (a0, g0), (a, g) in zip(expected, hats)]
      refreshes += 1
    d, state = step(loss_grad(model_fn, params, y), state, params)
    params = optax.apply_updates(params, jax.tree.map(lambda v: -0.3 * v, d))
    inner = state.inner_state if injected else state
    for j, (a, g) in enumerate(expected):
      np.testing.assert_allclose(inner.a_factors[j], a, rtol=1e-12, err_msg=f"step {t}")
      np.testing.assert_allclose(inner.g_factors[j], g, rtol=1e-11, atol=1e-15, err_msg=f"step {t}")


class WideMLP(nnx.Module):
  def __init__(self, sizes, rngs):
    self.layers = nnx.List([nnx.Linear(m, n, param_dtype=jnp.float32, rngs=rngs) for m, n in zip(sizes, sizes[1:])])

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = jnp.tanh(layer(x))
    return self.layers[-1](x)


def compiled_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


@functools.cache
def flop_problem(sizes=(48, 64, 64, 10), n=64):
  """A float32 MLP, one batch, and the compiled FLOPs of its forward, of one backward through
  the layer outputs (a hand-written network's jax.grad w.r.t. additive output perturbations,
  less its forward), and of the gradient plus the K-FAC algebra (the factor products, their
  EMA, the damped inverses, A⁻∇G⁻, on arrays of the layers' shapes)."""
  graphdef, params = nnx.split(WideMLP(sizes, nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(1), (n, sizes[0]), jnp.float32)
  y = jax.random.randint(jax.random.key(2), (n,), 0, sizes[-1])
  model_fn = lambda p, x: nnx.merge(graphdef, p)(x)
  out_loss = lambda o, y: curvature.nll(o, y, "categorical")
  grad = lambda p, x, y: jax.grad(lambda p: out_loss(model_fn(p, x), y))(p)
  weights = [(layer["kernel"], layer["bias"]) for layer in nnx.to_pure_dict(params)["layers"].values()]

  def by_layer_outputs(x, y):
    def loss(zs):
      h = x
      for i, ((w, b), z) in enumerate(zip(weights, zs)):
        h = h @ w + b[None] + z
        h = jnp.tanh(h) if i < len(weights) - 1 else h
      return out_loss(h, y)
    return jax.grad(loss)([jnp.zeros((n, w.shape[1]), jnp.float32) for w, _ in weights])

  def algebra(rows, deltas, grads, a_factors, g_factors):
    a_new = [0.9 * a0 + 0.1 * r.T @ r / n for r, a0 in zip(rows, a_factors)]
    g_new = [0.9 * g0 + 0.1 * d.T @ d / n for d, g0 in zip(deltas, g_factors)]
    inverses = [_damped_inverses(a, g, 1e-3) for a, g in zip(a_new, g_new)]
    return [a_inv @ w @ g_inv for (a_inv, g_inv), w in zip(inverses, grads)], a_new, g_new

  dims = [(m + 1, k) for m, k in zip(sizes, sizes[1:])]
  ones = lambda *shape: jnp.ones(shape, jnp.float32)
  forward = compiled_flops(model_fn, params, x)
  backward = compiled_flops(by_layer_outputs, x, y) - forward
  grad_and_algebra = compiled_flops(grad, params, x, y) + compiled_flops(
      algebra, [ones(n, a) for a, _ in dims], [ones(n, g) for _, g in dims], [ones(a, g) for a, g in dims],
      [ones(a, a) for a, _ in dims], [ones(g, g) for _, g in dims])
  return params, x, y, model_fn, out_loss, grad, forward, backward, grad_and_algebra


@pytest.mark.parametrize("empirical", [False, True])
def test_statistics_share_the_callers_forward_in_the_compiled_step(empirical):
  """HLO FLOPs of one jitted step, the caller's gradient then K-FAC's update (`flop_problem`):
  at most grad + algebra + one backward through the layer outputs for the sampled-label
  Fisher, and grad + algebra for the empirical one; slack 10% of a forward. A second forward
  (e.g. the statistics inside a cond even at every step), or with `empirical` a second
  backward, exceeds it by a forward, or by a forward and ≥ 60% of one."""
  params, x, y, model_fn, out_loss, grad, forward, backward, bound = flop_problem()
  bound += 0 if empirical else backward
  tx = scale_by_kfac(inverse_every=1, kl_clip=None, empirical=empirical)

  def step(p, s, x, y):
    return tx.update(grad(p, x, y), s, p, model_fn=lambda q: model_fn(q, x), output_loss_fn=lambda o: out_loss(o, y))

  assert backward > 0.6 * forward
  flops = compiled_flops(step, params, tx.init(params), x, y)
  assert flops <= bound + 0.1 * forward, (flops, bound, forward, backward)


def test_covariance_every_on_a_conv_model_refreshes_outside_control_flow_on_cpu():
  """A conv layer's statistics every 2 steps sit in `curvature.loops.cond`, which on CPU runs
  the refresh as its own jitted program (a callback: no convolution inside the conditional).
  Step 0's factors equal those of the every-step transform (tested against im2col above), and
  step 1 keeps them."""
  graphdef, params = nnx.split(TinyCNN("SAME", 1, nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(1), (2, 5, 6, 2), F64)
  y = jnp.array([1, 3])
  model_fn = lambda p: nnx.merge(graphdef, p)(x)
  out_loss = lambda o: curvature.nll(o, y, "categorical")
  grads = loss_grad(model_fn, params, y)
  every, each = (scale_by_kfac(covariance_every=k, inverse_every=1, kl_clip=None, empirical=True) for k in (2, None))
  step = lambda tx: jax.jit(lambda g, s, p: tx.update(g, s, p, model_fn=model_fn, output_loss_fn=out_loss))
  lowered = step(every).lower(grads, every.init(params), params).as_text()
  assert "callback" in lowered
  _, s0 = step(every)(grads, every.init(params), params)
  _, s1 = step(every)(grads, s0, jax.tree.map(lambda v: 1.5 * v, params))
  _, reference = step(each)(grads, each.init(params), params)
  for j in range(2):
    np.testing.assert_allclose(s0.a_factors[j], reference.a_factors[j], rtol=1e-13)
    np.testing.assert_allclose(s0.g_factors[j], reference.g_factors[j], rtol=1e-12, atol=1e-16)
    np.testing.assert_array_equal(s1.a_factors[j], s0.a_factors[j])
