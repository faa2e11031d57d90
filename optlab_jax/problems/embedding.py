"""A tiny recommender: ratings predicted from two large embedding tables, each batch touching few rows.

Rating r(u, i) = ⟨U_u, V_i⟩ for user u and item i, with params {"users": U [num_users, dim],
"items": V [num_items, dim]}; loss ½ mean (r − y)². A batch of B pairs gives non-zero gradient
rows only to its ≤ B users and ≤ B items: ∂/∂U_u = (1/B) Σ_{k: u_k = u} (r_k − y_k) V_{i_k} and
likewise for V, zero elsewhere. This is the setting LazyAdam targets (its moments of untouched
rows should not decay). The targets come from a rank-`rank` teacher (U*, V* ~ N(0, 1/√rank), so
y has about unit variance) plus `noise` · N(0, 1); users and items are drawn with Zipf-like
popularity P(row r) ∝ (r + 1)^(−popularity_exponent) (0: uniform), so most rows are rare.

References: Koren, Bell & Volinsky, 2009, Matrix factorization techniques for recommender systems;
Kingma & Ba, 2015 (arXiv:1412.6980) and TensorFlow Addons' LazyAdam for the sparse updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import checks
from optlab_jax.problems.base import Dtype, Problem, supervised_problem

__all__ = ["embedding_regression"]


def embedding_regression(
    num_users: int = 5000,
    num_items: int = 5000,
    dim: int = 16,
    rank: int = 4,
    num_train: int = 20000,
    num_test: int = 5000,
    noise: float = 0.1,
    popularity_exponent: float = 1.0,
    init_scale: float = 0.1,
    data_seed: int = 0,
    dtype: Dtype = "float32",
) -> Problem:
  """Ratings ⟨U_u, V_i⟩ from two embedding tables, fitted by ½ mean (r − y)²; a batch touches few rows.

  Inputs x = [n, 2] int32 (user, item), targets y = [n, 1]; init U, V ~ init_scale · N(0, 1).
  The expected test loss of any model is at least ½ noise².
  """
  for name, value in (("num_users", num_users), ("num_items", num_items), ("dim", dim), ("rank", rank),
                      ("num_train", num_train), ("num_test", num_test)):
    checks.check_positive_int(name, value)
  checks.check_nonnegative("noise", noise)
  checks.check_nonnegative("popularity_exponent", popularity_exponent)
  checks.check_nonnegative("init_scale", init_scale)
  rng = np.random.default_rng(data_seed)
  n = num_train + num_test

  def draw(rows):
    p = (np.arange(rows) + 1.0) ** -popularity_exponent
    return rng.choice(rows, size=n, p=p / p.sum())

  pairs = np.stack([draw(num_users), draw(num_items)], axis=1).astype(np.int32)
  teacher_u = rng.normal(size=(num_users, rank)) / rank**0.25
  teacher_v = rng.normal(size=(num_items, rank)) / rank**0.25
  y = np.sum(teacher_u[pairs[:, 0]] * teacher_v[pairs[:, 1]], axis=1, keepdims=True)
  y = y + noise * rng.normal(size=y.shape)
  train, test = ({"x": jnp.asarray(pairs[s]), "y": jnp.asarray(y[s], dtype)}
                 for s in (slice(0, num_train), slice(num_train, n)))

  def init_params(key):
    user_key, item_key = jax.random.split(key)
    return {
        "users": init_scale * jax.random.normal(user_key, (num_users, dim), dtype),
        "items": init_scale * jax.random.normal(item_key, (num_items, dim), dtype),
    }

  def model_fn(params, x):
    return jnp.sum(params["users"][x[..., 0]] * params["items"][x[..., 1]], axis=-1, keepdims=True)

  return supervised_problem("embedding_regression", init_params, model_fn, train, test, "gaussian")
