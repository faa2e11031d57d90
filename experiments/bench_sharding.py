"""Training on a device mesh: step time on 1 vs 8 devices, and bytes of params + state per device.

  python experiments/bench_sharding.py            # 1 and 8 forced CPU devices (+ the real devices if not CPU)
  python experiments/bench_sharding.py --quick    # fewer steps, to check it runs

Problem: teacher-student MLP 256-1024-16 (tanh, float32; the first kernel is 1 MiB, the size
from which `sharding.MIN_SHARD_BYTES` shards a leaf), 4096 examples, batch 256, Adam, 10-step
scan chunks. Each device count runs in its own subprocess (XLA_FLAGS must be set before jax
is imported). Figures:
  step time          (wall − compile) / steps of `train.fit`, the minimum over repetitions, for
                     one device and for each mesh, and its ratio to one device. On a CPU the
                     forced devices share the same cores, so expect no gain: it proves the
                     program runs; on an accelerator the devices are real.
  bytes / device     params + Adam state held by one device on the 2×4 mesh / the same replicated,
                     over all leaves and over the leaves the rule shards (target ≈ 1/4).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = "--child"


def _child(devices: int, steps: int, repeats: int) -> dict:
  import jax
  import numpy as np
  import optax

  from optlab_jax import problems, sharding, train

  problem = problems.build("teacher_student", input_dim=256, output_dim=16, teacher_hidden=(32,),
                           student_hidden=(1024,), num_train=4096, num_test=256, dtype="float32")
  tx = optax.adam(1e-3)
  meshes = {"1 device": {"data": 1}}
  if devices >= 8:
    meshes.update({"8x1 (data)": {"data": 8}, "2x4 (data x model)": {"data": 2, "model": 4}})
  out = {"backend": jax.default_backend(), "devices": len(jax.local_devices()), "step_ms": {}}
  for label, mesh in meshes.items():
    times = []
    for _ in range(repeats):
      h = train.fit(problem, tx, steps=steps, batch_size=256, eval_every=steps, mesh=mesh)
      times.append((h.wall_time - h.compile_time) / steps)
    out["step_ms"][label] = 1e3 * min(times)
  if devices >= 8:
    batch = {"x": jax.ShapeDtypeStruct((256, 256), np.float32)}
    placement = sharding.placement({"data": 2, "model": 4}, batch)
    init, _ = train._point_fns(problem, lambda hp: tx, 256, placement)
    state = jax.jit(init)(np.int32(0), {})
    device = jax.local_devices()[0]
    held = lambda x: sum(s.data.nbytes for s in x.addressable_shards if s.device == device)
    leaves = jax.tree.leaves((state.params, state.opt_state))
    big = [x for x in leaves if x.nbytes >= sharding.MIN_SHARD_BYTES]
    out["bytes"] = {"all": [sum(map(held, leaves)), sum(x.nbytes for x in leaves)],
                    "sharded leaves": [sum(map(held, big)), sum(x.nbytes for x in big)], "count": len(big)}
  return out


def _spawn(devices: int | None, steps: int, repeats: int) -> dict:
  env = dict(os.environ)
  if devices is not None:
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, __file__, CHILD, str(devices or 0), str(steps), str(repeats)], env=env,
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == CHILD:
    devices, steps, repeats = map(int, sys.argv[2:5])
    if devices == 0:
      import jax
      devices = len(jax.local_devices())
    print(json.dumps(_child(devices, steps, repeats)))
    return
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  steps, repeats = (20, 1) if args.quick else (100, 3)
  runs = {"CPU, 1 forced device": _spawn(1, steps, repeats), "CPU, 8 forced devices": _spawn(8, steps, repeats)}
  import jax
  if jax.default_backend() != "cpu":
    runs[f"{jax.default_backend()}, {len(jax.local_devices())} device(s)"] = _spawn(None, steps, repeats)
  one = runs["CPU, 1 forced device"]["step_ms"]["1 device"]
  print(f"step time, ms ({steps} steps, min of {repeats}); ratio to one forced CPU device")
  for name, run in runs.items():
    for label, ms in run["step_ms"].items():
      print(f"  {name:28s} {label:22s} {ms:8.2f}   {ms / one:5.2f}")
  held, total = runs["CPU, 8 forced devices"]["bytes"]["all"]
  big_held, big_total = runs["CPU, 8 forced devices"]["bytes"]["sharded leaves"]
  print("bytes of params + Adam state on one device of the 2x4 mesh / replicated")
  print(f"  all leaves               {held:>10d} / {total:>10d} = {held / total:.3f}")
  print(f"  leaves >= min_shard_bytes {big_held:>9d} / {big_total:>10d} = {big_held / big_total:.3f}"
        f"   ({runs['CPU, 8 forced devices']['bytes']['count']} leaves; target 0.25)")


if __name__ == "__main__":
  main()
