"""Test functions of optimization: an ill-conditioned quadratic and the Rosenbrock valley."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import checks
from optlab_jax.problems.base import Dtype, Problem, deterministic_problem, sample_rows

__all__ = ["quadratic", "rosenbrock"]


def quadratic(dim: int = 10, condition: float = 100.0, data_seed: int = 0, dtype: Dtype = "float32") -> Problem:
  """f(x) = ½ (x − x*)ᵀ A (x − x*), A's eigenvalues spaced geometrically from 1 to `condition`.

  Written as least squares over the rows of R = diag(√λ) Qᵀ (A = RᵀR): f(x) = ½ Σᵢ (rᵢ·x − bᵢ)²
  with b = R x* and Q a random rotation. A batch of `batch_size` rows drawn with replacement gives the unbiased
  estimate ½ (dim / batch_size) Σ_batch (rᵢ·x − bᵢ)², a stochastic quadratic. The minimum is 0
  at x* (drawn from `data_seed`, like Q); initial params x₀ ~ N(0, I) from the run's key.

  References: Nocedal & Wright, 2006, Numerical Optimization, ch. 3 (condition number and
  the convergence of gradient descent).
  """
  checks.check_positive_int("dim", dim)
  checks.check_in_range("condition", condition, 1.0)
  rng = np.random.default_rng(data_seed)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  eigenvalues = np.logspace(0.0, np.log10(condition), dim)
  rows = np.sqrt(eigenvalues)[:, None] * q.T
  x_star = rng.normal(size=dim)
  data = {"train": {"x": jnp.asarray(rows, dtype), "y": jnp.asarray(rows @ x_star, dtype)}}

  def output_loss_fn(outputs, batch):
    return 0.5 * dim * jnp.mean(jnp.square(outputs - batch["y"]))

  def model_fn(params, inputs):
    return inputs @ params["x"]

  def metrics_fn(data, params):
    return {"loss": output_loss_fn(model_fn(params, data["train"]["x"]), data["train"])}

  return Problem(
      name="quadratic",
      init_params=lambda key: {"x": jax.random.normal(key, (dim,), dtype)},
      model_fn=model_fn,
      output_loss_fn=output_loss_fn,
      sample_fn=lambda data, key, batch_size: sample_rows(data["train"], key, batch_size),
      metrics_fn=metrics_fn,
      data=data,
      likelihood="gaussian",  # ½ Σ residual²: dim × the mean Gaussian NLL of the rows
      minimum=0.0,
  )


def rosenbrock(dim: int = 2, init_noise: float = 0.0, dtype: Dtype = "float32") -> Problem:
  """f(x) = Σᵢ (1 − xᵢ)² + 100 (xᵢ₊₁ − xᵢ²)², i < dim − 1; minimum 0 at (1, …, 1).

  Residual form for Gauss-Newton: model_fn gives r = [1 − xᵢ; 10 (xᵢ₊₁ − xᵢ²)] and
  output_loss_fn = ‖r‖². Deterministic (every batch is the whole function, {"x": None}).
  The start is the classic (−1.2, 1, −1.2, …) plus `init_noise` · N(0, I) from the run's key.

  References: Rosenbrock, 1960, An automatic method for finding the greatest or least value
  of a function.
  """
  checks.check_in_range("dim", dim, 2.0)
  checks.check_positive_int("dim", dim)
  checks.check_nonnegative("init_noise", init_noise)
  start = jnp.asarray(np.where(np.arange(dim) % 2 == 0, -1.2, 1.0), dtype)

  def model_fn(params, inputs):
    del inputs
    x = params["x"]
    return jnp.concatenate([1.0 - x[:-1], 10.0 * (x[1:] - x[:-1] ** 2)])

  def output_loss_fn(outputs, batch):
    del batch
    return jnp.sum(jnp.square(outputs))

  return deterministic_problem(
      "rosenbrock",
      lambda key: {"x": start + init_noise * jax.random.normal(key, (dim,), dtype)},
      model_fn,
      output_loss_fn,
      likelihood="gaussian",  # ‖r‖² over the residuals r: 4 × their mean Gaussian NLL
      minimum=0.0,
  )
