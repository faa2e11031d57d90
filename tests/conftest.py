"""Strict JAX for every test: float64 available (dtypes are always explicit), rank promotion raises.

Tests are dominated by XLA compilation of many small programs, so they compile at backend
optimisation level 0 (a third faster; semantics unchanged). Benchmarks run at the default.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402  (XLA_FLAGS must be set before the backend starts)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
