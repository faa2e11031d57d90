"""Where a sweep's groups run: in this process (the default; `threads` groups at a time), or as Ray tasks.

An executor's `map(groups, fit_group, progress, log)` calls `fit_group(runs, progress, start)`
(`sweep._fit_group`: yields (run, History) as its runs finish) on every group of runs and yields
each (run, History) back to the driver, which alone writes results (`results.Store`).
`progress` is the driver's bar: `at(steps)`, `ticker(start)`, `describe(groups running)`.

`Ray` submits one task per group to a cluster: a local one it starts (`ray.init(num_cpus=...)`)
when given no address, or the one at `address` ("auto": the cluster this machine has joined).
A task whose worker dies is retried (`max_retries`) and the driver says so; its runs are
recorded when the retry returns, once. Tasks report their steps to a small actor that the
driver polls for the bar. A killed driver loses only the groups in flight: re-running skips
the recorded runs, and runs with `train.checkpoint_every` resume from their checkpoints.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import jax

from optlab_jax import train

# The JAX settings of the driver that change a task's numbers or errors, passed to every task.
_JAX_SETTINGS = ("jax_enable_x64", "jax_numpy_rank_promotion", "jax_default_matmul_precision",
                 "jax_compilation_cache_dir")
_POLL_SECONDS = 0.5  # how often the driver reads the tasks' progress
_THREAD_POLL_SECONDS = 0.1  # and the in-process threads' (a dict read)
DEFAULT_THREADS = 1  # in-process groups at a time (2 measured slower on a 2-core CPU: README)
TRACKER_PREFIX = "optlab_progress_"  # the name of a sweep's progress actor, before a unique suffix


class MissingExtra(ImportError):
  """An executor's optional dependency is not installed; the message says how to install it."""


def _steps(runs: list[Any]) -> int:
  return sum(r.config["train"]["steps"] for r in runs)


class _GroupSteps:
  """A group's stand-in for the driver's bar in a worker thread: records the group's steps done."""

  def __init__(self, counts: dict[int, int], index: int):
    self.counts, self.index = counts, index

  def ticker(self, start: int) -> Callable[[int], None]:
    return lambda steps: self.counts.__setitem__(self.index, start + steps)


class InProcess:
  """Runs the groups in this process, `threads` of them at a time (default 1: one after another).

  With more threads one group can compile or train while another does; a program that two groups
  share (the monitor's, per problem) compiles once, and each group's numbers are the same either
  way; runs are yielded as they finish. On the 2-core CPU this was measured on, XLA's compiler
  already uses both cores, so two threads made the 50-step quickstart slower (README, Performance).
  """

  def __init__(self, threads: int | None = None):
    threads = DEFAULT_THREADS if threads is None else threads
    if type(threads) is not int or threads < 1:
      raise ValueError(f"threads={threads!r} must be a positive integer")
    self.threads = threads

  def map(self, groups, fit_group, progress, log=None) -> Iterator[tuple[Any, Any]]:
    del log  # nothing to report: a failure raises here
    if self.threads == 1 or len(groups) < 2:
      done = 0
      for runs in groups:
        progress.describe([runs])
        yield from fit_group(runs, progress, done)
        done += _steps(runs)
      return
    yield from self._threaded(groups, fit_group, progress)

  def _threaded(self, groups, fit_group, progress) -> Iterator[tuple[Any, Any]]:
    finished: queue.Queue = queue.Queue()   # (group index, (run, History) | None at its end | exception)
    counts: dict[int, int] = {}

    def work(i: int) -> None:
      try:
        for pair in fit_group(groups[i], _GroupSteps(counts, i), 0):
          finished.put((i, pair))
        finished.put((i, None))
      except BaseException as e:  # re-raised by the driver
        finished.put((i, e))

    pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="optlab-group")
    try:
      for i in range(len(groups)):
        pool.submit(work, i)
      running, done = set(range(len(groups))), 0
      while running:
        try:
          i, item = finished.get(timeout=_THREAD_POLL_SECONDS)
        except queue.Empty:
          item = ()
        if isinstance(item, BaseException):
          raise item
        if item is None:
          running.discard(i)
          done += _steps(groups[i])
          counts.pop(i, None)
        elif item:
          yield item
        steps = dict(counts)   # a snapshot: the threads write to it
        progress.describe([groups[j] for j in sorted(running & set(steps))])
        progress.at(done + sum(steps.get(j, 0) for j in running))
    finally:
      pool.shutdown(wait=True, cancel_futures=True)


class _TaskProgress:
  """A task's stand-in for the driver's bar: reports its group's steps to the tracker actor."""

  def __init__(self, tracker: Any, index: int):
    self.tracker, self.index = tracker, index

  def ticker(self, start: int) -> Callable[[int], None]:
    return lambda steps_done: self.tracker.report.remote(self.index, start + steps_done)


def _fit_group_task(fit_group, runs, tracker, index, settings) -> list[tuple[Any, Any]]:
  """The body of a Ray task: one group's runs, with the driver's JAX settings; params on the host."""
  tracker.start.remote(index, os.getpid())
  for name, value in settings.items():
    if name != "jax_compilation_cache_dir":
      jax.config.update(name, value)
    elif value:
      train.use_compilation_cache(value)
  return [(run, train.History(**{**vars(h), "params": jax.device_get(h.params)}))
          for run, h in fit_group(runs, _TaskProgress(tracker, index), 0)]


def _tracker_class() -> type:
  """The progress actor's class, defined in a function so that Ray pickles it by value: the
  actor's process then imports neither JAX nor this package (1 s to start instead of 11)."""

  class Tracker:
    """Each group's steps done (by its latest attempt) and the pids of its attempts."""

    def __init__(self):
      self.steps, self.attempts = {}, {}

    def start(self, index: int, pid: int) -> None:
      self.attempts.setdefault(index, []).append(pid)
      self.steps[index] = 0

    def report(self, index: int, steps: int) -> None:
      self.steps[index] = steps

    def snapshot(self) -> tuple[dict[int, int], dict[int, list[int]]]:
      return self.steps, self.attempts

  return Tracker


class Ray:
  """Runs each group as a Ray task: on a local cluster of `num_cpus` CPUs, or at `address`.

  Raises `MissingExtra` at construction when Ray is not installed.
  """

  def __init__(self, address: str | None = None, num_cpus: int | None = None, max_retries: int = 3):
    try:
      import ray  # noqa: F401  (an optional extra)
    except ImportError as e:
      raise MissingExtra("--executor ray needs Ray, an optional extra: pip install -e '.[ray]'") from e
    if address is not None and num_cpus is not None:
      raise ValueError(f"num_cpus={num_cpus} sizes a local cluster; the cluster at address={address!r} has its own")
    if num_cpus is not None and (type(num_cpus) is not int or num_cpus < 1):
      raise ValueError(f"num_cpus={num_cpus!r} must be a positive integer")
    self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries

  def _init(self, ray: Any) -> None:
    with warnings.catch_warnings():  # Ray starts its processes with fork + exec, which JAX's warning does not know
      warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
      if self.address is None:  # a local cluster, whose processes inherit this process's environment
        ray.init(num_cpus=self.num_cpus, include_dashboard=False)
      else:  # workers elsewhere import this package from the copy uploaded with the job
        ray.init(address=self.address, runtime_env={"py_modules": [str(Path(__file__).parent)]})

  def map(self, groups, fit_group, progress, log=None) -> Iterator[tuple[Any, Any]]:
    import ray

    if not groups:  # nothing to run: no cluster to start
      return
    started = not ray.is_initialized()
    if started:
      self._init(ray)
    # Named, so that another process can read a sweep's progress: ray.get_actor(name).snapshot.remote().
    tracker = ray.remote(num_cpus=0)(_tracker_class()).options(name=f"{TRACKER_PREFIX}{uuid.uuid4().hex}").remote()
    try:
      yield from self._map(ray, tracker, groups, fit_group, progress, log)
    finally:
      ray.kill(tracker)
      if started:
        ray.shutdown()

  def _map(self, ray, tracker, groups, fit_group, progress, log) -> Iterator[tuple[Any, Any]]:
    task = ray.remote(num_cpus=1, max_retries=self.max_retries)(_fit_group_task)
    settings = {name: getattr(jax.config, name) for name in _JAX_SETTINGS}
    pending = {task.remote(fit_group, runs, tracker, i, settings): i for i, runs in enumerate(groups)}
    done, told = 0, set()
    while pending:
      ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_SECONDS)
      steps, attempts = ray.get(tracker.snapshot.remote())
      for i in sorted(set(attempts) & set(pending.values()) - told):
        if len(attempts[i]) > 1 and log is not None:
          told.add(i)
          log(f"group {i + 1}: its worker (pid {attempts[i][-2]}) died; retried in pid {attempts[i][-1]}")
      progress.describe([groups[i] for i in pending.values() if i in attempts])
      progress.at(done + sum(steps.get(i, 0) for i in pending.values()))
      for ref in ready:
        i = pending.pop(ref)
        yield from ray.get(ref)
        done += _steps(groups[i])
