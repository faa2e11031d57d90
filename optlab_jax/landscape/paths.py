"""Paths between two solutions: linear interpolation and its monotonicity, and mode connectivity.

Interpolation: θ(α) = (1 − α) θ_a + α θ_b, e.g. from the initialisation (α = 0) to the trained
solution (α = 1). Monotonic linear interpolation (MLI) holds when the loss never rises along it;
the statistic is the largest bump Δ = max_{i<j} [L(α_j) − L(α_i)] ≥ 0 (0 exactly when the loss is
non-increasing) — Lucas et al.'s Δ, the height the loss climbs above its lowest earlier value.

Mode connectivity: the quadratic Bézier curve φ_θ(t) = (1 − t)² θ_a + 2t(1 − t) θ + t² θ_b with the
endpoints fixed and its control point θ (started at the midpoint) trained to minimise
E_{t ~ U(0, 1)} L(φ_θ(t)) with any registry optimizer; each step averages `points_per_step` draws
of t. The barrier of a path is max_t [L(path(t)) − ((1 − t) L(θ_a) + t L(θ_b))] (the rise above the
endpoints' line, Frankle et al.'s definition), reported for the line and for the trained curve.
φ_θ(t) = θ_a + 2t(1 − t)(θ − θ_a) + t²(θ_b − θ_a), so both paths are `grid.evaluate` calls.

References: Goodfellow, Vinyals & Saxe, 2015, Qualitatively characterizing neural network
optimization problems (arXiv:1412.6544); Lucas, Bae, Zhang, Fort, Zemel & Grosse, 2021, Analyzing
monotonic linear interpolation in neural network loss landscapes (arXiv:2104.11044); Garipov,
Izmailov, Podoprikhin, Vetrov & Wilson, 2018, Loss surfaces, mode connectivity, and fast ensembling
of DNNs (arXiv:1802.10026); Frankle, Dziugaite, Roy & Carbin, 2020, Linear mode connectivity and
the lottery ticket hypothesis (arXiv:1912.05671).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab_jax import checks, optim
from optlab_jax.landscape.grid import evaluate, shift

__all__ = ["Connection", "Interpolation", "barrier", "connect", "interpolate", "max_bump"]


class Interpolation(NamedTuple):
  """Output of `interpolate`."""
  alphas: jax.Array        # (N,) ascending coefficients: θ(α) = (1 − α) θ_a + α θ_b
  values: Any              # fn's output at each α (leading axis N)
  max_bump: jax.Array      # Δ = max_{i<j} L(α_j) − L(α_i) of the monitored value, ≥ 0
  is_monotonic: jax.Array  # Δ ≤ tol: the monitored value never rises (the MLI property)


class Connection(NamedTuple):
  """Output of `connect`."""
  ts: jax.Array             # (N,) points t of [0, 1] both paths are evaluated at
  line: jax.Array           # (N,) loss along (1 − t) θ_a + t θ_b
  curve: jax.Array          # (N,) loss along the trained Bézier curve φ_θ(t)
  control: Any              # the trained control point θ, shaped like params
  line_barrier: jax.Array   # `barrier(ts, line)`
  curve_barrier: jax.Array  # `barrier(ts, curve)`
  train_loss: jax.Array     # (steps,) the sampled curve objective at each training step


def max_bump(values: jax.Array) -> jax.Array:
  """Δ = max_{i<j} values[j] − values[i] (0 for a non-increasing sequence)."""
  values = jnp.asarray(values)
  return jnp.max(values - jax.lax.cummin(values))


def barrier(ts: jax.Array, values: jax.Array) -> jax.Array:
  """max_t [values(t) − ((1 − t) values(0) + t values(1))], `ts` ascending from 0 to 1."""
  ts, values = jnp.asarray(ts), jnp.asarray(values)
  return jnp.max(values - ((1 - ts) * values[0] + ts * values[-1]))


def _ascending(name: str, ts: Any) -> np.ndarray:
  ts = np.asarray(ts, np.float64)
  if ts.ndim != 1 or len(ts) < 2 or np.any(np.diff(ts) <= 0):
    raise ValueError(f"{name} must be a strictly ascending 1-D array of at least 2 values, got {ts!r}")
  return ts


def _monitored(values: Any, key: str) -> jax.Array:
  if isinstance(values, dict):
    if key not in values:
      raise ValueError(f"key={key!r} is not one of fn's outputs {sorted(values)}")
    return values[key]
  return values


def interpolate(fn: Callable[..., Any], params_a: Any, params_b: Any, alphas: Any = None, *, key: str = "loss",
                tol: float = 0.0, **kwargs: Any) -> Interpolation:
  """fn along the line from `params_a` (α = 0) to `params_b` (α = 1), with its MLI statistics.

  `alphas` (ascending; default 51 points of [0, 1]) may extend past [0, 1]. If fn returns a dict,
  the statistics are of `values[key]`. Keyword arguments (`args`, `chunk_size`, `loop`) as in
  `grid.evaluate`: all the points are one compiled program.
  """
  checks.check_nonnegative("tol", tol)
  alphas = _ascending("alphas", np.linspace(0.0, 1.0, 51) if alphas is None else alphas)
  direction = jax.tree.map(jnp.subtract, params_b, params_a)
  values = evaluate(fn, params_a, (direction,), alphas[:, None], **kwargs)
  bump = max_bump(_monitored(values, key))
  return Interpolation(jnp.asarray(alphas), values, bump, bump <= tol)


def _bezier_directions(params_a, control, params_b):
  """(θ − θ_a, θ_b − θ_a): φ_θ(t) = θ_a + 2t(1 − t)(θ − θ_a) + t²(θ_b − θ_a)."""
  return jax.tree.map(jnp.subtract, control, params_a), jax.tree.map(jnp.subtract, params_b, params_a)


def _bezier_coords(t):
  return jnp.stack([2 * t * (1 - t), t * t], axis=-1)


def connect(
    loss_fn: Callable[..., jax.Array],
    params_a: Any,
    params_b: Any,
    *,
    optimizer: str = "adam",
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    steps: int = 500,
    points_per_step: int = 4,
    num_points: int = 61,
    seed: int = 0,
    args: tuple = (),
    chunk_size: int | str | None = "auto",
    optimizer_options: dict[str, Any] | None = None,
) -> Connection:
  """Trains a quadratic Bézier curve between two minima (Garipov et al., 2018); the barriers.

  `loss_fn(params, *args)` is the (full-batch) objective; `optimizer` a registry name
  (`optlab_jax.optim.names()`) built as `optim.get(optimizer)(learning_rate, **optimizer_options)`
  and given `obj_fn=` in `update` (the objective at this step's draws of t), so curvature
  optimizers work too. The training is one `lax.scan`; `num_points` points of [0, 1] evaluate both
  paths (`chunk_size` as in `grid.evaluate`).
  """
  checks.check_positive_int("steps", steps)
  checks.check_positive_int("points_per_step", points_per_step)
  checks.check_in_range("num_points", num_points, 3.0)
  checks.check_positive_int("num_points", num_points)
  checks.check_learning_rate(learning_rate)
  tx = optax.with_extra_args_support(optim.get(optimizer)(learning_rate=learning_rate, **(optimizer_options or {})))
  args = tuple(args)
  dtype = jnp.result_type(*jax.tree.leaves(params_a))

  def objective(control, t):
    directions = _bezier_directions(params_a, control, params_b)
    return jnp.mean(jax.vmap(lambda c: loss_fn(shift(params_a, directions, c), *args))(_bezier_coords(t)))

  @jax.jit
  def train(control, key):
    def step(carry, step_key):
      control, state = carry
      t = jax.random.uniform(step_key, (points_per_step,), dtype)
      obj_fn = lambda c: objective(c, t)
      loss, grads = jax.value_and_grad(obj_fn)(control)
      updates, state = tx.update(grads, state, control, value=loss, grad=grads, obj_fn=obj_fn, value_fn=obj_fn)
      return (optax.apply_updates(control, updates), state), loss
    (control, _), losses = jax.lax.scan(step, (control, tx.init(control)), jax.random.split(key, steps))
    return control, losses

  midpoint = jax.tree.map(lambda a, b: (a + b) / 2, params_a, params_b)
  control, losses = train(midpoint, jax.random.key(seed))
  ts = jnp.linspace(0.0, 1.0, num_points, dtype=dtype)
  line = evaluate(loss_fn, params_a, (jax.tree.map(jnp.subtract, params_b, params_a),), ts[:, None],
                  args=args, chunk_size=chunk_size)
  curve = evaluate(loss_fn, params_a, _bezier_directions(params_a, control, params_b), _bezier_coords(ts),
                   args=args, chunk_size=chunk_size)
  return Connection(ts, line, curve, control, barrier(ts, line), barrier(ts, curve), losses)
