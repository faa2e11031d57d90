"""Adam's recent relatives, as optax ships them: ADOPT, AdEMAMix, Adan, AdaBelief, Yogi, MADGRAD.

Each entry is optax's own alias with our contract on top: hyperparameters range-checked at
construction (`optlab_jax.checks`), `weight_decay_mask` for optax's `mask`, integer leaves left
untouched (`wrapped.optax_alias`). The numbers are optax's (tests/test_optim_contrib.py).
"""

from __future__ import annotations

from typing import Any, Callable

import optax
from optax import contrib

from optlab_jax.optim.registry import register
from optlab_jax.optim.wrapped import check_decays, check_nonnegatives, optax_alias, skip_zero_learning_rate

__all__ = ["adopt", "ademamix", "adan", "adabelief", "yogi", "madgrad"]


@register("adopt")
def adopt(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.9999, eps: float = 1e-6,
          mu_dtype: Any = None, *, nesterov: bool = False, use_clipping: bool = True,
          clip_value_fn: Callable | None = None) -> optax.GradientTransformationExtraArgs:
  """ADOPT: Adam with v_{t-1} (not v_t) in the normaliser, and the momentum after it.

    m_t = β1 m_{t-1} + (1 − β1) clip(g_t / max(√v_{t-1}, eps), c(t)),   v_t = β2 v_{t-1} + (1 − β2) g_t²
    p ← p − lr m_t        (v_0 = g_0², no step at t = 0; c(t) = `clip_value_fn(t)` when `use_clipping`,
                           None: optax's t^¼; a function, so `inject_hyperparams` would take it for a schedule)

  References: Taniguchi et al., 2024, ADOPT: Modified Adam can converge with any β2 with the
  optimal rate (arXiv:2411.02853).
  """
  check_decays(b1=b1, b2=b2)
  check_nonnegatives(eps=eps)
  clip = {} if clip_value_fn is None else {"clip_value_fn": clip_value_fn}
  return optax_alias(contrib.adopt(learning_rate, b1, b2, eps, mu_dtype, nesterov=nesterov,
                                   use_clipping=use_clipping, **clip), learning_rate)


@register("ademamix")
def ademamix(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, b3: Any = 0.9999,
             alpha: Any = 5.0, eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: Any = None,
             weight_decay: float = 0.0, weight_decay_mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """AdEMAMix: Adam's numerator plus a slow EMA of gradients weighted by α.

    m1 = β1 m1 + (1 − β1) g,   m2 = β3 m2 + (1 − β3) g,   ν = β2 ν + (1 − β2) g²
    p ← p − lr ((m̂1 + α m2) / (√ν̂ + eps) + λ p)           (b3 and alpha may be schedules)

  References: Pagliardini et al., 2024, The AdEMAMix optimizer: better, faster, older
  (arXiv:2409.03137).
  """
  check_decays(b1=b1, b2=b2, b3=b3)
  check_nonnegatives(alpha=alpha, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
  return optax_alias(contrib.ademamix(learning_rate, b1, b2, b3, alpha, eps, eps_root, mu_dtype,
                                weight_decay, weight_decay_mask), learning_rate)


@register("adan")
def adan(learning_rate: optax.ScalarOrSchedule, b1: float = 0.98, b2: float = 0.92, b3: float = 0.99,
         eps: float = 1e-8, eps_root: float = 1e-8, weight_decay: float = 0.0,
         weight_decay_mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """Adan: Nesterov momentum through a gradient-difference term (optax's β's are 1 − the paper's).

    m = β1 m + (1 − β1) g,   v = β2 v + (1 − β2)(g − g_prev),   n = β3 n + (1 − β3)(g + β2 (g − g_prev))²
    p ← (p − lr (m̂ + β2 v̂) / (√(n̂ + eps_root) + eps)) / (1 + lr λ)

  References: Xie et al., 2022, Adan: Adaptive Nesterov momentum algorithm for faster optimizing
  deep models (arXiv:2208.06677).
  """
  check_decays(b1=b1, b2=b2, b3=b3)
  check_nonnegatives(eps=eps, eps_root=eps_root, weight_decay=weight_decay)
  return optax_alias(optax.adan(learning_rate, b1, b2, b3, eps, eps_root, weight_decay, weight_decay_mask),
               learning_rate)


@register("adabelief")
def adabelief(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16,
              eps_root: float = 1e-16, *, nesterov: bool = False) -> optax.GradientTransformationExtraArgs:
  """AdaBelief: Adam whose second moment is the EMA of (g − m)², the "belief" in the gradient.

    m = β1 m + (1 − β1) g,   s = β2 s + (1 − β2)(g − m)² + eps_root,   p ← p − lr m̂ / (√ŝ + eps)

  References: Zhuang et al., 2020, AdaBelief optimizer (NeurIPS, arXiv:2010.07468).
  """
  check_decays(b1=b1, b2=b2)
  check_nonnegatives(eps=eps, eps_root=eps_root)
  return optax_alias(optax.adabelief(learning_rate, b1, b2, eps, eps_root, nesterov=nesterov), learning_rate)


@register("yogi")
def yogi(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-3) -> optax.GradientTransformationExtraArgs:
  """Yogi: Adam with an additive, sign-controlled second-moment update.

    m = β1 m + (1 − β1) g,   v = v − (1 − β2) sign(v − g²) g²,   p ← p − lr m / (√v + eps)

  References: Zaheer et al., 2018, Adaptive methods for nonconvex optimization (NeurIPS).
  """
  check_decays(b1=b1, b2=b2)
  check_nonnegatives(eps=eps)
  return optax_alias(optax.yogi(learning_rate, b1, b2, eps), learning_rate)


@register("madgrad")
def madgrad(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 0.0,
            eps: float = 1e-6) -> optax.GradientTransformationExtraArgs:
  """MADGRAD: dual averaging with a cube-root AdaGrad denominator and momentum by averaging.

    λ_t = lr √(t+1),   s = s + λ_t g,   ν = ν + λ_t g²,   z = p_0 − s / (∛ν + eps)
    p ← momentum · p + (1 − momentum) z            (weight decay adds λ p to g)
  A step at lr = 0 is exactly zero (see `wrapped.skip_zero_learning_rate`).

  References: Defazio & Jelassi, 2021, Adaptivity without compromise: a momentumized, adaptive,
  dual averaged gradient method for stochastic optimization (arXiv:2101.11075).
  """
  check_decays(momentum=momentum)
  check_nonnegatives(weight_decay=weight_decay, eps=eps)
  tx = skip_zero_learning_rate(contrib.madgrad(learning_rate, momentum, weight_decay, eps), learning_rate)
  return optax_alias(tx, learning_rate)
