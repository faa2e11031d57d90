"""K-FAC's step cost against Adam's on an MLP 784-512-512-10 (ReLU, float32), batch 128.

Run:  python experiments/bench_kfac.py            (10 alternated cycles of 10 steps per optimizer)
      python experiments/bench_kfac.py --quick    (2 cycles: checks that it runs)

Each step is one jitted call: the gradient of the cross-entropy on a fixed synthetic batch,
then `tx.update` and `apply_updates`. K-FAC runs with inverses every 10 steps and the factor
statistics every step or every 10 (`covariance_every`), true or empirical Fisher. The
optimizers alternate in cycles of 10 steps (order rotated each cycle, so load from other
processes falls on all of them alike); each step is timed alone, giving the medians of K-FAC's
steps without and with the refreshes and their mix over a cycle (the amortised cost). State
bytes / param bytes count every state leaf.

A second table counts the compiled programs' FLOPs (XLA's cost analysis) against Adam's step:
the floor of any exact K-FAC step (the gradient and A⁻∇G⁻ per layer, nothing else), the inverses,
and the statistics (factor products, the sampled-label backward; the forward is XLA-merged
with the gradient's). Where the floor alone is above a target, no capture scheme meets it: on
this MLP A⁻∇G⁻ multiplies 785×785 and 512×512 matrices into the 785×512 gradient every step.
If `kfac_jax` is importable, its `Optimizer.step` on the same model and schedule is timed too.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab_jax import optim
from optlab_jax.optim.kfac import _damped_inverses
from optlab_jax.problems import models

SIZES = (784, 512, 512, 10)
BATCH = 128
INVERSE_EVERY = 10
ROWS = {
    "adam": lambda: optim.adam(1e-3),
    "kfac": lambda: optim.kfac(1e-2, inverse_every=INVERSE_EVERY),
    "kfac, covariance_every=10": lambda: optim.kfac(1e-2, inverse_every=INVERSE_EVERY, covariance_every=10),
    "kfac, empirical": lambda: optim.kfac(1e-2, inverse_every=INVERSE_EVERY, empirical=True),
}


def nbytes(tree) -> int:
  return sum(int(np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x).nbytes)
             for x in jax.tree.leaves(tree))


def optlab_step(tx, model_fn, loss_fn):
  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(lambda p: loss_fn(model_fn(p, x), y))(params)
    updates, state = tx.update(grads, state, params, model_fn=lambda p: model_fn(p, x),
                               output_loss_fn=lambda out: loss_fn(out, y))
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


def flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def flop_table(params, x, y, model_fn, loss_fn) -> None:
  """FLOPs of Adam's step, of K-FAC's floor, inverses and statistics, each / Adam's step."""
  adam, full = optim.adam(1e-3), optim.kfac(1e-2, inverse_every=1)  # inverse_every=1: no cond
  # The batch is an argument, not a constant: XLA would constant-fold the factors of a constant batch.
  grad = lambda p, x, y: jax.grad(lambda q: loss_fn(model_fn(q, x), y))(p)
  adam_flops = flops(lambda p, s, x, y: adam.update(grad(p, x, y), s, p), params, adam.init(params), x, y)
  full_flops = flops(lambda p, s, x, y: full.update(grad(p, x, y), s, p, model_fn=lambda q: model_fn(q, x)),
                     params, full.init(params), x, y)
  kernels = [np.asarray(w) for w in jax.tree.leaves(params) if w.ndim == 2]
  dims = [(w.shape[0] + 1, w.shape[1]) for w in kernels]
  eyes = lambda n: jnp.eye(n, dtype=jnp.float32)
  precondition = lambda grads, a, g: [ai @ gr @ gi for gr, ai, gi in zip(grads, a, g)]
  floor = flops(grad, params, x, y) + flops(precondition, [jnp.ones(d, jnp.float32) for d in dims],
                                      [eyes(a) for a, _ in dims], [eyes(g) for _, g in dims])
  inverses = flops(lambda a, g: [_damped_inverses(ai, gi, 1e-3) for ai, gi in zip(a, g)],
                   [eyes(a) for a, _ in dims], [eyes(g) for _, g in dims])
  statistics = full_flops - floor - inverses
  print(f"\nFLOPs of one compiled step (XLA cost analysis) / Adam's step ({adam_flops / 1e6:.0f} MFLOP)")
  print(f"{'floor: grad + A⁻∇G⁻':<44}{floor / adam_flops:>8.2f}")
  print(f"{'+ statistics every step':<44}{(floor + statistics) / adam_flops:>8.2f}")
  print(f"{'+ statistics every 10 steps (amortised)':<44}{(floor + statistics / 10) / adam_flops:>8.2f}")
  # XLA counts the Cholesky factorisations (LAPACK calls) as 0: this is the solves' share only.
  print(f"{'inverses per refresh (solves only)':<44}{inverses / adam_flops:>8.2f}")


def main(quick: bool) -> None:
  cycles = 2 if quick else 10
  init_params, model_fn = models.functional(
      lambda rngs: models.MLP(SIZES, "relu", dtype=jnp.float32, rngs=rngs))
  params = init_params(jax.random.key(0))
  kx, ky = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (BATCH, SIZES[0]), jnp.float32)
  y = jax.random.randint(ky, (BATCH,), 0, SIZES[-1])
  loss_fn = lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  param_bytes = nbytes(params)

  steps, carries, times, cpu = {}, {}, {name: [] for name in ROWS}, {name: [] for name in ROWS}
  for name, factory in ROWS.items():
    tx = factory()
    steps[name], carries[name] = optlab_step(tx, model_fn, loss_fn), (params, tx.init(params), x, y)
    for _ in range(INVERSE_EVERY):  # compile, and one whole cycle of warm-up
      carries[name] = jax.block_until_ready(steps[name](*carries[name]))
  names = list(ROWS)
  for c in range(cycles):
    for name in names[c % len(names):] + names[:c % len(names)]:
      for _ in range(INVERSE_EVERY):
        start, start_cpu = time.perf_counter(), time.process_time()
        carries[name] = jax.block_until_ready(steps[name](*carries[name]))
        times[name].append(time.perf_counter() - start)
        cpu[name].append(time.process_time() - start_cpu)
  rows = {name: (np.asarray(times[name]), nbytes(carries[name][1]) / param_bytes) for name in names}
  cpu_rows = {name: np.asarray(cpu[name]) for name in names}
  try:
    step, carry = kfac_jax_step(model_fn, loss_fn, params, x, y)
    for _ in range(INVERSE_EVERY):
      carry = jax.block_until_ready(step(*carry))
    t = []
    for _ in range(cycles * INVERSE_EVERY):
      start = time.perf_counter()
      carry = jax.block_until_ready(step(*carry))
      t.append(time.perf_counter() - start)
    rows["kfac-jax"] = (np.asarray(t), nbytes(carry[1]) / param_bytes)
    cpu_rows["kfac-jax"] = np.full(len(t), np.nan)
  except Exception as e:  # optional comparison: absent or incompatible kfac-jax is reported, not fatal
    print(f"kfac-jax: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")

  # Medians: on a shared CPU the means are dominated by stalls from other processes. CPU time
  # (this process's, all XLA threads) is inflated far less by their load than wall time.
  adam_ms, adam_cpu = 1e3 * np.median(rows["adam"][0]), 1e3 * np.median(cpu_rows["adam"])
  print(f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, {cycles} alternated cycles of {INVERSE_EVERY} steps, "
        f"{jax.devices()[0].platform}; median ms per jitted step (grad + update)")
  print(f"{'optimizer':<44}{'ms/step':>10}{'/ Adam':>9}{'CPU / Adam':>12}{'state/params':>14}")
  for name, (times_, state_ratio) in rows.items():
    ms, ms_cpu = 1e3 * np.median(times_), 1e3 * np.median(cpu_rows[name])
    if name.startswith("kfac,") or name == "kfac":
      # Warm-up ran one whole cycle, so timed step i has count i + 10: the refreshes at i % 10 == 0.
      refresh = np.arange(len(times_)) % INVERSE_EVERY == 0
      split = [(1e3 * np.median(x[~refresh]), 1e3 * np.median(x[refresh])) for x in (times_, cpu_rows[name])]
      amortise = lambda plain, fresh: ((INVERSE_EVERY - 1) * plain + fresh) / INVERSE_EVERY
      (plain, fresh), (plain_cpu, fresh_cpu) = split
      ms, ms_cpu = amortise(plain, fresh), amortise(plain_cpu, fresh_cpu)
      print(f"{name + ', no refresh':<44}{plain:>10.2f}{plain / adam_ms:>9.2f}{plain_cpu / adam_cpu:>12.2f}")
      print(f"{name + ', refresh':<44}{fresh:>10.2f}{fresh / adam_ms:>9.2f}{fresh_cpu / adam_cpu:>12.2f}")
      name = f"{name}, amortised over {INVERSE_EVERY}"
    print(f"{name:<44}{ms:>10.2f}{ms / adam_ms:>9.2f}{ms_cpu / adam_cpu:>12.2f}{state_ratio:>14.2f}")
  flop_table(params, x, y, model_fn, loss_fn)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 cycles instead of 10")
  main(parser.parse_args().quick)
