"""Class subsets and the square loss of the classification problems, against numpy and scikit-learn."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from optlab_jax import problems


def test_digits_class_subset_with_square_loss_on_one_hot_targets():
  problem = problems.build("digits_mlp", hidden=(8,), classes=(7, 2), loss="mse", dtype="float64")
  train, test = problem.data["train"], problem.data["test"]
  labels = load_digits().target
  assert len(train["y"]) + len(test["y"]) == np.sum(labels == 7) + np.sum(labels == 2)
  y = np.concatenate([train["y"], test["y"]])
  np.testing.assert_array_equal(y.sum(axis=1), 1.0)  # one-hot rows, in the listed order: 7 -> 0, 2 -> 1
  np.testing.assert_array_equal(y.sum(axis=0), [np.sum(labels == 7), np.sum(labels == 2)])
  params = problem.init_params(jax.random.key(0))
  assert problem.model_fn(params, train["x"]).shape == (len(train["y"]), 2) and problem.likelihood == "gaussian"
  out = np.asarray(problem.model_fn(params, test["x"]))
  metrics = problem.eval_metrics(params)
  np.testing.assert_allclose(metrics["test_loss"], 0.5 * np.mean(np.sum((out - test["y"]) ** 2, axis=1)), rtol=1e-12)
  np.testing.assert_allclose(metrics["test_accuracy"], np.mean(out.argmax(1) == np.asarray(test["y"]).argmax(1)))


def test_mnist1d_class_subset_keeps_integer_labels_for_cross_entropy():
  full, subset = problems.build("mnist1d_mlp"), problems.build("mnist1d_mlp", classes=(3, 0, 9))
  y_full, y = np.asarray(full.data["train"]["y"]), np.asarray(subset.data["train"]["y"])
  kept = np.isin(y_full, (3, 0, 9))
  np.testing.assert_array_equal(y, [{3: 0, 0: 1, 9: 2}[v] for v in y_full[kept]])
  np.testing.assert_array_equal(subset.data["train"]["x"], full.data["train"]["x"][kept])
  assert subset.likelihood == "categorical"


@pytest.mark.parametrize("classes,match", [((1, 1), "classes=\\[1, 1\\] is out of range"),
                                           ((3,), "at least 2"), ((0, 10), "\\[0, 9\\]")])
def test_bad_classes_name_the_option(classes, match):
  with pytest.raises(ValueError, match=match):
    problems.build("digits_mlp", classes=classes)
  with pytest.raises(ValueError, match="loss='l2' is not supported"):
    problems.build("digits_mlp", loss="l2")
