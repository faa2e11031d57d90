"""Problems by name: test functions and landscapes, digits and MNIST-1D, a character Transformer,
teacher-student regression.

`build(name, **options)` returns a `Problem`; `get(name)` returns its factory, whose keyword
signature (annotations and defaults) is the problem's set of options; `names()` lists them.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from optlab_jax.checks import did_you_mean
from optlab_jax.problems import (
    char_transformer, deep_chain, digits, embedding, landscapes, mnist1d, online, pinn, teacher_student, test_functions,
)
from optlab_jax.problems.base import Problem

__all__ = ["Problem", "build", "get", "names"]

_FACTORIES: dict[str, Callable[..., Problem]] = {
    "quadratic": test_functions.quadratic,
    "rosenbrock": test_functions.rosenbrock,
    "digits_mlp": digits.digits_mlp,
    "digits_cnn": digits.digits_cnn,
    "teacher_student": teacher_student.teacher_student,
    "char_transformer": char_transformer.char_transformer,
    "mnist1d_mlp": mnist1d.mnist1d_mlp,
    "mnist1d_cnn": mnist1d.mnist1d_cnn,
    "cubic": landscapes.cubic,
    "saddle": landscapes.saddle,
    "xcos": landscapes.xcos,
    "plateau": landscapes.plateau,
    "tanh_vanishing": landscapes.tanh_vanishing,
    "deep_chain": deep_chain.deep_chain,
    "pinn_poisson": pinn.pinn_poisson,
    "pinn_burgers": pinn.pinn_burgers,
    "embedding_regression": embedding.embedding_regression,
    "online_linear": online.online_linear,
}


def names() -> list[str]:
  """Sorted names of every problem."""
  return sorted(_FACTORIES)


def get(name: str) -> Callable[..., Problem]:
  """The factory of problem `name`; a `ValueError` names the closest known problem."""
  if name not in _FACTORIES:
    raise ValueError(f"unknown problem {name!r}{did_you_mean(name, names())} (known: {', '.join(names())})")
  return _FACTORIES[name]


def build(name: str, **options: Any) -> Problem:
  """Problem `name` with `options`; a `ValueError` names an unknown option and the closest one."""
  factory = get(name)
  known = list(inspect.signature(factory).parameters)
  for option in options:
    if option not in known:
      raise ValueError(
          f"{option}={options[option]!r} is not an option of problem {name!r}"
          f"{did_you_mean(option, known)} (options: {', '.join(known)})"
      )
  return factory(**options)
