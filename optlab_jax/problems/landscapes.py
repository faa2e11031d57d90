"""One- and two-dimensional landscapes of the optimization challenges: saddles, local minima,
plateaus and vanishing gradients.

Each problem's params are {"x": [dim]}, starting at `start` + `init_noise` · N(0, I) (from the
run's key). Every batch is the whole function ({"x": None}), so any noise comes from the start.
`info["critical_points"]` lists the known critical points as dicts with `x`, `kind` and
`hessian_signature` = (positive, negative, zero eigenvalues of the Hessian there); a degenerate
critical point (a zero eigenvalue) is one a second-order test cannot classify. The eval metrics
are the loss and the position (`x`, and `y` for the saddle), so a run's record says where it
ended. Several of these functions are unbounded below (x³, x² − y², tanh): a run that escapes
towards −∞ in float32 ends as `diverged`.

References: Zhang et al., Dive into Deep Learning, §12.1 (§11.1 in the Chinese edition),
Optimization and deep learning (x³, x² − y², x·cos(πx), tanh); Sun, 2019, Optimization for deep
learning: theory and algorithms, §4.1 (arXiv:1912.08957) (the plateau of (wᴸ − 1)²).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from optlab_jax import checks
from optlab_jax.problems.base import Dtype, Problem, deterministic_problem

__all__ = ["cubic", "saddle", "xcos", "plateau", "tanh_vanishing"]

# Roots of d/dx x·cos(πx) = cos(πx) − πx·sin(πx), i.e. πx·tan(πx) = 1, on the chapter's [−1, 2]
# (scipy.optimize.brentq, xtol 1e-15); the function is odd, so they come in ± pairs.
XCOS_ROOT_1 = 0.27385268680085095
XCOS_ROOT_2 = 1.0904082219467213


def _point(x: Sequence[float], kind: str, signature: tuple[int, int, int]) -> dict:
  return {"x": list(x), "kind": kind, "hessian_signature": signature}


def _landscape(
    name: str,
    fn: Callable[[jax.Array], jax.Array],
    start: Sequence[float],
    init_noise: float,
    dtype: Dtype,
    critical_points: list[dict],
    minimum: float | None = None,
    **info,
) -> Problem:
  """The problem of minimising fn({"x"}) from `start`; `info` gets the critical points and the rest."""
  checks.check_nonnegative("init_noise", init_noise)
  start = jnp.asarray(start, dtype)

  def model_fn(params, inputs):
    del inputs
    return fn(params["x"])[None]

  def output_loss_fn(outputs, batch):
    del batch
    return jnp.sum(outputs)

  problem = deterministic_problem(
      name,
      lambda key: {"x": start + init_noise * jax.random.normal(key, start.shape, dtype)},
      model_fn,
      output_loss_fn,
      minimum=minimum,
      info={"critical_points": critical_points, **info},
  )
  coordinates = ("x", "y")[: start.shape[0]]

  def metrics_fn(data, params):
    return {**problem.metrics_fn(data, params), **{c: params["x"][i] for i, c in enumerate(coordinates)}}

  return dataclasses.replace(problem, metrics_fn=metrics_fn)


def cubic(start: float = 1.0, init_noise: float = 0.0, dtype: Dtype = "float32") -> Problem:
  """f(x) = x³: f′(0) = f″(0) = 0, a degenerate saddle. Gradient descent from x > 0 creeps towards
  it (x ← x − 3η·x², so x ~ 1/(3ηt)) and stops there; from x < 0 it runs off to −∞."""
  return _landscape("cubic", lambda x: jnp.sum(x**3), [start], init_noise, dtype,
                    [_point([0.0], "degenerate saddle", (0, 0, 1))])


def saddle(start: tuple[float, float] = (1.0, 1e-3), init_noise: float = 0.0, dtype: Dtype = "float32") -> Problem:
  """f(x, y) = x² − y²: a strict saddle at the origin (a minimum along x, a maximum along y; Hessian
  diag(2, −2)). From (x₀, y₀) gradient descent gives x = (1 − 2η)ᵗ x₀, y = (1 + 2η)ᵗ y₀: it
  approaches the saddle and leaves along y at a rate set by y₀ (exactly on y = 0, never)."""
  if len(start) != 2:
    raise ValueError(f"start={start!r} has {len(start)} entries; expected 2 (x, y)")
  return _landscape("saddle", lambda z: z[0] ** 2 - z[1] ** 2, start, init_noise, dtype,
                    [_point([0.0, 0.0], "saddle", (1, 1, 0))])


def xcos(start: float = -0.5, init_noise: float = 0.0, dtype: Dtype = "float32") -> Problem:
  """f(x) = x·cos(πx): on [−1, 2] a local minimum at x ≈ −0.2739 (f ≈ −0.1786), a local maximum
  at 0.2739 and the global minimum of the interval at x ≈ 1.0904 (f ≈ −1.0467). From the default
  start gradient descent settles in the local minimum. (Off the interval f is unbounded below.)"""
  f = lambda x: x * jnp.cos(math.pi * x)
  points = [
      _point([-XCOS_ROOT_2], "local maximum", (0, 1, 0)),
      _point([-XCOS_ROOT_1], "local minimum", (1, 0, 0)),
      _point([XCOS_ROOT_1], "local maximum", (0, 1, 0)),
      _point([XCOS_ROOT_2], "global minimum on [-1, 2]", (1, 0, 0)),
  ]
  return _landscape("xcos", lambda x: jnp.sum(f(x)), [start], init_noise, dtype, points,
                    interval=[-1.0, 2.0], global_minimum=XCOS_ROOT_2 * math.cos(math.pi * XCOS_ROOT_2))


def plateau(power: int = 7, start: float = -1.0, init_noise: float = 0.0, dtype: Dtype = "float32") -> Problem:
  """f(w) = (wᴸ − 1)², L = `power`: the scalar deep linear chain w·w·…·w fitted to 1. Its gradient
  2L·wᴸ⁻¹(wᴸ − 1) is nearly 0 on a wide plateau around w = 0 and steep beyond |w| = 1; the
  minimum is f(1) = 0 (and f(−1) for even L). From w = −1 gradient descent must cross the
  plateau and takes a long time; from near 1 it is quick."""
  checks.check_in_range("power", power, 2.0)
  checks.check_positive_int("power", power)
  points = [_point([1.0], "global minimum", (1, 0, 0))]
  if power == 2:  # f″(0) = −4
    points.append(_point([0.0], "local maximum", (0, 1, 0)))
  else:
    points.append(_point([0.0], "degenerate saddle" if power % 2 else "degenerate local maximum", (0, 0, 1)))
  if power % 2 == 0:
    points.append(_point([-1.0], "global minimum", (1, 0, 0)))
  return _landscape("plateau", lambda w: jnp.sum((w**power - 1.0) ** 2), [start], init_noise, dtype,
                    points, minimum=0.0)


def tanh_vanishing(start: float = 4.0, init_noise: float = 0.0, dtype: Dtype = "float32") -> Problem:
  """f(x) = tanh(x): no critical points (the infimum −1 is approached as x → −∞), but the gradient
  1 − tanh²(x) vanishes for large |x|: f′(4) ≈ 0.0013, so gradient descent from 4 barely moves."""
  return _landscape("tanh_vanishing", lambda x: jnp.sum(jnp.tanh(x)), [start], init_noise, dtype, [],
                    infimum=-1.0)
