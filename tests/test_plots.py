"""Figures: the curves' numbers (median and quartiles over seeds), the stability edges, the PNGs."""

from __future__ import annotations

import warnings

import matplotlib.backends.backend_agg
import matplotlib.collections
import matplotlib.image
import numpy as np
import pytest

from optlab_jax import plots, results, train


def config(seed, lr=0.1, name="sgd", **extra):
  return {"problem": {"name": "quadratic"}, "optimizer": {"name": name, "learning_rate": lr, **extra},
          "train": {"steps": 4}, "monitor": None, "seed": seed}


def history(loss, lam, status="ok"):
  return train.History(
      loss=np.asarray(loss, np.float64), eval_steps=np.array([2, 4]), eval={"test_loss": np.array([loss[1], loss[3]])},
      monitor_steps=np.array([1, 3]), monitor={"lambda_max": np.asarray(lam, np.float64)}, final={"test_loss": loss[3]},
      status=status, diverged_at=None, params=None, loop="scan", wall_time=1.0, compile_time=0.1,
  )


@pytest.fixture
def sweep_dir(tmp_path):
  store = results.Store(tmp_path)
  store.add(config(0), "sgd", history([4.0, 3.0, 2.0, 1.0], [5.0, 7.0]))
  store.add(config(1), "sgd", history([6.0, 5.0, 2.0, 3.0], [9.0, 11.0]))
  store.add(config(2), "sgd", history([5.0, np.inf, np.nan, np.nan], [1.0, np.nan], status="diverged"))
  store.add(config(0, lr=0.01, name="adam"), "adam", history([1.0, 0.5, 0.25, 0.125], [2.0, 2.5]))
  return tmp_path


def test_curves_are_median_and_quartiles_over_seeds_of_finite_values(sweep_dir):
  curves = plots.curves(sweep_dir)
  assert sorted(curves) == ["eval.test_loss", "monitor.lambda_max", "train_loss"]
  sgd, adam = curves["train_loss"]
  assert (sgd.label, adam.label) == ("sgd", "adam")
  np.testing.assert_array_equal(sgd.steps, [1, 2, 3, 4])
  # Per step, the finite values over seeds: {4, 6, 5}, {3, 5}, {2, 2}, {1, 3}; quartiles interpolate.
  np.testing.assert_allclose(sgd.median, [5.0, 4.0, 2.0, 2.0])
  np.testing.assert_allclose(sgd.low, [4.5, 3.5, 2.0, 1.5])
  np.testing.assert_allclose(sgd.high, [5.5, 4.5, 2.0, 2.5])
  np.testing.assert_allclose(adam.median, [1.0, 0.5, 0.25, 0.125])
  lam = curves["monitor.lambda_max"][0]
  np.testing.assert_array_equal(lam.steps, [1, 3])
  np.testing.assert_allclose(lam.median, [5.0, 9.0])
  np.testing.assert_allclose((lam.low, lam.high), ([3.0, 8.0], [7.0, 10.0]))
  np.testing.assert_array_equal(curves["eval.test_loss"][0].steps, [2, 4])


def curve(label, values, **optimizer):
  values = np.asarray(values, np.float64)
  return plots.Curve(label, np.arange(1, len(values) + 1), values, 0.9 * values, 1.1 * values,
                     {"optimizer": {"learning_rate": 0.05, **optimizer}})


def legend_and_edges(fig):
  (ax,) = fig.axes
  legend = ax.get_legend() or fig.legends[0]  # a long legend is the figure's, beside the axes
  texts = [t.get_text() for t in legend.get_texts()]
  dashed = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"}
  return ax, texts, dashed


def drawn(fig):
  """`fig` laid out and drawn as `savefig` does it (a bare Figure's canvas draws nothing)."""
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # e.g. "constrained_layout not applied because axes sizes collapsed to zero"
    matplotlib.backends.backend_agg.FigureCanvasAgg(fig).draw()
  return fig


def test_lambda_max_figure_labels_each_edge_that_applies_and_keeps_curves_readable():
  lines = [curve("sgd-m", [5.0, 9.0, 12.0], name="sgd", momentum=0.9), curve("adam", [20.0, 30.0], name="adam"),
           curve("gd", [8.0, 30.0], name="sgd")]
  ax, texts, dashed = legend_and_edges(plots.figure("monitor.lambda_max", lines))
  heavy_ball, gd = (2 + 2 * 0.9) / 0.05, 2 / 0.05  # 76 and 40, Cohen et al.'s edges
  assert dashed == pytest.approx({f"stability edge of sgd-m: {heavy_ball:.3g}": heavy_ball,
                                  f"stability edge of gd: {gd:.3g}": gd})
  assert texts == ["sgd-m", "adam", "gd", *dashed]  # every dashed line is in the legend; Adam has none
  assert [line.get_color() for line in ax.get_lines() if line.get_linestyle() == "--"] == ["C0", "C2"]
  low, high = ax.get_ylim()
  assert ax.get_yscale() == "log" and low <= 4.5 and heavy_ball < high <= 33.0 * 10


def test_points_that_share_an_edge_share_one_line_and_a_long_legend_leaves_the_curves():
  lines = [curve(f"gd {i}", [5.0 + i, 9.0], name="sgd") for i in range(6)] + [curve("sgd-m", [5.0, 9.0], name="sgd",
                                                                                    momentum=0.9)]
  fig = plots.figure("monitor.lambda_max", lines)
  ax, texts, dashed = legend_and_edges(fig)
  assert dashed == pytest.approx({"stability edge of 6 points: 40": 40.0, "stability edge of sgd-m: 76": 76.0})
  assert [line.get_color() for line in ax.get_lines() if line.get_linestyle() == "--"] == ["0.35", "C6"]
  drawn(fig)  # 9 entries: the legend sits right of the axes, over none of the curves
  assert fig.legends[0].get_window_extent().x0 > ax.get_window_extent().x1
  # Labels as long as a PINN config's: the figure widens, and the axes keep their width.
  wide = drawn(plots.figure("monitor.lambda_max", [c._replace(label=c.label + " with a long label" * 8) for c in lines]))
  assert wide.axes[0].get_window_extent().width == pytest.approx(ax.get_window_extent().width, rel=0.05)
  assert wide.legends[0].get_window_extent().x0 > wide.axes[0].get_window_extent().x1


def test_an_edge_far_above_the_data_is_clipped_and_says_so():
  lines = [curve("sgd", [1.0, 2.0], name="sgd", learning_rate=0.001)]  # edge 2000
  ax, texts, dashed = legend_and_edges(plots.figure("monitor.lambda_max", lines))
  assert texts == ["sgd", "stability edge of sgd: 2e+03, above the plot"]
  assert ax.get_ylim()[1] == pytest.approx(2.2 * 10)  # the data end a decade below the top


def test_no_edge_is_drawn_outside_the_sharpness_figures():
  lines = [curve("sgd", [1.0, 0.5], name="sgd")]
  ax, texts, dashed = legend_and_edges(plots.figure("eval.test_accuracy", lines))
  assert texts == ["sgd"] and dashed == {}


def test_seed_bands_are_light_and_span_the_quartiles():
  lines = [curve("a", [0.5, 0.7]), curve("b", [0.6, 0.8])]
  (ax,) = plots.figure("eval.test_accuracy", lines).axes
  bands = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
  assert len(bands) == 2 and all(b.get_alpha() <= 0.2 for b in bands)
  y = bands[0].get_paths()[0].vertices[:, 1]
  assert y.min() == pytest.approx(0.45) and y.max() == pytest.approx(0.77)


def test_plot_writes_one_png_per_metric(sweep_dir, tmp_path):
  paths = plots.plot(sweep_dir, tmp_path / "figs")
  # Two optimizers: the eval metric also against training time (time_plots).
  assert sorted(p.name for p in paths) == ["eval_test_loss.png", "eval_test_loss_vs_time.png", "monitor_lambda_max.png",
                                           "train_loss.png"]
  for path in paths:
    image = matplotlib.image.imread(path)
    per_metric = not path.name.endswith("_vs_time.png")
    assert (not per_metric or image.shape == (540, 840, 4)) and image.std() > 0  # 7 × 4.5 inches at 120 dpi, not blank


def test_trace_gets_a_band_of_two_standard_errors_and_no_figure_of_its_own(tmp_path):
  (ax,) = plots.figure("monitor.trace", [curve("sgd", [10.0, 12.0])], [curve("sgd", [0.5, 1.0])]).axes
  hatched = [c for c in ax.collections if c.get_hatch()]
  y = hatched[0].get_paths()[0].vertices[:, 1]
  assert len(hatched) == 1 and y.min() == pytest.approx(9.0) and y.max() == pytest.approx(14.0)
  run = history([4.0, 3.0, 2.0, 1.0], [5.0, 7.0])
  run.monitor = {"trace": np.array([10.0, 12.0]), "trace_stderr": np.array([0.5, 1.0])}
  results.Store(tmp_path).add(config(0), "sgd", run)
  names = sorted(p.name for p in plots.plot(tmp_path, tmp_path / "figs"))
  assert "monitor_trace.png" in names and "monitor_trace_stderr.png" not in names
