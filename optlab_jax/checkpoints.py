"""Orbax checkpoints of a long training run, so a killed run resumes where it stopped.

`train.fit(..., checkpoint_every=K, checkpoint_dir=D)` saves, every K steps, the loop's carry
(params, optimizer state, data key: a `train.TrainState`) and the history so far (per-step
losses, eval and monitor records) as one Orbax checkpoint `D/<step>/`, asynchronously, keeping
the last 2. A run started again with the same D restores the newest checkpoint that reads back
whole and continues from its step. Since step t's batch depends only on t (`train`'s module
docstring), the resumed run's numbers equal an uninterrupted run's bit for bit.

Orbax commits a checkpoint by renaming its temporary directory, so a save killed half-way leaves
no step behind. A checkpoint damaged later (a truncated or overwritten file) either fails to
read or fails the SHA-256 digest of its arrays stored with it (as does a checkpoint of a run of
another shape in the same directory); it is then renamed `<step>.unusable-*`, with a warning, and
the one before it is used (no usable checkpoint: the run starts at step 0).
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from optlab_jax import checks

KEEP = 2  # checkpoints kept per run: the newest, and one to fall back on if it is damaged


@dataclasses.dataclass
class Resumed:
  """Where a run stands: after a restore, or at step 0 with nothing recorded."""
  state: Any                 # the loop's carry (a train.TrainState)
  step: int                  # steps done
  losses: list[np.ndarray]   # [steps done, runs] training losses (one array; none at step 0)
  monitored: list[tuple]     # (1-based step, {metric: [runs, ...] values}) per monitor call
  evaluated: list[tuple]     # (step, {metric: [runs] values}) per eval
  wall_time: float = 0.0     # seconds the run had taken when saved
  compile_time: float = 0.0  # seconds of it spent compiling

  @property
  def alive(self) -> np.ndarray | bool:
    """Which runs have had only finite losses so far."""
    return np.isfinite(self.losses[0]).all(axis=0) if self.losses else True


def _records_tree(rows: list[tuple]) -> dict[str, Any]:
  """[(step, {name: value})] as {"step": [k], "values": {name: [k, ...]}} (arrays stacked)."""
  if not rows:
    return {}
  return {"step": np.array([s for s, _ in rows], np.int64),
          "values": {name: np.stack([np.asarray(r[name]) for _, r in rows]) for name in rows[0][1]}}


def _records_rows(tree: dict[str, Any]) -> list[tuple]:
  if not tree:
    return []
  values = {name: np.asarray(v) for name, v in tree["values"].items()}
  return [(int(s), {name: v[j] for name, v in values.items()}) for j, s in enumerate(np.asarray(tree["step"]))]


def _digest(*trees: Any) -> str:
  """SHA-256 of every leaf's bytes (a PRNG key's by its key data), in tree order."""
  sha = hashlib.sha256()
  for leaf in jax.tree.leaves(trees):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    sha.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return sha.hexdigest()


class Checkpoints:
  """The checkpoints of one training program in `directory`; no-ops when `every` is 0."""

  def __init__(self, directory: str | Path | None, every: int):
    checks.check_in_range("checkpoint_every", every, 0.0)
    if every and directory is None:
      raise ValueError(f"checkpoint_every={every} needs checkpoint_dir, where the checkpoints go")
    self.every = int(every)
    self.manager = every and ocp.CheckpointManager(
        Path(directory).resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=KEEP, enable_async_checkpointing=True),
    )

  def restore(self, state: Any) -> Resumed:
    """The newest checkpoint that reads back whole, restored onto `state`'s structure and shardings."""
    fresh = Resumed(state, 0, [], [], [])
    if not self.every:
      return fresh
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state), history=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore()))
        if _digest(saved["state"], saved["history"]) != saved["meta"]["digest"]:
          raise ValueError("its arrays do not match the digest saved with them")
      except Exception as e:  # Orbax and TensorStore raise several types for a damaged file
        self._move_aside(step, e)
        continue
      history, meta = saved["history"], saved["meta"]
      return Resumed(saved["state"], step, [np.asarray(history["loss"])], _records_rows(history.get("monitor", {})),
                     _records_rows(history.get("eval", {})), meta["wall_time"], meta["compile_time"])
    return fresh

  def _move_aside(self, step: int, error: Exception) -> None:
    """Renames an unusable checkpoint out of Orbax's sight (kept for inspection: it may also be
    a run of another shape in the same directory), so that the step can be saved again."""
    path = Path(self.manager.directory) / str(step)
    aside = path.with_name(f"{step}.unusable-{uuid.uuid4().hex[:8]}")
    warnings.warn(f"checkpoint {path} is damaged or of another run ({str(error)[:200]}); moved to {aside.name}, "
                  "resuming from the one before", stacklevel=3)
    path.rename(aside)
    self.manager.reload()

  def save(self, progress: Resumed) -> None:
    """Saves `progress` (in the background) if its step is a multiple of `every`."""
    if not self.every or progress.step % self.every:
      return
    history = {"loss": np.concatenate(progress.losses), "monitor": _records_tree(jax.device_get(progress.monitored)),
               "eval": _records_tree(jax.device_get(progress.evaluated))}
    meta = {"digest": _digest(progress.state, history), "wall_time": progress.wall_time,
            "compile_time": progress.compile_time}
    self.manager.save(progress.step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(progress.state), history=ocp.args.StandardSave(history),
        meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    """Waits for the last save to be committed."""
    if self.every:
      self.manager.wait_until_finished()
      self.manager.close()
