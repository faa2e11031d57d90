"""Numbers and figures of the toy-landscape sweeps (configs/saddles_plateaus.yaml), read from a
results directory: how long gradient descent takes to leave a saddle or a plateau, and which
minimum it reaches from which start.

- `escape_step`: the steps taken before a run's loss first falls to a threshold.
- `saddle_gd_escape_step`: its closed form for gradient descent on x² − y²: x_t = (1 − 2η)ᵗ x₀,
  y_t = (1 + 2η)ᵗ y₀, so the escape takes ≈ log(1/|y₀|) / log(1 + 2η) steps.
- `saddle_escapes`: per optimizer, the measured steps against log(1/|y₀|) and the fitted slope.
- `average_regret`: per point of an `online_linear` sweep (configs/adam_amsgrad.yaml), each
  seed's average expected regret (1/T) Σ_{t≤T} δ(x_t − x*), from the iterates at the eval steps.
- `depth_scaling`: per deep-chain family (activation, init, w), the forward signal ratio and the
  first layer's gradient norm against depth (configs/exploding_gradients.yaml), with the closed
  forms w^L and |w|^{L−1}·|w^L − 1|·‖Σ‖_F of the identity chains.
- `plot_directory` (called by `optlab plot`) writes `saddle_escape.png` (the steps against
  log(1/|y₀|), the closed form dashed), `xcos_basins.png` (the final x against the start, with
  the minima), `landscape_losses.png` (the loss curves of x³, the plateau and tanh) and
  `average_regret.png` and `depth_scaling.png`, each where the directory has such runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from optlab_jax import results
from optlab_jax.problems import build, landscapes

__all__ = ["SADDLE_THRESHOLD", "average_regret", "depth_scaling", "escape_step", "plot_directory", "saddle_escapes",
           "saddle_gd_escape_step"]

# A run has left the saddle once x² − y² ≤ −1 (|y| ≥ 1, past the start's scale).
SADDLE_THRESHOLD = -1.0
_LOSS_PANELS = ("cubic", "plateau", "tanh_vanishing")


def escape_step(loss: np.ndarray, threshold: float) -> float:
  """Updates done before the loss first is ≤ `threshold` (loss[t] is the loss after t updates);
  a loss of −∞ counts as below it. NaN if it never gets there."""
  below = np.flatnonzero((np.asarray(loss) <= threshold) | np.isneginf(loss))
  return float(below[0]) if below.size else float("nan")


def saddle_gd_escape_step(start: tuple[float, float], learning_rate: float,
                          threshold: float = SADDLE_THRESHOLD, max_steps: int = 100_000) -> float:
  """The first t with x_t² − y_t² ≤ threshold for gradient descent on x² − y² (float64 closed
  form); NaN if none within `max_steps`."""
  t = np.arange(max_steps, dtype=np.float64)
  with np.errstate(over="ignore"):  # y_t overflows to inf long after the escape
    loss = (start[0] * (1 - 2 * learning_rate) ** t) ** 2 - (start[1] * (1 + 2 * learning_rate) ** t) ** 2
  return escape_step(loss, threshold)


def optimizer_label(optimizer: dict) -> str:
  """name(lr=…, momentum=…): the optimizer part of a toy run's label."""
  parts = [f"lr={optimizer['learning_rate']}"]
  if optimizer.get("momentum"):
    parts.append(f"momentum={optimizer['momentum']}")
  return f"{optimizer['name']}({', '.join(parts)})"


def _runs(directory: Path, problem: str) -> list[tuple[dict, dict]]:
  """(record, per-step metrics) of every run of `problem` in the directory."""
  return [(r, results.load_metrics(directory, r["id"])) for r in results.load_records(directory)
          if r["config"]["problem"]["name"] == problem]


def saddle_escapes(directory: str | Path) -> dict[str, dict]:
  """Per optimizer label: `log_inv_y0`, measured `steps`, least-squares `slope` of steps against
  log(1/|y₀|), and for plain gradient descent the closed form's `closed_steps` and
  `closed_slope` = 1/log(1 + 2η). Only optimizers run from ≥ 2 values of y₀."""
  found: dict[str, dict] = {}
  for record, metrics in _runs(Path(directory), "saddle"):
    cfg = record["config"]
    start = tuple(float(s) for s in cfg["problem"]["start"])
    entry = found.setdefault(optimizer_label(cfg["optimizer"]), {"optimizer": cfg["optimizer"], "points": []})
    entry["points"].append((start, escape_step(metrics["train_loss"], SADDLE_THRESHOLD)))
  out = {}
  for label, entry in found.items():
    points = sorted(entry["points"], key=lambda p: -abs(p[0][1]))
    x = np.log(1 / np.abs([p[0][1] for p in points]))
    steps = np.array([p[1] for p in points])
    ok = np.isfinite(steps)
    if len(set(x[ok])) < 2:
      continue
    row = {"log_inv_y0": x, "steps": steps, "slope": float(np.polyfit(x[ok], steps[ok], 1)[0])}
    opt = entry["optimizer"]
    if opt["name"] == "sgd" and not opt.get("momentum") and isinstance(opt["learning_rate"], float):
      lr = opt["learning_rate"]
      row["closed_steps"] = np.array([saddle_gd_escape_step(p[0], lr) for p in points])
      row["closed_slope"] = 1 / np.log1p(2 * lr)
    out[label] = row
  return out


def _saddle_figure(escapes: dict[str, dict]) -> Figure:
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  for i, (label, row) in enumerate(escapes.items()):
    ax.plot(row["log_inv_y0"], row["steps"], "o-", color=f"C{i}", label=f"{label}: slope {row['slope']:.3g}")
    if "closed_slope" in row:  # drawn over the measured points, which it should hide
      ax.plot(row["log_inv_y0"], row["closed_steps"], "--", color="k", linewidth=1,
              label=f"closed form, slope 1/log(1+2η) = {row['closed_slope']:.3g}")
  ax.set(xlabel="log(1/|y₀|)", ylabel=f"steps until x² − y² ≤ {SADDLE_THRESHOLD:g}",
         title="escaping the saddle of x² − y² from (1, y₀)")
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  return fig


def _xcos_figure(runs: list[tuple[dict, dict]]) -> Figure:
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  by_optimizer: dict[str, list[tuple[float, float]]] = {}
  for record, _ in runs:
    label = optimizer_label(record["config"]["optimizer"])
    end = record["final"].get("x")  # None once diverged
    by_optimizer.setdefault(label, []).append((float(record["config"]["problem"]["start"]), np.nan if end is None else end))
  for i, (label, points) in enumerate(by_optimizer.items()):
    starts, ends = np.array(sorted(points, key=lambda p: p[0]), dtype=np.float64).T
    ax.plot(starts, ends, "o", color=f"C{i}", label=label, markersize=8 - 1.5 * i, alpha=0.8)
  for point in landscapes.xcos().info["critical_points"]:
    style = ":" if "maximum" in point["kind"] else "--"
    ax.axhline(point["x"][0], color="gray", linestyle=style, linewidth=1)
    ax.text(ax.get_xlim()[0], point["x"][0], f" {point['kind']}", fontsize="x-small", va="bottom")
  ax.set(xlabel="start x₀", ylabel="final x", title="x·cos(πx): the minimum reached depends on the start")
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  return fig


def _loss_figure(directory: Path, names: list[str]) -> Figure:
  fig = Figure(figsize=(5 * len(names), 4), layout="constrained")
  for ax, name in zip(np.atleast_1d(fig.subplots(1, len(names))), names):
    for i, (record, metrics) in enumerate(_runs(directory, name)):
      loss = metrics["train_loss"]
      ax.plot(np.arange(len(loss)), loss, color=f"C{i % 10}", label=record["label"])
    # x³ runs off to −∞ once it escapes: the axis stops a little below the stalled runs' scale
    ax.set(xlabel="step", ylabel="loss", title=name, xscale="symlog", ylim=(-1.5, 1.5))
    ax.legend(fontsize="xx-small")
    ax.grid(alpha=0.3)
  return fig


def average_regret(directory: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Point label -> (eval steps, [seeds, steps] running means of `eval.regret`) of the
  `online_linear` runs: the average expected regret up to each eval step (eval steps equally
  spaced, so it estimates the average over every step)."""
  points: dict[str, list[dict]] = {}
  for record, metrics in _runs(Path(directory), "online_linear"):
    points.setdefault(record["label"], []).append(metrics)
  out = {}
  for label, runs in points.items():
    n = min(len(m["eval.regret"]) for m in runs)
    regret = np.stack([np.asarray(m["eval.regret"][:n], np.float64) for m in runs])
    out[label] = (runs[0]["eval_step"][:n], np.cumsum(regret, axis=1) / np.arange(1, n + 1))
  return out


def _regret_figure(regrets: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  for i, (label, (steps, runs)) in enumerate(regrets.items()):
    ax.plot(steps, np.median(runs, axis=0), color=f"C{i}", label=f"{label} (median of {len(runs)} seeds)")
    ax.fill_between(steps, runs.min(axis=0), runs.max(axis=0), color=f"C{i}", alpha=0.15, linewidth=0)
  ax.set(xlabel="step T", ylabel="average regret (1/T) Σ δ(x_t − x*)", xscale="log", yscale="log",
         title="Reddi et al.'s online problem on [−1, 1]; band: min–max over seeds")
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3, which="both")
  return fig


def identity_chain_closed_form(options: dict) -> tuple[float, float]:
  """(w^L, |w|^{L−1}·|w^L − 1|·‖Σ‖_F): the signal ratio and first-layer gradient norm of the linear
  chain at W = w·I, with Σ = XᵀX/n of its training inputs (built from the same options)."""
  w, depth = options.get("weight_scale", 1.0), options["depth"]
  x = np.asarray(build("deep_chain", **options).data["train"]["x"], np.float64)
  sigma = x.T @ x / len(x)
  return w**depth, abs(w) ** (depth - 1) * abs(w**depth - 1) * np.linalg.norm(sigma)


def depth_scaling(directory: str | Path) -> dict[str, dict]:
  """Family label -> `depth`, `signal_ratio` and `first_layer_grad_norm` ([seeds, depths], NaN for
  a seed that is missing) of the deep-chain runs, and for identity linear chains `closed` =
  (signal, gradient) per depth. Families run at ≥ 2 depths only."""
  families: dict[str, dict] = {}
  for record, _ in _runs(Path(directory), "deep_chain"):
    options = {k: v for k, v in record["config"]["problem"].items() if k != "name"}
    label = f"{options['activation']}, {options['init']}" + (
        f", w={options['weight_scale']}" if options["init"] == "identity" else "")
    family = families.setdefault(label, {"runs": {}, "options": {}})
    family["runs"].setdefault(options["depth"], []).append(record["final"])
    family["options"][options["depth"]] = options
  out = {}
  for label, family in families.items():
    depths = sorted(family["runs"])
    if len(depths) < 2:
      continue
    seeds = max(len(v) for v in family["runs"].values())
    row = {"depth": np.array(depths)}
    for metric in ("signal_ratio", "first_layer_grad_norm"):
      table = np.full((seeds, len(depths)), np.nan)
      for j, d in enumerate(depths):
        values = [np.nan if f.get(metric) is None else f[metric] for f in family["runs"][d]]
        table[: len(values), j] = values
      row[metric] = table
    first = family["options"][depths[0]]
    if first["init"] == "identity" and first["activation"] == "linear":
      row["closed"] = np.array([identity_chain_closed_form(family["options"][d]) for d in depths])
    out[label] = row
  return out


def _depth_figure(scaling: dict[str, dict]) -> Figure:
  fig = Figure(figsize=(11, 4.5), layout="constrained")
  axes = fig.subplots(1, 2)
  titles = {"signal_ratio": "forward signal rms(h_L) / rms(x)", "first_layer_grad_norm": "‖∂loss/∂W₁‖"}
  for k, (ax, metric) in enumerate(zip(axes, titles)):
    for i, (label, row) in enumerate(scaling.items()):
      values = row[metric]
      ax.plot(row["depth"], np.nanmedian(values, axis=0), "o-", color=f"C{i}", label=label)
      ax.fill_between(row["depth"], np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=f"C{i}", alpha=0.15)
      if "closed" in row:
        ax.plot(row["depth"], row["closed"][:, k], "--", color="k", linewidth=1,
                label="closed form" if i == 0 or "closed" not in list(scaling.values())[0] else None)
    ax.set(xlabel="depth L", yscale="log", title=f"{titles[metric]} at initialisation")
    ax.grid(alpha=0.3, which="both")
  axes[0].legend(fontsize="small")
  return fig


def plot_directory(directory: str | Path, out: str | Path | None = None) -> list[Path]:
  """Writes the toy-landscape figures of a results directory under `out` (default: `directory`)."""
  directory = Path(directory)
  out = Path(directory if out is None else out)
  problems = {r["config"]["problem"]["name"] for r in results.load_records(directory)}
  figures = {}
  if "saddle" in problems and (escapes := saddle_escapes(directory)):
    figures["saddle_escape"] = _saddle_figure(escapes)
  if "xcos" in problems:
    figures["xcos_basins"] = _xcos_figure(_runs(directory, "xcos"))
  if panels := [name for name in _LOSS_PANELS if name in problems]:
    figures["landscape_losses"] = _loss_figure(directory, panels)
  if "online_linear" in problems:
    figures["average_regret"] = _regret_figure(average_regret(directory))
  if "deep_chain" in problems and (scaling := depth_scaling(directory)):
    figures["depth_scaling"] = _depth_figure(scaling)
  out.mkdir(parents=True, exist_ok=True)
  for name, fig in figures.items():
    fig.savefig(out / f"{name}.png", dpi=100)
  return [out / f"{name}.png" for name in figures]
