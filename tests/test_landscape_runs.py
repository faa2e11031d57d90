"""A config's `landscape:` section: `optlab run` writes each run's landscape file, consistent with
the sweep's own record of that run, resumes without recomputing, and names a bad key's path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optlab_jax import cli, config, landscape_runs, sweep

CONFIG = """
problem: {name: digits_mlp, hidden: [4]}
optimizer: {name: adam, learning_rate: 3.0e-2}
train: {steps: 20, batch_size: full}
seeds: [0, 1]
landscape: {grid: 5, record_every: 5, connect_steps: 5, spectrum_iters: 8, spectrum_probes: 1}
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  root = tmp_path_factory.mktemp("landscape")
  path, out = root / "cfg.yaml", root / "out"
  path.write_text(CONFIG)
  assert cli.main(["run", str(path), "--out", str(out), "--quiet", "--no-compile-cache"]) == 0
  return path, out


def _records(out):
  return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def test_each_run_gets_a_landscape_that_ends_at_the_sweeps_own_final_loss(ran):
  """The retrained run is the sweep's run: the interpolation's end (α = 1, the solution) has the
  loss runs.jsonl records for it, its start is the initialisation, and the trajectory's last
  projected point lies inside the slice. A retrain with another seed or key would miss."""
  _, out = ran
  for record in _records(out):
    arrays = np.load(out / "landscape" / f"{record['point']}_seed{record['config']['seed']}.npz")
    assert arrays["interp_alphas"][0] == 0.0 and arrays["interp_alphas"][-1] == 1.0
    np.testing.assert_allclose(arrays["interp_loss"][-1], record["final"]["loss"], rtol=1e-5)
    assert arrays["interp_loss"][0] > 2 * arrays["interp_loss"][-1]  # trained: init is far worse
    xs, ys, (x, y) = arrays["slice2d_xs"], arrays["slice2d_ys"], arrays["trajectory"][-1]
    assert xs[0] < x < xs[-1] and ys[0] < y < ys[-1]
    assert arrays["slice2d_loss"].shape == (5, 5) and len(arrays["trajectory"]) == 20 // 5 + 1


def test_the_connection_is_in_the_second_seeds_file_and_a_rerun_recomputes_nothing(ran, capsys):
  path, out = ran
  files = sorted((out / "landscape").glob("*.npz"))
  assert len(files) == 2
  seed1 = np.load(next(f for f in files if f.stem.endswith("seed1")))
  assert "connect_curve_barrier" in seed1 and float(seed1["connect_curve_barrier"]) <= float(seed1["connect_line_barrier"])
  assert "connect_ts" not in np.load(next(f for f in files if f.stem.endswith("seed0")))
  stamps = {f: f.stat().st_mtime_ns for f in files}
  capsys.readouterr()
  assert cli.main(["run", str(path), "--out", str(out), "--quiet", "--no-compile-cache"]) == 0
  assert {f: f.stat().st_mtime_ns for f in files} == stamps
  assert "PCA explains" not in capsys.readouterr().out


@pytest.mark.slow  # the rerun test above covers the resume path; this one retrains seed 0
def test_a_lost_second_file_is_rebuilt_with_its_connection(ran):
  """Resuming with seed 0's file kept: seed 0 is retrained only for its solution, and the new seed 1
  file equals the one it replaces (same runs, same connection)."""
  path, out = ran
  seed1 = next((out / "landscape").glob("*_seed1.npz"))
  before = dict(np.load(seed1))
  seed1.unlink()
  assert cli.main(["run", str(path), "--out", str(out), "--quiet", "--no-compile-cache"]) == 0
  after = np.load(seed1)
  assert set(after) == set(before)
  for k in ("interp_loss", "slice2d_loss", "connect_curve", "connect_line"):
    np.testing.assert_allclose(after[k], before[k], rtol=1e-6)


def test_a_bad_landscape_key_names_its_path(tmp_path):
  path = tmp_path / "bad.yaml"
  path.write_text(CONFIG.replace("grid: 5", "grdi: 5").replace("connect_steps: 5", "connect_optimizer: adm"))
  with pytest.raises(config.ConfigError) as e:
    config.load(str(path))
  text = str(e.value)
  assert "landscape.grdi" in text and "landscape.connect_optimizer" in text and "'adam'" in text


def test_a_run_that_ends_between_two_records_ends_its_trajectory_at_its_final_params(tmp_path):
  path = tmp_path / "cfg.yaml"
  path.write_text(CONFIG.replace("record_every: 5", "record_every: 7"))
  cfg = config.load(str(path)).runs[0].config
  problem = config.build_problem(cfg["problem"])
  init, final, trajectory = landscape_runs._trajectory(problem, cfg, 7)
  assert len(jax.tree.leaves(trajectory)[0]) == 4  # init, steps 7 and 14, the final step 20
  rows = np.stack([ravel_pytree(jax.tree.map(lambda x: x[i], trajectory))[0] for i in range(4)])
  np.testing.assert_array_equal(rows[0], ravel_pytree(init)[0])
  np.testing.assert_array_equal(rows[-1], ravel_pytree(sweep.refit(cfg).params)[0])
  assert not np.array_equal(rows[-1], rows[-2])


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="counts the process's memory mappings (Linux)")
def test_an_analysed_point_leaves_none_of_its_programs_in_memory(tmp_path):
  """A point's programs close over its own problem; kept by JAX's jit caches, they held ~900 memory
  mappings a run (a digits MLP 64-64) until a 60-run config exhausted the kernel's limit and crashed."""
  path = tmp_path / "cfg.yaml"
  path.write_text(CONFIG.replace("seeds: [0, 1]", "seeds: [0]") + "sweep: {grid: {problem.hidden: [[4], [5]]}}\n")
  experiment = config.load(str(path))
  maps = lambda: len(Path("/proc/self/maps").read_text().splitlines())
  first = dataclasses.replace(experiment, runs=experiment.runs[:1])
  landscape_runs.run(first, tmp_path / "out", echo=lambda _: None)
  before = maps()
  landscape_runs.run(experiment, tmp_path / "out", echo=lambda _: None)  # the point not yet analysed
  assert maps() - before < 300, maps() - before  # measured 39 (+1,161 without clearing the caches)
