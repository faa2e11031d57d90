"""Stability edges: the sharpness past which an optimizer at its learning rate diverges.

`stability_edge` bounds λ_max(H) (SGD, with heavy-ball or Nesterov momentum);
`preconditioned_stability_edge` bounds λ_max(P⁻¹H) for methods with a diagonal preconditioner P.
The monitor's `eos_ratio` / `preconditioned_eos_ratio` divide by them, and the λ_max figures draw them.

References: Cohen et al., 2021, Gradient descent on neural networks typically occurs at the edge of
stability (arXiv:2103.00065); Cohen et al., 2022, Adaptive gradient methods at the edge of stability
(arXiv:2207.14484).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, NamedTuple

from optlab_jax import optim

__all__ = ["RULES", "constant_lr", "edge", "hyperparameters", "preconditioned_stability_edge", "stability_edge"]


class Rule(NamedTuple):
  """How an optimizer's steps on a quadratic reduce to a momentum method (see `edge`)."""
  preconditioned: bool       # the edge bounds λ_max(P⁻¹H) (frozen diagonal P), not λ_max(H)
  momentum: str | None       # the hyperparameter holding β; None for no momentum
  ema: bool                  # m ← βm + (1−β)g (Adam's first moment) rather than m ← βm + g
  nesterov: bool = False     # always Nesterov (nadam); else the `nesterov` hyperparameter decides


RULES = {
    "sgd": Rule(False, "momentum", False),
    "rmsprop": Rule(True, "momentum", False),
    "adagrad": Rule(True, None, False),
    "nadam": Rule(True, "b1", True, nesterov=True),
    **{name: Rule(True, "b1", True) for name in (
        "adam", "adamw", "adam_l2", "amsgrad", "lazy_adam", "adahessian", "sophia_h", "sophia_g")},
}


def edge(optimizer: dict, preconditioned: bool, learning_rate: Any = None) -> Any:
  """The edge of `optimizer` (name + hyperparameters; missing ones take the factory's defaults).

  On the quadratic ½λx², heavy-ball momentum (x ← x − η m, m ← βm + g) has the characteristic
  polynomial z² − (1 + β − ηλ) z + β, whose root leaves the unit disc through −1 at
  ηλ = 2 + 2β. Nesterov's form as optax traces it (x ← x − η (g + βm)) has
  z² − (1 + β)(1 − ηλ) z + β(1 − ηλ), unstable past ηλ = (2 + 2β)/(1 + 2β) (derived here; it
  agrees with simulation, tests/test_monitor.py). An EMA first moment, (1 − β)g in place of g,
  is heavy ball at learning rate η(1 − β). Coupled weight decay (SGD's) adds wd to every
  curvature, so the edge on the loss' λ_max is lowered by wd; decoupled or L2 decay of the
  adaptive methods is not modelled (it moves their edge by O(wd)). Arithmetic only, so traced
  (injected) hyperparameters work. None where no rule applies.
  """
  rule = RULES.get(optimizer.get("name"))
  if rule is None or rule.preconditioned != preconditioned:
    return None
  signature = inspect.signature(optim.get(optimizer["name"])).parameters
  hp = {k: p.default for k, p in signature.items() if p.default is not inspect.Parameter.empty}
  hp.update(optimizer)
  lr = hp.get("learning_rate") if learning_rate is None else learning_rate
  beta = hp.get(rule.momentum) if rule.momentum else None
  beta = 0.0 if beta is None else beta
  nesterov = rule.nesterov or bool(hp.get("nesterov", False))
  step = lr * (1 - beta) if rule.ema else lr
  value = (2 + 2 * beta) / (step * (1 + 2 * beta) if nesterov else step)
  return value if preconditioned else value - hp.get("weight_decay", 0.0)


def hyperparameters(optimizer: dict) -> dict:
  """An optimizer config's hyperparameters: everything but its name and learning rate."""
  return {k: v for k, v in optimizer.items() if k not in ("name", "learning_rate")}


def constant_lr(optimizer: dict) -> float | None:
  """The config's learning rate if it is a positive finite number (not a schedule), else None."""
  lr = optimizer.get("learning_rate")
  is_number = isinstance(lr, numbers.Real) and not isinstance(lr, bool)
  return float(lr) if is_number and 0 < lr < float("inf") else None


def stability_edge(optimizer: dict) -> float | None:
  """The sharpness λ_max(H) past which `optimizer` at its constant learning rate η diverges.

  `optimizer` is a resolved optimizer config, {"name": ..., "learning_rate": ..., **hyperparams}.
  SGD: 2/η for gradient descent, (2 + 2β)/η with heavy-ball momentum β, (2 + 2β)/(η(1 + 2β))
  with Nesterov's, each minus a coupled weight decay (derivation in `edge`). None for a
  schedule, and for adaptive methods, whose edge bounds the preconditioned sharpness
  (`preconditioned_stability_edge`), or methods with no such edge.

  References: Cohen et al., 2021, Gradient descent on neural networks typically occurs at the
  edge of stability (arXiv:2103.00065), section 2 and appendix B.
  """
  if optimizer.get("name") != "sgd" or constant_lr(optimizer) is None:
    return None
  return float(edge(optimizer, False, constant_lr(optimizer)))


def preconditioned_stability_edge(optimizer: dict) -> float | None:
  """The edge on the preconditioned sharpness λ_max(P⁻¹H), P the diagonal preconditioner.

  With P frozen, x ← x − η P⁻¹ m is momentum descent on P^{-1/2} H P^{-1/2}: (2 + 2β1)/((1 − β1) η)
  for the Adam family with EMA momentum β1 (adam, adamw, adam_l2, amsgrad, lazy_adam, adahessian,
  and Sophia in its unclipped regime), (2 + 2β1)/((1 − β1)(1 + 2β1) η) for nadam, 2/η for
  adagrad and rmsprop (with momentum β: (2 + 2β)/η, or Nesterov's form, as for SGD). None for a
  schedule and for methods without such a rule (radam's rectification, lamb, novograd, lars, …).

  References: Cohen et al., 2022, Adaptive gradient methods at the edge of stability
  (arXiv:2207.14484), section 3.
  """
  lr = constant_lr(optimizer)
  value = None if lr is None else edge(optimizer, True, lr)
  return None if value is None else float(value)
