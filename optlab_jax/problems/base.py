"""The `Problem` every training loop, optimizer and monitor works on, and batch sampling.

A problem is pure functions plus its data. The data is a field of its own (not captured in
closures) so that jitted code receives it as an argument: XLA embeds captured arrays in the
program as constants, and a 12 MB dataset embedded that way costs seconds of compile time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax

from optlab_jax import checks

Params = Any
Batch = dict[str, Any]
Likelihood = Literal["categorical", "gaussian"] | None
Dtype = Literal["float32", "float64"]


@dataclasses.dataclass(frozen=True)
class Problem:
  """An objective to minimise: params, a model, a loss per batch, its data and its metrics.

  The loss on a batch is `output_loss_fn(model_fn(params, batch["x"]), batch)`, so Gauss-Newton
  and Fisher users get the model and the output loss separately (`extra_args`).
  """

  name: str
  init_params: Callable[[jax.Array], Params]          # key -> params (a pytree of arrays); vmappable
  model_fn: Callable[[Params, Any], Any]              # (params, inputs) -> outputs
  output_loss_fn: Callable[[Any, Batch], jax.Array]   # (outputs, batch) -> scalar mean loss
  sample_fn: Callable[[Any, jax.Array, int | None], Batch]  # (data, key, batch_size) -> batch
  metrics_fn: Callable[[Any, Params], dict[str, jax.Array]]  # (data, params) -> eval metrics
  data: Any = None                                    # pytree of arrays the functions above read
  likelihood: Likelihood = None                       # the output loss as a negative log-likelihood
  minimum: float | None = None                        # the optimal loss, where it is known
  info: dict = dataclasses.field(default_factory=dict)  # known facts (critical points, exact solutions)

  def loss(self, params: Params, batch: Batch) -> jax.Array:
    """The mean loss on `batch`: output_loss_fn(model_fn(params, batch["x"]), batch)."""
    return self.output_loss_fn(self.model_fn(params, batch["x"]), batch)

  def sample_batch(self, key: jax.Array, batch_size: int | None = None) -> Batch:
    """A training batch drawn with `key` (jittable); `batch_size=None` is the full batch."""
    return self.sample_fn(self.data, key, batch_size)

  def eval_metrics(self, params: Params) -> dict[str, jax.Array]:
    """Metrics on the full data: `loss` (training objective) and, with held-out data,
    `test_loss` and, for classifiers, `test_accuracy`."""
    return self.metrics_fn(self.data, params)

  def extra_args(self, batch: Batch) -> dict[str, Callable]:
    """The keyword arguments optimizers take in `update` for this batch (see docs/architecture.md)."""
    obj_fn = lambda p: self.loss(p, batch)
    return dict(
        obj_fn=obj_fn,
        value_fn=obj_fn,  # optax's line searches call it `value_fn`
        model_fn=lambda p: self.model_fn(p, batch["x"]),
        output_loss_fn=lambda outputs: self.output_loss_fn(outputs, batch),
    )


def check_batch_size(batch_size: int | None) -> None:
  """`ValueError` unless batch_size is None (full batch) or an integer >= 1."""
  if batch_size is not None:
    checks.check_positive_int("batch_size", batch_size)


def deterministic_problem(name: str, init_params: Callable, model_fn: Callable, output_loss_fn: Callable,
                          **fields: Any) -> Problem:
  """A problem without data: every batch is the whole function ({"x": None}), its metric the loss."""

  def sample_fn(data, key, batch_size):
    del data, key
    check_batch_size(batch_size)
    return {"x": None}

  def metrics_fn(data, params):
    del data
    return {"loss": output_loss_fn(model_fn(params, None), None)}

  return Problem(name=name, init_params=init_params, model_fn=model_fn, output_loss_fn=output_loss_fn,
                 sample_fn=sample_fn, metrics_fn=metrics_fn, data={}, **fields)


def sample_rows(rows: Batch, key: jax.Array, batch_size: int | None) -> Batch:
  """`batch_size` rows drawn uniformly with replacement (i.i.d. SGD batches); None: all rows."""
  check_batch_size(batch_size)
  if batch_size is None:
    return rows
  n = jax.tree.leaves(rows)[0].shape[0]
  index = jax.random.randint(key, (batch_size,), 0, n)
  return jax.tree.map(lambda a: a[index], rows)


def cross_entropy(logits: jax.Array, batch: Batch) -> jax.Array:
  """Mean softmax cross-entropy of `logits` against the integer labels `batch["y"]`."""
  return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["y"]))


def half_squared_error(outputs: jax.Array, batch: Batch) -> jax.Array:
  """½ · mean over examples of ‖outputs − y‖² (the Gaussian negative log-likelihood, unit variance)."""
  return 0.5 * jnp.mean(jnp.sum(jnp.square(outputs - batch["y"]), axis=-1))


def supervised_problem(
    name: str,
    init_params: Callable[[jax.Array], Params],
    model_fn: Callable[[Params, Any], Any],
    train: Batch,
    test: Batch,
    likelihood: Literal["categorical", "gaussian"],
    *,
    one_hot: bool = False,
) -> Problem:
  """A problem on a dataset {"x", "y"} split into train and test.

  Categorical: softmax cross-entropy on integer labels, metrics with test accuracy.
  Gaussian: `half_squared_error`; with `one_hot` (classes as one-hot targets, MSE classification)
  test accuracy too. Batches are rows of the training split (`sample_rows`).
  """
  output_loss_fn = cross_entropy if likelihood == "categorical" else half_squared_error

  def metrics_fn(data, params):
    train_out, test_out = model_fn(params, data["train"]["x"]), model_fn(params, data["test"]["x"])
    metrics = {
        "loss": output_loss_fn(train_out, data["train"]),
        "test_loss": output_loss_fn(test_out, data["test"]),
    }
    if likelihood == "categorical" or one_hot:
      labels = jnp.argmax(data["test"]["y"], axis=-1) if one_hot else data["test"]["y"]
      metrics["test_accuracy"] = jnp.mean(jnp.argmax(test_out, axis=-1) == labels)
    return metrics

  return Problem(
      name=name,
      init_params=init_params,
      model_fn=model_fn,
      output_loss_fn=output_loss_fn,
      sample_fn=lambda data, key, batch_size: sample_rows(data["train"], key, batch_size),
      metrics_fn=metrics_fn,
      data={"train": train, "test": test},
      likelihood=likelihood,
  )
