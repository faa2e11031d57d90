"""Strict JAX for every test: float64 available (dtypes are always explicit), rank promotion raises.

Tests are dominated by XLA compilation of many small programs, so they compile at backend
optimisation level 0 (a third faster; semantics unchanged). Benchmarks run at the default.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402  (XLA_FLAGS must be set before the backend starts)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402

# Modules whose tests share an expensive module-scoped fixture or cached run: each runs whole on
# one xdist worker (the suite's `--dist loadgroup`), so the shared work is done once, not per worker.
# Modules that share a helper's cached runs (tests/transformer_sgd_runs.py) share a group.
SHARED_WORK = {"test_checkpoints", "test_executors", "test_findings", "test_findings_embedding",
               "test_findings_landscape", "test_findings_lottery", "test_findings_second_order", "test_findings_toys",
               "test_findings_transformer", "test_landscape_runs", "test_optim_kfac", "test_pruning", "test_train"}
GROUPS = {module: module for module in SHARED_WORK} | {
    "test_findings_warmup": "transformer_sgd_runs", "test_findings_lr_schedules": "transformer_sgd_runs"}


@pytest.hookimpl(tryfirst=True)   # before xdist reads the groups
def pytest_collection_modifyitems(items):
  for item in items:
    group = GROUPS.get(item.module.__name__.rsplit(".", 1)[-1])
    if group:
      item.add_marker(pytest.mark.xdist_group(group))
