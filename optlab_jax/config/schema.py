"""The typed schema of a config file and of one sweep point (pydantic, strict: no coercion)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationInfo,
                      field_validator)

from optlab_jax import checks, optim
from optlab_jax.config.axes import Axis
from optlab_jax.curvature.loops import LOOPS
from optlab_jax.sharding import MIN_SHARD_BYTES

SECTIONS = ("problem", "optimizer", "train", "monitor")
STRICT = ConfigDict(strict=True, extra="forbid")


def _batch_size(value: Any) -> Any:
  if value == "full" or (type(value) is int and value >= 1):
    return value
  raise ValueError(f"expected a positive integer or 'full', got {value!r}")


class Mesh(BaseModel):
  """A device mesh (`optlab_jax.sharding`): the batch over `data`, leaves of at least
  `min_shard_bytes` over `model`."""

  model_config = STRICT
  data: PositiveInt
  model: PositiveInt = 1
  min_shard_bytes: NonNegativeInt = MIN_SHARD_BYTES


class Train(BaseModel):
  """How long and on what batches to train."""

  model_config = STRICT
  steps: PositiveInt
  batch_size: Annotated[Any, BeforeValidator(_batch_size)] = "full"
  eval_every: NonNegativeInt = 0  # 0: evaluate at the end only
  loop: Literal[LOOPS] = "auto"
  checkpoint_every: NonNegativeInt = 0  # 0: no checkpoints (optlab_jax.checkpoints)
  mesh: Mesh | None = None  # None: every local device on data if the batch divides over them, else one

  @field_validator("mesh")
  @classmethod
  def _batch_divides_over_data(cls, mesh: Mesh | None, info: ValidationInfo) -> Mesh | None:
    batch_size = info.data.get("batch_size")
    if mesh is not None and type(batch_size) is int and batch_size % mesh.data:
      raise ValueError(f"data={mesh.data} does not divide batch_size={batch_size}: each of the {mesh.data} "
                       "data shards needs an equal share of the batch")
    return mesh


class Monitor(BaseModel):
  """Which in-training curvature diagnostics to record, every how many steps; other keys are
  options of `optlab_jax.monitor.Monitor` (lanczos_iters, top_k, trace_samples, seed, loop)."""

  model_config = ConfigDict(strict=True, extra="allow")
  every: PositiveInt = 50
  metrics: list[str] = Field(min_length=1)


class Sweep(BaseModel):
  """Axes over dotted keys: grid axes are crossed; zip axes advance together."""

  model_config = STRICT
  grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}
  zip: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}


class Landscape(BaseModel):
  """After the sweep, each run's loss landscape (`optlab_jax.landscape_runs`): a `grid` × `grid`
  slice along the trajectory's principal directions (padded by `pad` × its extent), a 1-D slice,
  the interpolation from init, the SLQ spectrum, and a Bézier curve between each pair of a point's
  seeds (1st-2nd, 3rd-4th, ...) trained for `connect_steps` (0: none) by `connect_optimizer` at
  `connect_learning_rate`."""

  model_config = STRICT
  grid: Annotated[int, Field(ge=3)] = 41
  pad: Annotated[float, Field(ge=0)] = 0.25
  chunk: PositiveInt | None = None  # grid points evaluated at once (None: landscape.AUTO_CHUNK)
  record_every: PositiveInt = 10  # steps between the parameter snapshots of the trajectory
  connect_steps: NonNegativeInt = 300
  connect_optimizer: str = "adam"
  connect_learning_rate: Annotated[float, Field(gt=0)] = 0.01
  spectrum_iters: PositiveInt = 80  # Lanczos steps of the SLQ density at the solution
  spectrum_probes: PositiveInt = 4

  @field_validator("connect_optimizer")
  @classmethod
  def _registered(cls, name: str) -> str:
    checks.check_choice("connect_optimizer", name, optim.names())
    return name


class File(BaseModel):
  """A config file: the sections every point starts from, the sweep, and the seeds."""

  model_config = STRICT
  problem: dict[str, Any] | None = None
  optimizer: dict[str, Any] | None = None
  train: dict[str, Any] | None = None
  monitor: dict[str, Any] | None = None
  sweep: Sweep = Sweep()
  seeds: list[int] = Field(default=[0], min_length=1)
  landscape: Landscape | None = None


class Named(BaseModel):
  """A section that names a registered thing (a problem, an optimizer); other keys are its options."""

  model_config = ConfigDict(strict=True, extra="allow")
  name: str


class Point(BaseModel):
  """One sweep point's sections, before each is checked against its factory."""

  model_config = STRICT
  problem: dict[str, Any]
  optimizer: dict[str, Any]
  train: dict[str, Any]
  monitor: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Run:
  """One run: its resolved, JSON-able config (sections + seed) and the sweep values behind it."""

  config: dict[str, Any]
  axes: tuple[Axis, ...]


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A loaded config file: every run of its sweep, in order (seeds innermost)."""

  path: str
  runs: list[Run]
  landscape: dict[str, Any] | None = None  # the file's `landscape:` section, defaults filled in
