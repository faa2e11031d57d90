"""Magnitude pruning, training a masked network, and lottery tickets by iterative magnitude pruning.

A mask is a tree like the params of boolean arrays (True: kept). Only the weight matrices are
pruned (leaves with two or more axes: dense and convolution kernels, embeddings); biases and
normalisation scales keep every entry, as in Frankle & Carbin (2019). A masked network trains
with `masked(tx, mask)` from `apply_mask(params, mask)`: the updates of pruned entries are zeroed
after the optimizer, so those entries stay exactly 0 whatever the optimizer keeps in its state.

Iterative magnitude pruning with rewinding (`imp`): train the dense network for T steps,
remembering θ_k, its params after k steps (k = 0: the init); then per round r = 1 … R keep the
largest-magnitude fraction (1 − rate) of the surviving weights of the last trained network
(density (1 − rate)^r), rewind the survivors to θ_k and train the T − k remaining steps. The
control trains the same mask from a fresh random init for T steps.

References: Frankle & Carbin, 2019, The Lottery Ticket Hypothesis (arXiv:1803.03635);
Frankle, Dziugaite, Roy & Carbin, 2020, Linear Mode Connectivity and the Lottery Ticket
Hypothesis (arXiv:1912.05671).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Collection

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab_jax import checks, train
from optlab_jax.problems import Problem

__all__ = ["LotteryRun", "Round", "apply_mask", "density", "imp", "init_params", "magnitude_mask", "masked",
           "masked_updates", "prunable"]

SCOPES = ("global", "layer")


def _is_weight(leaf: Any) -> bool:
  return np.ndim(leaf) >= 2


def prunable(params: Any) -> Any:
  """A tree like `params` of Python bools: True for the weight matrices (two or more axes)."""
  return jax.tree.map(_is_weight, params)


def magnitude_mask(params: Any, density: float, *, mask: Any = None, scope: str = "global") -> Any:
  """The mask keeping the largest |w| of the weight matrices, `density` of their entries.

  "global" keeps the round(density · n) largest magnitudes over all n weight-matrix entries;
  "layer" keeps round(density · n_l) in each matrix of n_l entries. Entries pruned in `mask`
  (None: none) stay pruned; ties go to the earlier entry (flattened order). Other leaves: all True.
  """
  checks.check_in_range("density", density, 0.0, 1.0)
  checks.check_choice("scope", scope, SCOPES)
  leaves, treedef = jax.tree.flatten(params)
  old = [np.ones(np.shape(p), bool) for p in leaves] if mask is None else [np.asarray(m, bool) for m in
                                                                           treedef.flatten_up_to(mask)]
  weights = [i for i, p in enumerate(leaves) if _is_weight(p)]
  scores = [np.where(old[i], np.abs(np.asarray(leaves[i], np.float64)), -np.inf).ravel() for i in weights]
  groups = [list(range(len(weights)))] if scope == "global" else [[j] for j in range(len(weights))]
  new = list(old)
  for group in groups:
    flat = np.concatenate([scores[j] for j in group])
    keep = int(round(density * flat.size))
    alive = int(np.isfinite(flat).sum())
    if keep > alive:
      raise ValueError(f"density={density} keeps {keep} weights but only {alive} survive the given mask")
    kept = np.zeros(flat.size, bool)
    kept[np.argsort(-flat, kind="stable")[:keep]] = True
    for j, part in zip(group, np.split(kept, np.cumsum([scores[j].size for j in group])[:-1])):
      new[weights[j]] = part.reshape(np.shape(leaves[weights[j]]))
  return jax.tree.unflatten(treedef, new)


def density(mask: Any) -> float:
  """The fraction of the weight matrices' entries that `mask` keeps."""
  kept = [np.asarray(m) for m in jax.tree.leaves(mask) if _is_weight(m)]
  return float(sum(m.sum() for m in kept) / sum(m.size for m in kept))


def apply_mask(params: Any, mask: Any) -> Any:
  """`params` with the pruned entries set to 0 (w ⊙ m)."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def masked_updates(mask: Any) -> optax.GradientTransformation:
  """Zeroes the updates of the entries `mask` prunes (u ⊙ m); chain it after the optimizer."""
  return optax.stateless(lambda updates, params=None: apply_mask(updates, mask))


def masked(tx: optax.GradientTransformation, mask: Any) -> optax.GradientTransformationExtraArgs:
  """`tx` whose updates leave the pruned entries where they are: chain(tx, masked_updates(mask)).

  Started from `apply_mask(params, mask)`, pruned weights stay exactly 0: the update is zeroed
  after momentum, Adam's moments and weight decay, which still see the pruned entries' gradients.
  """
  return optax.chain(tx, masked_updates(mask))


def init_params(problem: Problem, seeds: Any) -> Any:
  """The init `train.fit` starts the run of each seed from (leading axis: the seeds)."""
  keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s))[0])(jnp.asarray(seeds, jnp.int32))
  return jax.vmap(problem.init_params)(keys)


def _stack(histories: list[train.History]) -> Any:
  return jax.tree.map(lambda *p: np.stack(p), *[h.params for h in histories])


def _runs(tree: Any) -> list[Any]:
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(len(jax.tree.leaves(tree)[0]))]


def _masked_factory(tx_factory: Callable[..., optax.GradientTransformation], masks: Any, names: list[str]):
  """A factory of `masked(tx_factory(**hp), masks[mask_index])` with keywords `mask_index` and
  `names`: the traced `mask_index` hyperparameter picks run i's mask, so runs with different masks
  share one vmapped program (`optax.inject_hyperparams` reads the keywords off the signature)."""
  def factory(mask_index, **hp):
    return masked(tx_factory(**hp), jax.tree.map(lambda m: jnp.asarray(m)[mask_index], masks))
  factory.__signature__ = inspect.Signature(
      [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in ("mask_index", *names)])
  return factory


@dataclasses.dataclass
class Round:
  """One round of `imp`, for every run (trees: leading axis of one entry per run)."""
  density: float                    # fraction of the weight matrices' entries kept
  masks: Any                        # the round's masks
  start: Any                        # the ticket's start: apply_mask(θ_k, masks)
  ticket: list[train.History]       # the ticket trained for steps − rewind_step steps
  reinit: list[train.History]       # the control: the masks on a fresh init, trained `steps` steps ([]: not run)


@dataclasses.dataclass
class LotteryRun:
  """What `imp` found: the dense runs, the rewind iterates θ_k and the rounds."""
  dense: list[train.History]
  rewind: Any
  rounds: list[Round]


def imp(problem: Problem, tx_factory: Callable[..., optax.GradientTransformation], hparams: dict[str, Any],
        seeds: Any, *, steps: int, rounds: int, rate: float = 0.2, rewind_step: int = 0, scope: str = "global",
        reinit: bool | Collection[int] = True, on_round: Callable[[Round], None] | None = None,
        **fit_kwargs: Any) -> LotteryRun:
  """Iterative magnitude pruning with rewinding to step `rewind_step`, with its random re-init control.

  The dense runs are `train.fit_vmapped(problem, tx_factory, hparams, seeds, steps=steps)`; θ_k
  is each run's params after k = `rewind_step` steps of the same run (its init if 0). Round r
  prunes `rate` of the surviving weights (`magnitude_mask` of the previous round's trained
  params, `scope` "global" or "layer"; density (1 − rate)^r), trains the ticket from
  apply_mask(θ_k, mask) for steps − k steps and, if `reinit` (True: every round; or the rounds
  r it holds), the same mask from a fresh init (`problem.init_params(fold_in(key(seed), r))`)
  for `steps` steps. Every run of a seed draws that seed's batch stream from its first batch (the
  ticket's steps see batches 0 … T − k − 1, not the dense run's k … T − 1), and a learning-rate
  schedule restarts at 0 (Frankle et al. resume it at k). `on_round(round)` is called after each round; `fit_kwargs` go to every
  `fit_vmapped` call (batch_size, eval_every, vmap, ...).

  References: Frankle & Carbin, 2019 (arXiv:1803.03635); Frankle et al., 2020 (arXiv:1912.05671).
  """
  checks.check_positive_int("rounds", rounds)
  checks.check_in_range("rate", rate, 0.0, 1.0)
  checks.check_choice("scope", scope, SCOPES)
  if not 0 <= rewind_step < steps:
    raise ValueError(f"rewind_step={rewind_step} must be in [0, steps={steps})")
  seeds = np.asarray(seeds)
  fit = lambda factory, hp, n, **kw: train.fit_vmapped(problem, factory, hp, seeds, steps=n, **fit_kwargs, **kw)
  dense = fit(tx_factory, hparams, steps)
  rewind = _stack(fit(tx_factory, hparams, rewind_step)) if rewind_step else init_params(problem, seeds)
  runs = {k: np.asarray(v) for k, v in hparams.items()} | {"mask_index": np.arange(len(seeds))}
  trained, masks, done = _stack(dense), None, []
  for r in range(1, rounds + 1):
    keep = (1.0 - rate) ** r
    masks = jax.tree.map(lambda *m: np.stack(m), *[
        magnitude_mask(p, keep, mask=m, scope=scope)
        for p, m in zip(_runs(trained), _runs(masks) if masks is not None else [None] * len(seeds))])
    factory, start = _masked_factory(tx_factory, masks, list(hparams)), apply_mask(rewind, masks)
    ticket = fit(factory, runs, steps - rewind_step, params=start)
    control = []
    if reinit is True or (reinit is not False and r in reinit):
      fresh = jax.vmap(lambda s: problem.init_params(jax.random.fold_in(jax.random.key(s), r)))(
          jnp.asarray(seeds, jnp.int32))
      control = fit(factory, runs, steps, params=apply_mask(fresh, masks))
    done.append(Round(density(jax.tree.map(lambda m: m[0], masks)), masks, start, ticket, control))
    if on_round is not None:
      on_round(done[-1])
    trained = _stack(ticket)
  return LotteryRun(dense, rewind, done)
