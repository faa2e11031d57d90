"""Sweep benchmark: vmapped sweep points vs one run vs sequential runs, and the loop's overhead.

Run:  python experiments/bench_sweep.py            (200 steps, best of 3 repeats)
      python experiments/bench_sweep.py --quick    (50 steps, 1 repeat: checks that it works)

Prints one table of ratios measured in one run (execution time; compilation is reported apart):
  vmap8/one   8 configs (8 learning rates × seeds) in ONE vmapped program / one config
              (target <= 3.0 for digits-MLP on 2 CPU cores)
  vmap8/seq8  the vmapped program / the same 8 configs run one after another (one compile)
  choice/seq8 what `train.should_vmap` picks / sequential
  choice/best what it picks / the faster of vmap8 and seq8: must be <= 1 (never slower; the
              "ok" column says whether it is, within the 5% run-to-run noise of a loaded machine)
  floor8/one  the least vmap8/one can be on this machine: 8 configs' FLOPs at the peak FLOP rate
              (a large float32 matmul, measured in the same run) / one config's time. Where one
              config already runs near peak, no program can bring 8 of them under 3× one.
and the digits-CNN step through `train.fit` / a plain jitted step (target <= 1.1).
Rows: digits-MLP 64-64-64-10, MLPs 784-w-w-10 on generated data (teacher-student), digits-CNN;
all at batch 128 with Adam. The MLP widths bracket `train.VMAP_MAX_FLOPS`.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import optax

from optlab_jax import problems, train

BATCH = 128
N_CONFIGS = 8
LEARNING_RATES = np.geomspace(1e-4, 3e-3, N_CONFIGS)


def _run_seconds(histories: list[train.History]) -> float:
  return sum(h.wall_time - h.compile_time for h in histories)


def _compile_seconds(histories: list[train.History]) -> float:
  return sum(h.compile_time for h in histories)


def peak_flop_rate(repeats: int, n: int = 2048) -> float:
  """FLOP/s of an n × n float32 matmul, the best this machine's XLA does."""
  a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  best = np.inf
  for _ in range(max(repeats, 3)):
    tic = time.perf_counter()
    jax.block_until_ready(matmul(a))
    best = min(best, time.perf_counter() - tic)
  return 2 * n**3 / best


def sweep_row(name: str, problem: problems.Problem, steps: int, repeats: int, peak: float) -> dict:
  """Best-of-`repeats` execution times of one config, 8 vmapped and 8 sequential."""
  kw = dict(steps=steps, batch_size=BATCH)
  one = lambda: [train.fit(problem, optax.adam(LEARNING_RATES[0]), seed=0, **kw)]
  many = lambda vmap: train.fit_vmapped(
      problem, optax.adam, {"learning_rate": LEARNING_RATES}, np.arange(N_CONFIGS), vmap=vmap, **kw
  )
  runs = {"one": one, "vmap8": lambda: many(True), "seq8": lambda: many(False)}
  best, compile_s = {}, {}
  for key, fn in runs.items():
    results = [fn() for _ in range(repeats)]
    best[key] = min(map(_run_seconds, results))
    compile_s[key] = _compile_seconds(results[0])
  choice = train.should_vmap(problem, N_CONFIGS, tx=optax.adam(1e-3), batch_size=BATCH)
  flops = train.step_flops(problem, optax.adam(1e-3), BATCH)
  chosen = best["vmap8"] if choice else best["seq8"]
  return {
      "problem": name,
      "MFLOP/step": flops / 1e6,
      "one ms/step": 1e3 * best["one"] / steps,
      "one GFLOP/s": flops * steps / best["one"] / 1e9,
      "vmap8/one": best["vmap8"] / best["one"],
      "floor8/one": N_CONFIGS * flops * steps / peak / best["one"],
      "vmap8/seq8": best["vmap8"] / best["seq8"],
      "choice": "vmap" if choice else "seq",
      "choice/seq8": chosen / best["seq8"],
      "choice/best": chosen / min(best["vmap8"], best["seq8"]),
      "ok": "yes" if chosen <= 1.05 * min(best["vmap8"], best["seq8"]) else "SLOWER",
      "compile vmap8 s": compile_s["vmap8"],
      "compile seq8 s": compile_s["seq8"],
  }


def cnn_overhead(steps: int, repeats: int) -> tuple[float, float]:
  """(ms per digits-CNN step through train.fit, ms per step of a plain jitted step loop)."""
  problem, tx = problems.build("digits_cnn"), optax.adam(1e-3)

  @jax.jit
  def plain_step(params, opt_state, key):
    batch = problem.sample_batch(key, BATCH)
    loss, grads = jax.value_and_grad(problem.loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = problem.init_params(jax.random.key(0))
  state, keys = tx.init(params), list(jax.random.split(jax.random.key(1), steps))
  jax.block_until_ready(plain_step(params, state, keys[0]))
  plain = []
  for _ in range(repeats):
    tic, p, s = time.perf_counter(), params, state
    for key in keys:
      p, s, loss = plain_step(p, s, key)
    jax.block_until_ready(loss)
    plain.append(time.perf_counter() - tic)
  fitted = [_run_seconds([train.fit(problem, tx, steps=steps, batch_size=BATCH)]) for _ in range(repeats)]
  return 1e3 * min(fitted) / steps, 1e3 * min(plain) / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="50 steps, 1 repeat")
  parser.add_argument("--steps", type=int, help="steps per run (default 200, --quick 50)")
  parser.add_argument("--repeats", type=int, help="best of this many (default 3, --quick 1)")
  args = parser.parse_args()
  steps, repeats = (50, 1) if args.quick else (200, 3)
  steps, repeats = args.steps or steps, args.repeats or repeats
  cases = {
      "digits-MLP 64-64-64-10": problems.build("digits_mlp"),
      **{
          f"MLP 784-{w}-{w}-10": problems.build(
              "teacher_student", input_dim=784, output_dim=10, student_hidden=(w, w),
              teacher_hidden=(64,), num_train=4096, num_test=512,
          )
          for w in (64, 128, 256, 512)
      },
      "digits-CNN": problems.build("digits_cnn"),
  }
  peak = peak_flop_rate(repeats)
  rows = [sweep_row(name, problem, steps, repeats, peak) for name, problem in cases.items()]
  print(f"backend {jax.default_backend()}, {steps} steps, best of {repeats}, batch {BATCH}, Adam, "
        f"VMAP_MAX_FLOPS {train.VMAP_MAX_FLOPS:.2g}, peak (2048² float32 matmul) {peak / 1e9:.3g} GFLOP/s, "
        f"load average {os.getloadavg()[0]:.1f}")
  header = list(rows[0])
  print(" | ".join(f"{h:>14}" if i else f"{h:<24}" for i, h in enumerate(header)))
  for row in rows:
    cells = [f"{v:>14.3g}" if isinstance(v, float) else f"{v:>14}" for v in row.values()]
    print(" | ".join([f"{row['problem']:<24}", *cells[1:]]))
  fit_ms, plain_ms = cnn_overhead(steps, repeats)
  print(f"digits-CNN step: train.fit {fit_ms:.3g} ms, plain jit {plain_ms:.3g} ms, "
        f"ratio {fit_ms / plain_ms:.3g} (target <= 1.1)")


if __name__ == "__main__":
  main()
