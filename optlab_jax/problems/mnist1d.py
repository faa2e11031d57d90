"""MNIST-1D (Greydanus, 2020): ten digit templates as length-40 signals, classified by an MLP or a 1-D CNN.

The data is generated locally by the `mnist1d` package's `make_dataset` with its default arguments
(5,000 signals: 4,000 train, 1,000 test, standardised by the package); nothing is downloaded.
`data_seed` replaces the package's seed (42). Published test accuracies with the paper's models
(Greydanus, 2020, Table 1): logistic regression 32%, MLP 68%, CNN 94%.

References: Greydanus, 2020, Scaling down deep learning (arXiv:2011.14439).
"""

from __future__ import annotations

import functools
import random

import jax.numpy as jnp
import numpy as np

from optlab_jax import checks
from optlab_jax.problems import classification, models
from optlab_jax.problems.base import Dtype, Problem, supervised_problem

__all__ = ["load", "mnist1d_mlp", "mnist1d_cnn"]

LENGTH = 40
NUM_CLASSES = 10
# The paper's CNN: (channels, kernel, stride, padding) per layer, 40 → 19 → 10 → 5 positions.
CNN_LAYERS = ((25, 5, 2, 1), (25, 3, 2, 1), (25, 3, 2, 1))


@functools.cache
def load(data_seed: int = 42) -> dict[str, dict[str, np.ndarray]]:
  """{"train": {"x": [4000, 40] float64, "y": [4000] int32}, "test": {"x": [1000, 40], "y": [1000]}}."""
  from mnist1d.data import get_dataset_args, make_dataset  # imported here: it imports requests

  args = get_dataset_args()
  args.seed = data_seed
  # make_dataset seeds Python's and numpy's global generators; give callers theirs back.
  py_state, np_state = random.getstate(), np.random.get_state()
  try:
    raw = make_dataset(args)
  finally:
    random.setstate(py_state)
    np.random.set_state(np_state)
  return {
      "train": {"x": raw["x"], "y": raw["y"].astype(np.int32)},
      "test": {"x": raw["x_test"], "y": raw["y_test"].astype(np.int32)},
  }


def _splits(data_seed: int, dtype: Dtype, shape: tuple[int, ...], classes=None,
            loss: classification.Loss = "cross_entropy") -> tuple[dict, dict]:
  num_classes = classification.check_classes(classes, NUM_CLASSES)
  data = {s: classification.select_classes(load(data_seed)[s], classes) for s in ("train", "test")}
  return tuple(
      {"x": jnp.asarray(data[s]["x"].reshape(-1, *shape), dtype),
       "y": jnp.asarray(classification.targets(data[s]["y"], loss, num_classes, dtype))}
      for s in ("train", "test")
  )


def mnist1d_mlp(
    hidden: tuple[int, ...] = (100, 100),
    activation: models.Activation = "relu",
    data_seed: int = 42,
    classes: tuple[int, ...] | None = None,
    loss: classification.Loss = "cross_entropy",
    norm: models.Norm = "none",
    dtype: Dtype = "float32",
) -> Problem:
  """MNIST-1D classified by an MLP 40 → hidden → C (the paper's: two ReLU layers of 100;
  `hidden=[]` is its logistic-regression baseline); `classes`, `loss` and `norm` as for digits_mlp."""
  for width in hidden:
    checks.check_positive_int("hidden", width)
  checks.check_choice("norm", norm, models.NORMS)
  train, test = _splits(data_seed, dtype, (LENGTH,), classes, loss)
  sizes = (LENGTH, *hidden, classification.check_classes(classes, NUM_CLASSES))
  init_params, model_fn = models.functional(
      lambda rngs: models.MLP(sizes, activation, dtype=dtype, rngs=rngs, norm=norm)
  )
  return supervised_problem("mnist1d_mlp", init_params, model_fn, train, test, classification.LIKELIHOODS[loss],
                            one_hot=loss == "mse")


def mnist1d_cnn(channels: int = 25, data_seed: int = 42, dtype: Dtype = "float32") -> Problem:
  """MNIST-1D classified by the paper's 1-D CNN: three ReLU convolutions of `channels` channels
  (kernel 5, 3, 3; stride 2; padding 1) and a dense head, on signals shaped [40, 1]."""
  checks.check_positive_int("channels", channels)
  layers = tuple((channels, *layer[1:]) for layer in CNN_LAYERS)
  init_params, model_fn = models.functional(
      lambda rngs: models.CNN1D(LENGTH, layers, NUM_CLASSES, dtype=dtype, rngs=rngs)
  )
  train, test = _splits(data_seed, dtype, (LENGTH, 1))
  return supervised_problem("mnist1d_cnn", init_params, model_fn, train, test, "categorical")
