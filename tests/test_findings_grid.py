"""Claims 14 (AdamW ≠ Adam + L2) and 18 (stale gradients shrink the stable learning rate) of issue
#12 at a small size, each against a reference that is not the code under test: a float64 numpy
loop of the delayed update, the roots of its characteristic polynomial, a hand-built grid.
"""

from __future__ import annotations

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab_jax import config, findings, grid_plots, optim, sweep
from optlab_jax.optim.delayed import stability_edge


def _numpy_delayed_momentum(a, x0, lr, momentum, tau, steps):
  """x_{t+1} = x_t − lr m_t, m_t = β m_{t−1} + g(x_{t−τ}), g_s = 0 for s < 0 (float64)."""
  xs, m = [np.array(x0, np.float64)], np.zeros_like(x0, np.float64)
  for t in range(steps):
    g = a @ xs[t - tau] if t >= tau else np.zeros_like(m)
    m = momentum * m + g
    xs.append(xs[t] - lr * m)
  return np.stack(xs)


@pytest.mark.parametrize("tau", [0, 1, 3])
def test_delayed_matches_a_numpy_loop_of_the_stale_update(tau):
  # Catches an off-by-one slot in the ring (τ ± 1 steps stale), a buffer that is not zero at first,
  # and a base that is not given the stale gradient.
  rng = np.random.default_rng(tau)
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  a = q @ np.diag([0.5, 1.0, 2.0]) @ q.T
  x0 = rng.normal(size=3)
  tx = optim.get("delayed")(0.1, tau=tau, base="sgd", base_kwargs={"momentum": 0.5})
  params, state, got = jnp.asarray(x0), tx.init(jnp.asarray(x0)), [x0]
  for _ in range(12):
    updates, state = tx.update(jnp.asarray(a) @ params, state, params)
    params = optax.apply_updates(params, updates)
    got.append(np.asarray(params))
  np.testing.assert_allclose(np.stack(got), _numpy_delayed_momentum(a, x0, 0.1, 0.5, tau, 12), rtol=1e-12)


def test_delayed_refuses_a_negative_or_traced_tau():
  with pytest.raises(ValueError, match="tau"):
    optim.get("delayed")(0.1, tau=-1)
  with pytest.raises(ValueError, match="static_args"):
    optax.inject_hyperparams(optim.get("delayed"))(learning_rate=0.1, tau=2).init(jnp.zeros(2))


LRS, DECAYS = np.logspace(-4, -1, 7), np.logspace(-5, 0, 11)


def _valley(best_log_decay, seeds=3):
  """[seeds, ny, nx] a loss whose minimum over the decay sits at `best_log_decay(log lr)`, plus a
  column offset (some learning rates are better) and a little seed noise."""
  lx, ly = np.meshgrid(np.log10(LRS), np.log10(DECAYS))
  base = (ly - best_log_decay(lx)) ** 2 + 0.1 * (lx + 2.5) ** 2
  return np.stack([base + 1e-3 * np.random.default_rng(s).random(base.shape) for s in range(seeds)]) + 1.0


@pytest.mark.parametrize("slope", [0.0, -1.0, 0.5])
def test_best_decay_recovers_the_slope_of_the_valley(slope):
  # Separable (0), diagonal (−1) and an lr-multiplied decay read in the paper's λ (+0.5, say): a
  # fit that ignored x, or took the best column instead of the best row, would miss each.
  grid = findings.Grid(LRS, DECAYS, _valley(lambda lx: -2.5 + slope * (lx + 2.5)))
  fits = findings.best_decay(grid, within=1e9)
  np.testing.assert_allclose([f["slope"] for f in fits], slope, atol=0.15)
  assert all(f["columns"] == len(LRS) and f["at_edge"] == 0 for f in fits)


def test_best_decay_leaves_out_the_columns_outside_the_good_region():
  # A diverged learning rate (NaN column) and an undertrained one (flat, high) must not pull the line.
  values = _valley(lambda lx: np.full_like(lx, -2.5))
  values[:, :, -1] = np.nan
  values[:, :, 0] = 50.0
  values[:, 0, 0] = 49.0  # its best sits at the grid's edge, far from the valley's row
  fits = findings.best_decay(findings.Grid(LRS, DECAYS, values))
  assert [f["columns"] for f in fits] == [5.0] * 3
  np.testing.assert_allclose([f["slope"] for f in fits], 0.0, atol=0.15)


def test_grids_reads_each_optimizers_seeds_onto_the_grid(tmp_path):
  # Catches swapped axes, seeds mixed up and diverged runs counted as numbers.
  truth = {"adamw": _valley(lambda lx: np.full_like(lx, -2.0), 2)[:, :3, :3]}
  lines = []
  for s in range(2):
    for i, wd in enumerate(DECAYS[:3]):
      for j, lr in enumerate(LRS[:3]):
        status = "diverged" if (s, i, j) == (1, 2, 1) else "ok"
        lines.append({"status": status, "final": {"test_loss": truth["adamw"][s, i, j], "test_accuracy": 0.25 * s},
                      "config": {"seed": s, "problem": {"name": "digits_mlp"},
                                 "optimizer": {"name": "adamw", "learning_rate": lr, "weight_decay": wd}}})
  (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(line) for line in lines[::-1]))
  grid = grid_plots.grids(tmp_path)["adamw"]
  np.testing.assert_array_equal(grid.x, LRS[:3])
  np.testing.assert_array_equal(grid.y, DECAYS[:3])
  expected = truth["adamw"].copy()
  expected[1, 2, 1] = np.nan
  np.testing.assert_array_equal(grid.values, expected)
  error = grid_plots.grids(tmp_path, "test_error")["adamw"].values
  np.testing.assert_array_equal(error, np.where(np.isnan(expected), np.nan, [[[1.0]], [[0.75]]]))
  assert [p.name for p in grid_plots.plot_directory(tmp_path)] == ["heatmap_test_loss.png", "heatmap_test_error.png"]


@pytest.mark.parametrize("tau", range(9))
def test_stability_edge_is_where_the_roots_leave_the_unit_circle(tau):
  # The closed form against numpy's roots of z^{τ+1} − z^τ + ηλ: a wrong sine argument (π/(2τ+1),
  # say) or a missing factor 2 moves the edge by far more than the 2% checked here.
  def radius(lr):
    return np.max(np.abs(np.roots(np.r_[1.0, -1.0, np.zeros(tau - 1), lr * 3.0] if tau else [1.0, -1.0 + lr * 3.0])))
  edge = stability_edge(tau, 3.0)
  assert radius(0.98 * edge) < 1 < radius(1.02 * edge)


STALE = """
    problem: {name: quadratic, dim: 10, condition: 100.0}
    optimizer: {name: delayed, learning_rate: 1.0e-3, base: sgd}
    train: {steps: 300, batch_size: full, eval_every: 300}
    sweep:
      grid:
        optimizer.tau: [0, 2, 6]
        optimizer.learning_rate: [1.0e-3, 1.8e-3, 2.1e-3, 2.7e-3, 3.1e-3, 5.6e-3, 6.6e-3, 1.8e-2, 2.2e-2]
    seeds: [0]
"""


def test_the_largest_stable_lr_of_stale_sgd_shrinks_as_the_closed_form_says(tmp_path):
  # Claim 18 through the runner: read off the lr grid (bracketing each τ's edge by ±8%), the largest
  # stable lr is the closed form's grid point below the edge for τ = 0, 2, 6 — it falls 8× from
  # τ = 0 to 6. Without the delay (every τ run as plain sgd) each τ would keep τ = 0's 1.8e-2.
  path = tmp_path / "stale.yaml"
  path.write_text(textwrap.dedent(STALE))
  sweep.run(config.load(str(path)), str(tmp_path / "out"), progress=False)
  found = findings.largest_stable_lr(tmp_path / "out")
  assert found == {0: [1.8e-2], 2: [5.6e-3], 6: [2.1e-3]}
  for tau, (lr,) in found.items():
    assert lr < stability_edge(tau, 100.0) < lr * 1.2
  assert grid_plots.plot_directory(tmp_path / "out")[-1].name == "stable_lr_vs_tau.png"
