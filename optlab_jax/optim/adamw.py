"""Adam with weight decay: decoupled (AdamW) and coupled L2 (Adam + L2), side by side.

Both use `scale_by_adam` as their direction; they differ only in where the decay sits in
the chain, which is the whole point of the AdamW paper:
  AdamW:     u_t = −lr (Adam(g)_t + λ p)       the decay is not divided by √v̂
  Adam + L2: u_t = −lr Adam(g + λ p)_t         the decay passes through m̂/√v̂
"""

from __future__ import annotations

from typing import Any

import optax

from optlab_jax.optim import base
from optlab_jax.optim.adam import scale_by_adam
from optlab_jax.optim.registry import register

__all__ = ["adamw", "adam_l2"]


@register("adamw")
def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: float = 1e-4,
    weight_decay_mask: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """AdamW: p ← p − lr · (d_t + λ p), with d_t from `scale_by_adam` and λ = weight_decay.

  The decay is multiplied by lr (as in optax and PyTorch), so λ is the paper's λ / α.
  `weight_decay_mask` (a tree of bools or a function of params) selects the decayed
  leaves; optax calls it `mask`. Otherwise equal to `optax.adamw`.

  References: Loshchilov & Hutter, 2019, Decoupled weight decay regularization (ICLR,
  arXiv:1711.05101).
  """
  return base.alias(
      scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      learning_rate=learning_rate,
  )


@register("adam_l2")
def adam_l2(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: float = 1e-4,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Adam + L2: p ← p − lr · d_t, with d_t from `scale_by_adam` of g_t + λ p.

  The L2 penalty's gradient λ p enters both moments, so its effect on the step is divided
  by √v̂: coordinates with large gradients are decayed less (the contrast with `adamw`).

  References: Kingma & Ba, 2015, Adam (arXiv:1412.6980); Loshchilov & Hutter, 2019,
  Decoupled weight decay regularization (arXiv:1711.05101), Algorithm 2 without the
  decoupled term.
  """
  return base.alias(
      base.maybe_weight_decay(weight_decay, weight_decay_mask),
      scale_by_adam(b1, b2, eps, eps_root, mu_dtype),
      learning_rate=learning_rate,
  )
