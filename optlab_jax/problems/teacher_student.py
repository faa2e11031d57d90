"""Teacher-student regression: a student MLP fits a fixed random teacher MLP's outputs."""

from __future__ import annotations

import functools

import jax

from optlab_jax import checks
from optlab_jax.problems import models
from optlab_jax.problems.base import Dtype, Problem, supervised_problem

__all__ = ["teacher_student"]


def teacher_student(
    input_dim: int = 20,
    output_dim: int = 1,
    teacher_hidden: tuple[int, ...] = (8,),
    student_hidden: tuple[int, ...] = (32,),
    activation: models.Activation = "tanh",
    num_train: int = 1000,
    num_test: int = 1000,
    noise: float = 0.1,
    data_seed: int = 0,
    dtype: Dtype = "float32",
) -> Problem:
  """Inputs x ~ N(0, I), targets y = teacher(x) + noise · N(0, I); loss ½ mean ‖student(x) − y‖².

  The teacher is an MLP input_dim → teacher_hidden → output_dim with NNX's default (LeCun
  normal) initialisation from `data_seed`; the student has the same activation and
  `student_hidden` layers, its initialisation from the run's key. The loss is the Gaussian
  negative log-likelihood with unit variance (`likelihood="gaussian"`); the expected test
  loss of any student is at least ½ · output_dim · noise² (the teacher's).

  References: Saad & Solla, 1995, On-line learning in soft committee machines.
  """
  checks.check_positive_int("input_dim", input_dim)
  checks.check_positive_int("output_dim", output_dim)
  for name, sizes in (("teacher_hidden", teacher_hidden), ("student_hidden", student_hidden)):
    for width in sizes:
      checks.check_positive_int(name, width)
  checks.check_positive_int("num_train", num_train)
  checks.check_positive_int("num_test", num_test)
  checks.check_nonnegative("noise", noise)

  train, test = _dataset(
      input_dim, output_dim, tuple(teacher_hidden), activation, num_train, num_test, noise, data_seed, dtype
  )
  init_params, model_fn = _mlp(input_dim, student_hidden, output_dim, activation, dtype)
  return supervised_problem("teacher_student", init_params, model_fn, train, test, "gaussian")


def _mlp(input_dim, hidden, output_dim, activation, dtype):
  sizes = (input_dim, *hidden, output_dim)
  return models.functional(lambda rngs: models.MLP(sizes, activation, dtype=dtype, rngs=rngs))


@functools.cache
def _dataset(input_dim, output_dim, teacher_hidden, activation, num_train, num_test, noise, data_seed, dtype):
  """(train, test) splits of {"x", "y"}, generated in one jitted call (op by op it compiles for seconds)."""
  teacher_init, teacher_fn = _mlp(input_dim, teacher_hidden, output_dim, activation, dtype)
  n = num_train + num_test

  @jax.jit
  def generate(key):
    teacher_key, x_key, noise_key = jax.random.split(key, 3)
    x = jax.random.normal(x_key, (n, input_dim), dtype)
    y = teacher_fn(teacher_init(teacher_key), x) + noise * jax.random.normal(noise_key, (n, output_dim), dtype)
    return {"x": x[:num_train], "y": y[:num_train]}, {"x": x[num_train:], "y": y[num_train:]}

  return generate(jax.random.key(data_seed))
