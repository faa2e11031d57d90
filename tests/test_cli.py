"""The `optlab` command: exit status 2 on bad configs, listings, run + resume, plot, SIGKILL safety."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from optlab_jax import cli, optim, problems, results, train

TINY = """\
# A tiny sweep for the tests.
problem: {name: quadratic, dim: 3, condition: 4.0}
optimizer: {name: sgd, learning_rate: 0.1}
train: {steps: 20}
sweep: {grid: {optimizer.learning_rate: [0.1, 0.2]}}
seeds: [0, 1, 2]
"""


def write(tmp_path, text=TINY, name="tiny.yaml"):
  path = tmp_path / name
  path.write_text(textwrap.dedent(text))
  return str(path)


@pytest.mark.parametrize("text, overrides, where", [
    (TINY.replace("steps: 20", "step: 20"), [], "train.step: unknown key; did you mean 'steps'?"),
    (TINY.replace("steps: 20", "steps: many"), [], "train.steps: Input should be a valid integer"),
    (TINY.replace("condition: 4.0", "condition: 0.5"), [], "problem.condition: condition=0.5 is out of range"),
    (TINY.replace("name: sgd", "name: sgf"), [], "optimizer.name: unknown optimizer 'sgf'; did you mean 'sgd'?"),
    (TINY.replace("name: quadratic", "name: quadratik"), [], "problem.name: unknown problem 'quadratik'"),
    (TINY, ["optimizer.learning_rate=-1.0"], "--set optimizer.learning_rate: learning_rate=-1.0 is out of range"),
    (TINY, ["optimizer.momentun=0.9"], "--set optimizer.momentun: unknown key; did you mean 'momentum'?"),
    (TINY, ["train.steps=1.5"], "--set train.steps: Input should be a valid integer, got 1.5"),
], ids=lambda x: x.split(":")[0] if isinstance(x, str) and ":" in x and "\n" not in x else "")
def test_bad_config_exits_2_with_one_line_naming_the_path(tmp_path, capsys, text, overrides, where):
  path = write(tmp_path, text)
  sets = [a for o in overrides for a in ("--set", o)]
  assert cli.main(["run", path, "--out", str(tmp_path / "out"), *sets]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"{path}: {where}") and err.count("\n") == 1, err
  assert not (tmp_path / "out").exists()


def test_console_entry_exits_2_in_a_subprocess(tmp_path):
  path = write(tmp_path, TINY.replace("train:", "trian:"))
  proc = subprocess.run([sys.executable, "-m", "optlab_jax.cli", "run", path], capture_output=True, text=True, cwd=tmp_path)
  assert proc.returncode == 2 and proc.stderr == f"{path}: trian: unknown key; did you mean 'train'?\n"


def test_list(capsys):
  for what, names in [("optimizers", optim.names()), ("problems", problems.names())]:
    assert cli.main(["list", what]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == names
  assert cli.main(["list", "configs"]) == 0
  out = capsys.readouterr().out
  assert "configs/quickstart.yaml" in out and "Quickstart: on a small MLP" in out
  assert cli.main(["list", "metrics"]) == 0
  assert "lambda_max" in capsys.readouterr().out.split()


KINDS = ["optimizers", "problems", "schedules", "metrics", "configs", "experiments"]


@pytest.mark.parametrize("what", KINDS)
def test_every_listed_description_is_a_whole_sentence(capsys, what):
  assert cli.main(["list", what]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines
  for line in lines:
    name, _, text = line.partition("  ")
    # A cut-off first line ends mid-sentence; a docstring about a parameter names it in backticks.
    assert text.strip().endswith((".", "?", "!")), line
    assert "`base`" not in text and "registered optimizer `" not in text, line


def test_listing_joins_a_sentence_that_spans_lines(capsys):
  assert cli.main(["list", "configs"]) == 0
  rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
  eos = next(text for name, text in rows.items() if name.endswith("edge_of_stability.yaml"))
  assert eos.strip().endswith("while the loss keeps falling, non-monotonically?")  # its third line
  assert "Cohen et al., 2021" in eos  # "et al." does not end the sentence
  assert cli._sentence("A b, e.g. c\nd e. F g.") == "A b, e.g. c d e." and cli._sentence("no end\n\nB.") == "no end."


def test_run_prints_the_table_then_resumes_without_training(tmp_path, capsys, monkeypatch):
  path = write(tmp_path)
  monkeypatch.chdir(tmp_path)
  assert cli.main(["run", path, "--quiet"]) == 0
  out = capsys.readouterr().out
  records = results.load_records(tmp_path / "runs" / "tiny")  # the default --out
  assert len(records) == 6
  rows = {line.split()[0]: line for line in out.splitlines()[2:4]}
  for lr in (0.1, 0.2):
    losses = [r["final"]["train_loss"] for r in records if r["config"]["optimizer"]["learning_rate"] == lr]
    cells = [c.strip() for c in rows[f"learning_rate={lr}"].split("  ") if c.strip()]
    assert cells[1:3] == ["3 ok", f"{statistics.mean(losses):.4g} ± {statistics.stdev(losses):.2g}"]

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "fit", no_training)
  monkeypatch.setattr(train, "fit_vmapped", no_training)
  assert cli.main(["run", path, "--quiet"]) == 0
  assert capsys.readouterr().out == "all 6 runs already done\n" + out


def test_a_resumed_run_says_what_it_skips(tmp_path, capsys):
  path, out = write(tmp_path), str(tmp_path / "out")
  assert cli.main(["run", path, "--out", out, "--quiet", "--set", "seeds=[0, 1]"]) == 0  # 4 of the 6 runs
  assert not capsys.readouterr().out.startswith(("all", "0 of"))  # a fresh directory skips nothing
  assert cli.main(["run", path, "--out", out, "--quiet"]) == 0
  assert capsys.readouterr().out.splitlines()[0] == "4 of 6 runs already done, running 2"
  assert len(results.load_records(out)) == 6


def test_a_config_with_several_mistakes_exits_2_listing_each(tmp_path, capsys):
  text = TINY.replace("dim: 3", "dim: 0").replace("name: sgd", "name: sgf").replace("steps: 20", "steps: 20, loop: scann")
  path = write(tmp_path, text)
  assert cli.main(["run", path, "--out", str(tmp_path / "out"), "--set", "seeds=[1, 1]"]) == 2
  assert capsys.readouterr().err.splitlines() == [f"{path}: {m}" for m in [
      "--set seeds: seeds repeat: [1, 1]",
      "problem.dim: dim=0 is out of range; expected an integer dim >= 1",
      "optimizer.name: unknown optimizer 'sgf'; did you mean 'sgd'? (known: " + ", ".join(optim.names()) + ")",
      "train.loop: Input should be 'auto', 'scan' or 'python', got 'scann'",
  ]]
  assert not (tmp_path / "out").exists()


def test_plot(tmp_path, capsys):
  out = str(tmp_path / "out")
  assert cli.main(["run", write(tmp_path), "--out", out, "--quiet", "--set", "train.eval_every=10"]) == 0
  capsys.readouterr()
  assert cli.main(["plot", out]) == 0
  printed = capsys.readouterr().out.split()
  assert sorted(os.path.basename(p) for p in printed) == ["eval_loss.png", "train_loss.png"]
  assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in printed)
  assert cli.main(["plot", str(tmp_path)]) == 2


KILLED = """\
problem: {name: quadratic, dim: 3, condition: 10.0}
optimizer: {name: sgd, learning_rate: 0.05}
train: {steps: 300, loop: python}
sweep: {grid: {train.steps: [300, 301, 302, 303, 304, 305, 306, 307, 308, 309]}}
"""


def test_sigkill_mid_sweep_then_rerun_gives_every_run_once(tmp_path):
  path, out = write(tmp_path, KILLED), tmp_path / "out"
  proc = subprocess.Popen([sys.executable, "-m", "optlab_jax.cli", "run", path, "--out", str(out), "--quiet"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 600
  while time.monotonic() < deadline and proc.poll() is None:
    if (out / "runs.jsonl").exists() and (out / "runs.jsonl").read_text().count("\n") >= 2:
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  before = results.load_records(out)  # every line whole: a killed writer leaves no half-written file
  assert 2 <= len(before) < 10, "the sweep was not killed in the middle"

  assert cli.main(["run", path, "--out", str(out), "--quiet"]) == 0
  after = results.load_records(out)
  assert sorted(r["config"]["train"]["steps"] for r in after) == list(range(300, 310))
  assert len({r["id"] for r in after}) == 10
  assert after[: len(before)] == before  # finished runs were kept, not re-run
  assert sorted(p.name for p in (out / "metrics").iterdir()) == sorted(f"{r['id']}.npz" for r in after)
  for r in after:
    assert len(results.load_metrics(out, r["id"])["train_loss"]) == r["config"]["train"]["steps"]
  assert [p for p in out.rglob("*") if p.name.startswith(".")] == []
  assert len((out / "summary.csv").read_text().splitlines()) == 11
  assert json.loads((out / "runs.jsonl").read_text().splitlines()[-1])["status"] == "ok"
  assert np.isfinite([r["final"]["train_loss"] for r in after]).all()
