"""Where an iterative estimator's loop runs: in XLA control flow, or in Python over jitted steps.

`lax.scan`/`while_loop` keeps the whole estimator in one program (jittable, vmappable, best
for dense models and on accelerators). On XLA CPU, a convolution inside control flow runs
40–50× slower than the same convolution jitted plainly (jax-ml/jax#12868), so for conv
models on CPU the loop must instead run in Python, calling a jitted matvec and jitted small
steps; both paths run the same step functions and give the same numbers.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.tree_util import Partial

from optlab_jax import checks

__all__ = ["LOOPS", "has_primitive", "is_traced", "resolve_loop", "as_partial", "apply"]

LOOPS = ("auto", "scan", "python")
_CONV = "conv_general_dilated"


def _jaxpr_has(jaxpr: Any, name: str) -> bool:
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == name:
      return True
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns") and _jaxpr_has(inner, name):
          return True
  return False


def has_primitive(fn: Callable, name: str, *args: Any) -> bool:
  """Whether tracing `fn(*args)` emits primitive `name` anywhere (nested jaxprs included)."""
  return _jaxpr_has(jax.make_jaxpr(fn)(*args).jaxpr, name)


def is_traced(*trees: Any) -> bool:
  """Whether any leaf is a tracer (we are inside jit, vmap, grad, ...)."""
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def _platforms(tree: Any) -> set[str]:
  found = set()
  for x in jax.tree.leaves(tree):
    devices = getattr(x, "devices", None)
    found |= {d.platform for d in devices()} if callable(devices) else {jax.default_backend()}
  return found


def resolve_loop(loop: str, fn: Callable, *args: Any) -> str:
  """Chooses "scan" or "python" for a loop over `fn(*args)`: the one rule of the project.

  "auto" picks "python" only when it can and must: the arguments are not traced, they live
  on CPU, and `fn(*args)`'s jaxpr contains a convolution; otherwise "scan". The training
  loop applies it to the loss, the estimators to their matvec. Under a trace only "scan" is
  possible, so an explicit "python" there raises `ValueError`.
  """
  checks.check_choice("loop", loop, LOOPS)
  traced = is_traced(args, fn)
  if loop == "python" and traced:
    raise ValueError("loop='python' drives a host loop and cannot run under jit/vmap; use loop='scan'")
  if loop != "auto":
    return loop
  if traced or _platforms(args) != {"cpu"}:
    return "scan"
  return "python" if has_primitive(fn, _CONV, *args) else "scan"


def as_partial(fn: Callable) -> Partial:
  """`fn` as a `Partial`, so that jitted functions can take it as an argument (its arrays traced)."""
  return fn if isinstance(fn, Partial) else Partial(fn)


@jax.jit
def apply(matvec: Partial, v: Any) -> Any:
  """The jitted matvec of the Python loop: one compiled program per matvec, no control flow."""
  return matvec(v)
