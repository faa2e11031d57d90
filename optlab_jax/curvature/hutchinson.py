"""Stochastic diagonal and trace estimators on any symmetric matvec: Hutchinson and Hutch++.

With Rademacher probes z (E[z zᵀ] = I): E[z ⊙ A z] = diag(A) and E[zᵀ A z] = tr(A), with
Var[zᵀ A z] = 2 (‖A‖_F² − Σ_i A_ii²). Probes are drawn with `rademacher_like` (bits → signs);
the `num_samples` products run as one vmapped matvec, so memory grows with num_samples.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from optlab_jax.curvature import basis as B
from optlab_jax.curvature.probes import rademacher_like
from optlab_jax.checks import check_positive_int

__all__ = ["hutchinson_diag", "hutchinson_trace", "hutchpp_trace"]


def _probe_products(matvec: Callable, params: Any, key: jax.Array, num_samples: int):
  check_positive_int("num_samples", num_samples)
  probes = jax.vmap(rademacher_like, in_axes=(0, None))(jax.random.split(key, num_samples), params)
  return probes, jax.vmap(matvec)(probes)


def hutchinson_diag(matvec: Callable, params: Any, key: jax.Array, num_samples: int = 1) -> Any:
  """diag(A) ≈ (1/S) Σ_s z_s ⊙ A z_s, a params-shaped tree.

  References: Bekas, Kokiopoulou & Saad, 2007, An estimator for the diagonal of a matrix;
  Yao et al., 2020, ADAHESSIAN (arXiv:2006.00719).
  """
  probes, products = _probe_products(matvec, params, key, num_samples)
  return jax.tree.map(lambda z, az: jnp.mean(z * az, axis=0), probes, products)


def hutchinson_trace(matvec: Callable, params: Any, key: jax.Array, num_samples: int = 1) -> jax.Array:
  """tr(A) ≈ (1/S) Σ_s z_sᵀ A z_s.

  References: Hutchinson, 1989, A stochastic estimator of the trace of the influence matrix
  for Laplacian smoothing splines.
  """
  probes, products = _probe_products(matvec, params, key, num_samples)
  return jnp.mean(jax.vmap(B.vdot)(probes, products))


def hutchpp_trace(matvec: Callable, params: Any, key: jax.Array, num_samples: int = 30) -> jax.Array:
  """Hutch++: exact trace on a sketched top subspace plus Hutchinson on the rest.

  With a budget of m = `num_samples` matvecs, k = m // 3 and g = m − 2k:
    Q = orth(A S) for Rademacher S (n × k);  G Rademacher (n × g);  P = I − Q Qᵀ;
    tr(A) ≈ tr(Qᵀ A Q) + (1/g) tr(Gᵀ P A P G).
  Its error falls as 1/m instead of 1/√m for matrices with decaying spectra (Hessian outliers).
  Works on the flattened params (`ravel_pytree`); the n × k sketch is the extra memory.

  References: Meyer, Musco, Musco & Woodruff, 2021, Hutch++: Optimal stochastic trace
  estimation (arXiv:2010.09649).
  """
  check_positive_int("num_samples", num_samples)
  if num_samples < 3:
    raise ValueError(f"num_samples={num_samples} is out of range; expected num_samples >= 3")
  flat, unravel = ravel_pytree(params)
  flat_matvec = jax.vmap(lambda x: ravel_pytree(matvec(unravel(x)))[0])
  k, g = num_samples // 3, num_samples - 2 * (num_samples // 3)
  sketch_key, probe_key = jax.random.split(key)
  sketch = rademacher_like(sketch_key, jnp.zeros((k, flat.size), flat.dtype))
  q, _ = jnp.linalg.qr(flat_matvec(sketch).T)                          # (n, k)
  top = jnp.sum(q.T * flat_matvec(q.T))
  probes = rademacher_like(probe_key, jnp.zeros((g, flat.size), flat.dtype))
  probes = probes - (probes @ q) @ q.T
  return top + jnp.sum(probes * flat_matvec(probes)) / g
