"""A 41 × 41 loss slice as one compiled program vs a Python loop of jitted point evaluations.

  python experiments/bench_landscape.py            # 41 × 41 grids
  python experiments/bench_landscape.py --quick    # 11 × 11, to check it runs

Models (float32): the digits MLP 64-64-64-10 (its loss on the 1,437 training images, and on 32 of
them, where a point costs less than a dispatch) and a char_transformer (width 64, 2 layers, 4 heads, 32-character windows; its loss on a fixed batch of
8 windows). Directions: two filter-normalised random directions at the initialisation. Figures:
  loop ms            the grid as a Python loop over points of one jitted function (shift + loss),
                     dispatched asynchronously, waited for once at the end
  program ms         `landscape.slice_2d(loop="scan")`: one jitted vmap over all points ("vmap all"),
                     or `lax.map(batch_size=chunk)`; loop / program is the speed-up (target ≥ 10)
  peak MiB           `landscape.peak_bytes`: XLA's scratch + output memory of that program
  max |diff|         the largest difference between the loop's and the program's grid
  loop/floor         the largest speed-up any program can reach: the loop's time over the grid's
                     FLOPs (XLA's count for one point × points) at the machine's peak FLOP rate
                     (bench_sweep.peak_flop_rate). Where it is below 10, each point is already
                     compute-bound in the loop and the ≥ 10× target is out of reach on this CPU.
Compilation is excluded (each is run once first); times are the minimum of --repeats runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench_sweep import peak_flop_rate
from optlab_jax import landscape, problems


def _models():
  mlp = problems.build("digits_mlp", hidden=(64, 64))
  loss = lambda p, data: mlp.loss(p, data)
  yield "digits MLP 64-64-64-10, 1437 ex.", mlp, loss, mlp.data["train"]
  yield "digits MLP 64-64-64-10, 32 ex.", mlp, loss, jax.tree.map(lambda a: a[:32], mlp.data["train"])
  lm = problems.build("char_transformer", seq_len=32, width=64, num_layers=2, num_heads=4)
  batch = lm.sample_batch(jax.random.key(0), 8)
  yield "char_transformer w64 L2 seq32 b8", lm, (lambda p, data: lm.loss(p, data)), batch


def _best(fn, repeats):
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - tic)
  return min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  n = 11 if args.quick else 41
  xs = ys = np.linspace(-1.0, 1.0, n)
  peak_rate = peak_flop_rate(args.repeats)
  print(f"backend {jax.default_backend()}, grid {n}x{n} = {n * n} points, best of {args.repeats}, "
        f"peak {peak_rate / 1e9:.1f} GFLOP/s")
  print(f"{'model':34s} {'params':>8s} {'program':>12s} {'ms':>9s} {'loop/prog':>9s} {'peak MiB':>9s} {'max |diff|':>10s} "
        f"{'loop/floor':>10s}")
  for name, problem, loss, data in _models():
    params = problem.init_params(jax.random.key(0))
    dx, dy = (landscape.random_direction(jax.random.key(k), params) for k in (1, 2))
    size = sum(x.size for x in jax.tree.leaves(params))
    point = jax.jit(lambda p, a, b, x, y, d: loss(jax.tree.map(lambda w, u, v: w + x * u + y * v, p, a, b), d))
    grid_x, grid_y = np.meshgrid(xs, ys)
    coords = [(np.float32(x), np.float32(y)) for x, y in zip(grid_x.ravel(), grid_y.ravel())]
    jax.block_until_ready(point(params, dx, dy, *coords[0], data))
    run_loop = lambda: jnp.stack([point(params, dx, dy, x, y, data) for x, y in coords])
    loop_s = _best(run_loop, args.repeats)
    reference = np.asarray(run_loop()).reshape(n, n)
    flops = point.lower(params, dx, dy, *coords[0], data).compile().cost_analysis()["flops"]
    floor_s = len(coords) * flops / peak_rate
    print(f"{name:34s} {size:8d} {'python loop':>12s} {1e3 * loop_s:9.1f} {1.0:9.2f} {'':>9s} {'':>10s} "
          f"{loop_s / floor_s:10.1f}")
    flat = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    for chunk in (1, 4, 8, 32, 128, None):
      program = lambda: landscape.slice_2d(loss, params, dx, dy, xs, ys, args=(data,), chunk_size=chunk, loop="scan")
      values = program()
      seconds = _best(program, args.repeats)
      peak = landscape.peak_bytes(loss, params, (dx, dy), flat, args=(data,), chunk_size=chunk) / 2**20
      label = "vmap all" if chunk is None else f"chunk {chunk}"
      diff = float(np.max(np.abs(np.asarray(values) - reference)))
      print(f"{'':34s} {'':8s} {label:>12s} {1e3 * seconds:9.1f} {loop_s / seconds:9.2f} {peak:9.1f} {diff:10.2e}")


if __name__ == "__main__":
  main()
