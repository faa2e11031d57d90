"""Where loops and branches run: in XLA control flow, or outside it where a convolution would crawl.

`lax.scan`/`while_loop` keeps the whole estimator in one program (jittable, vmappable, best
for dense models and on accelerators). On XLA CPU, a convolution inside control flow runs
40–50× slower than the same convolution jitted plainly (jax-ml/jax#12868: inside a branch XLA
keeps the kernel- and input-gradient convolutions in layouts that take a slow generic path),
so for conv models on CPU a loop runs in Python instead, calling a jitted matvec and jitted
small steps (`resolve_loop`), and a branch that must stay inside a jitted program (an
optimizer's every-k-steps refresh) runs as a host callback into its own plainly jitted
program (`cond`). Both paths run the same functions and give the same numbers.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax.tree_util import Partial

from optlab_jax import checks

__all__ = ["LOOPS", "apply", "as_partial", "cond", "consume_once", "has_primitive", "is_traced", "resolve_loop"]

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


def cond(pred: Any, true_fn: Callable, false_fn: Callable, *operands: Any) -> Any:
  """`lax.cond(pred, true_fn, false_fn, *operands)`, without the CPU convolution cliff.

  A branch whose computation contains a convolution runs, on CPU only, as a host callback
  into its own plainly jitted program (`lax.platform_dependent`): compiled outside control
  flow, its convolutions take XLA CPU's fast layout, and only the branch taken runs. Every
  other branch, and every branch on GPU/TPU, is `lax.cond`'s own. The numbers are the same.
  """
  def branch(fn):
    if not has_primitive(fn, _CONV, *operands):
      return fn
    return lambda *ops: jax.lax.platform_dependent(*ops, cpu=functools.partial(_host_call, fn), default=fn)
  return jax.lax.cond(pred, branch(true_fn), branch(false_fn), *operands)


def consume_once(counter: jax.Array, fn: Callable, *operands: Any) -> Any:
  """`fn(*operands)` with the operands computed once into memory before `fn` reads them, on CPU.

  XLA CPU fuses a cheap producer into each of its consumers, so when `fn` makes several passes
  over a matvec's output, the transposes that bring the output's leaves back to their layout run
  in every pass, strided. Behind a conditional boundary the operands are materialised once. Both
  branches are `fn`, so the predicate (`counter >= 0`, the loop's counter: not a constant XLA
  could fold, nor batched by vmap, which would run both branches) only has to exist. Other
  platforms call `fn` directly.
  """
  behind_branch = lambda *ops: jax.lax.cond(counter >= 0, fn, fn, *ops)
  return jax.lax.platform_dependent(*operands, cpu=behind_branch, default=fn)


def _host_call(fn: Callable, *operands: Any) -> Any:
  """`fn(*operands)` computed by a separately jitted program that a `jax.pure_callback` runs.

  `fn` is traced to a jaxpr whose constants (what it closes over: the batch inside an
  `obj_fn`, integer labels included) become explicit arguments of the callback, so the program
  sees them as inputs rather than as tracers of the enclosing trace. Typed PRNG keys cross the
  callback as their raw data.
  """
  out_info = {}

  def raw_fn(*ops):  # fn with its key outputs as raw data; records their impls and the tree
    out, out_info["treedef"] = jax.tree.flatten(fn(*ops))
    out_info["impls"] = [jax.random.key_impl(x) if _is_key(x) else None for x in out]
    return [jax.random.key_data(x) if _is_key(x) else x for x in out]

  closed, raw_shapes = jax.make_jaxpr(raw_fn, return_shape=True)(*operands)
  args = [*jax.tree.leaves(operands), *closed.consts]
  impls = [jax.random.key_impl(x) if _is_key(x) else None for x in args]
  num_ops = len(args) - len(closed.consts)

  @jax.jit
  def program(*raw):
    leaves = [x if impl is None else jax.random.wrap_key_data(x, impl=impl) for x, impl in zip(raw, impls)]
    return jax.core.eval_jaxpr(closed.jaxpr, leaves[num_ops:], *leaves[:num_ops])

  raw_args = [x if impl is None else jax.random.key_data(x) for x, impl in zip(args, impls)]
  raw_out = jax.pure_callback(program, raw_shapes, *raw_args, vmap_method="sequential")
  out = [x if impl is None else jax.random.wrap_key_data(x, impl=impl) for x, impl in zip(raw_out, out_info["impls"])]
  return jax.tree.unflatten(out_info["treedef"], out)


def _is_key(x: Any) -> bool:
  return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
