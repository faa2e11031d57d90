"""The ground-floor validators: what passes, what fails, and that the message names the argument."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from optlab_jax import checks, optim


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, float("1e400")])
def test_non_finite_values_fail_unbounded_ranges(value):
  # Every range that is unbounded above used to accept inf ("expected x in [0.0, inf]").
  for check in (checks.check_nonnegative, checks.check_positive, checks.check_positive_int,
                lambda n, v: checks.check_in_range(n, v)):
    with pytest.raises(ValueError, match="hyper="):
      check("hyper", value)
  with pytest.raises(ValueError, match=r"learning_rate=inf is out of range; expected learning_rate in \[0.0, inf\)"):
    checks.check_learning_rate(float("1e400"))


def test_infinity_passes_only_where_the_caller_says_it_means_something():
  checks.check_in_range("clip", math.inf, 0.0, allow_inf=True)
  with pytest.raises(ValueError, match="clip=nan"):
    checks.check_in_range("clip", math.nan, 0.0, allow_inf=True)
  with pytest.raises(ValueError, match=r"expected clip in \[0.0, 1.0\]"):
    checks.check_in_range("clip", math.inf, 0.0, 1.0, allow_inf=True)


@pytest.mark.parametrize("name", ["sgd", "adam", "sophia_h", "newton_cg"])
def test_an_infinite_learning_rate_or_decay_fails_at_construction(name):
  with pytest.raises(ValueError, match="learning_rate=inf"):
    optim.get(name)(float("1e400"))
  with pytest.raises(ValueError, match="learning_rate=-inf"):
    optim.get(name)(-math.inf)


def test_bounds_open_closed_and_finite_values():
  checks.check_in_range("x", 0.0, 0.0, 1.0)
  checks.check_in_range("x", 1.0, 0.0, 1.0)
  checks.check_positive("x", 1e300)
  checks.check_positive_int("k", 3)
  for bad, kwargs in [(0.0, dict(lower_open=True)), (1.0, dict(upper_open=True)), (-1e-12, {}), (1.0 + 1e-12, {})]:
    with pytest.raises(ValueError, match="x="):
      checks.check_in_range("x", bad, 0.0, 1.0, **kwargs)
  for bad in (0, 2.5, -1):
    with pytest.raises(ValueError, match="an integer k >= 1"):
      checks.check_positive_int("k", bad)
  with pytest.raises(TypeError, match="expected a number"):
    checks.check_positive("x", "fast")


def test_traced_values_pass_unchecked():
  jax.jit(lambda x: checks.check_positive("x", x) or x)(jnp.asarray(-1.0))


def test_choice_and_did_you_mean():
  with pytest.raises(ValueError, match=r"likelihood='categorial' is not supported; did you mean 'categorical'\?"):
    checks.check_choice("likelihood", "categorial", ("categorical", "gaussian"))
  assert checks.did_you_mean("lr", ["learning_rate", "b1"]) == "; did you mean 'learning_rate'?"
  assert checks.did_you_mean("zzz", ["learning_rate"]) == ""
  with pytest.raises(ValueError, match="obj_fn"):
    checks.require_extra_arg("obj_fn", None, example="obj_fn=lambda p: loss(p, batch)")
