"""Reddi et al.'s stochastic online problem on which Adam does not converge and AMSGrad does.

Step t's loss is linear, f_t(x) = g_t·x with g_t = `large` with probability `probability` and
−`small` otherwise, drawn from the step's batch key (the full batch is one draw: the online
setting); the feasible set is [−1, 1] (run it with the
`projected` optimizer, lower −1, upper 1). The expected loss is δ·x with δ = p·large − (1 − p)·small
> 0, minimised at x* = −1. Adam with β1 < √β2 is pulled to x = +1 by the frequent small gradients
(the rare large one is damped by the second moment it inflates), so its average regret
(1/T) Σ_t δ (x_t − x*) stays near 2δ; AMSGrad's running max of the second moment keeps the large
gradient's weight and its average regret goes to 0.

Eval metrics: `loss` (the expected loss δ·x), `regret` (δ·(x − x*), the expected regret of the
iterate) and `x`.

References: Reddi, Kale & Kumar, 2018, On the convergence of Adam and beyond (ICLR;
arXiv:1904.09237), Theorem 3 and the stochastic synthetic experiment of §5 (1010·x with
probability 0.01, −10·x otherwise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optlab_jax import checks
from optlab_jax.problems.base import Dtype, Problem, check_batch_size

__all__ = ["online_linear"]


def online_linear(
    large: float = 1010.0,
    small: float = 10.0,
    probability: float = 0.01,
    start: float = 1.0,
    dtype: Dtype = "float32",
) -> Problem:
  """f_t(x) = large·x with probability `probability`, −small·x otherwise, on [−1, 1] (see module)."""
  checks.check_positive("large", large)
  checks.check_positive("small", small)
  checks.check_in_range("probability", probability, 0.0, 1.0, lower_open=True, upper_open=True)
  checks.check_in_range("start", start, -1.0, 1.0)
  drift = probability * large - (1 - probability) * small
  if drift <= 0:
    raise ValueError(f"probability={probability!r} gives an expected slope p·large − (1 − p)·small = {drift:.4g}"
                     f" <= 0; expected probability > small / (large + small) = {small / (large + small):.4g}")

  def sample_fn(data, key, batch_size):
    del data
    check_batch_size(batch_size)
    draws = jax.random.bernoulli(key, probability, () if batch_size is None else (batch_size,))
    return {"x": jnp.where(draws, large, -small).astype(dtype)}  # a batch of k: their mean slope

  def model_fn(params, inputs):
    return inputs * params["x"]

  def metrics_fn(data, params):
    del data
    x = params["x"][0]
    return {"loss": drift * x, "regret": drift * (x + 1.0), "x": x}

  return Problem(
      name="online_linear",
      init_params=lambda key: {"x": jnp.full([1], start, dtype)},
      model_fn=model_fn,
      output_loss_fn=lambda outputs, batch: jnp.mean(outputs),
      sample_fn=sample_fn,
      metrics_fn=metrics_fn,
      data={},
      minimum=-drift,
      info={"feasible_set": [-1.0, 1.0], "argmin": -1.0, "expected_slope": drift},
  )
