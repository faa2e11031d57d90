"""K-FAC's step cost against Adam's on an MLP 784-512-512-10 (ReLU, float32), batch 128.

Run:  python experiments/bench_kfac.py            (100 timed steps per optimizer)
      python experiments/bench_kfac.py --quick    (20 timed steps: checks that it runs)

Each step is one jitted call: the gradient of the cross-entropy on a fixed synthetic batch,
then `tx.update` and `apply_updates`. K-FAC runs with factors every step and inverses every 10
steps: the medians of its steps with and without the inverse refresh, and their mix over a
10-step cycle (the amortised cost). State bytes / param bytes count every state leaf.
If `kfac_jax` is importable, its `Optimizer.step` on the same model, data and schedule (fixed
lr, momentum and damping; "fisher_gradients" estimation, inverses every 10 steps) is timed too.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab_jax import optim
from optlab_jax.problems import models

SIZES = (784, 512, 512, 10)
BATCH = 128
INVERSE_EVERY = 10


def timed(step, carry, steps):
  """Per-step seconds of `carry = step(*carry)`, after one compile-and-warm-up cycle."""
  for _ in range(INVERSE_EVERY):
    carry = jax.block_until_ready(step(*carry))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    carry = jax.block_until_ready(step(*carry))
    times.append(time.perf_counter() - start)
  return np.asarray(times), carry


def nbytes(tree) -> int:
  return sum(int(np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x).nbytes)
             for x in jax.tree.leaves(tree))


def optlab_step(tx, model_fn, loss_fn):
  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(lambda p: loss_fn(model_fn(p, x), y))(params)
    updates, state = tx.update(grads, state, params, model_fn=lambda p: model_fn(p, x))
    return optax.apply_updates(params, updates), state, x, y
  return step


def kfac_jax_step(model_fn, loss_fn, params, x, y):
  """(step, carry) for kfac-jax's optimizer on the same problem; raises ImportError if absent."""
  import kfac_jax

  def loss(params, batch):
    logits = model_fn(params, batch[0])
    kfac_jax.register_softmax_cross_entropy_loss(logits, batch[1])
    return loss_fn(logits, batch[1])

  opt = kfac_jax.Optimizer(
      value_and_grad_func=jax.value_and_grad(loss), l2_reg=0.0,
      use_adaptive_learning_rate=False, learning_rate_schedule=lambda t: 1e-2,
      use_adaptive_momentum=False, momentum_schedule=lambda t: 0.9,
      use_adaptive_damping=False, damping_schedule=lambda t: 1e-3,
      estimation_mode="fisher_gradients", curvature_update_period=1,
      inverse_update_period=INVERSE_EVERY, num_burnin_steps=0, multi_device=False,
  )
  key = jax.random.key(0)
  state = opt.init(params, key, (x, y))

  def step(params, state, key):
    key, sub = jax.random.split(key)
    params, state, _ = opt.step(params, state, sub, batch=(x, y))
    return params, state, key

  return step, (params, state, key)


def main(quick: bool) -> None:
  steps = 2 * INVERSE_EVERY if quick else 10 * INVERSE_EVERY
  init_params, model_fn = models.functional(
      lambda rngs: models.MLP(SIZES, "relu", dtype=jnp.float32, rngs=rngs))
  params = init_params(jax.random.key(0))
  kx, ky = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (BATCH, SIZES[0]), jnp.float32)
  y = jax.random.randint(ky, (BATCH,), 0, SIZES[-1])
  loss_fn = lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  param_bytes = nbytes(params)

  rows = {}
  for name, tx in [("adam", optim.adam(1e-3)), ("kfac", optim.kfac(1e-2, inverse_every=INVERSE_EVERY))]:
    times, (_, state, _, _) = timed(optlab_step(tx, model_fn, loss_fn), (params, tx.init(params), x, y), steps)
    rows[name] = (times, nbytes(state) / param_bytes)
  try:
    step, carry = kfac_jax_step(model_fn, loss_fn, params, x, y)
    times, (_, state, _) = timed(step, carry, steps)
    rows["kfac-jax"] = (times, nbytes(state) / param_bytes)
  except Exception as e:  # optional comparison: absent or incompatible kfac-jax is reported, not fatal
    print(f"kfac-jax: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")

  # Medians: on a shared CPU the means are dominated by stalls from other processes.
  adam_ms = 1e3 * np.median(rows["adam"][0])
  print(f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, {steps} timed steps, "
        f"{jax.devices()[0].platform}; median ms per jitted step (grad + update)")
  print(f"{'optimizer':<26}{'ms/step':>10}{'/ Adam':>9}{'state/params':>14}")
  for name, (times, state_ratio) in rows.items():
    ms = 1e3 * np.median(times)
    if name == "kfac":
      # Warm-up ran one whole cycle, so timed step i has count i + INVERSE_EVERY: refresh when i % 10 == 0.
      refresh = np.arange(steps) % INVERSE_EVERY == 0
      plain, fresh = 1e3 * np.median(times[~refresh]), 1e3 * np.median(times[refresh])
      ms = ((INVERSE_EVERY - 1) * plain + fresh) / INVERSE_EVERY
      print(f"{'kfac, no inverse refresh':<26}{plain:>10.2f}{plain / adam_ms:>9.2f}")
      print(f"{'kfac, inverse refresh':<26}{fresh:>10.2f}{fresh / adam_ms:>9.2f}")
      name = f"kfac, amortised over {INVERSE_EVERY}"
    print(f"{name:<26}{ms:>10.2f}{ms / adam_ms:>9.2f}{state_ratio:>14.2f}")

if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="20 timed steps instead of 100")
  main(parser.parse_args().quick)
