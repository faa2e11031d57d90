"""Does wrapping optax cost anything? Our first-order optimizers vs optax's own aliases.

Measures, for every optimizer optax also has, the wall time of one jitted whole train step
(gradient + optimizer update + apply_updates) on an MLP 784-512-512-10 with batch 128 in
float32, on random data generated here. Ours and optax's are timed alternately in one run
(the order swapped every repeat; each sample is a block of 10 steps waited on with
block_until_ready), and the table gives per-step medians over the repeats and the ratio
ours / optax (target ≤ 1.02). Params and state are not donated, for either.

  python experiments/bench_first_order.py               # 30 blocks a side, the real measurement
  python experiments/bench_first_order.py --quick       # checks it runs: 3 repeats, 784-64-64-10
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from optlab_jax import optim

MASK = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731  (decay kernels only)

# name -> (ours, optax's), with matched hyperparameters.
PAIRS = {
    "sgd": lambda: (optim.sgd(0.01), optax.sgd(0.01)),
    "sgd_momentum": lambda: (optim.sgd(0.01, 0.9), optax.sgd(0.01, 0.9)),
    "sgd_nesterov": lambda: (optim.sgd(0.01, 0.9, True), optax.sgd(0.01, 0.9, True)),
    "adagrad": lambda: (optim.adagrad(0.01), optax.adagrad(0.01)),
    "adadelta": lambda: (optim.adadelta(1.0), optax.adadelta(1.0)),
    "rmsprop": lambda: (optim.rmsprop(1e-3), optax.rmsprop(1e-3)),
    "rmsprop_centered": lambda: (
        optim.rmsprop(1e-3, centered=True), optax.rmsprop(1e-3, centered=True)
    ),
    "rmsprop_momentum": lambda: (optim.rmsprop(1e-3, momentum=0.9), optax.rmsprop(1e-3, momentum=0.9)),
    "adam": lambda: (optim.adam(1e-3), optax.adam(1e-3)),
    "amsgrad": lambda: (optim.amsgrad(1e-3), optax.amsgrad(1e-3)),
    "adamw": lambda: (optim.adamw(1e-3, weight_decay_mask=MASK), optax.adamw(1e-3, mask=MASK)),
    "nadam": lambda: (optim.nadam(1e-3), optax.nadam(1e-3)),
    "radam": lambda: (optim.radam(1e-3), optax.radam(1e-3)),
    "lars": lambda: (optim.lars(0.1), optax.lars(0.1)),
    "lamb": lambda: (optim.lamb(1e-3), optax.lamb(1e-3)),
    "novograd": lambda: (optim.novograd(1e-3), optax.novograd(1e-3)),
    # Control: optax against itself, the same program twice; its ratio is the noise floor.
    "control_optax_adam": lambda: (optax.adam(1e-3), optax.adam(1e-3)),
}


def mlp_problem(hidden: int, batch: int = 128, seed: int = 0):
  """Params of an MLP 784-hidden-hidden-10 and one random batch (inputs, integer labels)."""
  sizes = [784, hidden, hidden, 10]
  keys = jax.random.split(jax.random.key(seed), len(sizes) + 1)
  params = [
      {"w": jax.random.normal(k, (m, n), jnp.float32) / m**0.5, "b": jnp.zeros(n, jnp.float32)}
      for k, m, n in zip(keys, sizes[:-1], sizes[1:])
  ]
  x = jax.random.normal(keys[-2], (batch, 784), jnp.float32)
  y = jax.random.randint(keys[-1], (batch,), 0, 10)
  return params, x, y


def loss_fn(params, x, y):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  logits = x @ params[-1]["w"] + params[-1]["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_step(tx):
  """The jitted whole step: gradient, update, apply."""

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


BLOCK = 10  # steps per timed sample: one step (~6 ms) alone is at the scale of timer and OS noise


def time_call(step, carry, x, y):
  """Seconds per step over a block of BLOCK steps (waited on), and the new (params, state)."""
  start = time.perf_counter()
  for _ in range(BLOCK):
    carry = step(*carry, x, y)
  carry = jax.block_until_ready(carry)
  return (time.perf_counter() - start) / BLOCK, carry


def bench(name: str, hidden: int, repeats: int) -> tuple[float, float]:
  """Median step times (ours, optax's) in seconds, measured alternately."""
  params, x, y = mlp_problem(hidden)
  steps, carries, times = [], [], ([], [])
  for tx in PAIRS[name]():
    steps.append(train_step(tx))
    carries.append((params, tx.init(params)))
  for i in range(2):  # compile and warm up both
    for _ in range(2):
      _, carries[i] = time_call(steps[i], carries[i], x, y)
  for r in range(repeats):
    for i in (0, 1) if r % 2 == 0 else (1, 0):
      t, carries[i] = time_call(steps[i], carries[i], x, y)
      times[i].append(t)
  return statistics.median(times[0]), statistics.median(times[1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=30, help="timed blocks of BLOCK steps per optimizer and side")
  parser.add_argument("--quick", action="store_true", help="3 repeats, MLP 784-64-64-10: checks it runs")
  parser.add_argument("--only", nargs="*", choices=sorted(PAIRS), help="optimizers to run (default all)")
  args = parser.parse_args()
  hidden, repeats = (64, 3) if args.quick else (512, args.repeats)
  print(f"MLP 784-{hidden}-{hidden}-10, batch 128, float32, {repeats} alternated blocks of {BLOCK} steps, "
        f"device {jax.devices()[0].platform}")
  print(f"{'optimizer':<18} | {'ours ms':>8} | {'optax ms':>8} | {'ratio':>6}")
  print(f"{'-' * 18}-|-{'-' * 8}-|-{'-' * 8}-|-{'-' * 6}")
  for name in args.only or PAIRS:
    ours, theirs = bench(name, hidden, repeats)
    print(f"{name:<18} | {ours * 1e3:8.3f} | {theirs * 1e3:8.3f} | {ours / theirs:6.3f}", flush=True)


if __name__ == "__main__":
  main()
