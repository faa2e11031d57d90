"""The new problems against the `Problem` contract: vmappable init, reproducible jitted batches,
and an eval `loss` equal to the training loss on the full batch."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from optlab_jax import problems

SMALL = {
    "mnist1d_mlp": dict(hidden=(8,)),
    "char_transformer": dict(seq_len=8, width=8, num_layers=1, num_heads=2),
    "cubic": {}, "saddle": dict(init_noise=0.1), "xcos": {}, "plateau": {}, "tanh_vanishing": {},
    "deep_chain": dict(depth=3, width=2, init="xavier"),
    "pinn_poisson": dict(num_interior=30, num_boundary=8, hidden=(4,)),
    "pinn_burgers": dict(num_interior=30, num_boundary=8, hidden=(4,)),
    "embedding_regression": dict(num_users=30, num_items=20, num_train=200, num_test=50),
}
DETERMINISTIC = {"cubic", "saddle", "xcos", "plateau", "tanh_vanishing"}  # every batch is the whole function
OWN_METRICS = DETERMINISTIC | {"pinn_poisson", "pinn_burgers"}  # the others' come from supervised_problem


@pytest.mark.parametrize("name", sorted(SMALL))
def test_contract(name):
  problem = problems.build(name, dtype="float64", **SMALL[name])
  keys = jax.random.split(jax.random.key(0), 3)
  stacked = jax.jit(jax.vmap(problem.init_params))(keys)
  init = jax.jit(problem.init_params)
  for i in range(3):
    jax.tree.map(lambda s, p: np.testing.assert_allclose(s[i], p, rtol=1e-12), stacked, init(keys[i]))
  sample = jax.jit(problem.sample_batch, static_argnums=1)
  a, b, c = sample(keys[0], 4), sample(keys[0], 4), sample(keys[1], 4)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  if name not in DETERMINISTIC:
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))
  params = jax.tree.map(lambda s: s[0], stacked)
  assert np.isfinite(float(jax.jit(problem.loss)(params, a)))
  if name in OWN_METRICS:
    full = problem.sample_batch(keys[0], None)
    np.testing.assert_allclose(jax.jit(problem.eval_metrics)(params)["loss"], jax.jit(problem.loss)(params, full),
                               rtol=1e-12)
