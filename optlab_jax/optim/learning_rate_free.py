"""Learning-rate-free and self-tuning methods, as optax ships them: Prodigy, D-Adaptation AdamW,
DoG, COCOB, Mechanic (over any registry optimizer) and the Polyak step size.

Each entry is optax's own alias with our contract on top (see `optlab_jax.optim.wrapped`);
here `learning_rate` multiplies the step size the method estimates, so 1.0 is the method
itself. The numbers are optax's (tests/test_optim_contrib.py); COCOB's and Polyak's at lr = 1
(their docstrings say why).
"""

from __future__ import annotations

from typing import Any

import optax
from optax import contrib

from optlab_jax import checks
from optlab_jax.optim.registry import get, names, register
from optlab_jax.optim.wrapped import check_decays, check_nonnegatives, optax_alias, skip_zero_learning_rate

__all__ = ["prodigy", "dadapt_adamw", "dog", "cocob", "mechanize", "polyak_sgd"]

MECHANIZE_NUM_BETAS = 6  # optax's default, when `num_betas` is None


@register("prodigy")
def prodigy(learning_rate: optax.ScalarOrSchedule = 1.0, b1: float = 0.9, b2: float = 0.999,
            beta3: float | None = None, eps: float = 1e-8, estim_lr0: float = 1e-6, estim_lr_coef: float = 1.0,
            weight_decay: float = 0.0, *, safeguard_warmup: bool = False) -> optax.GradientTransformationExtraArgs:
  """Prodigy: Adam at step size d_t, a lower bound on the distance to the solution, grown online.

    s = β3 s + d_t λ_t g,   r = β3 r + d_t λ_t ⟨g, x_0 − x⟩,   d_{t+1} = max(d_t, coef · r / ‖s‖₁)
    p ← p − d_t λ_t (m̂ / (√v̂ + d_t eps) + wd · p)   (m, v Adam's moments of d_t g; β3 = √β2 if None)
  optax's `betas` are `b1, b2` here. A step at lr = 0 (warm-up from 0) is skipped: optax's
  estimate is 0/0 there and would make the run NaN (see `wrapped.skip_zero_learning_rate`).

  References: Mishchenko & Defazio, 2023, Prodigy: an expeditiously adaptive parameter-free
  learner (arXiv:2306.06101).
  """
  check_decays(b1=b1, b2=b2, beta3=beta3 if beta3 is not None else 0.0)
  check_nonnegatives(eps=eps, weight_decay=weight_decay)
  checks.check_positive("estim_lr0", estim_lr0)
  checks.check_positive("estim_lr_coef", estim_lr_coef)
  tx = contrib.prodigy(learning_rate, (b1, b2), beta3, eps, estim_lr0, estim_lr_coef, weight_decay,
                       safeguard_warmup)
  return optax_alias(skip_zero_learning_rate(tx, learning_rate), learning_rate)


@register("dadapt_adamw")
def dadapt_adamw(learning_rate: optax.ScalarOrSchedule = 1.0, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8, estim_lr0: float = 1e-6,
                 weight_decay: float = 0.0) -> optax.GradientTransformationExtraArgs:
  """D-Adaptation AdamW: AdamW at a step size d_t estimated from the gradients' dual averages.

    s = √β2 s + (1 − √β2) d_t λ_t g,   d_{t+1} = max(d_t, Σ weighted ⟨g, s⟩ / ‖s‖₁)
  optax's `betas` are `b1, b2` here.

  References: Defazio & Mishchenko, 2023, Learning-rate-free learning by D-adaptation (ICML,
  arXiv:2301.07733).
  """
  check_decays(b1=b1, b2=b2)
  check_nonnegatives(eps=eps, weight_decay=weight_decay)
  checks.check_positive("estim_lr0", estim_lr0)
  return optax_alias(contrib.dadapt_adamw(learning_rate, (b1, b2), eps, estim_lr0, weight_decay), learning_rate)


@register("dog")
def dog(learning_rate: optax.ScalarOrSchedule = 1.0, init_step: str = "heuristic", init_step_value: float = 1e-6,
        eps: float = 1e-8, weight_decay: float | None = None,
        weight_decay_mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """DoG ("distance over gradients"): η_t = max_{k≤t} ‖x_k − x_0‖ / √(Σ_{k≤t} ‖g_k‖² + eps).

    p ← p − lr η_t g,   with max ‖x_k − x_0‖ started at r_ε: `init_step_value` ("distance"),
    `init_step_value · (1 + ‖x_0‖)` ("heuristic") or from a first step η_0 = `init_step_value`
    ("learning_rate"). optax's `init_step` tuple is `init_step, init_step_value` here.

  References: Ivgi, Hinder & Carmon, 2023, DoG is SGD's best friend: a parameter-free dynamic
  step size schedule (ICML, arXiv:2302.12022).
  """
  checks.check_choice("init_step", init_step, ("distance", "learning_rate", "heuristic"))
  checks.check_positive("init_step_value", init_step_value)
  check_nonnegatives(eps=eps, weight_decay=weight_decay)
  tx = contrib.dog(learning_rate, (init_step, init_step_value), eps, weight_decay, weight_decay_mask)
  return optax_alias(tx, learning_rate)


@register("cocob")
def cocob(learning_rate: optax.ScalarOrSchedule = 1.0, alpha: float = 100.0, eps: float = 1e-8,
          weight_decay: float = 0.0, weight_decay_mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """COCOB-Backprop: coin betting with per-coordinate wealth, no step size to tune.

    L = max(L, |g|),   G = G + |g|,   R = max(R − g (x − x_0), 0)   (reward)
    x = x_0 − Σg / (L max(G + L, α L)) · (L + R)           (each step's change then times lr)

  The bet is invariant to the scale of g, so optax's `cocob`, which multiplies g by lr before
  betting, ignores its lr; here lr multiplies the step, a real knob (lr = 1 is optax's).

  References: Orabona & Tommasi, 2017, Training deep networks without learning rates through
  coin betting (NeurIPS, arXiv:1705.07795).
  """
  checks.check_positive("alpha", alpha)
  check_nonnegatives(eps=eps, weight_decay=weight_decay)
  tx = optax.chain(optax.add_decayed_weights(weight_decay, weight_decay_mask), contrib.scale_by_cocob(alpha, eps),
                   optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  return optax_alias(tx, learning_rate)


@register("mechanize")
def mechanize(learning_rate: optax.ScalarOrSchedule, base: Any = "adam", base_kwargs: dict | None = None,
              weight_decay: float = 0.01, eps: float = 1e-8, s_init: float = 1e-6,
              num_betas: int | None = None) -> optax.GradientTransformationExtraArgs:
  """Mechanic: learns a scale s of the accumulated updates Δ_t of a base optimizer.

    x_t = x_0 + s_t Δ_t,   s_t = Σ_β s_β, each s_β tuned online by a coin-betting rule on ⟨g, Δ⟩
  over `num_betas` (None: 6) EMA rates β = 1 − 10^(−k). `base` is a registry name, built as
  `get(base)(learning_rate, **base_kwargs)`, or a transform that carries its own learning
  rate (then `learning_rate` is only checked).

  References: Cutkosky, Defazio & Mehta, 2023, Mechanic: a learning rate tuner (NeurIPS,
  arXiv:2306.00144).
  """
  if num_betas is None:
    num_betas = MECHANIZE_NUM_BETAS
  checks.check_positive_int("num_betas", num_betas)
  check_nonnegatives(weight_decay=weight_decay, eps=eps)
  checks.check_positive("s_init", s_init)
  if isinstance(base, str):
    checks.check_choice("base", base, names())
    base = get(base)(learning_rate, **(base_kwargs or {}))
  tx = contrib.mechanize(base, weight_decay, eps, s_init, int(num_betas))
  return optax_alias(tx, learning_rate)


@register("polyak_sgd")
def polyak_sgd(learning_rate: optax.ScalarOrSchedule = 1.0, max_learning_rate: float = 1.0, f_min: float = 0.0,
               eps: float = 0.0, variant: str = "sps") -> optax.GradientTransformationExtraArgs:
  """SGD with the Polyak step size; needs `value=` (the loss at params) in `update`.

    η = min((f(x) − f_min) / (‖g‖² + eps), max_learning_rate)   ("sps+": max(f − f_min, 0)),
    p ← p − lr η g
  Here lr multiplies the Polyak step. optax's `polyak_sgd(max_learning_rate, scaling)` scales g
  before the step is computed, so its step is (f − f_min)/(s ‖g‖²) g: a scaling s < 1 makes it
  larger (up to the cap) and can diverge; lr = 1 is optax's.

  References: Polyak, 1987, Introduction to optimization; Loizou et al., 2021, Stochastic
  Polyak step-size for SGD (AISTATS, arXiv:2002.10542).
  """
  checks.check_positive("max_learning_rate", max_learning_rate)
  checks.check_in_range("f_min", f_min)
  check_nonnegatives(eps=eps)
  checks.check_choice("variant", variant, ("sps", "sps+"))
  polyak = optax.scale_by_polyak(max_learning_rate=max_learning_rate, f_min=f_min, eps=eps, variant=variant)
  tx = optax.chain(polyak, optax.scale_by_learning_rate(learning_rate))
  return optax_alias(_require_value(tx), learning_rate)


def _require_value(tx: optax.GradientTransformationExtraArgs) -> optax.GradientTransformationExtraArgs:
  """`tx` whose `update` raises our missing-argument `ValueError` when `value=` is not given."""

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    checks.require_extra_arg("value", value, example="value=loss  # the loss at params")
    return tx.update(updates, state, params, value=value, **extra_args)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)
