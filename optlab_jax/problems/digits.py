"""scikit-learn's handwritten digits (8×8 images, 10 classes) with an MLP or a small CNN.

The 1,797 images are split once, by a fixed permutation, into 1,437 training and 360 test
images; each pixel is standardised with the training split's mean and standard deviation
(constant pixels keep a scale of 1, so they stay 0).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np

from optlab_jax import checks
from optlab_jax.problems import classification, models
from optlab_jax.problems.base import Dtype, Problem, supervised_problem

__all__ = ["load", "digits_mlp", "digits_cnn"]

NUM_TEST = 360
SPLIT_SEED = 0
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


@functools.cache
def load() -> dict[str, dict[str, np.ndarray]]:
  """{"train": {"x": [1437, 64] standardised float64, "y": [1437] int32}, "test": likewise}."""
  # sklearn's own file, read as `sklearn.datasets.load_digits` reads it: importing sklearn takes seconds.
  sklearn = importlib.util.find_spec("sklearn").submodule_search_locations[0]
  with gzip.open(pathlib.Path(sklearn) / "datasets" / "data" / "digits.csv.gz", "rt", encoding="utf-8") as f:
    table = np.loadtxt(f, delimiter=",")
  order = np.random.default_rng(SPLIT_SEED).permutation(len(table))
  x, y = table[order, :-1], table[order, -1].astype(np.int32)
  x_train, x_test = x[NUM_TEST:], x[:NUM_TEST]
  mean, std = x_train.mean(axis=0), x_train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return {
      "train": {"x": (x_train - mean) / std, "y": y[NUM_TEST:]},
      "test": {"x": (x_test - mean) / std, "y": y[:NUM_TEST]},
  }


def _splits(dtype: Dtype, shape: tuple[int, ...], classes=None, loss: classification.Loss = "cross_entropy"
            ) -> tuple[dict, dict]:
  num_classes = classification.check_classes(classes, NUM_CLASSES)
  data = {s: classification.select_classes(load()[s], classes) for s in ("train", "test")}
  return tuple(
      {"x": jnp.asarray(data[s]["x"].reshape(-1, *shape), dtype),
       "y": jnp.asarray(classification.targets(data[s]["y"], loss, num_classes, dtype))}
      for s in ("train", "test")
  )


def digits_mlp(
    hidden: tuple[int, ...] = (64, 64),
    activation: models.Activation = "relu",
    classes: tuple[int, ...] | None = None,
    loss: classification.Loss = "cross_entropy",
    norm: models.Norm = "none",
    dtype: Dtype = "float32",
) -> Problem:
  """Digits classified by an MLP 64 → hidden → C (softmax cross-entropy, or `loss="mse"` on one-hot
  targets); `classes` keeps a subset of the ten digits (C = len(classes); default all); `norm="layer"`
  puts a LayerNorm before each hidden activation (`models.MLP`)."""
  for width in hidden:
    checks.check_positive_int("hidden", width)
  checks.check_choice("norm", norm, models.NORMS)
  train, test = _splits(dtype, (64,), classes, loss)
  sizes = (64, *hidden, classification.check_classes(classes, NUM_CLASSES))
  init_params, model_fn = models.functional(
      lambda rngs: models.MLP(sizes, activation, dtype=dtype, rngs=rngs, norm=norm)
  )
  return supervised_problem("digits_mlp", init_params, model_fn, train, test, classification.LIKELIHOODS[loss],
                            one_hot=loss == "mse")


def digits_cnn(channels: tuple[int, int] = (8, 16), dtype: Dtype = "float32") -> Problem:
  """Digits classified by `models.CNN` on 8×8×1 images (softmax cross-entropy)."""
  if len(channels) != 2:
    raise ValueError(f"channels={channels!r} has {len(channels)} entries; expected 2 (one per conv)")
  for width in channels:
    checks.check_positive_int("channels", width)
  init_params, model_fn = models.functional(
      lambda rngs: models.CNN(IMAGE_SHAPE, tuple(channels), NUM_CLASSES, dtype=dtype, rngs=rngs)
  )
  train, test = _splits(dtype, IMAGE_SHAPE)
  return supervised_problem("digits_cnn", init_params, model_fn, train, test, "categorical")

