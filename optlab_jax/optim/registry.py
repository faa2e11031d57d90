"""Optimizer registry: name -> alias factory `(learning_rate, **hyperparams) -> transform`."""

from __future__ import annotations

from optlab_jax.checks import did_you_mean
from optlab_jax.optim.base import Factory

_REGISTRY: dict[str, Factory] = {}


def register(name: str):
  """Decorator adding an alias factory to the registry under `name`."""

  def wrap(factory: Factory) -> Factory:
    if name in _REGISTRY:
      raise ValueError(f"optimizer {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory

  return wrap


def get(name: str) -> Factory:
  """The alias factory registered as `name`; a `ValueError` suggests the closest names."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown optimizer {name!r}{did_you_mean(name, names())} (known: {', '.join(names())})") from None


def names() -> list[str]:
  """Sorted names of every registered optimizer."""
  return sorted(_REGISTRY)
