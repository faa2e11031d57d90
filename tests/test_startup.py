"""What `optlab run` pays before its first compilation: imports and reading the data."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np

from optlab_jax.problems import digits

ROOT = pathlib.Path(__file__).resolve().parents[1]

_RUN_IMPORTS = """
import sys
from optlab_jax import cli, config
config.load("configs/quickstart.yaml")
print(" ".join(m for m in ("matplotlib", "sklearn") if m in sys.modules))
"""


def test_a_run_imports_neither_matplotlib_nor_sklearn():
  # Each takes a second or more to import; only `optlab plot` draws, and the digits are a CSV file.
  out = subprocess.run([sys.executable, "-c", _RUN_IMPORTS], capture_output=True, text=True, check=True, cwd=ROOT)
  assert out.stdout.split() == []


def test_digits_are_sklearns_load_digits():
  from sklearn.datasets import load_digits

  reference = load_digits()
  order = np.random.default_rng(digits.SPLIT_SEED).permutation(len(reference.target))
  x, y = reference.data[order], reference.target[order]
  x_train = x[digits.NUM_TEST:]
  std = np.where(x_train.std(axis=0) > 0, x_train.std(axis=0), 1.0)
  data = digits.load()
  np.testing.assert_array_equal(data["train"]["x"], (x_train - x_train.mean(axis=0)) / std)
  np.testing.assert_array_equal(data["test"]["x"], (x[:digits.NUM_TEST] - x_train.mean(axis=0)) / std)
  np.testing.assert_array_equal(data["train"]["y"], y[digits.NUM_TEST:])
  np.testing.assert_array_equal(data["test"]["y"], y[:digits.NUM_TEST])
  assert data["train"]["y"].dtype == np.int32
