"""The diagonal preconditioner P of an adaptive optimizer, read from its own state.

An adaptive method steps p ← p − lr · P⁻¹ m (m a momentum of the gradient, P a positive
diagonal). Its edge of stability bounds the preconditioned sharpness λ_max(P⁻¹H) = λ_max of
P^{-1/2} H P^{-1/2} (`monitor.preconditioned_stability_edge`), which the monitor measures. P is the
optimizer's own business, so each optimizer module that has one registers, for its registry
names, the state type holding its statistics and a function `(state, hyperparams) -> P`:

    @register_preconditioner("adam", "nadam", state=optax.ScaleByAdamState)
    def _adam_preconditioner(state, hp):
      ...

`preconditioner_fn(name, **hyperparams)` returns `opt_state -> P` for an optimizer's whole state
(the node is found inside chains, `inject_hyperparams`, `MultiSteps`, …). Hyperparameters come
from `optax.inject_hyperparams` state where present, else the arguments, else the factory's
defaults. An optimizer that registers none (SGD, LAMB's layer-wise trust ratio, NovoGrad's
per-layer second moment, LARS, RAdam's rectified step, the curvature-matrix methods) has no
diagonal preconditioner in this sense, and asking for one raises a `ValueError`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax

from optlab_jax.optim import registry

__all__ = ["injected_hyperparams", "names", "preconditioner_fn", "register_preconditioner"]

PreconditionerRule = Callable[[Any, dict], Any]

_RULES: dict[str, tuple[tuple[type, ...], PreconditionerRule]] = {}


def register_preconditioner(*names: str, state: type | tuple[type, ...]):
  """Decorator: `fn(state_node, hyperparams) -> P` for the optimizers `names`, whose state holds a
  node of type `state` (one of several types, for an optimizer whose state type varies)."""
  types = state if isinstance(state, tuple) else (state,)

  def wrap(fn: PreconditionerRule) -> PreconditionerRule:
    for name in names:
      _RULES[name] = (types, fn)
    return fn

  return wrap


def names() -> list[str]:
  """Sorted registry names of the optimizers that expose a diagonal preconditioner."""
  return sorted(_RULES)


def injected_hyperparams(opt_state: Any) -> dict:
  """The hyperparams dict of the outermost `optax.inject_hyperparams` state, or {}."""
  for node in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "hyperparams")):
    if hasattr(node, "hyperparams"):
      return dict(node.hyperparams)
  return {}


def preconditioner_fn(name: str, **hyperparams: Any) -> Callable[[Any], Any]:
  """`opt_state -> P` (a tree like the params) for the registry optimizer `name`.

  Raises `ValueError` at once when `name` has no diagonal preconditioner.
  """
  if name not in _RULES:
    raise ValueError(
        f"optimizer {name!r} has no diagonal preconditioner, so preconditioned_lambda_max is not "
        f"defined for it; optimizers that have one: {', '.join(names())}"
    )
  types, rule = _RULES[name]
  signature = inspect.signature(registry.get(name)).parameters
  defaults = {k: p.default for k, p in signature.items() if p.default is not inspect.Parameter.empty}

  def preconditioner(opt_state: Any) -> Any:
    is_node = lambda x: isinstance(x, types)
    nodes = [x for x in jax.tree.leaves(opt_state, is_leaf=is_node) if is_node(x)]
    if not nodes:
      raise ValueError(f"no {' or '.join(t.__name__ for t in types)} in this optimizer state; "
                       f"is it the state of {name!r}?")
    return rule(nodes[0], {**defaults, **hyperparams, **injected_hyperparams(opt_state)})

  return preconditioner
