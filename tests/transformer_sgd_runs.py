"""SGD (momentum 0.9) on the small char Transformer, the runs claims 2 (warm-up) and 19 (schedules)
of issue #12 share: every seed of every schedule is one vmapped program, compiled once.

The lr of a run is peak · min(1, (t + 1)/warmup) · (0.1 if t ≥ cut else 1): warmup = 1 is none,
a cut past the last step is a constant lr. λ_max (Lanczos, batch Hessian) every 40 steps.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from optlab_jax import monitor, optim, problems, train

SEEDS, STEPS, MONITOR_EVERY = (0, 1, 2), 200, 40
NEVER = 1e9   # a cut past the last step
# (peak, warmup, cut). Claim 2: peaks 0.1 (the control) and 1.5, without and with a 100-step
# warm-up, constant after it. Claim 19: peak 1.0 behind a 60-step warm-up, constant or cut at 120.
WARMUP = {(lr, w): (lr, w, NEVER) for lr in (0.1, 1.5) for w in (1.0, 100.0)}
SCHEDULES = {"constant": (1.0, 60.0, NEVER), "step": (1.0, 60.0, 120.0)}


def sgd(peak, warmup, cut):
  """SGD with heavy-ball momentum 0.9 and the linear warm-up, step-cut schedule above."""
  lr = lambda count: peak * jnp.minimum(1.0, (count + 1.0) / warmup) * jnp.where(count >= cut, 0.1, 1.0)
  return optim.get("sgd")(learning_rate=lr, momentum=0.9)


def edge(lr: float) -> float:
  """Heavy ball's stability edge (2 + 2β)/lr."""
  return monitor.stability_edge({"name": "sgd", "learning_rate": lr, "momentum": 0.9})


@functools.cache
def runs() -> dict:
  """{(peak, warmup, cut): [History per seed]} for every point of both claims, in one vmapped fit."""
  points = list(WARMUP.values()) + list(SCHEDULES.values())
  problem = problems.build("char_transformer", seq_len=16, width=16, num_layers=1, num_heads=2)
  mon = monitor.Monitor(["lambda_max"], problem.loss, optimizer={"name": "sgd"}, lanczos_iters=6)
  hparams = {name: np.float32([p[i] for p in points for _ in SEEDS]) for i, name in enumerate(("peak", "warmup", "cut"))}
  histories = train.fit_vmapped(problem, sgd, hparams, np.array(SEEDS * len(points)), steps=STEPS, batch_size=32,
                                monitor=mon, monitor_every=MONITOR_EVERY)
  return {p: histories[i * len(SEEDS):(i + 1) * len(SEEDS)] for i, p in enumerate(points)}
