"""Results on disk: ids, records, per-step metrics, the CSV, atomic writes, the printed table."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import statistics

import numpy as np
import pytest

from optlab_jax import results, train


def config(seed=0, lr=0.1):
  return {"problem": {"name": "quadratic", "dim": 4}, "optimizer": {"name": "sgd", "learning_rate": lr},
          "train": {"steps": 3}, "monitor": None, "seed": seed}


def history(loss, final, status="ok", monitor=None):
  monitor = monitor or {}
  return train.History(
      loss=np.asarray(loss, np.float64), eval_steps=np.array([3]), eval={k: np.array([v]) for k, v in final.items()},
      monitor_steps=np.array([2] if monitor else [], np.int64), monitor={k: np.array([v]) for k, v in monitor.items()},
      final=final, status=status, diverged_at=None if status == "ok" else 2, params=None, loop="scan",
      wall_time=1.5, compile_time=0.5,
  )


def test_run_id_is_the_sha256_of_the_canonical_json():
  cfg = config()
  expected = hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
  assert results.run_id(cfg) == expected
  assert results.run_id(dict(reversed(list(cfg.items())))) == expected  # key order does not matter
  assert results.run_id(config(seed=1)) != expected
  assert results.point_id(config(seed=1)) == results.point_id(config(seed=0)) != results.point_id(config(lr=0.2))


def test_store_writes_record_metrics_and_csv(tmp_path):
  store = results.Store(tmp_path)
  store.add(config(0), "a", history([3.0, 2.0, 1.0], {"loss": 0.5}, monitor={"lambda_max": 7.0}))
  store.add(config(1), "a", history([3.0, np.nan, np.nan], {"loss": np.inf}, status="diverged"))
  ids = [results.run_id(config(0)), results.run_id(config(1))]
  assert store.finished() == set(ids)

  records = results.load_records(tmp_path)
  assert [r["id"] for r in records] == ids
  assert records[0]["final"] == {"train_loss": 1.0, "loss": 0.5}
  assert records[1]["final"] == {"train_loss": None, "loss": None}  # non-finite -> null
  assert (records[1]["status"], records[1]["diverged_at"]) == ("diverged", 2)
  assert records[0]["config"] == config(0) and records[0]["point"] == records[1]["point"]

  arrays = results.load_metrics(tmp_path, ids[0])
  np.testing.assert_array_equal(arrays["train_loss"], [3.0, 2.0, 1.0])
  np.testing.assert_array_equal(arrays["monitor_step"], [2])
  np.testing.assert_array_equal(arrays["monitor.lambda_max"], [7.0])
  np.testing.assert_array_equal(arrays["eval.loss"], [0.5])

  with open(tmp_path / "summary.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["id"] for r in rows] == ids
  assert float(rows[0]["train_loss"]) == 1.0 and float(rows[0]["loss"]) == 0.5 and rows[0]["seed"] == "0"
  assert np.isnan(float(rows[1]["loss"])) and rows[1]["status"] == "diverged"


def test_adding_a_run_again_keeps_one_record(tmp_path):
  store = results.Store(tmp_path)
  store.add(config(0), "a", history([2.0], {"loss": 2.0}))
  store.add(config(0), "a", history([1.0], {"loss": 1.0}))
  records = results.Store(tmp_path).records([results.run_id(config(0))])
  assert len(results.load_records(tmp_path)) == 1 and records[0]["final"]["loss"] == 1.0


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  store = results.Store(tmp_path)
  store.add(config(0), "a", history([1.0], {"loss": 1.0}))
  before = (tmp_path / "runs.jsonl").read_bytes()

  def crash(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError):
    store.add(config(1), "a", history([1.0], {"loss": 1.0}))
  assert (tmp_path / "runs.jsonl").read_bytes() == before
  assert not list(tmp_path.rglob("*.tmp"))


def test_a_new_store_removes_what_a_killed_writer_left(tmp_path):
  results.Store(tmp_path).add(config(0), "a", history([1.0], {"loss": 1.0}))
  (tmp_path / ".runs.jsonl.123.tmp").write_text('{"id": "half')
  (tmp_path / "metrics" / ".abc.npz.123.tmp").write_bytes(b"PK")
  (tmp_path / "metrics" / f"{results.run_id(config(1))}.npz").write_bytes(b"orphan")  # npz without record
  store = results.Store(tmp_path)
  assert not list(tmp_path.rglob("*.tmp"))
  assert store.finished() == {results.run_id(config(0))}


def test_table_gives_mean_and_sample_std_over_seeds_per_point(tmp_path):
  store = results.Store(tmp_path)
  losses = [0.3, 0.5, 0.4]
  for seed, loss in enumerate(losses):
    store.add(config(seed), "sgd lr=0.1", history([loss], {"test_accuracy": 0.9 + seed / 100}))
  store.add(config(0, lr=9.0), "sgd lr=9", history([np.nan], {"test_accuracy": 0.1}, status="diverged"))
  lines = results.table(results.load_records(tmp_path)).splitlines()
  assert lines[0].split() == ["point", "runs", "train_loss", "test_accuracy"]
  mean, std = statistics.mean(losses), statistics.stdev(losses)
  acc_mean, acc_std = statistics.mean([0.9, 0.91, 0.92]), statistics.stdev([0.9, 0.91, 0.92])
  assert lines[2].split("  ")[0] == "sgd lr=0.1"
  assert [c.strip() for c in lines[2].split("  ") if c] == ["sgd lr=0.1", "3 ok", f"{mean:.4g} ± {std:.2g}", f"{acc_mean:.4g} ± {acc_std:.2g}"]
  assert lines[3].split() == ["sgd", "lr=9", "1", "diverged", "nan", "0.1"]


def test_non_finite_values_anywhere_in_a_record_are_written_as_null(tmp_path):
  # YAML reads `learning_rate: 1e400` as inf; json.dumps(allow_nan=False) raised on it at write time.
  cfg = config(lr=float("inf")) | {"train": {"steps": 3, "clip": float("nan"), "list": [1.0, -np.inf]}}
  h = history([1.0, 2.0, np.inf], {"loss": np.float32(np.nan)}, status="diverged")
  h.wall_time = float("inf")
  results.Store(tmp_path).add(cfg, "a", h)
  text = (tmp_path / "runs.jsonl").read_text()
  (record,) = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) for line in text.splitlines()]
  assert record["config"]["optimizer"]["learning_rate"] is None
  assert record["config"]["train"] == {"steps": 3, "clip": None, "list": [1.0, None]}
  assert record["final"] == {"train_loss": None, "loss": None} and record["wall_time"] is None
  assert record["id"] == results.run_id(cfg)  # the id is still that of the config as resolved
  assert results.Store(tmp_path).finished() == {results.run_id(cfg)}
  with open(tmp_path / "summary.csv", newline="") as f:
    (row,) = list(csv.DictReader(f))
  assert row["wall_time"] == "nan" and row["loss"] == "nan"
