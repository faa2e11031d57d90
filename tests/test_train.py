"""The training loop against a hand-written optax loop; vmapped sweeps against separate runs."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys

import jax
import jax.extend
import numpy as np
import optax
import pytest

from optlab_jax import optim, problems, train

STEPS, BATCH, EVERY = 12, 16, 4
LRS = (3e-3, 1e-2, 3e-2)
SEEDS = (0, 1, 2, 3)


@functools.cache
def small_problem():
  return problems.build(
      "teacher_student", input_dim=5, output_dim=2, teacher_hidden=(3,), student_hidden=(6,),
      num_train=64, num_test=32, dtype="float64",
  )


@jax.jit
def monitor(params, grads, updates, opt_state, batch, step):
  return {
      "step": step,
      "grad_norm": optax.tree.norm(grads),
      "update_norm": optax.tree.norm(updates),
      "batch_loss": small_problem().loss(params, batch),
  }


KW = dict(steps=STEPS, batch_size=BATCH, eval_every=EVERY, monitor=monitor, monitor_every=EVERY)


@functools.cache
def fitted(lr: float, seed: int, loop: str = "scan") -> train.History:
  return train.fit(small_problem(), optax.adam(lr), seed=seed, loop=loop, **KW)


def reference(lr: float, seed: int):
  """A plain optax loop with the documented batch keys: (losses, monitor rows, evals, params)."""
  problem, tx = small_problem(), optax.adam(lr)
  init_key, data_key = jax.random.split(jax.random.key(seed))
  params = problem.init_params(init_key)
  state = tx.init(params)

  @jax.jit
  def step(params, state, t):
    batch = problem.sample_batch(jax.random.fold_in(data_key, t), BATCH)
    loss, grads = jax.value_and_grad(problem.loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, monitor(params, grads, updates, state, batch, t)

  losses, monitored, evals = [], [], []
  for t in range(STEPS):
    params, state, loss, values = step(params, state, np.int32(t))
    losses.append(float(loss))
    if (t + 1) % EVERY == 0:
      monitored.append(values)
      evals.append(problem.eval_metrics(params))
  return np.array(losses), monitored, evals, params


def assert_same_run(history: train.History, other: train.History, rtol: float = 1e-6):
  np.testing.assert_allclose(history.loss, other.loss, rtol=rtol)
  assert history.final.keys() == other.final.keys()
  np.testing.assert_allclose(list(history.final.values()), list(other.final.values()), rtol=rtol)
  for name in other.monitor:
    np.testing.assert_allclose(history.monitor[name], other.monitor[name], rtol=rtol)
  for name in other.eval:
    np.testing.assert_allclose(history.eval[name], other.eval[name], rtol=rtol)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol), history.params, other.params)


@pytest.mark.parametrize("loop", ["scan", "python"])
def test_fit_matches_a_hand_written_optax_loop(loop):
  history = fitted(LRS[0], 0, loop)
  losses, monitored, evals, params = reference(LRS[0], 0)
  assert history.loop == loop and history.status == "ok" and history.diverged_at is None
  np.testing.assert_allclose(history.loss, losses, rtol=1e-10)
  np.testing.assert_array_equal(history.monitor_steps, [4, 8, 12])
  np.testing.assert_array_equal(history.eval_steps, [4, 8, 12])
  np.testing.assert_array_equal(history.monitor["step"], [3, 7, 11])
  for name in ("grad_norm", "update_norm", "batch_loss"):
    np.testing.assert_allclose(history.monitor[name], [float(m[name]) for m in monitored], rtol=1e-10)
  for name in ("loss", "test_loss"):
    np.testing.assert_allclose(history.eval[name], [float(e[name]) for e in evals], rtol=1e-10)
    np.testing.assert_allclose(history.final[name], float(evals[-1][name]), rtol=1e-10)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), history.params, params)
  # the monitor's batch_loss is the loss the step recorded: params and batch before the update
  np.testing.assert_allclose(history.monitor["batch_loss"], history.loss[[3, 7, 11]], rtol=1e-12)


def test_scan_and_python_loops_give_the_same_numbers():
  assert_same_run(fitted(LRS[0], 0, "scan"), fitted(LRS[0], 0, "python"), rtol=1e-12)


def test_vmapped_seeds_match_separate_fits():
  progress = []
  histories = train.fit_vmapped(
      small_problem(), optax.adam, {"learning_rate": np.full(4, LRS[0])}, np.array(SEEDS),
      on_progress=progress.append, **KW,
  )
  assert progress == [4 * 4, 8 * 4, 12 * 4]
  for seed, history in zip(SEEDS, histories):
    assert_same_run(history, fitted(LRS[0], seed))
  assert not np.allclose(histories[0].loss, histories[1].loss)


@pytest.mark.parametrize("vmap", [True, False])
def test_vmapped_learning_rates_match_separate_fits(vmap):
  histories = train.fit_vmapped(
      small_problem(), optax.adam, {"learning_rate": np.array(LRS)}, np.zeros(3, int), vmap=vmap, **KW
  )
  for lr, history in zip(LRS, histories):
    assert_same_run(history, fitted(lr, 0))


def test_divergence_is_recorded_and_stops_early():
  problem = problems.build("quadratic", dim=4, condition=10.0)
  progress = []
  history = train.fit(problem, optax.sgd(1e6), steps=400, eval_every=5, on_progress=progress.append)
  assert history.status == "diverged" and 1 <= history.diverged_at <= 5
  assert not np.isfinite(history.loss[history.diverged_at - 1])
  assert np.isnan(history.loss[history.diverged_at:]).all()
  assert np.isfinite(history.loss[:history.diverged_at - 1]).all()
  assert progress == [5]  # stopped after the first chunk
  fine, diverged = train.fit_vmapped(
      problem, optax.sgd, {"learning_rate": np.array([0.01, 1e6], np.float32)}, np.zeros(2, int), steps=20, eval_every=5
  )
  assert fine.status == "ok" and diverged.status == "diverged"
  assert np.isfinite(fine.loss).all() and fine.final["loss"] < fine.loss[0]
  assert_same_run(fine, train.fit(problem, optax.sgd(0.01), steps=20, eval_every=5))


def _primitives_inside_control_flow(jaxpr, inside=False):
  """{(primitive name, whether under scan/cond/while)} of every equation, recursively."""
  found = set()
  for eqn in jaxpr.eqns:
    found.add((eqn.primitive.name, inside))
    nested = inside or eqn.primitive.name in ("scan", "cond", "while")
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if isinstance(sub, jax.extend.core.Jaxpr):
          found |= _primitives_inside_control_flow(sub, nested)
  return found


class _Traced(Exception):
  """Stops `train` once the program under test is traced (compiling it would only cost time)."""


def _traced_programs(monkeypatch, stop_at: str | None = None) -> dict:
  """Records the jaxpr of every program `train` compiles; raises `_Traced` after `stop_at`."""
  programs, compile_ = {}, train._Compiled.__call__

  def spy(self, name, fn, *args, **kw):
    programs.setdefault(name, jax.make_jaxpr(fn)(*args).jaxpr)
    if name == stop_at:
      raise _Traced
    return compile_(self, name, fn, *args, **kw)

  monkeypatch.setattr(train._Compiled, "__call__", spy)
  return programs


def test_cnn_under_auto_keeps_convolutions_out_of_control_flow(monkeypatch):
  problem = problems.build("digits_cnn", channels=(2, 2))
  assert train.choose_loop(problem) == ("python" if jax.default_backend() == "cpu" else "scan")
  programs = _traced_programs(monkeypatch)
  grad_norm = jax.jit(lambda params, grads, *_: {"grad_norm": optax.tree.norm(grads)})
  kw = dict(steps=2, batch_size=4, monitor=grad_norm, monitor_every=2)
  history = train.fit(problem, optax.sgd(0.1), loop="python", **kw)
  assert history.loop == "python" and set(programs) == {"init", "step", "step_with_monitor_args", "metrics"}
  assert np.isfinite(history.loss).all() and history.monitor["grad_norm"].shape == (1,)
  for name in ("step", "step_with_monitor_args"):
    found = _primitives_inside_control_flow(programs[name])
    assert ("conv_general_dilated", False) in found and ("conv_general_dilated", True) not in found
  # the same walk finds the convolutions inside the scan loop's program
  programs = _traced_programs(monkeypatch, stop_at="scan2")
  with pytest.raises(_Traced):
    train.fit(problem, optax.sgd(0.1), loop="scan", **kw)
  assert ("conv_general_dilated", True) in _primitives_inside_control_flow(programs["scan2"])


def test_the_monitor_is_its_own_program_never_inside_the_scan(monkeypatch):
  # The monitor's cost (a Lanczos loop, say) must not be compiled into every training program:
  # it is one program of its own, called between chunks that end at the monitor steps.
  programs = _traced_programs(monkeypatch)
  erf_monitor = lambda p, g, *_: {"g": jax.scipy.special.erf(optax.tree.norm(g))}  # a marker primitive
  histories = train.fit_vmapped(
      problems.build("quadratic", dim=3), optax.sgd, {"learning_rate": np.array([0.1, 0.2])}, np.arange(2),
      steps=6, eval_every=3, monitor=erf_monitor, monitor_every=2, loop="scan")
  assert set(programs) == {"init", "scan1", "monitor", "metrics"}  # gcd(3, 2) = 1-step chunks
  assert ("erf", True) not in _primitives_inside_control_flow(programs["scan1"])
  assert ("erf", False) in _primitives_inside_control_flow(programs["monitor"])
  for history in histories:
    np.testing.assert_array_equal(history.monitor_steps, [2, 4, 6])
    np.testing.assert_array_equal(history.eval_steps, [3, 6])


def test_should_vmap_and_step_flops():
  tx = optax.sgd(0.1)
  mlp = problems.build("digits_mlp", hidden=(64, 64))
  # forward 2·B·|W|, weight gradients 2·B·|W|, input gradients 2·B·|W| except the first layer's
  weights = 64 * 64 + 64 * 64 + 64 * 10
  expected = 2 * 128 * (3 * weights - 64 * 64)
  np.testing.assert_allclose(train.step_flops(mlp, tx, 128), expected, rtol=0.05)
  assert train.should_vmap(mlp, 8, tx=tx, batch_size=128) == (expected <= train.VMAP_MAX_FLOPS)
  assert not train.should_vmap(mlp, 1, tx=tx, batch_size=128)
  big = problems.build("digits_mlp", hidden=(1024, 1024))
  assert train.step_flops(big, tx, 128) > train.VMAP_MAX_FLOPS
  assert not train.should_vmap(big, 8, tx=tx, batch_size=128)
  if jax.default_backend() == "cpu":
    assert not train.should_vmap(problems.build("digits_cnn"), 8, tx=tx, batch_size=128)


def test_bad_arguments_raise_value_errors():
  problem = problems.build("quadratic", dim=3)
  with pytest.raises(ValueError, match=r"loop='fast' is not supported; expected one of \('auto', 'scan', 'python'\)"):
    train.fit(problem, optax.sgd(0.1), steps=2, loop="fast")
  with pytest.raises(ValueError, match="^monitor_every=0 is out of range"):
    train.fit(problem, optax.sgd(0.1), steps=2, monitor=lambda *a: {})
  with pytest.raises(ValueError, match="^steps=0 is out of range"):
    train.fit(problem, optax.sgd(0.1), steps=0)
  with pytest.raises(ValueError, match=r"learning_rate has shape \(3,\); expected \(2,\)"):
    train.fit_vmapped(problem, optax.sgd, {"learning_rate": np.ones(3)}, np.arange(2), steps=2)


_CACHED_RUN = """
import sys, jax, numpy as np, optax
from optlab_jax import optim, problems, train
train.use_compilation_cache(sys.argv[1], min_compile_secs=0.0)  # these tiny programs compile in < 0.1 s
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
history = train.fit(problems.build("quadratic", dim=3), optax.sgd(0.1), steps=4, eval_every=2)
print(len(hits), repr(history.loss.tolist()))
"""


def test_a_second_process_loads_its_programs_from_the_persistent_cache(tmp_path):
  run = lambda: subprocess.run([sys.executable, "-c", _CACHED_RUN, str(tmp_path / "cache")],
                               capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
  first_hits, first_loss = run()
  assert first_hits == "0" and any((tmp_path / "cache").iterdir())
  second_hits, second_loss = run()
  assert int(second_hits) >= 3 and second_loss == first_loss  # init, scan, metrics; same numbers


@pytest.mark.parametrize("vmap", [True, False])
def test_params_start_the_run_instead_of_the_init(vmap):
  problem, tx = small_problem(), optax.adam(LRS[0])
  start = jax.vmap(problem.init_params)(jax.random.split(jax.random.key(7), 2))  # not any seed's init
  kw = dict(steps=STEPS, batch_size=BATCH, eval_every=EVERY)
  runs = train.fit_vmapped(problem, optax.adam, {"learning_rate": np.full(2, LRS[0])}, np.array([0, 1]),
                           params=start, vmap=vmap, **kw)
  for i, history in enumerate(runs):
    params = jax.tree.map(lambda x: x[i], start)
    assert_same_run(history, train.fit(problem, tx, seed=i, params=params, **kw), rtol=1e-12)
    # step 0's loss is taken at the given params, not at the seed's init, on the seed's first batch
    init_key, data_key = jax.random.split(jax.random.key(i))
    batch = problem.sample_batch(jax.random.fold_in(data_key, 0), BATCH)
    np.testing.assert_allclose(history.loss[0], problem.loss(params, batch), rtol=1e-12)
    assert not np.allclose(history.loss[0], problem.loss(problem.init_params(init_key), batch))
  frozen = train.fit(problem, optax.sgd(0.0), seed=0, params=params, steps=3)
  jax.tree.map(np.testing.assert_array_equal, frozen.params, params)  # returned bit for bit


def test_params_of_the_wrong_shape_name_the_argument():
  problem = small_problem()
  params = problem.init_params(jax.random.key(0))
  with pytest.raises(ValueError, match="params"):
    train.fit(problem, optax.sgd(0.1), steps=2, params=jax.tree.map(lambda x: x[..., :1], params))
  with pytest.raises(ValueError, match="leading axis"):  # fit_vmapped needs one entry per run
    train.fit_vmapped(problem, optax.sgd, {"learning_rate": np.full(2, 0.1)}, np.array([0, 1]), steps=2,
                      params=params)


def test_groups_of_one_problem_compile_the_eval_metrics_once():
  """A sweep's optimizer groups evaluate one problem: its metrics are one program, compiled by the
  first group and reused by the next, with each group's own numbers."""
  problem, traces = problems.build("quadratic", dim=4, condition=10.0), []
  counted = dataclasses.replace(problem, metrics_fn=lambda data, params: traces.append(1) or problem.metrics_fn(data, params))
  fit = lambda name: train.fit_vmapped(counted, optim.get(name), {"learning_rate": np.array([0.05, 0.1])},
                                       np.arange(2), steps=4, eval_every=2)
  groups = {name: fit(name) for name in ("sgd", "adam")}
  assert len(traces) == 1
  assert not np.allclose(groups["sgd"][0].final["loss"], groups["adam"][0].final["loss"])
  for histories in groups.values():
    for history in histories:
      for name, value in jax.device_get(problem.metrics_fn(problem.data, history.params)).items():
        np.testing.assert_allclose(history.final[name], value, rtol=1e-6, err_msg=name)
