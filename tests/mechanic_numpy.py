"""Mechanic's Algorithm 1 (Cutkosky, Defazio & Mehta, 2023, arXiv:2306.00144) in numpy, over an Adam base.

As the paper writes it, with β_k = 1 − 10^(−k) (k = 1..n), x_ref = x_1, Δ_1 = 0, s_1 = m = v = r = 0:
  g = ∇f(x_t);  u = BASE(g);  h = ⟨Δ_t, g + λ (Σ s_t) ‖g‖ x_t / ‖x_t‖⟩;  Δ_{t+1} = Δ_t + u
  m = max(β m, |h|);  v = β² v + h²;  r = max(0, β r − s_t h);  W = s_init m / n + r
  s_{t+1} = W / (√v + ε);  x_{t+1} = x_ref + (Σ s_{t+1}) Δ_{t+1}
(|h| in m as in the authors' PyTorch code). `authors_jax=True` makes the changes of the authors' JAX
code, `optax.contrib.mechanize`, which ran the paper's experiments: s starts at s_init, Δ_t is read
back from the iterate as (x_t − x_ref) / (Σ s_t + ε), h enters r clipped to ±m_{t−1}, and m and
‖x‖ get + ε.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.flatten_util import ravel_pytree


def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Callable[[np.ndarray], np.ndarray]:
  """Adam's update u (to be added to x) as a stateful function of the gradient."""
  state = {"t": 0, "m": 0.0, "v": 0.0}

  def update(g):
    state["t"] += 1
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g
    m_hat, v_hat = state["m"] / (1 - b1 ** state["t"]), state["v"] / (1 - b2 ** state["t"])
    return -lr * m_hat / (np.sqrt(v_hat) + eps)

  return update


def mechanic(grad: Callable, x: np.ndarray, base: Callable, steps: int, *, weight_decay: float = 0.01,
             s_init: float = 1e-6, eps: float = 1e-8, num_betas: int = 6, authors_jax: bool = False) -> np.ndarray:
  """x after `steps` steps of Algorithm 1 from x, `base` giving u from g (see the module docstring)."""
  beta = 1.0 - 0.1 ** np.arange(1, num_betas + 1)
  tiny = eps if authors_jax else 0.0
  x_ref, delta = x.copy(), np.zeros_like(x)
  m, v, r = np.zeros(num_betas), np.zeros(num_betas), np.zeros(num_betas)
  s = np.full(num_betas, s_init if authors_jax else 0.0)
  for _ in range(steps):
    g = grad(x)
    u = base(g)
    if authors_jax:
      delta = (x - x_ref) / (s.sum() + eps)
    h = delta @ (g + weight_decay * s.sum() * np.linalg.norm(g) * x / (np.linalg.norm(x) + tiny))
    delta = delta + u
    h_r = np.clip(h, -m, m) if authors_jax else h
    m = np.maximum(beta * m, abs(h) + tiny)
    v = beta**2 * v + h * h
    r = np.maximum(0.0, beta * r - s * h_r)
    s = (s_init / num_betas * m + r) / (np.sqrt(v) + eps)
    x = x_ref + s.sum() * delta
  return x


def flat_problem(params, obj_fn) -> tuple[np.ndarray, Callable, Callable]:
  """(x_0, ∇f on flat numpy vectors, f on them) of a pytree problem, the gradient by jax."""
  flat, unravel = ravel_pytree(params)
  grad = jax.jit(jax.grad(lambda v: obj_fn(unravel(v))))
  value = jax.jit(lambda v: obj_fn(unravel(v)))
  return np.asarray(flat), lambda x: np.asarray(grad(x)), lambda x: float(value(x))


def gap_as_printed(params, obj_fn, minimum: float, lr: float, steps: int) -> float:
  """f − f* after `steps` steps of Algorithm 1 as printed over Adam(lr), defaults elsewhere."""
  x0, grad, value = flat_problem(params, obj_fn)
  return value(mechanic(grad, x0, adam(lr), steps)) - minimum
