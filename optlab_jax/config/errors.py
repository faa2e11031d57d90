"""Errors of a config: located at dotted paths, collected, then attributed to where they came from.

Validation raises `Invalid(loc, msg)` at a path of the config (a tuple of keys and list indices)
and collects independent checks in `Errors`, so that a config with several mistakes reports all
of them. `Source` turns each into one line `<file>: <where>: <what>`, where `where` names the
`--set` or the sweep value behind the error, and `ConfigError` carries those lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from optlab_jax.checks import did_you_mean

UNKNOWN, MISSING = "unknown key", "required key is missing"


class ConfigError(ValueError):
  """A bad config: one line per mistake, each naming the source, the dotted path and the problem."""

  def __init__(self, messages: str | list[str]):
    self.messages = [messages] if isinstance(messages, str) else list(messages)
    super().__init__("\n".join(self.messages))


class Invalid(Exception):
  """An error at a path of the config (a tuple of keys and list indices), before attribution."""

  def __init__(self, loc: tuple, msg: str):
    super().__init__(msg)
    self.loc, self.msg = tuple(loc), msg


class Errors(Exception):
  """Several `Invalid`s, collected from independent checks and raised together."""

  def __init__(self, errors: typing.Iterable[Invalid] = ()):
    super().__init__()
    self.errors = list(errors)

  def __str__(self) -> str:  # raised outside `config.load` (a resolved config rebuilt), it still reads
    return "; ".join(f"{dotted(e.loc)}: {e.msg}" for e in self.errors)

  @contextlib.contextmanager
  def catch(self):
    """Records what the block raises (an `Invalid` or `Errors`) instead of raising it."""
    try:
      yield
    except Invalid as e:
      self.errors.append(e)
    except Errors as e:
      self.errors.extend(e.errors)

  def check(self) -> None:
    """Raises the collected errors, if any."""
    if self.errors:
      raise Errors(pruned(self.errors))


def pruned(errors: list[Invalid]) -> list[Invalid]:
  """`errors` without a "missing" key where a sibling key is unknown (a typo reads as both)."""
  typo_parents = {e.loc[:-1] for e in errors if e.msg.startswith(UNKNOWN)}
  return [e for e in errors if not (e.msg == MISSING and e.loc[:-1] in typo_parents)]


def dotted(loc: tuple) -> str:
  """("a", "b", 0, "c") -> "a.b[0].c"."""
  out = ""
  for part in loc:
    out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
  return out


def unknown_name(kind: str, name: Any, known: list[str]) -> str:
  return f"unknown {kind} {name!r}{did_you_mean(str(name), known)} (known: {', '.join(known)})"


# Union members are tagged in pydantic's error locations ("float", "list[int]"): not config keys.
_UNION_TAG = re.compile(r"^(int|float|str|bool|none|[\w-]+\[.*\])$")


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
  """The keys the schema allows at `loc` (for did-you-mean), walking nested models."""
  for part in loc:
    field = model.model_fields.get(part) if isinstance(part, str) else None
    types_ = (*typing.get_args(field.annotation), field.annotation) if field else ()
    models = [t for t in types_ if isinstance(t, type) and issubclass(t, BaseModel)]
    if not models:
      return []
    model = models[0]
  return list(model.model_fields)


def from_pydantic(error: ValidationError, model: type[BaseModel], prefix: tuple = ()) -> Errors:
  """A pydantic validation's errors, one per path (a union's first), with readable messages."""
  out: dict[tuple, Invalid] = {}
  for e in error.errors(include_url=False):
    loc = prefix + tuple(p for p in e["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
    if e["type"] == "extra_forbidden":
      msg = UNKNOWN + did_you_mean(str(loc[-1]), _keys_at(model, loc[len(prefix):-1]))
    elif e["type"] == "missing":
      msg = MISSING
    else:
      msg = re.sub(r" or instance of \w+", "", e["msg"].removeprefix("Value error, "))
      msg += "" if "got" in msg else f", got {e['input']!r}"
    out.setdefault(loc, Invalid(loc, msg))
  return Errors(pruned(list(out.values())))


@dataclasses.dataclass
class Source:
  """Formats an error as `<file>: <where>: <what>`, naming the `--set` or sweep value behind it."""

  path: str
  sets: list[tuple[tuple[str, ...], Any]]

  def _from_set(self, loc: tuple) -> bool:
    """Whether a `--set` wrote `loc` or what holds it (`--set bogus.x=1` made the unknown key `bogus`)."""
    return any(loc[: len(key)] == key or key[: len(loc)] == loc for key, _ in self.sets)

  def message(self, e: Invalid, axes: tuple = ()) -> str:
    """The line of `e`, raised at a sweep point with sweep values `axes` (`config.Axis`)."""
    where = f"--set {dotted(e.loc)}" if self._from_set(e.loc) else dotted(e.loc)
    if not self._from_set(e.loc):
      for axis in sorted(axes, key=lambda a: -len(a.path)):
        if e.loc[: len(axis.path)] == axis.path:
          rest = dotted(e.loc[len(axis.path):])
          where = f"sweep.{axis.kind}.{axis.key}[{axis.index}]" + (f".{rest}" if rest else "")
          if self._from_set(("sweep", axis.kind, axis.key)):
            where = f"--set {where}"
          break
    return f"{self.path}: {where}: {e.msg}"
