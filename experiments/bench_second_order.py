"""What does curvature cost? Second-order optimizers' step time against Adam's, and their memory.

On an MLP 784-512-512-10 with batch 128 in float32 (random data generated here), each optimizer
runs one jitted whole train step: loss and gradient, `update` with every extra argument any
optimizer takes (obj_fn, model_fn, output_loss_fn, value, grad, value_fn), apply_updates. All
optimizers are timed in one run, round-robin with the order rotated every repeat; a sample is
a block of steps waited on with block_until_ready (10 steps for ours, so an every-10-steps
estimate is counted once per sample; 1 step for the CG / line-search methods, whose steps are
long). The table gives the median time per step, its ratio to Adam's, and the state's bytes
over the params' bytes (floating-point leaves; counters and PRNG keys listed apart in bytes).

Targets: adahessian / adam <= 1.9 (Hessian every step), adahessian_k10 / adam <= 1.2 (every
10 steps), sophia_h / optax.contrib.sophia <= 1.0 (same hyperparameters, both every 10 steps;
the k1 rows estimate every step), AdaHessian's state 2.0 × params plus a key.

A second table times Adam and AdaHessian on a CNN conv3x3(32)-conv3x3(64)-maxpool-dense10 on
28×28×1 inputs, batch 128, where an every-10-steps estimate sits in a `lax.cond`: on XLA CPU a
convolution inside control flow runs 40–50× slower, which `curvature.loops.cond` avoids by
running that branch as its own jitted program (targets: k10 / adam <= 1.3, k1 / adam <= 2.2).

  python experiments/bench_second_order.py             # 20 repeats, the real measurement
  python experiments/bench_second_order.py --quick     # checks it runs: 2 repeats, MLP 784-64-64-10
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from optlab_jax import optim

# name -> (factory of the transform, steps per timed block).
OURS = {
    "adam": (lambda: optim.adam(1e-3), 10),
    "adahessian": (lambda: optim.adahessian(0.1), 10),
    "adahessian_k10": (lambda: optim.adahessian(0.1, update_interval=10), 10),
    "sophia_h": (lambda: optim.sophia_h(1e-3), 10),
    "optax_sophia": (lambda: optax.contrib.sophia(1e-3), 10),
    "sophia_h_k1": (lambda: optim.sophia_h(1e-3, update_interval=1), 10),
    "optax_sophia_k1": (lambda: optax.contrib.sophia(1e-3, update_interval=1), 10),
    "sophia_g": (lambda: optim.sophia_g(1e-3), 10),
    "sam": (lambda: optim.sam(0.1), 10),
    "asam": (lambda: optim.asam(0.1), 10),
}
# The CG and line-search optimizers, timed when they are registered.
OTHERS = {
    "newton_cg": (lambda: optim.get("newton_cg")(1.0), 1),
    "gauss_newton": (lambda: optim.get("gauss_newton")(1.0), 1),
    "natural_gradient": (lambda: optim.get("natural_gradient")(1.0, likelihood="categorical"), 1),
    "lbfgs": (lambda: optim.get("lbfgs")(1.0), 1),
    "lbfgs_b": (lambda: optim.get("lbfgs_b")(1.0), 1),
}
RATIOS = [("adahessian", "adam", 1.9), ("adahessian_k10", "adam", 1.2),
          ("sophia_h", "optax_sophia", 1.0), ("sophia_h_k1", "optax_sophia_k1", None)]


def mlp_problem(hidden: int, batch: int = 128, seed: int = 0):
  """Params of an MLP 784-hidden-hidden-10, one random batch, model_fn and output_loss_fn."""
  sizes = [784, hidden, hidden, 10]
  keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) + 1)
  params = [
      {"w": jax.random.normal(k, (m, n), jnp.float32) / m**0.5, "b": jnp.zeros(n, jnp.float32)}
      for k, m, n in zip(keys, sizes[:-1], sizes[1:])
  ]
  x = jax.random.normal(keys[-2], (batch, 784), jnp.float32)
  y = jax.random.randint(keys[-1], (batch,), 0, 10)
  return params, x, y


def model_fn(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"][None, :])
  return x @ params[-1]["w"] + params[-1]["b"][None, :]


CNN_ROWS = {
    "adam": (lambda: optim.adam(1e-3), 10),
    "adahessian": (lambda: optim.adahessian(0.1), 10),
    "adahessian_k10": (lambda: optim.adahessian(0.1, update_interval=10), 10),
}
CNN_RATIOS = [("adahessian", "adam", 2.2), ("adahessian_k10", "adam", 1.3)]


def cnn_problem(batch: int = 128, seed: int = 0):
  """Params of conv3x3(32)-conv3x3(64)-maxpool2-dense10 (SAME, NHWC), one random 28×28×1 batch."""
  k = jax.random.split(jax.random.PRNGKey(seed), 5)
  params = {"c1": jax.random.normal(k[0], (3, 3, 1, 32), jnp.float32) / 3.0,
            "c2": jax.random.normal(k[1], (3, 3, 32, 64), jnp.float32) / 17.0,
            "d": jax.random.normal(k[2], (14 * 14 * 64, 10), jnp.float32) / 112.0}
  x = jax.random.normal(k[3], (batch, 28, 28, 1), jnp.float32)
  return params, x, jax.random.randint(k[4], (batch,), 0, 10)


def cnn_model_fn(params, x):
  conv = lambda h, w: jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jax.nn.relu(conv(jax.nn.relu(conv(x, params["c1"])), params["c2"]))
  h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  return h.reshape(h.shape[0], -1) @ params["d"]


def output_loss_fn(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_step(tx, model_fn=model_fn):
  """The jitted whole step: value and gradient, update with every extra argument, apply."""

  @jax.jit
  def step(params, state, x, y):
    model = lambda p: model_fn(p, x)
    out_loss = lambda f: output_loss_fn(f, y)
    obj = lambda p: out_loss(model(p))
    value, grads = jax.value_and_grad(obj)(params)
    updates, state = tx.update(grads, state, params, obj_fn=obj, model_fn=model, output_loss_fn=out_loss,
                               value=value, grad=grads, value_fn=obj)
    return optax.apply_updates(params, updates), state

  return step


def time_block(step, carry, x, y, block: int):
  """Seconds per step over `block` steps (waited on), and the new (params, state)."""
  start = time.perf_counter()
  for _ in range(block):
    carry = step(*carry, x, y)
  carry = jax.block_until_ready(carry)
  return (time.perf_counter() - start) / block, carry


def memory(state, params) -> tuple[float, int]:
  """(bytes of floating-point state leaves / bytes of params, bytes of the other state leaves)."""
  param_bytes = sum(p.nbytes for p in jax.tree.leaves(params))
  leaves = jax.tree.leaves(state)
  floats = sum(x.nbytes for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
  return floats / param_bytes, sum(x.nbytes for x in leaves if not jnp.issubdtype(x.dtype, jnp.floating))


def bench(rows: dict, problem: tuple, repeats: int, model_fn=model_fn) -> dict[str, dict]:
  params, x, y = problem
  steps, carries, times, out = {}, {}, {n: [] for n in rows}, {}
  for name, (factory, block) in rows.items():
    tx = factory()
    steps[name], carries[name] = train_step(tx, model_fn), (params, tx.init(params))
    _, carries[name] = time_block(steps[name], carries[name], x, y, block)  # compile, warm up
    out[name] = {"memory": memory(carries[name][1], params), "block": block}
  names = list(rows)
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      t, carries[name] = time_block(steps[name], carries[name], x, y, rows[name][1])
      times[name].append(t)
  for name in names:
    out[name]["ms"] = 1e3 * statistics.median(times[name])
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20, help="timed blocks per optimizer")
  parser.add_argument("--quick", action="store_true", help="2 repeats, MLP 784-64-64-10: checks it runs")
  parser.add_argument("--cnn-only", action="store_true", help="only the CNN table")
  args = parser.parse_args()
  hidden, repeats = (64, 2) if args.quick else (512, args.repeats)
  rows = {**OURS, **{n: v for n, v in OTHERS.items() if n in optim.names()}}
  if not args.cnn_only:
    print(f"MLP 784-{hidden}-{hidden}-10, batch 128, float32, {repeats} round-robin repeats, "
          f"device {jax.devices()[0].platform}")
    report(bench(rows, mlp_problem(hidden), repeats), RATIOS)
  batch = 16 if args.quick else 128
  print(f"\nCNN conv3x3(32)-conv3x3(64)-maxpool-dense10, 28x28x1, batch {batch}, float32, {repeats} repeats")
  report(bench(CNN_ROWS, cnn_problem(batch), repeats, cnn_model_fn), CNN_RATIOS)


def report(results: dict, ratios: list) -> None:
  adam = results["adam"]["ms"]
  print(f"{'optimizer':<17} | {'ms/step':>8} | {'/ adam':>6} | {'state/params':>12} | {'other B':>7} | block")
  print(f"{'-' * 17}-|-{'-' * 8}-|-{'-' * 6}-|-{'-' * 12}-|-{'-' * 7}-|------")
  for name, r in results.items():
    ratio, other = r["memory"]
    print(f"{name:<17} | {r['ms']:8.3f} | {r['ms'] / adam:6.3f} | {ratio:12.3f} | {other:7d} | "
          f"{r['block']}")
  print()
  for num, den, target in ratios:
    ratio = results[num]["ms"] / results[den]["ms"]
    goal = f"(target <= {target})" if target else "(for information)"
    print(f"{num} / {den}: {ratio:.3f} {goal}")


if __name__ == "__main__":
  main()
