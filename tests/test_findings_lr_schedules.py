"""Claim 19 of issue #12 (learning-rate schedules on a Transformer; configs/lr_schedules_transformer.yaml)
at a small size, against the constant learning rate as the control.

A width-16 char Transformer, SGD with momentum 0.9, peak lr 1.0 behind a 60-step warm-up, 200 steps; the
step schedule cuts the lr tenfold at step 120. The seeds and both schedules run as one vmapped program
(the step of the cut is a traced hyperparameter; past the last step: constant).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from optlab_jax import monitor, optim, problems, train

SEEDS, STEPS, _PEAK, _WARMUP, _CUT = (0, 1, 2), 200, 1.0, 60.0, 120.0
_EDGE = (2 + 2 * 0.9) / _PEAK  # heavy ball's stability edge at the peak lr


def _sgd(peak, warmup, cut):
  lr = lambda count: peak * jnp.minimum(1.0, (count + 1.0) / warmup) * jnp.where(count >= cut, 0.1, 1.0)
  return optim.get("sgd")(learning_rate=lr, momentum=0.9)


@functools.cache
def _runs():
  """{"constant" | "step": [History per seed]}, λ_max measured once, after the last step."""
  problem = problems.build("char_transformer", seq_len=16, width=16, num_layers=1, num_heads=2)
  mon = monitor.Monitor(["lambda_max"], problem.loss, optimizer={"name": "sgd"}, lanczos_iters=6)
  cuts = [1e9] * len(SEEDS) + [_CUT] * len(SEEDS)
  hparams = {"peak": np.float32([_PEAK] * len(cuts)), "warmup": np.float32([_WARMUP] * len(cuts)),
             "cut": np.float32(cuts)}
  histories = train.fit_vmapped(problem, _sgd, hparams, np.array(SEEDS * 2), steps=STEPS, batch_size=32,
                                monitor=mon, monitor_every=STEPS)
  return {"constant": histories[:len(SEEDS)], "step": histories[len(SEEDS):]}


def test_the_step_decay_ends_at_a_lower_test_loss_than_the_constant_lr():
  runs = _runs()
  test = {k: np.array([h.final["test_loss"] for h in hs]) for k, hs in runs.items()}
  # Measured at 300 steps (cut at 200): 2.30 ± 0.01 vs 2.34 ± 0.03; the config at width 32 and 800 steps:
  # 1.92 vs 1.96.
  assert test["step"].mean() < test["constant"].mean() - 0.02, test
  assert np.sum(test["step"] < test["constant"]) >= 2, test


def test_sharpness_does_not_follow_the_edge_up_when_the_lr_is_cut():
  runs = _runs()
  # λ_max over the edge (2 + 2β)/lr_t at the end: the constant lr (the control) keeps the network near
  # its edge; after the tenfold cut the edge is 10× higher, and λ_max, 80 steps on, has not risen with it.
  ratio = {k: np.array([h.monitor["lambda_max"][-1] for h in hs]) / (_EDGE * (10.0 if k == "step" else 1.0))
           for k, hs in runs.items()}
  # Measured: constant 0.20-0.46, step 0.04-0.07 (λ_max on one batch is noisy: the means are compared).
  assert np.all(ratio["constant"] > 0.15), ratio
  assert ratio["step"].mean() < 0.3 * ratio["constant"].mean() and np.all(ratio["step"] < 0.15), ratio
