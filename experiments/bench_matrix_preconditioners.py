"""Step time and state size of the matrix preconditioners against Adam, at refresh interval 10.

Run:  python experiments/bench_matrix_preconditioners.py           (20 blocks of 10 steps)
      python experiments/bench_matrix_preconditioners.py --quick   (3 blocks: checks that it runs)
      --models mlp | transformer                                   (one of the two models)

Models: the MLP 784-512-512-10 (ReLU, float32, batch 128, synthetic data) and the
`char_transformer` problem (its defaults: width 128, 2 layers, seq 64; batch 32), or, if that
problem is not registered, a stack of dense layers of its shapes. Each step is one jitted call:
the gradient, `tx.update` with every extra argument, `apply_updates`. Shampoo and SOAP refresh
their roots / eigenbases every 10 steps, K-FAC its inverses every 10, PSGD-Kron fits its factors
with probability 0.1; a block of 10 consecutive steps is timed and divided by 10 (the amortised
cost), blocks of all optimizers alternate, and the table shows the median block. Target: ≤ 2×
Adam. State bytes / param bytes count every state leaf; "theory" is the size the method's
definition implies for these shapes (matrix leaves m×n; vectors and scalars as each method's
fallback; Shampoo with its Adam graft and its roots, SOAP with its eigenbases, PSGD with its
momentum, K-FAC (A, G and their inverses per Linear layer) is its module's own count). The "/b128"
rows cut every axis into blocks of at most 128 (padded), so each root or eigenbasis refresh
decomposes 128 × 128 factors instead of 784 × 784 and 512 × 512 ones. "floor" is the least any
implementation's step could cost on this machine: Adam's measured step plus the matrix products the
method's definition adds every step (`extra_flops`), at the peak FLOP rate of a 2048² float32 matmul
measured in the same run; where it is above 2, the target is out of reach here.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench_sweep import peak_flop_rate
from optlab_jax import optim, problems
from optlab_jax.problems import models

REFRESH = 10
BLOCK = 128  # the "/b128" rows: Shampoo and SOAP with every axis cut into blocks of at most this
NAMES = ("adam", "shampoo", "shampoo/b128", "soap", "soap/b128", "psgd_kron", "muon", "kfac")
FACTORIES = {
    "adam": lambda: optim.get("adam")(1e-3),
    "shampoo": lambda: optim.get("shampoo")(1e-3, precondition_every=REFRESH),
    "shampoo/b128": lambda: optim.get("shampoo")(1e-3, precondition_every=REFRESH, block_size=BLOCK),
    "soap": lambda: optim.get("soap")(1e-3, precondition_every=REFRESH),
    "soap/b128": lambda: optim.get("soap")(1e-3, precondition_every=REFRESH, block_size=BLOCK),
    "psgd_kron": lambda: optim.get("psgd_kron")(1e-3, update_probability=1.0 / REFRESH),
    "muon": lambda: optim.get("muon")(1e-3),
    "kfac": lambda: optim.get("kfac")(1e-3, inverse_every=REFRESH),
}


def nbytes(tree) -> int:
  return sum(int(np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x).nbytes)
             for x in jax.tree.leaves(tree))


def blocks_of(shape: tuple[int, int], block: int | None) -> tuple[int, tuple[int, int]]:
  """(number of blocks, block shape) of a matrix cut into blocks of at most `block` (padded at the far end)."""
  dims = shape if block is None else tuple(min(d, block) for d in shape)
  return int(np.prod([-(-d // b) for d, b in zip(shape, dims)])), dims


def theory(name: str, params) -> float | None:
  """State entries / param entries from the definition (counts, keys and scalars ignored)."""
  base, block = name.split("/")[0], BLOCK if "/b" in name else None
  total, state = 0, 0
  for p in jax.tree.leaves(params):
    total += p.size
    matrix = p.ndim == 2
    m, n = p.shape if matrix else (p.size, 1)
    tiles, (bm, bn) = blocks_of((m, n), block if matrix else None)
    factors = tiles * (bm * bm + bn * bn)  # per block of bm × bn: bm² + bn² factor entries
    state += {
        "adam": 2 * p.size,
        "muon": p.size if matrix else 2 * p.size,
        "psgd_kron": p.size + (m * m + n * n if matrix else p.size),
        "shampoo": 2 * p.size + (2 * factors if matrix else 0),   # Adam m, v (graft); L, R; their roots
        "soap": 2 * p.size + (2 * factors if matrix else 0),      # Adam m, v; L, R; Q_L, Q_R
    }.get(base, 0)
  return state / total if base != "kfac" else None


def extra_flops(name: str, params) -> float | None:
  """FLOPs of the matrix products a step of `name` adds to Adam's, by its definition, per matrix
  leaf m × n (per block, for "/b128"; the refreshes and fits, amortised, are not counted):
  Shampoo 4mn(m + n): the statistics G Gᵀ and Gᵀ G, then L^{-1/4} G R^{-1/4}; SOAP 6mn(m + n): the
  statistics and the rotation into and out of the eigenbasis; PSGD-Kron 4mn(m + n): Q_lᵀ Q_l G Q_rᵀ Q_r;
  Muon, per Newton–Schulz step (5), 4m²n + 2m³ with m ≤ n: A = X Xᵀ, A A, (bA + cA²) X. None for K-FAC
  (`bench_kfac.py` prints its floor)."""
  base, block = name.split("/")[0], BLOCK if "/b" in name else None
  if base == "kfac":
    return None
  total = 0.0
  for p in jax.tree.leaves(params):
    if p.ndim != 2 or base == "adam":
      continue
    tiles, dims = blocks_of(p.shape, block)
    m, n = sorted(dims)
    total += tiles * {"shampoo": 4 * m * n * (m + n), "soap": 6 * m * n * (m + n), "psgd_kron": 4 * m * n * (m + n),
                      "muon": 5 * (4 * m * m * n + 2 * m ** 3)}[base]
  return total


def mlp():
  init_params, model_fn = models.functional(lambda rngs: models.MLP((784, 512, 512, 10), "relu",
                                                                   dtype=jnp.float32, rngs=rngs))
  kx, ky = jax.random.split(jax.random.key(1))
  batch = {"x": jax.random.normal(kx, (128, 784)), "y": jax.random.randint(ky, (128,), 0, 10)}
  loss = lambda logits, b: optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()
  return "MLP 784-512-512-10, batch 128", init_params(jax.random.key(0)), model_fn, loss, batch


def transformer():
  if "char_transformer" in problems.names():
    problem = problems.build("char_transformer")
    batch = problem.sample_batch(jax.random.key(2), 32)
    return ("char_transformer (width 128, 2 layers, seq 64), batch 32", problem.init_params(jax.random.key(0)),
            problem.model_fn, problem.output_loss_fn, batch)
  # Dense layers of the char Transformer's block shapes: 128×384 (qkv), 384×128, 128×512, 512×128 (MLP).
  init_params, model_fn = models.functional(lambda rngs: models.MLP((128, 384, 128, 512, 128), "relu",
                                                                   dtype=jnp.float32, rngs=rngs))
  kx, ky = jax.random.split(jax.random.key(1))
  batch = {"x": jax.random.normal(kx, (32 * 64, 128)), "y": jax.random.normal(ky, (32 * 64, 128))}
  loss = lambda out, b: 0.5 * jnp.mean(jnp.sum((out - b["y"]) ** 2, -1))
  return "dense stack of the char Transformer's shapes, 2048 rows", init_params(jax.random.key(0)), model_fn, loss, batch


def make_step(tx, model_fn, loss_fn, batch):
  """step(params, state) with the batch an argument of the jitted program (a closed-over batch is
  a constant that XLA folds: K-FAC's xᵀx at compile time)."""

  @jax.jit
  def jitted(params, state, batch):
    obj_fn = lambda p: loss_fn(model_fn(p, batch["x"]), batch)
    value, grads = jax.value_and_grad(obj_fn)(params)
    updates, state = tx.update(grads, state, params, obj_fn=obj_fn, value=value, grad=grads, value_fn=obj_fn,
                               model_fn=lambda p: model_fn(p, batch["x"]),
                               output_loss_fn=lambda out: loss_fn(out, batch))
    return optax.apply_updates(params, updates), state

  return lambda params, state: jitted(params, state, batch)


def bench(title, params, model_fn, loss_fn, batch, blocks, peak):
  names = [n for n in NAMES if n.split("/")[0] in optim.names()]
  runs, times, param_bytes = {}, {n: [] for n in names}, nbytes(params)
  for name in names:
    tx = FACTORIES[name]()
    step = make_step(tx, model_fn, loss_fn, batch)
    carry = (params, tx.init(params))
    for _ in range(REFRESH):  # compile, then one whole refresh cycle
      carry = jax.block_until_ready(step(*carry))
    runs[name] = [step, carry]
  for _ in range(blocks):
    for name in names:
      step, carry = runs[name]
      start = time.perf_counter()
      for _ in range(REFRESH):
        carry = step(*carry)
      jax.block_until_ready(carry)
      times[name].append((time.perf_counter() - start) / REFRESH)
      runs[name][1] = carry
  adam_ms = 1e3 * np.median(times["adam"])
  print(f"\n{title}; {blocks} alternated blocks of {REFRESH} steps, {jax.devices()[0].platform}, "
        f"peak {peak / 1e9:.0f} GFLOP/s")
  print(f"{'optimizer':<13}|{'ms/step':>9} |{'/ Adam':>7} |{'floor':>6} |{'state/params':>13} |{'theory':>7}")
  print(f"{'-' * 13}|{'-' * 10}|{'-' * 8}|{'-' * 7}|{'-' * 14}|{'-' * 7}")
  for name in names:
    ms = 1e3 * np.median(times[name])
    t, extra = theory(name, params), extra_flops(name, params)
    floor = "-" if extra is None else f"{1 + 1e3 * extra / peak / adam_ms:.2f}"
    ratio = nbytes(runs[name][1][1]) / param_bytes
    print(f"{name:<13}|{ms:>9.2f} |{ms / adam_ms:>7.2f} |{floor:>6} |{ratio:>13.2f} |{'-' if t is None else f'{t:.2f}':>7}")
  missing = sorted(set(NAMES) - set(names))
  if missing:
    print(f"not registered (skipped): {', '.join(missing)}")


def main(quick: bool, models: str) -> None:
  blocks, peak = (3 if quick else 20), peak_flop_rate(5)
  for build in {"all": (mlp, transformer), "mlp": (mlp,), "transformer": (transformer,)}[models]:
    bench(*build(), blocks, peak)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="3 blocks instead of 20")
  parser.add_argument("--models", choices=("all", "mlp", "transformer"), default="all")
  args = parser.parse_args()
  main(args.quick, args.models)
