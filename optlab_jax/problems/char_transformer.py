"""Next-character prediction on CPython's own documentation with a small causal Transformer.

The corpus is `pydoc_data.topics.topics` (the text behind `help("keyword")`, shipped with every
CPython; 464,970 characters on 3.11), its topics joined in sorted key order. The vocabulary is the
sorted set of the corpus' characters (103 on 3.11), so it and the text depend on the Python
version. The split is contiguous: the first 90% of the characters train, the last 10% test, so no
test window overlaps training text.

A training batch is `batch_size` windows of seq_len + 1 characters starting at uniform random
offsets of the training split (x: the first seq_len, y: the next character at each position);
`batch_size=None` is every non-overlapping window of the training split. `test_loss` (nats per
character) and `test_accuracy` (next-character) are over every non-overlapping window of the test
split; `loss` is over as many windows evenly spaced through the training split.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from optlab_jax import checks
from optlab_jax.problems import models
from optlab_jax.problems.base import Dtype, Problem, check_batch_size, cross_entropy

__all__ = ["load", "char_transformer", "TEST_FRACTION"]

TEST_FRACTION = 0.1


@functools.cache
def load() -> tuple[str, np.ndarray, np.ndarray]:
  """(vocabulary, training tokens, test tokens): the corpus as int32 indices into the vocabulary."""
  from pydoc_data.topics import topics

  text = "".join(topics[key] for key in sorted(topics))
  vocab = "".join(sorted(set(text)))
  lookup = {c: i for i, c in enumerate(vocab)}
  tokens = np.fromiter((lookup[c] for c in text), np.int32, len(text))
  split = len(tokens) - int(round(TEST_FRACTION * len(tokens)))
  return vocab, tokens[:split], tokens[split:]


def _windows(tokens: np.ndarray | jax.Array, seq_len: int, starts) -> dict:
  """{"x": tokens[s:s+seq_len], "y": tokens[s+1:s+seq_len+1]} for each start s."""
  index = jnp.asarray(starts)[:, None] + jnp.arange(seq_len + 1)[None, :]
  window = jnp.asarray(tokens)[index]
  return {"x": window[:, :-1], "y": window[:, 1:]}


def _tiled(n: int, seq_len: int) -> np.ndarray:
  """Starts of the non-overlapping windows of seq_len + 1 characters in n characters."""
  return np.arange((n - 1) // seq_len) * seq_len


def char_transformer(
    seq_len: int = 64,
    width: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    mlp_ratio: int = 4,
    dtype: Dtype = "float32",
) -> Problem:
  """A pre-LN causal Transformer (`models.Transformer`) trained by next-character cross-entropy.

  The defaults have 431k parameters; `info` holds the vocabulary, the split sizes and
  ln(vocab_size), the loss of the uniform prediction (and, with GPT-2's initialisation, about
  the loss at initialisation).
  """
  for name, value in (("seq_len", seq_len), ("width", width), ("num_layers", num_layers),
                      ("num_heads", num_heads), ("mlp_ratio", mlp_ratio)):
    checks.check_positive_int(name, value)
  if width % num_heads:
    raise ValueError(f"num_heads={num_heads!r} does not divide width={width!r}; expected a divisor of width")
  vocab, train_tokens, test_tokens = load()
  init_params, model_fn = models.functional(
      lambda rngs: models.Transformer(
          len(vocab), seq_len, width, num_layers, num_heads, mlp_ratio * width, dtype=dtype, rngs=rngs
      )
  )
  num_eval = len(_tiled(len(test_tokens), seq_len))
  train_eval = np.linspace(0, len(train_tokens) - seq_len - 1, num_eval).astype(np.int64)
  data = {
      "train": jnp.asarray(train_tokens),
      "eval_train": _windows(train_tokens, seq_len, train_eval),
      "eval_test": _windows(test_tokens, seq_len, _tiled(len(test_tokens), seq_len)),
  }

  def sample_fn(data, key, batch_size):
    check_batch_size(batch_size)
    n = data["train"].shape[0]
    if batch_size is None:
      return _windows(data["train"], seq_len, _tiled(n, seq_len))
    return _windows(data["train"], seq_len, jax.random.randint(key, (batch_size,), 0, n - seq_len))

  def metrics_fn(data, params):
    test_logits = model_fn(params, data["eval_test"]["x"])
    return {
        "loss": cross_entropy(model_fn(params, data["eval_train"]["x"]), data["eval_train"]),
        "test_loss": cross_entropy(test_logits, data["eval_test"]),
        "test_accuracy": jnp.mean(jnp.argmax(test_logits, axis=-1) == data["eval_test"]["y"]),
    }

  return Problem(
      name="char_transformer",
      init_params=init_params,
      model_fn=model_fn,
      output_loss_fn=cross_entropy,
      sample_fn=sample_fn,
      metrics_fn=metrics_fn,
      data=data,
      likelihood="categorical",
      info={
          "vocab": vocab,
          "num_train_chars": len(train_tokens),
          "num_test_chars": len(test_tokens),
          "uniform_loss": math.log(len(vocab)),
      },
  )
