"""The floor plan (docs/architecture.md): imports point down the layers, no cycles, and every
module imports on its own, first, in a fresh interpreter."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "optlab_jax"

# Top to bottom: a module may import its own layer and the layers below it, never one above.
LAYERS = (
    ("cli",),
    ("config", "sweep", "executors", "landscape_runs"),
    ("results", "plots", "landscape_plots", "toy_plots", "time_plots", "findings", "path_plots", "landscape_findings", "grid_plots"),
    ("train", "checkpoints", "sharding", "monitor", "edges", "program_cache", "landscape", "pruning"),
    ("optim", "problems", "schedules"),
    ("curvature",),
    ("checks", "compat"),
)


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """The optlab_jax modules `path` imports, anywhere in the file (functions included)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optlab_jax"):
      found.add(node.module)
      found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    elif isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("optlab_jax")}
  return {m for m in found if m in known}


def _layer(module: str) -> int | None:
  """Index in LAYERS of a module (by its first component below optlab_jax); None for the package."""
  parts = module.split(".")
  if len(parts) == 1:
    return None
  for i, names in enumerate(LAYERS):
    if parts[1] in names:
      return i
  raise AssertionError(f"{module} is in no layer of docs/architecture.md: add it to LAYERS and the doc")


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(p, set(modules)) - {m} for m, p in modules.items()}


def test_every_module_has_a_layer():
  for module in _modules():
    _layer(module)


def test_imports_point_down_the_layers():
  upward = []
  for module, deps in _graph().items():
    here = _layer(module)
    for dep in deps:
      there = _layer(dep)
      if here is not None and there is not None and there < here:
        upward.append(f"{module} imports {dep} ({LAYERS[here]} -> {LAYERS[there]})")
  assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def _package_of(module: str) -> str:
  """A module's parent package (a package's own __init__ counts as its package)."""
  return module if (ROOT.parent / module.replace(".", "/")).is_dir() else module.rpartition(".")[0]


def test_no_import_cycles():
  # A package's __init__ re-exports its modules, so an edge module -> its own package (or to an
  # ancestor package's __init__) is how a sibling is reached, not a cycle.
  graph = {m: {d for d in deps if not m.startswith(d + ".") and d != _package_of(m)} for m, deps in _graph().items()}
  cycles = set()
  for start in graph:
    stack = [(start, (start,))]
    while stack:
      node, path = stack.pop()
      for dep in graph[node]:
        if dep == start:
          cycles.add(" -> ".join(path + (start,)))
        elif dep not in path and len(path) < 12:
          stack.append((dep, path + (dep,)))
  assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles)[:20])


_FRESH_IMPORTS = textwrap.dedent("""
    import importlib, os, sys
    # Third-party only (each child then pays for optlab_jax's own imports alone): optlab_jax comes first below.
    import jax, jax.extend, jax.flatten_util, numpy, optax, flax.nnx, pydantic, yaml, matplotlib.figure, tqdm.auto
    import orbax.checkpoint
    failed = []
    for name in sys.argv[1:]:
      pid = os.fork()
      if pid == 0:
        try:
          importlib.import_module(name)
        except BaseException as e:
          print(f"{name}: {type(e).__name__}: {e}", flush=True)
          os._exit(1)
        os._exit(0)
      _, status = os.waitpid(pid, 0)
      if status:
        failed.append(name)
    sys.exit(1 if failed else 0)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="forks a child per module")
def test_every_module_imports_first_in_a_fresh_interpreter():
  # Each child imports one module before any other optlab_jax module: an import order that
  # only works because something else was imported earlier fails here.
  out = subprocess.run([sys.executable, "-c", _FRESH_IMPORTS, *_modules()], capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
