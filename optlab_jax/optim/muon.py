"""Muon: momentum orthogonalised by a Newton–Schulz iteration, for matrix-shaped leaves (optax's)."""

from __future__ import annotations

from typing import Any

import jax
import optax
from optax import contrib

from optlab_jax import checks
from optlab_jax.optim.registry import register
from optlab_jax.optim.wrapped import check_decays, check_nonnegatives, optax_alias

__all__ = ["muon"]


@register("muon")
def muon(
    learning_rate: optax.ScalarOrSchedule,
    ns_coeffs: Any = (3.4445, -4.775, 2.0315),
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: float = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: Any = None,
    consistent_rms: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Muon on 2-D leaves (or those `muon_weight_dimension_numbers` names), AdamW on the rest.

  Update rule, per matrix leaf G (m inputs × n outputs):
    M = β M + G,   B = G + β M if `nesterov` else M
    X_0 = B / (‖B‖_F + eps),   X_{k+1} = a X_k + b (X_k X_kᵀ) X_k + c (X_k X_kᵀ)² X_k   (ns_steps times)
    p ← p − lr (√max(1, n/m) · X_K + λ p)       (`consistent_rms` r: √max(m, n) · r instead)
  X_K ≈ U Vᵀ of B = U Σ Vᵀ, the orthogonalised momentum. Vectors, scalars and other leaves get
  `optax.adamw(adam_learning_rate or lr, adam_b1, adam_b2, eps, adam_eps_root, adam_weight_decay)`,
  as optax does.

  References: Jordan, 2024, Muon: an optimizer for hidden layers in neural networks
  (kellerjordan.github.io/posts/muon); Bernstein & Newhouse, 2024, Old optimizer, new norm
  (arXiv:2409.20325); Liu et al., 2025, Muon is scalable for LLM training (arXiv:2502.16982).
  """
  checks.check_positive_int("ns_steps", ns_steps)
  check_decays(beta=beta, adam_b1=adam_b1, adam_b2=adam_b2)
  check_nonnegatives(eps=eps, weight_decay=weight_decay, adam_eps_root=adam_eps_root,
                     adam_weight_decay=adam_weight_decay, consistent_rms=consistent_rms)
  checks.check_choice("preconditioning", preconditioning, ("frobenius", "spectral", "aol", "schatten"))
  if adam_learning_rate is not None:
    checks.check_learning_rate(adam_learning_rate)
  tx = contrib.muon(
      learning_rate, ns_coeffs, ns_steps, beta, eps, weight_decay, weight_decay_mask, mu_dtype,
      nesterov=nesterov, adaptive=adaptive, preconditioning=preconditioning, adam_b1=adam_b1,
      adam_b2=adam_b2, adam_eps_root=adam_eps_root, adam_weight_decay=adam_weight_decay,
      adam_learning_rate=adam_learning_rate, muon_weight_dimension_numbers=muon_weight_dimension_numbers,
      consistent_rms=consistent_rms,
  )
  return optax_alias(_coefficients_in_params_dtype(tx), learning_rate)


def _coefficients_in_params_dtype(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` with optax's Newton–Schulz coefficients kept in the params' dtype (a float64 array under
  x64 otherwise). No number changes: optax casts them to the update's dtype before use."""
  is_muon = lambda s: isinstance(s, contrib.MuonState)

  def cast(state, dtype):
    return jax.tree.map(lambda s: s._replace(ns_coeffs=s.ns_coeffs.astype(dtype)) if is_muon(s) else s,
                        state, is_leaf=is_muon)

  def init_fn(params):  # the update passes the coefficients on as they are
    return cast(tx.init(params), optax.tree.dtype(params, "lowest"))

  return optax.GradientTransformationExtraArgs(init_fn, optax.with_extra_args_support(tx).update)
