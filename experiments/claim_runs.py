"""What the claim scripts of the Findings share: their command line and the config's sweep.

`python experiments/<claim>.py CONFIG [--set KEY=VALUE ...] [--out DIR] ...` runs the config's
sweep first (`sweep.run`, resumable, results in DIR, default runs/<config stem>) and prints its
table; the script then analyses the runs. Scripts that only read a results directory (`optlab run`
trained it) take `results_parser`'s DIR and --figure, and finish their panels with `legends`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from optlab_jax import config, results, sweep


def parser(doc: str) -> argparse.ArgumentParser:
  """The claim script's parser (its docstring's first line as description), with CONFIG, --set, --out."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("config")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--out", help="results directory (default: runs/<config stem>)")
  return p


def run_sweep(args: argparse.Namespace) -> tuple[config.Experiment, str]:
  """The loaded config and its results directory, after its sweep ran (its table printed)."""
  experiment = config.load(args.config, args.set)
  out = args.out or str(Path("runs") / Path(args.config).stem)
  print(results.table(sweep.run(experiment, out, progress=False)))
  return experiment, out


def results_parser(doc: str, config_name: str) -> argparse.ArgumentParser:
  """The parser of a script reading a results directory of configs/<config_name>.yaml: DIR, --figure."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("dir", help=f"a results directory of configs/{config_name}.yaml")
  p.add_argument("--figure", help="PNG path of the figure")
  return p


def legends(*axes) -> None:
  """A small legend and a light grid on each panel."""
  for ax in axes:
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
