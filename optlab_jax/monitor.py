"""In-training curvature diagnostics, built once and called every k steps by the training loop.

`Monitor(metrics, loss_fn, ...)(params, grads, updates, opt_state, batch, step)` returns a dict
of scalars (arrays for spectral_density and layer_lambda_max). Inside a jitted loop (traced
arguments) everything runs as one XLA program with `lax.scan` estimators. Called with concrete
arrays it runs compiled programs: the metrics that do not read the optimizer's state come from one
program shared by every monitor of the same loss and settings (a sweep's optimizer groups on one
problem trace and compile it once), eos_ratio and the preconditioned metrics from a small one of
the monitor's own. Where a convolution would sit inside control flow on CPU (40–50× slower there,
see docs/architecture.md), the linearisation and each Lanczos step are instead separate jitted
calls driven by a Python loop. All paths compute the same numbers.

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

import copy
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import Partial

from optlab_jax import curvature, edges
from optlab_jax.checks import check_positive_int
from optlab_jax.curvature.loops import apply, is_traced, resolve_loop
from optlab_jax.edges import preconditioned_stability_edge, stability_edge  # re-exported: part of the monitor's API
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


_OUTPUTS = {"trace": ("trace", "trace_stderr")}   # metrics that return more than their own value
_NEEDS_LANCZOS = {"lambda_max", "lambda_min", "eos_ratio", "top_k_gradient_fraction"}
_NEEDS_PRECONDITIONER = {"preconditioned_lambda_max", "preconditioned_eos_ratio"}
_NEEDS_HESSIAN = _NEEDS_LANCZOS | _NEEDS_PRECONDITIONER | {"trace", "directional_sharpness",
                                   "spectral_density", "layer_lambda_max"}
# The metrics that read the optimizer's state. Every other one is a function of (params, grads,
# updates, batch) alone, measured by one program that the monitors of a problem share (`_shared`).
_NEEDS_OPT_STATE = {"eos_ratio"} | _NEEDS_PRECONDITIONER
# The monitor runs every k steps: XLA's cheapest backend optimisation compiles it 3–4× faster.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


class _Spec(NamedTuple):
  """What the optimizer-independent metrics depend on: monitors with equal specs share programs."""
  metrics: frozenset[str]          # the metrics measured without opt_state (lambda_max for eos_ratio)
  loss_fn: Callable                # (params, batch) -> scalar
  model_fn: Callable | None        # set only for ggn_lambda_max, so that it splits nothing else
  output_loss_fn: Callable | None  # likewise
  lanczos_iters: int               # Lanczos steps of every eigenvalue metric
  top_k: int                       # Ritz pairs kept: top_k for top_k_gradient_fraction, else 1
  trace_samples: int               # Hutchinson probes of trace
  slq_probes: int                  # probes of spectral_density
  seed: int                        # the probes' and start vectors' key, folded with the step


def _key(seed: int, step: Any) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), step)


@functools.lru_cache(maxsize=64)
def _hvp_at(loss_fn: Callable) -> Callable:
  """(params, batch, v) -> Hv: one function per loss, so the host path's jitted Lanczos steps
  (Partials of it with (params, batch) as leaves) compile once per problem, not once per call."""
  return lambda params, batch, v: curvature.hvp(lambda p: loss_fn(p, batch), params, v)


@functools.lru_cache(maxsize=64)
def _ggn_at(model_fn: Callable, output_loss_fn: Callable) -> Callable:
  """(params, batch, v) -> Gv, as `_hvp_at` for the Gauss-Newton matrix."""
  return lambda params, batch, v: curvature.ggn_fn(
      lambda p: model_fn(p, batch), lambda o: output_loss_fn(o, batch), params)(v)


def _linearize(spec: _Spec, params: Any, batch: Any, hessian: bool) -> tuple[Any, Any]:
  hess = curvature.hvp_fn(lambda p: spec.loss_fn(p, batch), params) if hessian else None
  ggn = None
  if "ggn_lambda_max" in spec.metrics:
    ggn = curvature.ggn_fn(lambda p: spec.model_fn(p, batch), lambda o: spec.output_loss_fn(o, batch), params)
  return hess, ggn


def _measure_shared(spec: _Spec, hess, ggn, params, grads, updates, key, loop) -> dict[str, jax.Array]:
  """The metrics of `spec.metrics` (and those computed along with them)."""
  lanczos_key, trace_key, _, ggn_key = jax.random.split(key, 4)  # the third is the preconditioned metrics'
  want, out = spec.metrics, {}
  if _NEEDS_LANCZOS & want:
    # Ritz vectors only for the top-k fraction; the extreme values alone need no basis.
    reorth = "partial" if "top_k_gradient_fraction" in want else "none"
    eigs = curvature.lanczos_eigs(hess, params, lanczos_key, spec.lanczos_iters, spec.top_k, loop=loop,
                                  reorth=reorth)
    out["lambda_max"], out["lambda_min"] = eigs.top_values[0], eigs.bottom_values[0]
    if "top_k_gradient_fraction" in want:
      coeffs = jax.vmap(lambda v: optax.tree.vdot(v, grads))(eigs.top_vectors)
      out["top_k_gradient_fraction"] = jnp.sum(coeffs**2) / optax.tree.vdot(grads, grads)
  if "trace" in want:
    out["trace"], out["trace_stderr"], _ = curvature.hutchinson_trace(hess, params, trace_key, spec.trace_samples,
                                                                      loop=loop)
  if {"directional_sharpness", "gradient_correlation"} & want:
    u_norm2 = optax.tree.vdot(updates, updates)
    if "directional_sharpness" in want:
      out["directional_sharpness"] = optax.tree.vdot(updates, apply(hess, updates)) / u_norm2
    if "gradient_correlation" in want:
      g_norm = optax.tree.norm(grads)
      out["gradient_correlation"] = -optax.tree.vdot(grads, updates) / (g_norm * jnp.sqrt(u_norm2))
  if "ggn_lambda_max" in want:
    out["ggn_lambda_max"] = curvature.lanczos_eigs(ggn, params, ggn_key, spec.lanczos_iters, 1, loop=loop,
                                                   reorth="none").top_values[0]
  if "spectral_density" in want:
    nodes, weights = curvature.slq_quadrature(hess, params, jax.random.fold_in(key, 4), spec.lanczos_iters,
                                              spec.slq_probes, loop=loop)
    out["spectral_density"] = jnp.stack([nodes, weights])
  if "layer_lambda_max" in want:
    out["layer_lambda_max"] = _layer_lambda_max(hess, params, jax.random.fold_in(key, 5), spec.lanczos_iters, loop)
  return out


@functools.lru_cache(maxsize=64)
def _shared(spec: _Spec, batched: bool) -> Callable:
  """The jitted (params, grads, updates, batch, step) -> metrics of `spec`, over a leading run
  axis if `batched` (one step for all runs): one program for every monitor with this spec, so a
  sweep's optimizer groups on one problem trace and compile it once."""

  def measure(params, grads, updates, batch, step):
    hess, ggn = _linearize(spec, params, batch, bool(_NEEDS_HESSIAN & spec.metrics))
    return _measure_shared(spec, hess, ggn, params, grads, updates, _key(spec.seed, step), "scan")

  return jax.jit(jax.vmap(measure, in_axes=(0, 0, 0, 0, None)) if batched else measure,
                 compiler_options=_COMPILER_OPTIONS)


class Monitor:
  """Curvature diagnostics of a training step; build once, call every k steps.

  `vmapped()` is the same monitor over a leading run axis (programs shared as the module says).

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
      preconditioner = preconditioners.preconditioner_fn(optimizer["name"], **edges.hyperparameters(optimizer))
    rule = edges.RULES.get((optimizer or {}).get("name"))
    if "preconditioned_eos_ratio" in metrics and (rule is None or not rule.preconditioned):
      raise ValueError("preconditioned_eos_ratio needs Monitor(optimizer=...) naming an optimizer with a "
                       "preconditioned edge: " + ", ".join(n for n, r in edges.RULES.items() if r.preconditioned))
    self.metrics = tuple(metrics)
    self.optimizer = optimizer
    if learning_rate is None and optimizer is not None:
      learning_rate = edges.constant_lr(optimizer)
    self.loss_fn, self.model_fn, self.output_loss_fn = loss_fn, model_fn, output_loss_fn
    self.learning_rate = learning_rate
    self.lanczos_iters, self.top_k, self.trace_samples = lanczos_iters, top_k, trace_samples
    self.slq_probes = slq_probes
    self.preconditioner = preconditioner
    self.seed, self.loop = seed, loop
    ggn = "ggn_lambda_max" in metrics
    self._spec = _Spec(
        frozenset(set(metrics) - _NEEDS_OPT_STATE | ({"lambda_max"} if "eos_ratio" in metrics else set())),
        loss_fn, model_fn if ggn else None, output_loss_fn if ggn else None, lanczos_iters,
        top_k if "top_k_gradient_fraction" in metrics else 1, trace_samples, slq_probes, seed,
    )
    self._batched = False
    self._own = jax.jit(self._optimizer_metrics, compiler_options=_COMPILER_OPTIONS)

  def vmapped(self) -> Monitor:
    """This monitor over a leading run axis of (params, grads, updates, opt_state, batch), one
    step for all runs (what `jax.vmap` with in_axes (0, 0, 0, 0, 0, None) gives), its programs
    shared as the unbatched ones are."""
    view = copy.copy(self)
    view._batched = True
    view._own = jax.jit(jax.vmap(self._optimizer_metrics, in_axes=(0, 0, 0, None, 0)),
                        compiler_options=_COMPILER_OPTIONS)
    return view

  def __call__(self, params, grads, updates, opt_state, batch, step=0) -> dict[str, jax.Array]:
    if not self.metrics:
      return {}
    if is_traced(params, batch):  # inside the caller's jit or vmap: one computation, inlined there
      inline = jax.vmap(self._inline, in_axes=(0, 0, 0, 0, 0, None)) if self._batched else self._inline
      return inline(params, grads, updates, opt_state, batch, step)
    # Host path: matvecs are Partials of fixed functions with (params, batch) as leaves.
    hess = Partial(_hvp_at(self.loss_fn), params, batch) if _NEEDS_HESSIAN.intersection(self.metrics) else None
    ggn = Partial(_ggn_at(self.model_fn, self.output_loss_fn), params, batch) if self._spec.model_fn else None
    matvec = hess if hess is not None else ggn   # None: no Krylov loop (gradient_correlation alone)
    if self._batched or matvec is None or resolve_loop(self.loop, matvec, params) == "scan":
      out = _shared(self._spec, self._batched)(params, grads, updates, batch, step)
      if _NEEDS_OPT_STATE.intersection(self.metrics):
        out |= self._own(params, opt_state, batch, step, out.get("lambda_max"))
      return self._select(out)
    key = _key(self.seed, step)
    out = _measure_shared(self._spec, hess, ggn, params, grads, updates, key, "python")
    return self._select(out | self._measure_own(hess, params, opt_state, key, step, out.get("lambda_max"), "python"))

  def _select(self, out: dict) -> dict[str, jax.Array]:
    return {name: out[name] for metric in self.metrics for name in _OUTPUTS.get(metric, (metric,))}

  def _inline(self, params, grads, updates, opt_state, batch, step):
    key = _key(self.seed, step)
    hess, ggn = _linearize(self._spec, params, batch, bool(_NEEDS_HESSIAN.intersection(self.metrics)))
    out = _measure_shared(self._spec, hess, ggn, params, grads, updates, key, "scan")
    return self._select(out | self._measure_own(hess, params, opt_state, key, step, out.get("lambda_max"), "scan"))

  def _optimizer_metrics(self, params, opt_state, batch, step, lambda_max):
    """The metrics that read opt_state (the monitor's own program; it linearises only for the
    preconditioned ones)."""
    hessian = bool(_NEEDS_PRECONDITIONER.intersection(self.metrics))
    hess, _ = _linearize(self._spec._replace(metrics=frozenset()), params, batch, hessian)
    return self._measure_own(hess, params, opt_state, _key(self.seed, step), step, lambda_max, "scan")

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
    edge = edges.edge(config, preconditioned, lr) if self.optimizer else None
    return 2 / lr if edge is None else edge

  def _measure_own(self, hess, params, opt_state, key, step, lambda_max, loop) -> dict[str, jax.Array]:
    want, out = set(self.metrics), {}
    if "eos_ratio" in want:
      out["eos_ratio"] = lambda_max / self._edge(opt_state, step, False)
    if _NEEDS_PRECONDITIONER & want:
      inv_sqrt = jax.tree.map(lambda p: 1.0 / jnp.sqrt(p), self.preconditioner(opt_state))
      scaled = Partial(_scaled_apply, hess, inv_sqrt)
      out["preconditioned_lambda_max"] = curvature.lanczos_eigs(
          scaled, params, jax.random.split(key, 4)[2], self.lanczos_iters, 1, loop=loop, reorth="none").top_values[0]
      if "preconditioned_eos_ratio" in want:
        out["preconditioned_eos_ratio"] = out["preconditioned_lambda_max"] / self._edge(opt_state, step, True)
    return out


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
    values.append(curvature.lanczos_eigs(matvec, sub, jax.random.fold_in(key, j), iters, 1, loop=loop,
                                         reorth="none").top_values[0])
  return jnp.stack(values)
