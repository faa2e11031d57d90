"""The `optlab` command: run a config (a resumable sweep), list what exists, plot results.

  optlab run CONFIG [--set KEY=VALUE ...] [--out DIR]   # default DIR: runs/<config stem>
  optlab run CONFIG [--threads N]                  # N groups at a time in this process (default 1)
  optlab run CONFIG --executor ray [--address ADDR | --num-cpus N]   # the groups as Ray tasks
  optlab list optimizers|problems|schedules|metrics|configs|experiments
  optlab plot DIR [--out FIGDIR]

A bad config exits with status 2 and one line per mistake, each naming the file (or the `--set`)
and the dotted path of the bad key, as argparse does for a bad command line.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import shutil
import sys
from pathlib import Path

from jax.experimental.compilation_cache import compilation_cache

from optlab_jax import config, executors, monitor, optim, problems, results, sweep, train

_ROOT = Path(__file__).resolve().parents[1]


def _project_dir(name: str) -> Path:
  """`./<name>` if it exists, else the one next to the installed package (an editable install)."""
  return Path(name) if Path(name).is_dir() else _ROOT / name


_ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "cf.", "vs.")
_SENTENCE_END = re.compile(r"[.?!](?=\s|$)")


def _sentence(text: str | None) -> str:
  """The whole first sentence of `text` (of its first paragraph, lines joined), ending in .?!"""
  paragraph = " ".join((text or "").strip().split("\n\n")[0].split())
  for end in _SENTENCE_END.finditer(paragraph):
    if not paragraph[: end.end()].endswith(_ABBREVIATIONS):
      return paragraph[: end.end()]
  return f"{paragraph}." if paragraph else ""


def _metric_descriptions() -> dict[str, str]:
  """Each metric's line of the table in `optlab_jax.monitor`'s docstring (continuations joined)."""
  table = monitor.__doc__.split("Metrics", 1)[1].split("\n\n")[0].splitlines()[1:]
  out, names = {}, []
  for line in table:
    entry = re.match(r"^  (\S.*?)\s{2,}(\S.*)$", line)
    if entry:
      names = entry[1].split(", ")
      out.update({name: entry[2] for name in names})
    else:
      out.update({name: f"{out[name]} {line.strip()}" for name in names})
  return out


def _question(path: Path) -> str:
  """A config's question: its comment lines before the command line, as one sentence."""
  lines = []
  for line in path.read_text().splitlines():
    if not line.startswith("# ") or line.lstrip("# ").startswith("optlab "):
      break
    lines.append(line[2:])
  return _sentence(" ".join(lines))


def _defaults(factory) -> str:
  return ", ".join(f"{k}={p.default!r}" for k, p in inspect.signature(factory).parameters.items())


def _listing(what: str) -> list[tuple[str, str]]:
  """(name, description: a whole sentence) of each thing of kind `what`."""
  if what == "optimizers":
    return [(n, _sentence(optim.get(n).__doc__)) for n in optim.names()]
  if what == "problems":
    return [(n, f"{_sentence(problems.get(n).__doc__)} Options: {_defaults(problems.get(n))}.") for n in problems.names()]
  if what == "schedules":
    return [(n, _sentence(f.__doc__)) for n, f in config.schedule_factories().items()]
  if what == "metrics":
    descriptions = _metric_descriptions()
    return [(n, _sentence(descriptions.get(n))) for n in monitor.METRICS]
  if what == "configs":
    return [(str(p), _question(p)) for p in sorted(_project_dir("configs").glob("*.yaml"))]
  paths = sorted(_project_dir("experiments").glob("*.py"))
  return [(str(p), _sentence(ast.get_docstring(ast.parse(p.read_text())))) for p in paths]


def _executor(args: argparse.Namespace) -> executors.InProcess | executors.Ray:
  """The executor the flags ask for; raises ValueError or MissingExtra."""
  if args.executor != "ray":
    for flag, value in (("--address", args.address), ("--num-cpus", args.num_cpus)):
      if value is not None:
        raise ValueError(f"{flag} is an option of --executor ray")
    return executors.InProcess(args.threads)
  if args.threads is not None:
    raise ValueError("--threads is an option of --executor inprocess (Ray runs a group per task)")
  return executors.Ray(address=args.address, num_cpus=args.num_cpus)


def _run(args: argparse.Namespace) -> int:
  try:  # before anything is written: a missing extra or a bad flag leaves no trace
    executor = _executor(args)
  except (ValueError, executors.MissingExtra) as e:
    print(f"optlab run: {e}", file=sys.stderr)
    return 2
  out = args.out or str(Path("runs") / Path(args.config).stem)
  fresh = not Path(out).exists()
  if not args.no_compile_cache:  # before anything compiles (validation does)
    train.use_compilation_cache(Path(out) / "compile_cache")
  try:
    experiment = config.load(args.config, args.set)
  except config.ConfigError as e:
    if fresh:  # validation's compilations made out/compile_cache; a bad config leaves no results
      compilation_cache.reset_cache()
      shutil.rmtree(out, ignore_errors=True)
    print(e, file=sys.stderr)
    return 2
  records = sweep.run(experiment, out, progress=not args.quiet, log=print, executor=executor)
  print(results.table(records))
  if experiment.landscape is not None:
    from optlab_jax import landscape_runs  # only configs with a `landscape:` section need it
    landscape_runs.run(experiment, out)
  print(f"\nresults in {out}/ (runs.jsonl, summary.csv, metrics/); figures: optlab plot {out}")
  return 0


def _list(args: argparse.Namespace) -> int:
  rows = _listing(args.what)
  width = max((len(name) for name, _ in rows), default=0)
  for name, text in rows:
    print(f"{name.ljust(width)}  {text}".rstrip())
  return 0


def _plot(args: argparse.Namespace) -> int:
  if not (Path(args.dir) / "runs.jsonl").exists():
    print(f"{args.dir}: no runs.jsonl here; run `optlab run CONFIG --out {args.dir}` first", file=sys.stderr)
    return 2
  from optlab_jax import plots  # matplotlib takes a second to import; only `plot` draws

  for path in plots.plot(args.dir, args.out):
    print(path)
  return 0


def main(argv: list[str] | None = None) -> int:
  """Entry point of the `optlab` console script; returns the exit status."""
  parser = argparse.ArgumentParser(prog="optlab", description="A JAX laboratory for deep-learning optimization.")
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="run a config's sweep (resumes: finished runs are skipped)")
  run.add_argument("config", help="a YAML config, e.g. configs/quickstart.yaml")
  run.add_argument(
      "--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted key (the value is YAML)"
  )
  run.add_argument("--out", help="results directory (default: runs/<config stem>)")
  run.add_argument("--quiet", action="store_true", help="no progress bar")
  run.add_argument(
      "--no-compile-cache", action="store_true",
      help="do not keep compiled programs in DIR/compile_cache (JAX's persistent cache, on by default)",
  )
  run.add_argument("--executor", choices=["inprocess", "ray"], default="inprocess",
                   help="where the sweep's groups run: this process (default) or Ray tasks (pip install -e '.[ray]')")
  run.add_argument("--threads", type=int, help="in-process: groups run at a time (default 1: one after another; "
                   "more let one group compile or train while another does)")
  run.add_argument("--address", help="with --executor ray: the cluster to join ('auto': this machine's), "
                   "else a local one is started")
  run.add_argument("--num-cpus", type=int, help="with --executor ray and no --address: the local cluster's CPUs "
                   "(default: all)")
  run.set_defaults(func=_run)
  listing = commands.add_parser("list", help="list what a config can name")
  listing.add_argument(
      "what", choices=["optimizers", "problems", "schedules", "metrics", "configs", "experiments"]
  )
  listing.set_defaults(func=_list)
  plot = commands.add_parser("plot", help="write PNG figures of a results directory")
  plot.add_argument("dir", help="a results directory written by `optlab run`")
  plot.add_argument("--out", help="where to write the figures (default: DIR)")
  plot.set_defaults(func=_plot)
  args = parser.parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
