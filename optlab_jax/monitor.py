"""In-training curvature diagnostics, built once and called every k steps by the training loop.

`Monitor(metrics, loss_fn, ...)(params, grads, updates, opt_state, batch, step)` returns a dict
of scalars (arrays for spectral_density and layer_lambda_max). Inside a jitted loop (traced
arguments) everything runs as one XLA program with `lax.scan` estimators. Called with concrete arrays it runs one compiled program too, except
where a convolution would sit inside control flow on CPU (40–50× slower there, see
docs/architecture.md): then the linearisation and each Lanczos step are separate jitted calls driven by
a Python loop. Both paths compute the same numbers.

Metrics (all from one Hessian linearisation at `params` on `batch`):
  lambda_max, lambda_min      top and bottom Ritz values of H (Lanczos, signs exact)
  trace                       Hutchinson estimate of tr(H) (exact if trace_samples ≥ the parameter
                              count), returned with `trace_stderr`, its standard error
  eos_ratio                   λ_max / the optimizer's `stability_edge` (at 1 on the edge; Cohen et
                              al., 2021); lr · λ_max / 2, GD's edge, for optimizers without one
  preconditioned_lambda_max   λ_max of P⁻¹H = λ_max of P^{-1/2} H P^{-1/2}, P the optimizer's
                              diagonal preconditioner read from its state (`optim.preconditioner`)
  preconditioned_eos_ratio    preconditioned_lambda_max / `preconditioned_stability_edge`
                              (Cohen et al., 2022, arXiv:2207.14484)
  directional_sharpness       uᵀHu / ‖u‖² of the update u
  gradient_correlation        −gᵀu / (‖g‖ ‖u‖)
  top_k_gradient_fraction     ‖V_kᵀ g‖² / ‖g‖², V_k the top-k Ritz vectors (Gur-Ari et al., 2018,
                              Gradient descent happens in a tiny subspace, arXiv:1812.04754)
  ggn_lambda_max              λ_max of the Gauss-Newton matrix Jᵀ H_out J
  spectral_density            (2, slq_probes, lanczos_iters) array: SLQ nodes [0] and weights [1]
                              of H (`curvature.slq_quadrature`; `landscape_plots` draws the density)
  layer_lambda_max            (layers,) λ_max of each layer's diagonal block H_ll (Lanczos on the
                              block); a layer is the leaves under one parent, in `layer_names` order

References: Ghorbani et al., 2019, arXiv:1901.10159 (Lanczos on the Hessian); Cohen et al., 2021,
Gradient descent on neural networks typically occurs at the edge of stability (arXiv:2103.00065).
"""

from __future__ import annotations

import functools
import inspect
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import Partial

from optlab_jax import curvature, optim
from optlab_jax.checks import check_positive_int
from optlab_jax.curvature.loops import apply, is_traced, resolve_loop
from optlab_jax.optim import preconditioner as preconditioners

__all__ = ["METRICS", "Monitor", "layer_names", "preconditioned_stability_edge", "stability_edge"]

METRICS = (
    "lambda_max",
    "lambda_min",
    "trace",
    "eos_ratio",
    "preconditioned_lambda_max",
    "preconditioned_eos_ratio",
    "directional_sharpness",
    "gradient_correlation",
    "top_k_gradient_fraction",
    "ggn_lambda_max",
    "spectral_density",
    "layer_lambda_max",
)


class _EdgeRule(NamedTuple):
  """How an optimizer's steps on a quadratic reduce to a momentum method (see `_edge`)."""
  preconditioned: bool       # the edge bounds λ_max(P⁻¹H) (frozen diagonal P), not λ_max(H)
  momentum: str | None       # the hyperparameter holding β; None for no momentum
  ema: bool                  # m ← βm + (1−β)g (Adam's first moment) rather than m ← βm + g
  nesterov: bool = False     # always Nesterov (nadam); else the `nesterov` hyperparameter decides


_EDGE_RULES = {
    "sgd": _EdgeRule(False, "momentum", False),
    "rmsprop": _EdgeRule(True, "momentum", False),
    "adagrad": _EdgeRule(True, None, False),
    "nadam": _EdgeRule(True, "b1", True, nesterov=True),
    **{name: _EdgeRule(True, "b1", True) for name in (
        "adam", "adamw", "adam_l2", "amsgrad", "lazy_adam", "adahessian", "sophia_h", "sophia_g")},
}


def _edge(optimizer: dict, preconditioned: bool, learning_rate: Any = None) -> Any:
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
  rule = _EDGE_RULES.get(optimizer.get("name"))
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
  edge = (2 + 2 * beta) / (step * (1 + 2 * beta) if nesterov else step)
  return edge if preconditioned else edge - hp.get("weight_decay", 0.0)


def _hyperparameters(optimizer: dict) -> dict:
  """An optimizer config's hyperparameters: everything but its name and learning rate."""
  return {k: v for k, v in optimizer.items() if k not in ("name", "learning_rate")}


def _constant_lr(optimizer: dict) -> float | None:
  lr = optimizer.get("learning_rate")
  is_number = isinstance(lr, numbers.Real) and not isinstance(lr, bool)
  return float(lr) if is_number and 0 < lr < float("inf") else None


def stability_edge(optimizer: dict) -> float | None:
  """The sharpness λ_max(H) past which `optimizer` at its constant learning rate η diverges.

  `optimizer` is a resolved optimizer config, {"name": ..., "learning_rate": ..., **hyperparams}.
  SGD: 2/η for gradient descent, (2 + 2β)/η with heavy-ball momentum β, (2 + 2β)/(η(1 + 2β))
  with Nesterov's, each minus a coupled weight decay (derivation in `_edge`). None for a
  schedule, and for adaptive methods, whose edge bounds the preconditioned sharpness
  (`preconditioned_stability_edge`), or methods with no such edge.

  References: Cohen et al., 2021, Gradient descent on neural networks typically occurs at the
  edge of stability (arXiv:2103.00065), section 2 and appendix B.
  """
  if optimizer.get("name") != "sgd" or _constant_lr(optimizer) is None:
    return None
  return float(_edge(optimizer, False, _constant_lr(optimizer)))


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
  lr = _constant_lr(optimizer)
  edge = None if lr is None else _edge(optimizer, True, lr)
  return None if edge is None else float(edge)


_OUTPUTS = {"trace": ("trace", "trace_stderr")}   # metrics that return more than their own value
_NEEDS_LANCZOS = {"lambda_max", "lambda_min", "eos_ratio", "top_k_gradient_fraction"}
_NEEDS_PRECONDITIONER = {"preconditioned_lambda_max", "preconditioned_eos_ratio"}
_NEEDS_HESSIAN = _NEEDS_LANCZOS | _NEEDS_PRECONDITIONER | {"trace", "directional_sharpness",
                                   "spectral_density", "layer_lambda_max"}


class Monitor:
  """Curvature diagnostics of a training step; build once, call every k steps.

  Args:
    metrics: names from `METRICS`.
    loss_fn: (params, batch) -> scalar, the training objective on a batch.
    model_fn, output_loss_fn: (params, batch) -> outputs and (outputs, batch) -> scalar, for
      `ggn_lambda_max`.
    learning_rate: float or schedule for the edges (default: `optimizer`'s constant one); the lr
      inside an `optax.inject_hyperparams` state takes precedence (so vmapped lr sweeps are right).
    optimizer: the optimizer as a config, {"name": ..., **hyperparams} (missing ones take the
      factory's defaults; injected ones are read from the state): its own stability edge for
      `eos_ratio` (without it, GD's 2/lr) and its diagonal preconditioner
      (`optim.preconditioner.preconditioner_fn`) for the preconditioned metrics.
    lanczos_iters: Lanczos steps (one HVP each) for the eigenvalue metrics.
    top_k: subspace size of `top_k_gradient_fraction` (≤ lanczos_iters).
    trace_samples: Hutchinson probes for `trace`.
    slq_probes: Rademacher probes of `spectral_density` (lanczos_iters nodes each).
    preconditioner: opt_state -> diagonal P tree, for `preconditioned_lambda_max`, in place of
      the one `optimizer` registers.
    seed: seeds the Lanczos start vectors and Hutchinson probes (folded with the step).
    loop: "auto" | "scan" | "python" for the Krylov loops (see `curvature.resolve_loop`).
  """

  def __init__(
      self,
      metrics: Sequence[str],
      loss_fn: Callable,
      *,
      model_fn: Callable | None = None,
      output_loss_fn: Callable | None = None,
      learning_rate: optax.ScalarOrSchedule | None = None,
      optimizer: dict[str, Any] | None = None,
      lanczos_iters: int = 20,
      top_k: int = 10,
      trace_samples: int = 1,
      slq_probes: int = 1,
      preconditioner: Callable[[Any], Any] | None = None,
      seed: int = 0,
      loop: str = "auto",
  ):
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
      raise ValueError(f"unknown monitor metrics {unknown}; expected names from {METRICS}")
    check_positive_int("lanczos_iters", lanczos_iters)
    check_positive_int("top_k", top_k)
    check_positive_int("trace_samples", trace_samples)
    check_positive_int("slq_probes", slq_probes)
    if "top_k_gradient_fraction" in metrics and top_k > lanczos_iters:
      raise ValueError(f"top_k={top_k} is out of range; expected top_k <= lanczos_iters={lanczos_iters}")
    if "ggn_lambda_max" in metrics and (model_fn is None or output_loss_fn is None):
      raise ValueError("ggn_lambda_max needs model_fn=(params, batch) -> outputs and output_loss_fn=(outputs, batch) -> loss")
    wants_preconditioner = _NEEDS_PRECONDITIONER.intersection(metrics)
    if wants_preconditioner and preconditioner is None:
      if optimizer is None:
        raise ValueError(f"{sorted(wants_preconditioner)} need Monitor(optimizer={{'name': ...}}) or "
                         "preconditioner=fn with fn(opt_state) -> diagonal P")
      preconditioner = preconditioners.preconditioner_fn(optimizer["name"], **_hyperparameters(optimizer))
    rule = _EDGE_RULES.get((optimizer or {}).get("name"))
    if "preconditioned_eos_ratio" in metrics and (rule is None or not rule.preconditioned):
      raise ValueError("preconditioned_eos_ratio needs Monitor(optimizer=...) naming an optimizer with a "
                       "preconditioned edge: " + ", ".join(n for n, r in _EDGE_RULES.items() if r.preconditioned))
    self.metrics = tuple(metrics)
    self.optimizer = optimizer
    if learning_rate is None and optimizer is not None:
      learning_rate = _constant_lr(optimizer)
    self.loss_fn, self.model_fn, self.output_loss_fn = loss_fn, model_fn, output_loss_fn
    self.learning_rate = learning_rate
    self.lanczos_iters, self.top_k, self.trace_samples = lanczos_iters, top_k, trace_samples
    self.slq_probes = slq_probes
    self.preconditioner = preconditioner
    self.seed, self.loop = seed, loop
    self._compiled = jax.jit(self._scan_impl)

  def __call__(self, params, grads, updates, opt_state, batch, step=0) -> dict[str, jax.Array]:
    key = jax.random.fold_in(jax.random.key(self.seed), step)
    if is_traced(params, batch) or not self.metrics:
      return self._scan_impl(params, grads, updates, opt_state, batch, key, step)
    # Host path: matvecs are Partials of fixed functions with (params, batch) as leaves, so
    # each jitted Lanczos step compiles once per Monitor, not once per call.
    hess = Partial(self._hvp_at, params, batch) if _NEEDS_HESSIAN.intersection(self.metrics) else None
    ggn = Partial(self._ggn_at, params, batch) if "ggn_lambda_max" in self.metrics else None
    if resolve_loop(self.loop, hess if hess is not None else ggn, params) == "scan":
      return self._compiled(params, grads, updates, opt_state, batch, key, step)
    return self._measure(hess, ggn, params, grads, updates, opt_state, key, step, "python")

  def _hvp_at(self, params, batch, v):
    return curvature.hvp(lambda p: self.loss_fn(p, batch), params, v)

  def _ggn_at(self, params, batch, v):
    model_fn = lambda p: self.model_fn(p, batch)
    return curvature.ggn_fn(model_fn, lambda o: self.output_loss_fn(o, batch), params)(v)

  def _linearize_impl(self, params, batch):
    hess = ggn = None
    if _NEEDS_HESSIAN.intersection(self.metrics):
      hess = curvature.hvp_fn(lambda p: self.loss_fn(p, batch), params)
    if "ggn_lambda_max" in self.metrics:
      ggn = curvature.ggn_fn(lambda p: self.model_fn(p, batch), lambda o: self.output_loss_fn(o, batch), params)
    return hess, ggn

  def _scan_impl(self, params, grads, updates, opt_state, batch, key, step):
    hess, ggn = self._linearize_impl(params, batch)
    return self._measure(hess, ggn, params, grads, updates, opt_state, key, step, "scan")

  def _lr(self, opt_state, step):
    lr = preconditioners.injected_hyperparams(opt_state).get("learning_rate", self.learning_rate)
    if lr is None:
      raise ValueError("eos_ratio needs Monitor(learning_rate=...) or an inject_hyperparams optimizer")
    return lr(step) if callable(lr) else jnp.asarray(lr)

  def _edge(self, opt_state, step, preconditioned):
    """The optimizer's edge at this step's lr and (possibly injected) hyperparameters; GD's
    2/lr for `eos_ratio` where the optimizer has none (or none was given)."""
    lr = self._lr(opt_state, step)
    config = {**(self.optimizer or {}), **preconditioners.injected_hyperparams(opt_state)}
    edge = _edge(config, preconditioned, lr) if self.optimizer else None
    return 2 / lr if edge is None else edge

  def _top_eig(self, matvec, params, key, loop):
    k = self.top_k if "top_k_gradient_fraction" in self.metrics else 1
    return curvature.lanczos_eigs(matvec, params, key, self.lanczos_iters, k, loop=loop)

  def _measure(self, hess, ggn, params, grads, updates, opt_state, key, step, loop):
    lanczos_key, trace_key, precond_key, ggn_key = jax.random.split(key, 4)
    want = set(self.metrics)
    out = {}
    if _NEEDS_LANCZOS & want:
      eigs = self._top_eig(hess, params, lanczos_key, loop)
      out["lambda_max"], out["lambda_min"] = eigs.top_values[0], eigs.bottom_values[0]
      if "eos_ratio" in want:
        out["eos_ratio"] = eigs.top_values[0] / self._edge(opt_state, step, False)
      if "top_k_gradient_fraction" in want:
        coeffs = jax.vmap(lambda v: optax.tree.vdot(v, grads))(eigs.top_vectors)
        out["top_k_gradient_fraction"] = jnp.sum(coeffs**2) / optax.tree.vdot(grads, grads)
    if "trace" in want:
      out["trace"], out["trace_stderr"], _ = curvature.hutchinson_trace(hess, params, trace_key, self.trace_samples,
                                                                        loop=loop)
    if _NEEDS_PRECONDITIONER & want:
      inv_sqrt = jax.tree.map(lambda p: 1.0 / jnp.sqrt(p), self.preconditioner(opt_state))
      scaled = jax.tree_util.Partial(_scaled_apply, hess, inv_sqrt)
      out["preconditioned_lambda_max"] = curvature.lanczos_eigs(
          scaled, params, precond_key, self.lanczos_iters, 1, loop=loop).top_values[0]
      if "preconditioned_eos_ratio" in want:
        out["preconditioned_eos_ratio"] = out["preconditioned_lambda_max"] / self._edge(opt_state, step, True)
    if {"directional_sharpness", "gradient_correlation"} & want:
      u_norm2 = optax.tree.vdot(updates, updates)
      if "directional_sharpness" in want:
        out["directional_sharpness"] = optax.tree.vdot(updates, apply(hess, updates)) / u_norm2
      if "gradient_correlation" in want:
        g_norm = optax.tree.norm(grads)
        out["gradient_correlation"] = -optax.tree.vdot(grads, updates) / (g_norm * jnp.sqrt(u_norm2))
    if "ggn_lambda_max" in want:
      out["ggn_lambda_max"] = curvature.lanczos_eigs(
          ggn, params, ggn_key, self.lanczos_iters, 1, loop=loop).top_values[0]
    if "spectral_density" in want:
      nodes, weights = curvature.slq_quadrature(hess, params, jax.random.fold_in(key, 4), self.lanczos_iters,
                                                self.slq_probes, loop=loop)
      out["spectral_density"] = jnp.stack([nodes, weights])
    if "layer_lambda_max" in want:
      out["layer_lambda_max"] = _layer_lambda_max(hess, params, jax.random.fold_in(key, 5), self.lanczos_iters, loop)
    return {name: out[name] for metric in self.metrics for name in _OUTPUTS.get(metric, (metric,))}


def _scaled_apply(matvec: Callable, inv_sqrt: Any, v: Any) -> Any:
  """v ↦ D H D v with D = diag(inv_sqrt): symmetric, with the eigenvalues of D² H."""
  mul = lambda x: jax.tree.map(jnp.multiply, inv_sqrt, x)
  return mul(matvec(mul(v)))


def _layers(params: Any) -> dict[tuple, tuple[int, ...]]:
  """Parent key path -> the indices of its leaves (a Dense layer's kernel and bias), in leaf order."""
  groups: dict[tuple, list[int]] = {}
  for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
    groups.setdefault(path[:-1], []).append(i)
  return {path: tuple(leaves) for path, leaves in groups.items()}


def layer_names(params: Any) -> list[str]:
  """The layers of `layer_lambda_max`, in its order: "/"-joined parent key paths ("" for the root)."""
  return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path in _layers(params)]


@functools.cache
def _block_matvec(treedef: Any, block: tuple[int, ...]) -> Callable:
  """v_l ↦ (H [0, …, v_l, …, 0])_l, the diagonal block of layer `block` (one fixed function per
  layer, so the host path's jitted Lanczos steps compile once)."""

  def matvec(hess, params, v_block):
    leaves = [jnp.zeros_like(x) for x in jax.tree.leaves(params)]
    for i, x in zip(block, v_block):
      leaves[i] = x
    out = jax.tree.leaves(hess(jax.tree.unflatten(treedef, leaves)))
    return [out[i] for i in block]

  return matvec


def _layer_lambda_max(hess: Callable, params: Any, key: jax.Array, num_iters: int, loop: str) -> jax.Array:
  leaves, treedef = jax.tree.flatten(params)
  values = []
  for j, block in enumerate(_layers(params).values()):
    sub = [leaves[i] for i in block]
    iters = min(num_iters, sum(x.size for x in sub))
    matvec = Partial(_block_matvec(treedef, block), hess, params)
    values.append(curvature.lanczos_eigs(matvec, sub, jax.random.fold_in(key, j), iters, 1, loop=loop).top_values[0])
  return jnp.stack(values)
