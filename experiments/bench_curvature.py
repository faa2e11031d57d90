"""Curvature-engine costs as ratios measured in one run, on an MLP and a small CNN.

  python experiments/bench_curvature.py            # full: 200-iteration Lanczos reference
  python experiments/bench_curvature.py --quick    # fewer repetitions and iterations, to check it runs

Models (float32, generated data, batch 128): MLP 784-512-512-10 (ReLU) and a digits-sized CNN
(8×8×1 input, two 3×3 SAME convs with 16 and 32 channels, ReLU, dense to 10). Figures:
  hvp / grad            forward-over-reverse `curvature.hvp` (gradient included) vs `jax.grad` (target ≤ 2)
  hvp_fn matvec / grad  one product of the linearised matvec
  probe / grad          `rademacher_like` over all params (target ≤ 0.1), next to jax.random.rademacher
  Lanczos               HVPs and wall time to reach 1e-4 relative error in λ_max against a long
                        Lanczos reference, next to power iteration with PyHessian's defaults
                        (100 iterations, tol 1e-3): its HVPs, time and error (target: Lanczos time ≤ power time)
  Lanczos overhead      (Lanczos time − m × matvec time) / (m × matvec time) (target ≤ 0.2), with the
                        default partial re-orthogonalisation and with none (no basis)
  loop                  the path `loop="auto"` picks; for the CNN also the forced `lax.scan` path's
                        per-iteration time / the Python path's (the conv-in-control-flow slowdown)
  tanh (clustered)      MLP 784-512-512-10 tanh, PyTorch-default init, N(0, 1) inputs, random labels
                        (top eigenvalues within a few %): iterations for λ_max to 1e-3 and Lanczos time /
                        (iterations × one linearised HVP product) with partial, full and no
                        re-orthogonalisation (`reorth="none"`: no basis, the λ_max path), with the
                        passes over the basis each made (target ≤ 1.2); the same in CPU
                        time (robust to other processes' load), and the floor: the bare three-term
                        recurrence (no basis) that any Lanczos runs, over the same matvecs
Compilation is excluded (every timed function runs once before timing); times are minima over
repetitions (the least disturbed by other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import curvature
from optlab_jax.curvature import basis as B
from optlab_jax.curvature.lanczos import REORTH

BATCH = 128


def _he(key, shape, fan_in):
  return jax.random.normal(key, shape, jnp.float32) * np.float32(np.sqrt(2.0 / fan_in))


def mlp(key):
  """MLP 784-512-512-10 on Gaussian inputs with random labels: (obj_fn, params)."""
  sizes, keys = [784, 512, 512, 10], jax.random.split(key, 5)
  params = [{"w": _he(k, (a, b), a), "b": jnp.zeros((b,), jnp.float32)}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
  x = jax.random.normal(keys[3], (BATCH, 784), jnp.float32)
  y = jax.random.randint(keys[4], (BATCH,), 0, 10, jnp.int32)

  def obj_fn(p):
    h = x
    for layer in p[:-1]:
      h = jax.nn.relu(h @ layer["w"] + layer["b"].reshape(1, -1))
    return curvature.nll(h @ p[-1]["w"] + p[-1]["b"].reshape(1, -1), y, "categorical")

  return obj_fn, params


def clustered_mlp(key):
  """MLP 784-512-512-10 tanh, PyTorch-default init, N(0, 1) inputs and random labels: clustered top eigenvalues."""
  sizes, keys = [784, 512, 512, 10], jax.random.split(key, 8)
  # torch.nn.Linear's default: weight and bias ~ U(−1/√fan_in, 1/√fan_in).
  uniform = lambda k, shape, fan_in: jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0) / np.float32(np.sqrt(fan_in))
  params = [{"w": uniform(keys[2 * i], (a, b), a), "b": uniform(keys[2 * i + 1], (b,), a)}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
  x = jax.random.normal(keys[6], (BATCH, 784), jnp.float32)
  y = jax.random.randint(keys[7], (BATCH,), 0, 10, jnp.int32)

  def obj_fn(p):
    h = x
    for layer in p[:-1]:
      h = jnp.tanh(h @ layer["w"] + layer["b"].reshape(1, -1))
    return curvature.nll(h @ p[-1]["w"] + p[-1]["b"].reshape(1, -1), y, "categorical")

  return obj_fn, params


def cnn(key):
  """8×8×1 → conv3×3(16) → conv3×3(32) → dense 10, ReLU, on Gaussian inputs: (obj_fn, params)."""
  keys = jax.random.split(key, 5)
  params = {"c1": {"w": _he(keys[0], (3, 3, 1, 16), 9), "b": jnp.zeros((16,), jnp.float32)},
            "c2": {"w": _he(keys[1], (3, 3, 16, 32), 144), "b": jnp.zeros((32,), jnp.float32)},
            "out": {"w": _he(keys[2], (8 * 8 * 32, 10), 2048), "b": jnp.zeros((10,), jnp.float32)}}
  x = jax.random.normal(keys[3], (BATCH, 8, 8, 1), jnp.float32)
  y = jax.random.randint(keys[4], (BATCH,), 0, 10, jnp.int32)

  def conv(h, layer):
    h = jax.lax.conv_general_dilated(h, layer["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(h + layer["b"].reshape(1, 1, 1, -1))

  def obj_fn(p):
    h = conv(conv(x, p["c1"]), p["c2"]).reshape(BATCH, -1)
    return curvature.nll(h @ p["out"]["w"] + p["out"]["b"].reshape(1, -1), y, "categorical")

  return obj_fn, params


def timed(fns, reps, clock=time.perf_counter):
  """{name: minimum time} of zero-argument callables, run round-robin after one warm-up each.

  Interleaving makes the ratios between them robust to load from other processes; with
  `clock=time.process_time` the time is this process's CPU time (all XLA threads), which
  other processes' load inflates far less than wall time.
  """
  results = {name: jax.block_until_ready(fn()) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      start = clock()
      results[name] = jax.block_until_ready(fn())
      times[name].append(clock() - start)
  return {name: float(np.min(t)) for name, t in times.items()}, results


def top_ritz_curve(result):
  """θ_max of the leading i × i block of T for i = 1..m (Lanczos is prefix-consistent)."""
  t = np.asarray(curvature.tridiagonal(result.alphas, result.betas), np.float64)
  return np.array([np.linalg.eigvalsh(t[:i, :i])[-1] for i in range(1, t.shape[0] + 1)])


def bench(name, obj_fn, params, args, rows):
  reps, key = args.reps, jax.random.key(0)
  n = sum(x.size for x in jax.tree.leaves(params))
  v = curvature.rademacher_like(key, params)
  matvec = jax.block_until_ready(curvature.hvp_fn(obj_fn, params))
  grad = jax.jit(jax.grad(obj_fn))
  hvp = jax.jit(lambda p, v: curvature.hvp(obj_fn, p, v, return_grad=True))
  once = jax.jit(lambda p, v: curvature.hvp_fn(obj_fn, p)(v))
  linearise = jax.jit(lambda p: curvature.hvp_fn(obj_fn, p))
  probe = jax.jit(curvature.rademacher_like)
  naive = jax.jit(lambda k, p: jax.tree.map(lambda x: jax.random.rademacher(k, x.shape, x.dtype), p))
  t, _ = timed({"grad": lambda: grad(params), "hvp": lambda: hvp(params, v), "once": lambda: once(params, v),
                "linearise": lambda: linearise(params), "matvec": lambda: curvature.loops.apply(matvec, v),
                "probe": lambda: probe(key, params), "naive": lambda: naive(key, params)}, reps)
  loop = curvature.resolve_loop("auto", matvec, params)

  ref = curvature.lanczos(matvec, params, key, args.ref_iters, loop=loop)
  curve = top_ritz_curve(ref)
  lam = curve[-1]
  hit = np.nonzero(np.abs(curve[:-1] - lam) <= 1e-4 * abs(lam))[0]
  m = int(hit[0]) + 1 if hit.size else args.ref_iters

  def matvecs():
    w = v
    for _ in range(m):
      w = curvature.loops.apply(matvec, w)
    return w

  lz, res = timed({
      "lanczos_top": lambda: curvature.lanczos_eigs(matvec, params, key, m, 1, loop=loop).top_values[0],
      "lanczos": lambda: curvature.lanczos(matvec, params, key, m, loop=loop),
      "no_basis": lambda: curvature.lanczos(matvec, params, key, m, loop=loop, reorth="none"),
      "matvecs": matvecs,
      "power": lambda: curvature.power_iteration(matvec, params, jax.random.key(1), 100, 1e-3, loop=loop),
  }, reps)
  lam_pow, _, iters_pow = res["power"]
  ratio = lambda a: t[a] / t["grad"]

  rows += [
      (name, "params", f"{n}", ""),
      (name, "loop (auto)", loop, ""),
      (name, "grad time [ms]", f"{1e3 * t['grad']:.2f}", ""),
      (name, "hvp (jvp of grad, + grad) / grad", f"{ratio('hvp'):.2f}", "<= 2.0"),
      (name, "hvp_fn linearise + 1 product / grad", f"{ratio('once'):.2f}", ""),
      (name, "hvp_fn linearise / grad", f"{ratio('linearise'):.2f}", ""),
      (name, "hvp_fn product (matvec) / grad", f"{ratio('matvec'):.2f}", "<= 2.0"),
      (name, "rademacher_like / grad", f"{ratio('probe'):.3f}", "<= 0.10"),
      (name, "jax.random.rademacher / grad", f"{ratio('naive'):.3f}", ""),
      (name, f"lambda_max (Lanczos {args.ref_iters} it)", f"{lam:.6g}", ""),
      (name, "Lanczos HVPs to 1e-4", f"{m}", ""),
      (name, "Lanczos rel. error at those HVPs", f"{abs(float(res['lanczos_top']) - lam) / abs(lam):.1e}", "<= 1e-4"),
      (name, "Lanczos time [ms]", f"{1e3 * lz['lanczos_top']:.1f}", ""),
      (name, "power (100, 1e-3) HVPs", f"{int(iters_pow)}", ""),
      (name, "power rel. error", f"{abs(float(lam_pow) - lam) / abs(lam):.1e}", ""),
      (name, "power time [ms]", f"{1e3 * lz['power']:.1f}", ""),
      (name, "Lanczos time / power time", f"{lz['lanczos_top'] / lz['power']:.2f}", "<= 1.0"),
      (name, "Lanczos overhead beyond HVPs", f"{lz['lanczos'] / lz['matvecs'] - 1.0:.3f}", "<= 0.20"),
      (name, "the same, reorth='none' (no basis)", f"{lz['no_basis'] / lz['matvecs'] - 1.0:.3f}", "<= 0.20"),
  ]
  if loop == "python":
    steps = args.scan_iters
    loops, _ = timed({
        "python": lambda: curvature.lanczos(matvec, params, key, steps, loop="python"),
        "scan": lambda: curvature.lanczos(matvec, params, key, steps, loop="scan")}, 1)
    rows.append((name, f"Lanczos scan / python ({steps} it)", f"{loops['scan'] / loops['python']:.1f}",
                 "python avoids it"))


def bench_clustered(args, rows, tol=1e-3):
  """λ_max to `tol` on the clustered-spectrum MLP: Lanczos time / (iterations × one matvec), by reorth."""
  obj_fn, params = clustered_mlp(jax.random.key(0))
  key, name = jax.random.key(0), "tanh"
  matvec = jax.block_until_ready(curvature.hvp_fn(obj_fn, params))
  eigs = np.linalg.eigvalsh(np.asarray(curvature.tridiagonal(
      *curvature.lanczos(matvec, params, key, args.ref_iters, reorth="full")[:2]), np.float64))
  lam = eigs[-1]
  found = {}
  for reorth in REORTH:
    curve = top_ritz_curve(curvature.lanczos(matvec, params, key, args.ref_iters, reorth=reorth))
    hit = np.nonzero(np.abs(curve - lam) <= tol * abs(lam))[0]
    found[reorth] = int(hit[0]) + 1 if hit.size else args.ref_iters
  m = max(found.values())
  v = curvature.rademacher_like(key, params)

  def matvecs():
    w = v
    for _ in range(m):
      w = curvature.loops.apply(matvec, w)
    return w

  fns = {r: (lambda r=r: lanczos_top(matvec, params, key, m, r)) for r in found}
  eigs_fn = lambda: curvature.lanczos_eigs(matvec, params, key, m, 1).top_values
  floor_fn = lambda: three_term_top(matvec, v, m)
  t, res = timed({**fns, "eigs": eigs_fn, "floor": floor_fn, "matvecs": matvecs}, args.reps)
  cpu, _ = timed({"partial": fns["partial"], "none": fns["none"], "floor": floor_fn, "matvecs": matvecs}, args.reps,
                 time.process_time)
  passes = {r: int(np.sum(curvature.lanczos(matvec, params, key, m, reorth=r).reorthogonalised)) for r in found}
  rows += [(name, "params", f"{sum(x.size for x in jax.tree.leaves(params))}", ""),
           (name, f"top-5 eigenvalues (of {args.ref_iters} it)", " ".join(f"{e:.4g}" for e in eigs[::-1][:5]), ""),
           (name, f"iterations to {tol:g} ({' / '.join(found)})", " / ".join(map(str, found.values())), ""),
           (name, f"matvec time [ms] (x {m})", f"{1e3 * t['matvecs'] / m:.2f}", "")]
  for r in found:
    err = abs(float(res[r]) - lam) / abs(lam)
    rows += [(name, f"{r}: basis passes / rel. error", f"{passes[r]} / {err:.1e}", f"<= {tol:g}"),
             (name, f"{r}: Lanczos λ_max time / ({m} x matvec)", f"{t[r] / t['matvecs']:.2f}",
              "<= 1.2" if r in ("partial", "none") else "")]
  rows += [(name, f"lanczos_eigs (+ Ritz vector) / ({m} x matvec)", f"{t['eigs'] / t['matvecs']:.2f}", ""),
           (name, f"floor: 3-term recurrence / ({m} x matvec)", f"{t['floor'] / t['matvecs']:.2f}", ""),
           (name, "partial / matvecs, CPU time", f"{cpu['partial'] / cpu['matvecs']:.2f}", "<= 1.2"),
           (name, "none / matvecs, CPU time", f"{cpu['none'] / cpu['matvecs']:.2f}", "<= 1.2"),
           (name, "floor / matvecs, CPU time", f"{cpu['floor'] / cpu['matvecs']:.2f}", "")]


@partial(jax.jit, static_argnums=(3, 4))
def lanczos_top(matvec, params, key, m, reorth):
  """λ_max from m Lanczos steps: the iteration and T's top eigenvalue, without a Ritz vector."""
  result = curvature.lanczos(matvec, params, key, m, reorth=reorth)
  return jnp.linalg.eigvalsh(curvature.tridiagonal(result.alphas, result.betas))[-1]


@partial(jax.jit, static_argnums=2)
def three_term_top(matvec, v, m):
  """θ_max of the bare recurrence w = A q − α q − β q_prev, q ← w/‖w‖ in one scan: no basis, no
  re-orthogonalisation, no breakdown test. Any Lanczos does at least these vector passes per step."""
  def body(carry, _):
    q, q_prev, beta = carry
    w = matvec(q)
    alpha = B.vdot(q, w)
    w = jax.tree.map(lambda x, a, b: x - alpha * a - beta * b, w, q, q_prev)
    norm = B.norm(w)
    return (jax.tree.map(lambda x: x / norm, w), q, norm), (alpha, norm)
  carry = (B.unit(v), jax.tree.map(jnp.zeros_like, v), jnp.zeros([], jnp.float32))
  _, (alphas, betas) = jax.lax.scan(body, carry, None, length=m)
  return jnp.linalg.eigvalsh(curvature.tridiagonal(alphas, betas[:-1]))[-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="5 repetitions, 80-iteration reference")
  parser.add_argument("--clustered-only", action="store_true", help="only the clustered-spectrum tanh MLP rows")
  args = parser.parse_args()
  args.reps, args.ref_iters, args.scan_iters = (5, 80, 3) if args.quick else (20, 200, 10)
  rows = []
  bench_clustered(args, rows)
  if not args.clustered_only:
    for name, build in (("mlp", mlp), ("cnn", cnn)):
      obj_fn, params = build(jax.random.key(0))
      bench(name, obj_fn, params, args, rows)
  print(f"backend: {jax.default_backend()}, devices: {len(jax.devices())}, quick: {args.quick}")
  print(f"{'model':6} {'figure':36} {'value':>12}  target")
  for row in rows:
    print(f"{row[0]:6} {row[1]:36} {row[2]:>12}  {row[3]}")


if __name__ == "__main__":
  main()
