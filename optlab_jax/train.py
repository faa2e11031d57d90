"""The training loop: jitted steps with no host sync per step, for one run or a vmapped sweep.

Step t (0-based) of the run with seed s trains on `problem.sample_batch(fold_in(k_data, t))`,
where (k_init, k_data) = split(key(s)) and the params start at `problem.init_params(k_init)`;
so a run's data, initialisation and randomness depend neither on the loop, nor on how its steps
are chunked, nor on vmapping. Its float results agree to rounding: XLA may fuse a scan of another
length differently, and on a chaotic float32 run (a PINN under Adam) that rounding grows into
visibly different curves; the tests find them bitwise equal on their problems, not in general.

Two loops give the same runs:
  "scan"    chunks of steps in one `lax.scan`, whose carry keeps the last step's monitor
            arguments; the monitor is its own compiled program, called between chunks, so
            it is never compiled into (nor slowed by) the training program.
  "python"  one jitted step per call from Python (dispatch is asynchronous: the host waits only
            between chunks); on monitor steps the monitor is called on the step's concrete
            arrays, outside any control flow (`monitor.Monitor` compiles itself).
"auto" follows `curvature.resolve_loop`, the project's one rule: "python" when the loss
contains a convolution and runs on CPU, where XLA runs a convolution inside `lax.scan` /
`lax.cond` 40–50× slower than plainly jitted (jax-ml/jax#12868), "scan" otherwise.
Chunks end at eval and monitor steps (their period is the gcd of `eval_every` and
`monitor_every`); between chunks the host reads the losses, runs the monitor, evaluates, calls
`on_progress(steps_done)`, and stops once every run has diverged (NaN/Inf loss).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab_jax import checkpoints, checks
from optlab_jax import monitor as monitors
from optlab_jax import program_cache
from optlab_jax import sharding
from optlab_jax.curvature.loops import has_primitive, resolve_loop
from optlab_jax.optim.schedule_free import schedule_free_eval_params
from optlab_jax.problems import Problem

__all__ = ["History", "TrainState", "choose_loop", "fit", "fit_vmapped", "has_conv", "should_vmap", "step_flops",
           "use_compilation_cache"]

# XLA's FLOP estimate for one step of one run up to which vmapping runs on CPU beats running
# them one by one (see `should_vmap`). experiments/bench_sweep.py on 2 quiet cores, vmap8/seq8:
# 0.81 at 6 MFLOP, 0.76 at 67, 0.87 at 159, 1.03 at 420, crossing 1 near 350 (log-linear); the
# bound sits between the two rows, where vmapping is still ~5% faster. (1e8 ran the 159-MFLOP row
# sequentially, 15% slower than vmapped.)
VMAP_MAX_FLOPS = 2.5e8
# monitor(params, grads, updates, opt_state, batch, step) -> {name: scalar}; see `fit`.
Monitor = Callable[..., dict[str, jax.Array]]


class TrainState(NamedTuple):
  """The carry of the training loop."""
  params: Any          # current parameters
  opt_state: Any       # the optimizer's state
  data_key: jax.Array  # step t's batch is drawn with fold_in(data_key, t)


@dataclasses.dataclass
class History:
  """What one run recorded. A vmapped program's times are split equally among its runs."""
  loss: np.ndarray                # [steps] training loss on each step's batch; NaN after divergence
  eval_steps: np.ndarray          # [k] steps done when eval ran (multiples of eval_every)
  eval: dict[str, np.ndarray]     # metric -> [k] values of problem.eval_metrics
  monitor_steps: np.ndarray       # [m] 1-based steps whose (params, grads, ...) the monitor saw
  monitor: dict[str, np.ndarray]  # metric -> [m, *shape] values (shape () for scalar metrics)
  final: dict[str, float]         # problem.eval_metrics of the final params
  status: str                     # "ok" | "diverged" (a NaN or Inf training loss)
  diverged_at: int | None         # 1-based step of the first non-finite loss
  params: Any                     # final params
  loop: str                       # "scan" | "python": the loop that ran
  wall_time: float                # seconds, compilation included
  compile_time: float             # seconds of it spent compiling


def _abstract_point(problem: Problem, batch_size: int | None = None) -> tuple[Any, Any]:
  """Shapes and dtypes of (params, batch) of one run, without computing either."""
  params = jax.eval_shape(problem.init_params, jax.random.key(0))
  batch = jax.eval_shape(lambda data, key: problem.sample_fn(data, key, batch_size), problem.data, jax.random.key(0))
  return params, batch


def has_conv(problem: Problem) -> bool:
  """Whether the problem's loss contains a convolution (read off its jaxpr)."""
  return has_primitive(problem.loss, "conv_general_dilated", *_abstract_point(problem))


def choose_loop(problem: Problem, loop: str = "auto") -> str:
  """The loop that runs: `loop` itself unless "auto" (`curvature.resolve_loop` on the loss)."""
  return resolve_loop(loop, problem.loss, *_abstract_point(problem))


def _chunks(steps: int, *periods: int) -> list[tuple[int, int]]:
  """(start, length) per chunk: the gcd of the nonzero periods, else a divisor of steps near steps/20."""
  size = math.gcd(*periods)
  size = size or next(d for d in range(math.ceil(steps / 20), steps + 1) if steps % d == 0)
  return [(start, min(size, steps - start)) for start in range(0, steps, size)]


def _point_fns(problem: Problem, make_tx: Callable[[dict], optax.GradientTransformation], batch_size,
               placement: sharding.Placement = sharding.Placement(None)):
  """init(seed, hp, params) -> TrainState and step(state, hp, data, t) -> (state, loss, monitor args);
  init starts from `params` unless None (then problem.init_params(k_init)); `placement` constrains
  the batch, params and state to their shardings on its mesh."""

  def init(seed, hp, params=None):
    init_key, data_key = jax.random.split(jax.random.key(seed))
    params, tx = problem.init_params(init_key) if params is None else params, make_tx(hp)
    return TrainState(*placement.state(params, tx.init(params), tx), data_key)

  def step(state, hp, data, t):
    batch = placement.batch(problem.sample_fn(data, jax.random.fold_in(state.data_key, t), batch_size))
    extra = problem.extra_args(batch)
    loss, grads = jax.value_and_grad(extra["obj_fn"])(state.params)
    tx = optax.with_extra_args_support(make_tx(hp))
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss, grad=grads, **extra)
    new = TrainState(*placement.state(optax.apply_updates(state.params, updates), opt_state, tx), state.data_key)
    return new, loss, (state.params, grads, updates, opt_state, batch)

  return init, step


MIN_CACHED_COMPILE_SECS = 0.1


def use_compilation_cache(path: str, min_compile_secs: float = MIN_CACHED_COMPILE_SECS) -> None:
  """Keeps the compiled programs in JAX's persistent cache at `path` (created if missing).

  A later process, or a later group of the same sweep whose program is the same (the monitor
  and the eval metrics of one problem, say), then loads it instead of compiling it again. Call
  it before anything compiles: JAX decides whether to use the cache at its first compilation.
  Programs compiled in under `min_compile_secs` are not written: writing them costs more than
  compiling them again (experiments/bench_runner.py, the 50-step quickstart: 0 s made the cold
  run 22.6 s, 0.1 s 16–18.7 s, with the warm run 7.2 vs 7.3–7.8 s).
  """
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(path).resolve()))  # later chdirs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class _Compiled:
  """Jitted functions compiled ahead of time on first call, so compilation is timed apart."""

  # init and metrics run once or rarely: XLA's cheapest backend optimisation compiles them
  # 3-4× faster (12 s -> 3 s for digits-MLP's init on a loaded 2-core machine).
  COLD = {"xla_backend_optimization_level": 0}

  # Executables every instance may reuse, by (`share`, the arguments' structure, types and shardings):
  # a problem's eval metrics are the same program in every optimizer group of a sweep.
  SHARED: dict = {}

  def __init__(self):
    self.executables, self.seconds = {}, 0.0

  def __call__(self, name: str, fn: Callable, *args, cold: bool = False, share: Any = None):
    """fn(*args), compiled on the first call under `name`; with `share` (a hashable that fixes what
    fn computes, e.g. the function it vmaps), compiled once per process for all instances."""
    if name not in self.executables:
      leaves, treedef = jax.tree.flatten(args)
      key = share and (share, treedef, tuple((jax.typeof(x), getattr(x, "sharding", None)) for x in leaves))
      compiled = self.SHARED.get(key) if key else None
      if compiled is None:
        tic = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile(self.COLD if cold else None)
        self.seconds += time.perf_counter() - tic
        if key:
          self.SHARED[key] = compiled
      self.executables[name] = compiled
    return self.executables[name](*args)


def _train(problem, make_tx, hparams, seeds, batched, run, *, steps, batch_size=None, eval_every=0,
           monitor=None, monitor_every=0, loop="auto", on_progress=None, checkpoint_every=0,
           checkpoint_dir=None, mesh=None, params=None) -> list[History]:
  """Trains one run, or (batched) one run per seed vmapped in one program; `run` compiles."""
  checks.check_positive_int("steps", steps)
  _check_params(problem, params, len(seeds) if batched else None)
  checks.check_in_range("eval_every", eval_every, 0.0)
  if monitor is not None:
    checks.check_positive_int("monitor_every", monitor_every)
  loop = choose_loop(problem, loop)
  placement = sharding.placement(mesh, _abstract_point(problem, batch_size)[1])
  init, step = _point_fns(problem, make_tx, batch_size, placement)
  metrics = problem.metrics_fn
  shared = ("metrics", problem.metrics_fn, batched)   # the same program in every group of the problem
  # Schedule-free methods train at y and are evaluated at their average x (other states: the params).
  eval_point = lambda state: (jax.vmap(schedule_free_eval_params) if batched else schedule_free_eval_params)(
      state.opt_state, state.params)
  if batched:
    init, step = jax.vmap(init), jax.vmap(step, in_axes=(0, 0, None, None))
    metrics = jax.vmap(metrics, in_axes=(None, 0))
    # A monitor.Monitor vmaps itself, keeping the programs it shares with the sweep's other groups.
    vmapped = lambda m: m.vmapped() if isinstance(m, monitors.Monitor) else jax.vmap(m, in_axes=(0, 0, 0, 0, 0, None))
    monitor = monitor and vmapped(monitor)
  is_monitor_step = lambda t: monitor is not None and (t + 1) % monitor_every == 0

  def scan_chunk(length, state, hp, data, t0):
    """`length` steps from t0; with a monitor, also the last step's monitor arguments."""
    ts = t0 + jnp.arange(length, dtype=jnp.int32)
    if monitor is None:
      return jax.lax.scan(lambda state, t: step(state, hp, data, t)[:2], state, ts)
    def body(carry, t):
      state, loss, aux = step(carry[0], hp, data, t)
      return (state, aux), loss
    aux = jax.tree.map(jnp.zeros_like, jax.eval_shape(step, state, hp, data, t0)[2])
    (state, aux), loss = jax.lax.scan(body, (state, aux), ts)
    return state, loss, aux

  tic, compile_seconds, data = time.perf_counter(), run.seconds, problem.data
  saved = checkpoints.Checkpoints(checkpoint_dir, checkpoint_every)
  resumed = saved.restore(run("init", init, seeds, hparams, params, cold=True))
  state, losses, monitored, evaluated = resumed.state, resumed.losses, resumed.monitored, resumed.evaluated
  alive = resumed.alive
  tic, compile_seconds = tic - resumed.wall_time, compile_seconds - resumed.compile_time
  for start, length in _chunks(steps, eval_every, monitor_every if monitor is not None else 0, checkpoint_every):
    if start < resumed.step or not np.any(alive):
      continue
    ts = np.arange(start, start + length, dtype=np.int32)
    if loop == "scan":
      chunk = lambda *a, length=length: scan_chunk(length, *a)
      state, loss, *aux = run(f"scan{length}", chunk, state, hparams, data, ts[0])
      if is_monitor_step(ts[-1]):  # aux: the last step's (params, grads, updates, opt_state, batch)
        args = (*aux[0], ts[-1])
        # A monitor.Monitor compiles itself (what it shares with other groups, once); others compile here.
        values = monitor(*args) if isinstance(monitor, monitors.Monitor) else run("monitor", monitor, *args, cold=True)
        monitored.append((int(ts[-1]) + 1, values))
    else:
      loss = []
      for t in ts:
        if is_monitor_step(t):
          # Concrete arguments: the monitor compiles itself, convolutions outside control flow.
          state, step_loss, aux = run("step_with_monitor_args", step, state, hparams, data, t)
          monitored.append((t + 1, monitor(*aux, t)))
        else:
          state, step_loss = run("step", lambda *a: step(*a)[:2], state, hparams, data, t)
        loss.append(step_loss)
      loss = jnp.stack(loss)
    losses.append(np.asarray(loss, np.float64).reshape(length, -1))  # the host's one wait per chunk
    if eval_every and (start + length) % eval_every == 0:
      evaluated.append((start + length, run("metrics", metrics, data, eval_point(state), cold=True, share=shared)))
    alive = alive & np.isfinite(losses[-1]).all(axis=0)
    saved.save(checkpoints.Resumed(state, start + length, losses, monitored, evaluated,
                                   time.perf_counter() - tic, run.seconds - compile_seconds))
    if on_progress is not None:
      on_progress(start + length)
  saved.close()
  final = run("metrics", metrics, data, eval_point(state), cold=True, share=shared)
  params = state.params if batched else jax.tree.map(lambda x: x[None], state.params)
  loss = np.concatenate(losses)
  loss = np.concatenate([loss, np.full((steps - len(loss), loss.shape[1]), np.nan)]).T
  records = jax.device_get({"monitor": monitored, "eval": evaluated, "final": [(steps, final)]})
  if not batched:  # one run's values get the leading run axis of a vmapped program's (arrays stay arrays)
    records = {k: [(s, jax.tree.map(lambda x: np.asarray(x)[None], r)) for s, r in rows] for k, rows in records.items()}
  n, wall_time, compile_time = len(loss), time.perf_counter() - tic, run.seconds - compile_seconds
  return [_history(i, loss[i], records, params, loop, wall_time / n, compile_time / n) for i in range(n)]


def _check_params(problem: Problem, params: Any, runs: int | None) -> None:
  """ValueError unless `params` is None or has the structure, shapes (after a leading axis of
  `runs` unless None) and dtypes of `problem.init_params`."""
  if params is None:
    return
  want = jax.eval_shape(problem.init_params, jax.random.key(0))
  lead = () if runs is None else (runs,)
  expected = jax.tree.map(lambda x: (lead + x.shape, x.dtype), want)
  try:
    got = jax.tree.map(lambda x: (tuple(jnp.shape(x)), jnp.result_type(x)), params)
    same = jax.tree.structure(got) == jax.tree.structure(expected) and got == expected
  except (TypeError, ValueError):
    same = False
  if not same:
    where = "" if runs is None else f", each shape after a leading axis of {runs} (one entry per run)"
    raise ValueError(f"params must have the structure, shapes and dtypes of problem.init_params(key){where}; "
                     f"expected (shape, dtype) leaves {expected}")


def _history(i, loss, records, params, loop, wall_time, compile_time) -> History:
  """Run i's History from the records of a program that trained one or more runs."""
  series = {
      key: {name: np.array([np.asarray(r[name])[i] for _, r in rows]) for name in (rows[0][1] if rows else {})}
      for key, rows in records.items()
  }
  bad = np.flatnonzero(~np.isfinite(loss))
  diverged_at = int(bad[0]) + 1 if len(bad) else None
  return History(
      loss=np.where(np.arange(len(loss)) < (diverged_at or len(loss)), loss, np.nan),
      eval_steps=np.array([s for s, _ in records["eval"]], np.int64),
      eval=series["eval"],
      monitor_steps=np.array([s for s, _ in records["monitor"]], np.int64),
      monitor=series["monitor"],
      final={name: float(v[0]) for name, v in series["final"].items()},
      status="ok" if diverged_at is None else "diverged",
      diverged_at=diverged_at,
      params=jax.tree.map(lambda x: x[i], params),
      loop=loop,
      wall_time=wall_time,
      compile_time=compile_time,
  )


def fit(
    problem: Problem,
    tx: optax.GradientTransformation,
    *,
    steps: int,
    batch_size: int | None = None,
    seed: int = 0,
    eval_every: int = 0,
    monitor: Monitor | None = None,
    monitor_every: int = 0,
    loop: str = "auto",
    on_progress: Callable[[int], None] | None = None,
    checkpoint_every: int = 0,
    checkpoint_dir: str | pathlib.Path | None = None,
    mesh: dict[str, int] | None = None,
    params: Any = None,
) -> History:
  """Trains `problem` with `tx` for `steps` steps (never raises on divergence).

  Each step passes `tx.update` the extra arguments `problem.extra_args(batch)` (obj_fn,
  value_fn, model_fn, output_loss_fn) and optax's `value=loss, grad=grads`.
  Every `eval_every` steps (0: at the end only) records `problem.eval_metrics`. Every
  `monitor_every` steps records `monitor(params, grads, updates, opt_state, batch, step)`:
  params and batch where the gradient was taken, the update applied, the state it produced and
  the 0-based step index (int32). The monitor must be jittable; on the python loop it is called
  with concrete arrays, so it should be jitted (as `monitor.Monitor` is).
  `on_progress(steps_done)` is called between chunks (a progress bar's hook).
  Every `checkpoint_every` steps (0: never) the run is saved to `checkpoint_dir`, and a run
  started with a `checkpoint_dir` holding checkpoints resumes from the newest readable one, with
  the numbers of an uninterrupted run (`optlab_jax.checkpoints`).
  `mesh` ({"data": N, "model": M}; None: every local device on data if the batch divides over
  them) shards the batch over data and big params and their state over model (`optlab_jax.sharding`).
  `params` (None: `problem.init_params(k_init)`) starts the run from these params instead, a tree
  like init_params' (a rewound or pruned network, `optlab_jax.pruning`); the seed still draws
  the batches.
  """
  checks.check_in_range("seed", seed, -2**31, 2**31 - 1)  # seeds are traced as int32
  (history,) = _train(
      problem, lambda hp: tx, {}, np.int32(seed), False, _Compiled(), steps=steps, batch_size=batch_size,
      eval_every=eval_every, monitor=monitor, monitor_every=monitor_every, loop=loop, on_progress=on_progress,
      checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir, mesh=mesh, params=params,
  )
  return history


def fit_vmapped(
    problem: Problem,
    tx_factory: Callable[..., optax.GradientTransformation],
    hparams: dict[str, Any],
    seeds: Any,
    *,
    vmap: bool = True,
    on_progress: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> list[History]:
  """Runs i = 0 … n−1 of `fit(problem, tx_factory(**{k: v[i]}), seed=seeds[i], **kwargs)` as ONE
  compiled program, vmapped over the runs.

  The optimizer is `optax.inject_hyperparams(tx_factory)`, so the numeric hyperparameters in
  `hparams` (name -> n values) are traced, not baked into the program. `vmap=False` runs the
  points one after another through one compiled, unbatched program instead (what `should_vmap`
  picks where vmapping would be slower). `on_progress` gets the steps done summed over the runs.
  With `checkpoint_dir`, the vmapped program checkpoints there as one; with vmap=False, point i
  checkpoints in its subdirectory `i`. `params` (see `fit`) has a leading axis: run i starts from
  `params[i]`.
  """
  seeds = np.asarray(seeds)
  if seeds.ndim != 1 or len(seeds) == 0 or not np.issubdtype(seeds.dtype, np.integer):
    raise ValueError(f"seeds={seeds!r} must be a non-empty 1-D array of integers")
  for seed in seeds:
    checks.check_in_range("seed", int(seed), -2**31, 2**31 - 1)
  hparams = {k: np.asarray(v) for k, v in hparams.items()}
  for name, values in hparams.items():
    if values.shape != seeds.shape:
      raise ValueError(f"{name} has shape {values.shape}; expected ({len(seeds)},), one value per seed")
  make_tx = lambda hp: optax.inject_hyperparams(tx_factory)(**hp)
  run, seeds, n = _Compiled(), seeds.astype(np.int32), len(seeds)
  directory = kwargs.get("checkpoint_dir")
  report = lambda offset, scale: on_progress and (lambda done: on_progress(offset + scale * done))
  start = kwargs.get("params")
  if vmap:
    return _train(problem, make_tx, hparams, seeds, True, run, on_progress=report(0, n), **kwargs)
  return [
      h
      for i in range(n)
      for h in _train(
          problem, make_tx, {k: v[i] for k, v in hparams.items()}, seeds[i], False, run,
          on_progress=report(i * kwargs.get("steps", 0), 1),
          **kwargs | ({"checkpoint_dir": pathlib.Path(directory) / str(i)} if directory else {})
          | ({} if start is None else {"params": jax.tree.map(lambda x, i=i: x[i], start)}),
      )
  ]


def step_flops(problem: Problem, tx: optax.GradientTransformation, batch_size: int | None = None) -> float:
  """XLA's estimate of the floating-point operations of one training step of one run (kept by
  the step's program text, `program_cache`: a rerun traces the step but does not lower it)."""
  init, step = _point_fns(problem, lambda hp: tx, batch_size)
  state = jax.eval_shape(init, np.int32(0), {})
  data = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), problem.data)
  return program_cache.cost(jax.jit(step).trace(state, {}, data, np.int32(0)))


def should_vmap(
    problem: Problem,
    n_points: int,
    *,
    tx: optax.GradientTransformation | None = None,
    batch_size: int | None = None,
) -> bool:
  """Whether `fit_vmapped` over `n_points` runs beats running them one by one (`vmap=False`).

  Vmapping pays where one run leaves the hardware idle or its fixed costs dominate. On XLA CPU
  a vmapped matmul is a loop of the runs' matmuls, so vmapping gains little per step, and once a
  step is big enough to keep the cores busy it loses: the rule is vmap iff `step_flops` (of
  `tx`, SGD if None) <= `VMAP_MAX_FLOPS`, and never for convolutions on CPU (vmapped over runs
  they become grouped convolutions). The bound comes from experiments/bench_sweep.py on 2 quiet
  cores (8 Adam runs of 200 steps at batch 128; `VMAP_MAX_FLOPS` lists the rows). A machine busy
  with other work moves the crossing down (vmapped / sequential on 2 loaded cores: 0.97 at
  67 MFLOP, 1.31 at 159), so there the band up to 250 MFLOP can run vmapped at up to ~1.3× the
  sequential time.
  Accelerators are always vmapped (not measured here).
  """
  if n_points < 2:
    return False
  if jax.default_backend() != "cpu":
    return True
  if has_conv(problem):
    return False
  return step_flops(problem, optax.sgd(0.1) if tx is None else tx, batch_size) <= VMAP_MAX_FLOPS
