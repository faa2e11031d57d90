"""Results on disk: one directory per sweep, written atomically so a killed run corrupts nothing.

Layout of a sweep directory:
  runs.jsonl         one JSON line per finished run: id, point, label, resolved config, status
                     ("ok" | "diverged") and diverged_at, final metrics, loop, wall and compile time
  metrics/<id>.npz   per-step metrics of the run: train_loss [steps], eval_step and eval.<name>,
                     monitor_step and monitor.<name>
  summary.csv        one row per run: id, point, label, problem, optimizer, seed, status, wall_time
                     and the final metrics (written with the csv module; pandas reads it)

Every file is written to a temporary file in the same directory, then `os.replace`d over its
name, so a reader (or a run killed with SIGKILL) only ever sees a whole old or a whole new file.
A run is recorded by rewriting runs.jsonl whole with the new line added (sweeps hold hundreds of
runs at most, so the rewrite is cheap), after its .npz is in place: a run is finished iff its line
and its .npz both exist. Non-finite numbers anywhere in a record (a diverged loss, an infinite
hyperparameter) are written as null in JSON, and as nan in the CSV.
One runner per directory at a time: a new runner deletes the temporary files a killed one left.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

_TMP = ".tmp"


def run_id(cfg: dict[str, Any]) -> str:
  """A stable id of a resolved config: the first 12 hex digits of the SHA-256 of its JSON."""
  text = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def point_id(cfg: dict[str, Any]) -> str:
  """The id of a run's point: its config without the seed (the runs of one point share it)."""
  return run_id({k: v for k, v in cfg.items() if k != "seed"})


def write_atomic(path: Path, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same directory and `os.replace`."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def _finite(x: Any) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


def _json_safe(value: Any) -> Any:
  """`value` with every non-finite float (NaN, ±inf; numpy's too) replaced by None, JSON's null."""
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return _finite(value)
  return value


def _arrays(history: Any) -> dict[str, np.ndarray]:
  """The per-step series of a `train.History`, named as in the .npz."""
  out = {"train_loss": np.asarray(history.loss)}
  for kind in ("eval", "monitor"):
    steps, metrics = getattr(history, f"{kind}_steps"), getattr(history, kind)
    if len(steps):
      out[f"{kind}_step"] = np.asarray(steps)
      out.update({f"{kind}.{name}": np.asarray(values) for name, values in metrics.items()})
  return out


def load_metrics(directory: str | Path, rid: str) -> dict[str, np.ndarray]:
  """The per-step metrics of run `rid` (the arrays of its .npz)."""
  with np.load(Path(directory) / "metrics" / f"{rid}.npz") as f:
    return dict(f)


def load_records(directory: str | Path) -> list[dict[str, Any]]:
  """The records of runs.jsonl, in the order they finished ([] if there is none)."""
  path = Path(directory) / "runs.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Store:
  """A sweep directory: which runs are finished, and adding one."""

  def __init__(self, directory: str | Path):
    self.dir = Path(directory)
    (self.dir / "metrics").mkdir(parents=True, exist_ok=True)
    for stale in [*self.dir.glob(f".*{_TMP}"), *(self.dir / "metrics").glob(f".*{_TMP}")]:
      stale.unlink()
    self._records = {r["id"]: r for r in load_records(self.dir)}

  def finished(self) -> set[str]:
    """Ids of the runs with both their record and their metrics on disk."""
    return {rid for rid in self._records if (self.dir / "metrics" / f"{rid}.npz").exists()}

  def add(self, cfg: dict[str, Any], label: str, history: Any) -> dict[str, Any]:
    """Writes a finished run's metrics, then its record; rewrites runs.jsonl and summary.csv."""
    rid = run_id(cfg)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **_arrays(history))
    write_atomic(self.dir / "metrics" / f"{rid}.npz", buffer.getvalue())
    train_loss = np.asarray(history.loss)
    record = _json_safe({
        "id": rid,
        "point": point_id(cfg),
        "label": label,
        "config": cfg,
        "status": history.status,
        "diverged_at": history.diverged_at,
        "final": {"train_loss": _finite(train_loss[-1])} | {k: _finite(v) for k, v in history.final.items()},
        "loop": history.loop,
        "wall_time": float(history.wall_time),
        "compile_time": float(history.compile_time),
    })
    self._records.pop(rid, None)
    self._records[rid] = record
    lines = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in self._records.values())
    write_atomic(self.dir / "runs.jsonl", lines.encode())
    write_atomic(self.dir / "summary.csv", summary_csv(list(self._records.values())).encode())
    return record

  def records(self, ids: list[str]) -> list[dict[str, Any]]:
    """The records of `ids` that are on disk, in that order."""
    return [self._records[i] for i in ids if i in self._records]


def summary_csv(records: list[dict[str, Any]]) -> str:
  """One row per run: id, point, label, problem, optimizer, seed, status, wall_time, final metrics."""
  metrics = sorted({k for r in records for k in r["final"]})
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["id", "point", "label", "problem", "optimizer", "seed", "status", "wall_time", *metrics])
  for r in records:
    cfg, final = r["config"], r["final"]
    writer.writerow([
        r["id"], r["point"], r["label"], cfg["problem"]["name"], cfg["optimizer"]["name"], cfg["seed"],
        r["status"], "nan" if r["wall_time"] is None else f"{r['wall_time']:.3f}",
        *("nan" if final.get(m) is None else repr(final[m]) for m in metrics),
    ])
  return out.getvalue()


def table(records: list[dict[str, Any]]) -> str:
  """A plain-text table, one row per point: mean ± sample std over seeds of the finite values."""
  points: dict[str, list[dict]] = {}
  for r in records:
    points.setdefault(r["point"], []).append(r)
  metrics = sorted({k for r in records for k in r["final"]}, key=lambda m: (m != "train_loss", m))
  rows = [["point", "runs", *metrics]]
  for runs in points.values():
    counts = collections.Counter(r["status"] for r in runs)
    status = ", ".join(f"{counts[s]} {s}" for s in ("ok", "diverged") if counts[s])
    rows.append([runs[0]["label"], status, *(_mean_std([r["final"].get(m) for r in runs]) for m in metrics)])
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _mean_std(values: list[float | None]) -> str:
  x = np.asarray([v for v in values if v is not None], np.float64)
  if x.size == 0:
    return "nan"
  std = x.std(ddof=1) if x.size > 1 else 0.0
  return f"{x.mean():.4g} ± {std:.2g}" if x.size > 1 else f"{x.mean():.4g}"
