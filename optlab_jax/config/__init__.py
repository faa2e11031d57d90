"""Experiment configs: the typed schema, YAML loading, `--set` overrides, path-qualified errors.

A config file has the sections `problem` (a problem name + its options), `optimizer` (a registry
name + hyperparameters; `learning_rate` a float or a schedule spec `{name: ..., **kwargs}`),
`train`, `monitor`, `sweep` (`grid` and `zip` axes over dotted keys) and `seeds`. Every sweep
point is validated in full (`build.validate_point`) before any training; a bad config raises
`ConfigError` with one line per mistake, naming the source (the file, or the `--set` that caused
it), the dotted path and, for unknown names, the closest valid one:
`configs/x.yaml: optimizer.betas: unknown key; did you mean 'b1'?`.

Modules: `schema` (pydantic models), `axes` (sweep expansion), `errors` (paths, collection,
attribution), `reflect` (factory signatures as models), `build` (sections to objects),
`loading` (YAML, `--set`, `load`).
"""

from optlab_jax.config.axes import Axis, expand
from optlab_jax.config.build import (
    build_monitor, build_problem, optimizer_kwargs, schedule_factories, validate_point,
)
from optlab_jax.config.errors import ConfigError, Errors, Invalid, dotted
from optlab_jax.config.loading import load, parse_set, parse_yaml
from optlab_jax.config.reflect import validate_kwargs
from optlab_jax.config.schema import SECTIONS, Experiment, Run

__all__ = [
    "SECTIONS", "Axis", "ConfigError", "Errors", "Experiment", "Invalid", "Run", "build_monitor",
    "build_problem", "dotted", "expand", "load", "optimizer_kwargs", "parse_set", "parse_yaml",
    "schedule_factories", "validate_kwargs", "validate_point",
]
