"""Physics-informed neural networks: an MLP u_θ fitted to a PDE with an exact solution.

The loss is mean_i r(z_i)² + boundary_weight · mean_j (u_θ(b_j) − g(b_j))² over fixed collocation
points z_i inside the domain and b_j on its boundary (and initial line), where r is the PDE
residual of u_θ, computed from its input derivatives (`derivatives`: jax.hessian, i.e. forward
over reverse). That loss is a Gaussian negative log-likelihood of the residuals (observed value 0,
a variance per kind of point), so `likelihood="gaussian"`: `model_fn` returns the N = n + m
residuals of a batch (n interior, m boundary points) as one array o [N, 1] scaled to unit
variance (`scale_residuals`),
  o_i = √(2N/n) · r(z_i),   o_{n+j} = √(2N·w/m) · (u_θ(b_j) − g(b_j)),   w = boundary_weight,
and `output_loss_fn` is ½ · mean_rows ‖o − y‖² with targets y = 0 in the batch, which equals
mean r² + w · mean (u_θ − g)². Gauss-Newton (Jᵀ J / N), the true Fisher of natural gradient and
Sophia-G (labels y ∼ N(o, I)) and the loss all see the same least squares. The residuals
themselves, {"interior": r, "boundary": u_θ − g}, come from `info["residuals_fn"](params, inputs)`.
K-FAC does not apply: r depends on each layer through the network's input derivatives, not
through the layer's outputs alone (it raises; see `optim.kfac_capture`).

- `pinn_poisson`: −Δu = dπ² ∏ sin(πx_k) on [0, 1]^d, u = 0 on the boundary; exact solution
  u* = ∏ sin(πx_k).
- `pinn_burgers`: u_t + u·u_x = ν·u_xx on x ∈ [−1, 1], t ∈ [0, 1], with the exact viscous
  travelling front (Cole–Hopf) u* = c − a·tanh(a(x − x₀ − ct) / (2ν)), a = 1, c = 0.5, x₀ = −0.25,
  as initial and boundary data. The classic −sin(πx) benchmark (Raissi et al.) has no closed form
  (only a tabulated one), and the front keeps what makes Burgers hard: a layer of width ~2ν/a.

Batches: `batch_size` interior points and proportionally many boundary points, drawn with
replacement; None: all of them (full-batch training, as with L-BFGS in the PINN literature).
Metrics: `loss` on all points and `relative_l2_error` ‖u_θ − u*‖ / ‖u*‖ at `num_test` uniform
points. `info` holds `u_fn(params, points)`, `exact_fn(points)` and `residuals_fn(params, inputs)`.

References: Raissi, Perdikaris & Karniadakis, 2019, Physics-informed neural networks, J. Comput.
Phys. 378; Whitham, 1974, Linear and Nonlinear Waves, §4.4 (the Burgers travelling wave).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import checks
from optlab_jax.problems import models
from optlab_jax.problems.base import Dtype, Problem, check_batch_size, half_squared_error, sample_rows

__all__ = [
    "derivatives", "poisson_residual", "burgers_residual", "scale_residuals", "pinn_poisson", "pinn_burgers",
]

BURGERS_WAVE = {"a": 1.0, "c": 0.5, "x0": -0.25}


def derivatives(u: Callable[[jax.Array], jax.Array], z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(u(z), ∇u(z), ∇²u(z)) of a scalar function of one point z [d]."""
  return u(z), jax.grad(u)(z), jax.hessian(u)(z)


def poisson_residual(u: Callable, z: jax.Array) -> jax.Array:
  """−Δu(z) − dπ² ∏ sin(πz_k): zero for the exact solution ∏ sin(πz_k)."""
  _, _, hess = derivatives(u, z)
  return -jnp.trace(hess) - z.shape[0] * math.pi**2 * poisson_exact(z)


def poisson_exact(z: jax.Array) -> jax.Array:
  return jnp.prod(jnp.sin(math.pi * z), axis=-1)


def burgers_residual(u: Callable, z: jax.Array, nu: float) -> jax.Array:
  """u_t + u·u_x − ν·u_xx at z = (x, t)."""
  value, grad, hess = derivatives(u, z)
  return grad[1] + value * grad[0] - nu * hess[0, 0]


def burgers_exact(z: jax.Array, nu: float) -> jax.Array:
  a, c, x0 = BURGERS_WAVE["a"], BURGERS_WAVE["c"], BURGERS_WAVE["x0"]
  return c - a * jnp.tanh(a * (z[..., 0] - x0 - c * z[..., 1]) / (2.0 * nu))


def scale_residuals(residuals: dict, boundary_weight: float) -> jax.Array:
  """The residuals {"interior": r [n], "boundary": u_θ − g [m]} as one output o [n + m, 1] whose
  ½ · mean_rows o² is mean r² + boundary_weight · mean (u_θ − g)²: o = √(2N/n)·r, √(2N·w/m)·(u_θ − g)."""
  interior, boundary = residuals["interior"], residuals["boundary"]
  n, m = interior.shape[0], boundary.shape[0]
  total = n + m
  scaled = [math.sqrt(2 * total / n) * interior, math.sqrt(2 * total * boundary_weight / m) * boundary]
  return jnp.concatenate(scaled)[:, None]


def _pinn(name, residual, exact, interior, boundary, test, hidden, boundary_weight, dtype) -> Problem:
  """The problem for `residual(u, z)` with points drawn already (numpy [n, d] arrays)."""
  for width in hidden:
    checks.check_positive_int("hidden", width)
  checks.check_nonnegative("boundary_weight", boundary_weight)
  dim = interior.shape[1]
  init_params, mlp = models.functional(
      lambda rngs: models.MLP((dim, *hidden, 1), "tanh", dtype=dtype, rngs=rngs)
  )
  u_fn = lambda params, points: mlp(params, points)[..., 0]
  to = lambda a: jnp.asarray(a, dtype)
  data = {
      "train": {"interior": to(interior), "boundary": to(boundary), "g": exact(to(boundary))},
      "test": {"z": to(test), "u": exact(to(test))},
  }
  share = len(boundary) / len(interior)

  def residuals_fn(params, inputs):
    point_u = lambda z: u_fn(params, z[None])[0]
    return {
        "interior": jax.vmap(lambda z: residual(point_u, z))(inputs["interior"]),
        "boundary": u_fn(params, inputs["boundary"]) - inputs["g"],
    }

  model_fn = lambda params, inputs: scale_residuals(residuals_fn(params, inputs), boundary_weight)

  def with_targets(inputs):
    count = inputs["interior"].shape[0] + inputs["boundary"].shape[0]
    return {"x": inputs, "y": jnp.zeros((count, 1), inputs["g"].dtype)}

  def sample_fn(data, key, batch_size):
    check_batch_size(batch_size)
    train = data["train"]
    if batch_size is None:
      return with_targets(train)
    inside_key, edge_key = jax.random.split(key)
    edges = sample_rows({"boundary": train["boundary"], "g": train["g"]}, edge_key, max(1, round(share * batch_size)))
    return with_targets({"interior": sample_rows(train["interior"], inside_key, batch_size), **edges})

  def metrics_fn(data, params):
    error = u_fn(params, data["test"]["z"]) - data["test"]["u"]
    full = with_targets(data["train"])
    return {
        "loss": half_squared_error(model_fn(params, full["x"]), full),
        "relative_l2_error": jnp.linalg.norm(error) / jnp.linalg.norm(data["test"]["u"]),
    }

  return Problem(
      name=name, init_params=init_params, model_fn=model_fn, output_loss_fn=half_squared_error,
      sample_fn=sample_fn, metrics_fn=metrics_fn, data=data, likelihood="gaussian", minimum=0.0,
      info={"u_fn": u_fn, "exact_fn": exact, "residuals_fn": residuals_fn},
  )


def _counts(num_interior, num_boundary, num_test):
  for name, value in (("num_interior", num_interior), ("num_boundary", num_boundary), ("num_test", num_test)):
    checks.check_positive_int(name, value)


def pinn_poisson(
    dim: int = 2,
    hidden: tuple[int, ...] = (32, 32),
    num_interior: int = 1000,
    num_boundary: int = 200,
    num_test: int = 2000,
    boundary_weight: float = 1.0,
    data_seed: int = 0,
    dtype: Dtype = "float32",
) -> Problem:
  """A PINN for −Δu = dπ² ∏ sin(πx_k) on [0, 1]^dim, u = 0 on the boundary (u* = ∏ sin(πx_k)).

  Points are uniform, from `data_seed`; a boundary point is a uniform point with one random
  coordinate set to 0 or 1.
  """
  checks.check_positive_int("dim", dim)
  _counts(num_interior, num_boundary, num_test)
  rng = np.random.default_rng(data_seed)
  interior = rng.uniform(size=(num_interior, dim))
  boundary = rng.uniform(size=(num_boundary, dim))
  boundary[np.arange(num_boundary), rng.integers(dim, size=num_boundary)] = rng.integers(2, size=num_boundary)
  test = rng.uniform(size=(num_test, dim))
  return _pinn("pinn_poisson", poisson_residual, poisson_exact, interior, boundary, test, hidden,
               boundary_weight, dtype)


def pinn_burgers(
    nu: float = 0.05,
    hidden: tuple[int, ...] = (32, 32, 32),
    num_interior: int = 2000,
    num_boundary: int = 300,
    num_test: int = 2000,
    boundary_weight: float = 1.0,
    data_seed: int = 0,
    dtype: Dtype = "float32",
) -> Problem:
  """A PINN for viscous Burgers u_t + u·u_x = ν·u_xx, with an exact travelling front as initial and
  boundary data.

  Points (x, t) are uniform on [−1, 1] × [0, 1]; boundary points split evenly between t = 0 and
  x = ±1.
  """
  checks.check_positive("nu", nu)
  _counts(num_interior, num_boundary, num_test)
  rng = np.random.default_rng(data_seed)
  uniform = lambda n: np.stack([rng.uniform(-1.0, 1.0, n), rng.uniform(0.0, 1.0, n)], axis=1)
  interior, boundary, test = uniform(num_interior), uniform(num_boundary), uniform(num_test)
  initial = np.arange(num_boundary) % 2 == 0
  boundary[initial, 1] = 0.0
  boundary[~initial, 0] = rng.choice([-1.0, 1.0], size=int((~initial).sum()))
  residual = lambda u, z: burgers_residual(u, z, nu)
  exact = lambda z: burgers_exact(z, nu)
  return _pinn("pinn_burgers", residual, exact, interior, boundary, test, hidden, boundary_weight, dtype)
