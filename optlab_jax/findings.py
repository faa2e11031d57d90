"""The numbers the literature's claims are about, read off recorded runs.

Each measure takes one run's per-step arrays (a results directory's `metrics/<id>.npz` as
`results.load_metrics` returns it, or the same keys built from a `train.History` by `arrays`), so
the findings tests and the experiments scripts compute them alike. `by_point` applies a measure
to every run of a results directory and `spread` summarises it over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from optlab_jax import results

__all__ = ["arrays", "by_point", "early_sharpness", "edge_of_stability", "first_reach", "spread", "spread_text", "tail"]

Arrays = dict[str, np.ndarray]


def arrays(history: Any) -> Arrays:
  """The keys of a results directory's metrics file, from a `train.History`."""
  out = {"train_loss": np.asarray(history.loss), "monitor_step": np.asarray(history.monitor_steps)}
  out.update({f"monitor.{k}": np.asarray(v) for k, v in history.monitor.items()})
  return out


def tail(steps: np.ndarray, values: np.ndarray, fraction: float) -> np.ndarray:
  """The values recorded in the last `fraction` of training (steps past (1 − fraction) · last step)."""
  steps = np.asarray(steps)
  return np.asarray(values)[steps > (1 - fraction) * steps[-1]]


def edge_of_stability(run: Arrays, *, fraction: float = 1 / 3, arrival: float = 0.95) -> dict[str, float]:
  """The ratio of the sharpness to the optimizer's edge (`monitor.preconditioned_eos_ratio` where
  recorded, else `monitor.eos_ratio`) over the last `fraction` of training: its mean, min and max;
  and the training loss from the first monitor step where the ratio reached `arrival` to the end:
  the share of steps whose loss rose above the step before (0 for monotone descent), and the loss at
  the end over the loss at arrival (< 1: it still falls). Never arrived: the window is empty, NaN.

  References: Cohen et al., 2021 (arXiv:2103.00065), figure 1; Cohen et al., 2022 (arXiv:2207.14484).
  """
  name = "monitor.preconditioned_eos_ratio" if "monitor.preconditioned_eos_ratio" in run else "monitor.eos_ratio"
  steps, values = np.asarray(run["monitor_step"]), np.asarray(run[name], np.float64)
  ratio = tail(steps, values, fraction)
  arrived = np.flatnonzero(values >= arrival)
  loss = np.asarray(run["train_loss"], np.float64)
  window = loss[steps[arrived[0]] - 1:] if len(arrived) else loss[:0]
  return {
      "ratio": float(np.mean(ratio)),
      "ratio_min": float(np.min(ratio)),
      "ratio_max": float(np.max(ratio)),
      "arrival_step": float(steps[arrived[0]]) if len(arrived) else float("nan"),
      "loss_rises": float(np.mean(np.diff(window) > 0)) if len(window) > 1 else float("nan"),
      "loss_drop": float(window[-1] / window[0]) if len(window) > 1 else float("nan"),
  }


def by_point(directory: str | Path, measure: Callable[[Arrays], dict[str, float]]) -> dict[str, list[dict]]:
  """Point label -> `measure` of each of its finished runs (seeds), in the order they were recorded."""
  out: dict[str, list[dict]] = {}
  for record in results.load_records(directory):
    if record["status"] == "ok":
      out.setdefault(record["label"], []).append(measure(results.load_metrics(directory, record["id"])))
  return out


def spread(values: list[dict[str, float]]) -> dict[str, tuple[float, float, float, float]]:
  """Name -> (mean, standard deviation, min, max) over the runs (seeds) of a point."""
  return {k: (float(np.mean(v)), float(np.std(v)), float(np.min(v)), float(np.max(v)))
          for k, v in ((k, [r[k] for r in values]) for k in values[0])}


def spread_text(stats: tuple[float, float, float, float], digits: int = 3) -> str:
  """A `spread` entry as "mean ± std [min, max]" (`digits` significant digits, the std's one fewer)."""
  mean, std, lo, hi = stats
  return f"{mean:.{digits}g} ± {std:.{digits - 1}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def outliers(top_values: np.ndarray, num_classes: int) -> dict[str, float]:
  """Where the top of a spectrum (eigenvalues, largest first) separates from the bulk: `count`, the
  k whose gap λ_k / λ_{k+1} is the largest, and `gap_at_c`, that ratio at k = C over the median
  ratio of the other neighbours (≫ 1: the top C stand out).

  References: Sagun et al., 2017 (arXiv:1706.04454); Papyan, 2019 (arXiv:1811.07062), C outliers.
  """
  values = np.sort(np.asarray(top_values, np.float64))[::-1]
  ratios = values[:-1] / np.maximum(values[1:], np.finfo(np.float64).tiny)
  others = np.delete(ratios, num_classes - 1)
  return {"count": float(np.argmax(ratios) + 1), "gap_at_c": float(ratios[num_classes - 1] / np.median(others))}


def random_subspace_fraction(grad: np.ndarray, k: int, key: int = 0) -> float:
  """‖Q_kᵀ g‖² / ‖g‖² for k random orthonormal directions Q_k (its expectation is k / n)."""
  grad = np.asarray(grad, np.float64).ravel()
  q, _ = np.linalg.qr(np.random.default_rng(key).standard_normal((grad.size, k)))
  return float(np.sum((q.T @ grad) ** 2) / np.sum(grad**2))


def first_reach(steps: np.ndarray, values: np.ndarray, target: float) -> float:
  """The first of `steps` whose value is at or below `target` (NaN if none is: never reached)."""
  reached = np.flatnonzero(np.asarray(values, np.float64) <= target)
  return float(np.asarray(steps)[reached[0]]) if len(reached) else float("nan")


class Grid(NamedTuple):
  """One optimizer's final metric over a sweep grid of two hyperparameters (`grid_plots.grids`)."""
  x: np.ndarray  # [nx] the learning rates, ascending
  y: np.ndarray  # [ny] the weight decays, ascending
  values: np.ndarray  # [seeds, ny, nx] each seed's final metric (NaN: diverged or missing)


def best_index(grid: Grid, within: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
  """[seeds, nx] the row of the lowest value in each column, and whether the column is in the good
  region: its best within a factor `within` of the seed's best on the whole grid (an undertrained
  or diverging column has no meaningful best)."""
  filled = np.where(np.isfinite(grid.values), grid.values, np.inf)
  column_best = np.min(filled, axis=1)
  return np.argmin(filled, axis=1), column_best <= within * np.min(column_best, axis=1, keepdims=True)


def best_decay(grid: Grid, within: float = 1.5) -> list[dict[str, float]]:
  """Per seed, the least-squares line of log10 (best y) against log10 x over the columns of the
  good region (`best_index`): `slope` ≈ 0 when the best y does not depend on x (separable), ≈ −1
  when x·y is what matters (diagonal); `intercept`; `columns`, how many columns were fitted;
  `at_edge`, the share of them whose best is the grid's first or last y (the slope is then a
  bound); NaN slope where one column is all the good region holds. For a decay multiplied by the
  learning rate (our `adamw`) the slope of the paper's λ = lr · weight_decay is this slope + 1.

  References: Loshchilov & Hutter, 2019 (arXiv:1711.05101), figure 2.
  """
  out = []
  for row, keep in zip(*best_index(grid, within)):
    if np.sum(keep) < 2:  # one learning rate: no line
      out.append({"slope": float("nan"), "intercept": float("nan"), "columns": float(np.sum(keep)),
                  "at_edge": float(np.isin(row[keep], [0, len(grid.y) - 1]).mean())})
      continue
    slope, intercept = np.polyfit(np.log10(grid.x[keep]), np.log10(grid.y[row[keep]]), 1)
    edge = np.isin(row[keep], [0, len(grid.y) - 1])
    out.append({"slope": float(slope), "intercept": float(intercept), "columns": float(np.sum(keep)),
                "at_edge": float(np.mean(edge))})
  return out


def largest_stable_lr(directory: str | Path, axis: str | Callable[[dict], Any] = "tau", *,
                      peak: Callable[[dict], float] | None = None, loss_ratio: float = 0.5) -> dict[Any, list[float]]:
  """Value of the optimizer hyperparameter `axis` (or of `axis(optimizer config)`) -> per seed, the
  largest learning rate (`peak(optimizer config)`, default its `learning_rate`) whose run was stable:
  finite, its final training loss below `loss_ratio` times its first (a network whose units died in a
  blow-up ends at the chance loss, just under its first). NaN where none was; a bound (the grid's
  end) where every one was.

  References: Lian et al., 2015 (arXiv:1506.08272), asynchronous SGD's step size shrinks with the
  staleness.
  """
  group = axis if callable(axis) else (lambda optimizer: optimizer[axis])
  peak = peak or (lambda optimizer: optimizer["learning_rate"])
  stable: dict[Any, dict[int, list[float]]] = {}
  for record in results.load_records(directory):
    optimizer = record["config"]["optimizer"]
    loss = np.asarray(results.load_metrics(directory, record["id"])["train_loss"], np.float64)
    ok = record["status"] == "ok" and bool(np.all(np.isfinite(loss))) and loss[-1] < loss[0] * loss_ratio
    seeds = stable.setdefault(group(optimizer), {})
    seeds.setdefault(record["config"]["seed"], []).append(peak(optimizer) if ok else -np.inf)
  return {value: [max(lrs) if max(lrs) > 0 else float("nan") for _, lrs in sorted(seeds.items())]
          for value, seeds in sorted(stable.items())}


def early_sharpness(run: Arrays, until: int) -> float:
  """The median of `monitor.lambda_max` over the monitor steps up to `until` (a warm-up's end), a
  non-finite value counted as +inf (a run that blew up there was unboundedly sharp).

  References: Gilmer et al., 2021 (arXiv:2110.04369), figure 1; Kalra & Barkeshli, 2024
  (arXiv:2406.09405): warm-up lowers the sharpness before the peak learning rate is reached.
  """
  steps, values = np.asarray(run["monitor_step"]), np.asarray(run["monitor.lambda_max"], np.float64)
  window = values[steps <= until]
  return float(np.median(np.where(np.isfinite(window), window, np.inf)))


# The embedding tables of `embedding_regression` and the column of x that indexes each.
_TABLES = (("users", 0), ("items", 1))


def idle_rows(params: Any, grads: Any, updates: Any, opt_state: Any, batch: Any, step: Any) -> dict[str, Any]:
  """A `train.fit` monitor for `embedding_regression`: `idle_rows`, the table rows this step's batch
  does not index (read off batch x, not the gradient), and `idle_rows_moved`, how many of them the
  update still changed (LazyAdam: 0; Adam moves every row with momentum left from earlier batches).

  References: TensorFlow Addons, `tfa.optimizers.LazyAdam`; Kingma & Ba, 2015 (arXiv:1412.6980).
  """
  idle = moved = 0
  for name, column in _TABLES:
    used = jnp.zeros(params[name].shape[0], bool).at[batch["x"][:, column]].set(True)
    changed = jnp.any(updates[name] != 0, axis=1)
    idle, moved = idle + jnp.sum(~used), moved + jnp.sum(~used & changed)
  return {"idle_rows": idle, "idle_rows_moved": moved}


def frozen_rows(initial: Any, final: Any, train_x: np.ndarray) -> dict[str, float]:
  """Of the table rows absent from the training pairs `train_x` (never in any batch), `unseen` the
  count and `unseen_frozen` the share bit-identical at the end to `initial`; `seen_frozen` the same
  share for the rows that are in the data (≈ 0: they trained)."""
  unseen = frozen_unseen = seen = frozen_seen = 0
  for name, column in _TABLES:
    same = np.all(np.asarray(initial[name]) == np.asarray(final[name]), axis=1)
    present = np.zeros(len(same), bool)
    present[np.asarray(train_x)[:, column]] = True
    unseen, frozen_unseen = unseen + np.sum(~present), frozen_unseen + np.sum(same & ~present)
    seen, frozen_seen = seen + np.sum(present), frozen_seen + np.sum(same & present)
  return {"unseen": float(unseen), "unseen_frozen": float(frozen_unseen / max(unseen, 1)),
          "seen_frozen": float(frozen_seen / max(seen, 1))}


def sharpness_and_outliers(run: Arrays, *, fraction: float = 1 / 3) -> dict[str, float]:
  """How sharp training ran and how far the top of the final Hessian spectrum stands out: `lambda_max`,
  the mean of `monitor.lambda_max` over the last `fraction` of training; `peak`, its maximum over the
  run; and `outlier_ratio`, the last λ_max over the spectrum's root-mean-square eigenvalue
  sqrt(tr(H²)/n) from the last SLQ quadrature (`monitor.spectral_density`, probes averaged): 1 when
  every eigenvalue has λ_max's size, sqrt(n/k) for k equal outliers above a bulk at 0.

  References: Santurkar et al., 2018 (arXiv:1805.11604), figure 4; Ghorbani et al., 2019
  (arXiv:1901.10159), section 4 (batch normalisation removes the outliers).
  """
  steps, values = np.asarray(run["monitor_step"]), np.asarray(run["monitor.lambda_max"], np.float64)
  nodes, weights = np.asarray(run["monitor.spectral_density"][-1], np.float64)
  rms = np.sqrt(np.mean(np.sum(weights * nodes**2, axis=-1)))
  return {"lambda_max": float(np.mean(tail(steps, values, fraction))), "peak": float(np.max(values)),
          "outlier_ratio": float(values[-1] / rms)}
