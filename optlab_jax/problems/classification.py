"""Options shared by the classification datasets: a subset of the classes, and the loss.

`loss="mse"` trains on one-hot targets with ½‖f − y‖² (the Gaussian likelihood), as Cohen et al.
(2021) train their edge-of-stability networks; `"cross_entropy"` (the default) keeps integer labels.
`classes` keeps only the examples of the listed classes, relabelled 0 … len(classes) − 1 in the
listed order, so the model has len(classes) outputs (Papyan's C outliers move with C).

References: Cohen et al., 2021, Gradient descent on neural networks typically occurs at the edge of
stability (arXiv:2103.00065), section 3 (square loss on one-hot targets).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from optlab_jax import checks

__all__ = ["Loss", "LIKELIHOODS", "check_classes", "select_classes", "targets"]

Loss = Literal["cross_entropy", "mse"]
LIKELIHOODS = {"cross_entropy": "categorical", "mse": "gaussian"}


def check_classes(classes: Sequence[int] | None, num_classes: int) -> int:
  """The number of classes the problem keeps; `ValueError` naming `classes` unless they are ≥ 2
  distinct labels in [0, num_classes)."""
  if classes is None:
    return num_classes
  classes = list(classes)
  bad = [c for c in classes if type(c) is not int or not 0 <= c < num_classes]
  if bad or len(set(classes)) != len(classes) or len(classes) < 2:
    raise ValueError(f"classes={classes!r} is out of range; expected at least 2 distinct integers in "
                     f"[0, {num_classes - 1}]")
  return len(classes)


def select_classes(split: dict[str, np.ndarray], classes: Sequence[int] | None) -> dict[str, np.ndarray]:
  """The rows of `split` ({"x", "y" int labels}) whose label is in `classes`, labels relabelled to
  their index in `classes`; all rows when `classes` is None."""
  if classes is None:
    return split
  keep = np.isin(split["y"], classes)
  relabel = np.full(int(split["y"].max()) + 1, -1, np.int32)
  relabel[list(classes)] = np.arange(len(classes), dtype=np.int32)
  return {"x": split["x"][keep], "y": relabel[split["y"][keep]]}


def targets(labels: np.ndarray, loss: Loss, num_classes: int, dtype: str) -> np.ndarray:
  """The training targets of `loss`: the integer labels, or one-hot rows in `dtype` for "mse"."""
  checks.check_choice("loss", loss, tuple(LIKELIHOODS))
  if loss == "cross_entropy":
    return labels
  return np.eye(num_classes, dtype=dtype)[labels]
