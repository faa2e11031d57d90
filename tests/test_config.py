"""Config schema: resolved configs, and one path-qualified message per kind of bad config."""

from __future__ import annotations

import ast
import inspect
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from optlab_jax import config, monitor, optim, problems

BASE = """
problem: {name: quadratic, dim: 4}
optimizer: {name: sgd, learning_rate: 0.1, momentum: 0.9}
train: {steps: 10}
"""


def write(tmp_path, text=BASE, name="x.yaml"):
  path = tmp_path / name
  path.write_text(textwrap.dedent(text))
  return str(path)


def error(path, overrides=()):
  with pytest.raises(config.ConfigError) as e:
    config.load(path, overrides)
  return str(e.value)


def defaults(factory, **given):
  return {k: p.default for k, p in inspect.signature(factory).parameters.items() if p.default is not p.empty} | given


def test_resolved_config_fills_the_factories_defaults(tmp_path):
  (run,) = config.load(write(tmp_path)).runs
  assert run.config == {
      "problem": {"name": "quadratic", **defaults(problems.get("quadratic"), dim=4)},
      "optimizer": {"name": "sgd", **defaults(optim.get("sgd"), learning_rate=0.1, momentum=0.9)},
      "train": {"steps": 10, "batch_size": "full", "eval_every": 0, "loop": "auto", "checkpoint_every": 0,
                "mesh": None},
      "monitor": None,
      "seed": 0,
  }
  assert run.config["problem"]["condition"] == 100.0 and run.config["optimizer"]["nesterov"] is False


def test_yaml_reads_exponent_floats_and_refuses_python_tags(tmp_path):
  assert config.parse_yaml("a: 1e-3\nb: -2E+2\nc: 3\nd: '1e-3'") == {"a": 0.001, "b": -200.0, "c": 3, "d": "1e-3"}
  path = write(tmp_path, BASE + "seeds: !!python/object/apply:os.getcwd []\n")
  assert "could not determine a constructor" in error(path)


def test_schedule_spec_builds_the_optax_schedule(tmp_path):
  path = write(tmp_path, BASE.replace("learning_rate: 0.1", "learning_rate: {name: cosine_decay_schedule, init_value: 0.1, decay_steps: 100}"))
  (run,) = config.load(path).runs
  assert run.config["optimizer"]["learning_rate"] == {
      "name": "cosine_decay_schedule", "init_value": 0.1, "decay_steps": 100, "alpha": 0.0, "exponent": 1.0}
  schedule = config.optimizer_kwargs(run.config["optimizer"])["learning_rate"]
  for t in (0, 30, 100):  # the closed form of cosine decay
    np.testing.assert_allclose(float(schedule(t)), 0.1 * 0.5 * (1 + math.cos(math.pi * t / 100)), rtol=1e-6)


def test_a_schedule_with_integer_keys_survives_the_resolved_configs_json(tmp_path):
  spec = "{name: piecewise_constant_schedule, init_value: 0.1, boundaries_and_scales: {5: 0.1, 8: 0.5}}"
  run = config.load(write(tmp_path, BASE.replace("learning_rate: 0.1", f"learning_rate: {spec}"))).runs[0]
  stored = json.loads(json.dumps(run.config))  # runs.jsonl's form, which a sweep builds from: keys "5", "8"
  schedule = config.optimizer_kwargs(stored["optimizer"])["learning_rate"]
  for t, lr in [(0, 0.1), (4, 0.1), (5, 0.01), (7, 0.01), (8, 0.005), (20, 0.005)]:
    np.testing.assert_allclose(float(schedule(t)), lr, rtol=1e-6)  # optax: the scale applies from step 5 on


def test_errors_raised_outside_load_still_read():
  message = str(config.Errors([config.Invalid(("optimizer", "b1"), "b1=2 is out of range")]))
  assert message == "optimizer.b1: b1=2 is out of range"


def test_a_schedule_spec_nests_inside_linear_warmup(tmp_path):
  spec = "{name: linear_warmup, warmup_steps: 10, schedule: {name: inverse_time_decay, init_value: 0.2, decay_rate: 1.0}}"
  (run,) = config.load(write(tmp_path, BASE.replace("learning_rate: 0.1", f"learning_rate: {spec}"))).runs
  assert run.config["optimizer"]["learning_rate"]["schedule"] == {
      "name": "inverse_time_decay", "init_value": 0.2, "decay_rate": 1.0, "decay_steps": 1.0, "staircase": False}
  schedule = config.optimizer_kwargs(run.config["optimizer"])["learning_rate"]
  for t in (0, 5, 10, 30):  # 0.2 t/10 over the ramp, then 0.2 / (1 + (t - 10))
    np.testing.assert_allclose(float(schedule(t)), 0.02 * t if t < 10 else 0.2 / (1 + t - 10), rtol=1e-6)


def test_tuple_options_accept_yaml_lists(tmp_path):
  path = write(tmp_path, BASE.replace("{name: quadratic, dim: 4}", "{name: teacher_student, student_hidden: [3, 2], num_train: 8}"))
  (run,) = config.load(path).runs
  assert run.config["problem"]["student_hidden"] == [3, 2]
  assert config.build_problem(run.config["problem"]).init_params is not None


def test_expand_crosses_grid_axes_and_zips_zip_axes():
  points = config.expand({"a": [1, 2], "b": ["x"]}, {"c": [5, 6], "d": [7, 8]})
  as_tuples = [tuple((p.key, p.kind, p.index, p.value) for p in point) for point in points]
  assert as_tuples == [
      (("a", "grid", 0, 1), ("b", "grid", 0, "x"), ("c", "zip", 0, 5), ("d", "zip", 0, 7)),
      (("a", "grid", 0, 1), ("b", "grid", 0, "x"), ("c", "zip", 1, 6), ("d", "zip", 1, 8)),
      (("a", "grid", 1, 2), ("b", "grid", 0, "x"), ("c", "zip", 0, 5), ("d", "zip", 0, 7)),
      (("a", "grid", 1, 2), ("b", "grid", 0, "x"), ("c", "zip", 1, 6), ("d", "zip", 1, 8)),
  ]
  assert config.expand({}, {}) == [()]


def test_sweep_and_overrides_produce_one_run_per_point_and_seed(tmp_path):
  path = write(tmp_path, BASE + "sweep: {grid: {optimizer.learning_rate: [0.1, 0.2]}, zip: {train.steps: [5, 6], problem.dim: [2, 3]}}\nseeds: [4, 7]\n")
  runs = config.load(path, ["train.eval_every=2", "optimizer.momentum=0.5"]).runs
  got = [(r.config["optimizer"]["learning_rate"], r.config["train"]["steps"], r.config["problem"]["dim"], r.config["seed"]) for r in runs]
  assert got == [(lr, s, d, seed) for lr in (0.1, 0.2) for s, d in ((5, 2), (6, 3)) for seed in (4, 7)]
  assert {(r.config["train"]["eval_every"], r.config["optimizer"]["momentum"]) for r in runs} == {(2, 0.5)}


def test_set_wins_over_a_swept_section(tmp_path):
  path = write(tmp_path, BASE + "sweep: {grid: {optimizer: [{name: sgd, learning_rate: 0.1}, {name: adam, learning_rate: 0.01}]}}\n")
  runs = config.load(path, ["optimizer.learning_rate=3e-3"]).runs
  assert [(r.config["optimizer"]["name"], r.config["optimizer"]["learning_rate"]) for r in runs] == [("sgd", 3e-3), ("adam", 3e-3)]


BAD = [
    # (text replaced in BASE, or appended, --set overrides) -> the message after "<file>: "
    (("sgd, learning_rate: 0.1, momentum: 0.9", "adam, learning_rate: 0.1, betas: [0.9, 0.99]"), (),
     "optimizer.betas: unknown key; did you mean 'b1'?"),
    (("momentum: 0.9", "momentun: 0.9"), (), "optimizer.momentun: unknown key; did you mean 'momentum'?"),
    (("steps: 10", "stesp: 10"), (), "train.stesp: unknown key; did you mean 'steps'?"),
    (("train:", "trian:"), (), "trian: unknown key; did you mean 'train'?"),
    (("steps: 10", "steps: ten"), (), "train.steps: Input should be a valid integer, got 'ten'"),
    (("steps: 10", "steps: 1.5"), (), "train.steps: Input should be a valid integer, got 1.5"),
    (("momentum: 0.9", "momentum: true"), (), "optimizer.momentum: Input should be a valid number, got True"),
    (("steps: 10", "steps: 0"), (), "train.steps: Input should be greater than 0, got 0"),
    (("momentum: 0.9", "momentum: 1.5"), (), "optimizer.momentum: momentum=1.5 is out of range; expected momentum in [0.0, 1.0)"),
    (("learning_rate: 0.1", "learning_rate: -0.1"), (), "optimizer.learning_rate: learning_rate=-0.1 is out of range"),
    (("dim: 4", "dim: 0"), (), "problem.dim: dim=0 is out of range; expected an integer dim >= 1"),
    (("name: sgd", "name: sgdd"), (), "optimizer.name: unknown optimizer 'sgdd'; did you mean 'sgd'?"),
    (("name: quadratic", "name: quadratc"), (), "problem.name: unknown problem 'quadratc'; did you mean 'quadratic'?"),
    (("dim: 4", "dims: 4"), (), "problem.dims: unknown key; did you mean 'dim'?"),
    (("", "monitor: {metrics: [lamda_max]}\n"), (), "monitor.metrics[0]: unknown metric 'lamda_max'; did you mean 'lambda_max'?"),
    (("", "seeds: [0, 0]\n"), (), "seeds: seeds repeat: [0, 0]"),
    (("learning_rate: 0.1", "learning_rate: {name: cosine_decay, init_value: 0.1}"), (),
     "optimizer.learning_rate.name: unknown schedule 'cosine_decay'; did you mean 'cosine_decay_schedule'?"),
    (("", "sweep: {grid: {optimizer.momentum: [0.5, 2.0]}}\n"), (),
     "sweep.grid.optimizer.momentum[1]: momentum=2.0 is out of range; expected momentum in [0.0, 1.0)"),
    (("", "sweep: {grid: {optimizer: [{name: sgd, learning_rate: 0.1}, {name: adam, learning_rate: 0.1, momentum: 0.9}]}}\n"), (),
     "sweep.grid.optimizer[1].momentum: unknown key"),
    (("", "sweep: {zip: {train.steps: [1, 2], problem.dim: [3]}}\n"), (),
     "sweep.zip: zip axes need lists of one length, got {'train.steps': 2, 'problem.dim': 1}"),
    (("", "sweep: {grid: {seeds: [1]}}\n"), (), "sweep.grid.seeds[0]: a sweep axis sets a key of problem / optimizer / train / monitor"),
    ((), ["train.steps=abc"], "--set train.steps: Input should be a valid integer, got 'abc'"),
    ((), ["optimizer.momentum=2"], "--set optimizer.momentum: momentum=2.0 is out of range; expected momentum in [0.0, 1.0)"),
    ((), ["optimizer.nesterv=true"], "--set optimizer.nesterv: unknown key; did you mean 'nesterov'?"),
    ((), ["problem.name=rosenbrok"], "--set problem.name: unknown problem 'rosenbrok'; did you mean 'rosenbrock'?"),
    ((), ["seeds=[a]"], "--set seeds[0]: Input should be a valid integer, got 'a'"),
    ((), ["train.batch_size=0"], "--set train.batch_size: expected a positive integer or 'full', got 0"),
    ((), ["sweep.grid.optimizer.momentum=[0.1, -1]"], "--set sweep.grid.optimizer.momentum[1]: momentum=-1.0 is out of range"),
    ((), ["landscape.grdi=5"], "--set landscape.grdi: unknown key; did you mean 'grid'?"),
    ((), ["bogus.x=1"], "--set bogus: unknown key"),
]


@pytest.mark.parametrize("edit, overrides, expected", BAD, ids=[b[2].split(":")[0] for b in BAD])
def test_bad_config_gives_one_message_naming_file_and_path(tmp_path, edit, overrides, expected):
  text = BASE.replace(*edit) if edit and edit[0] else BASE + (edit[1] if edit else "")
  path = write(tmp_path, text)
  message = error(path, overrides)
  assert message.startswith(f"{path}: {expected}"), message
  assert "\n" not in message


def test_set_reaches_the_file_level_landscape_section(tmp_path):
  path = write(tmp_path, BASE + "landscape: {grid: 7}\n")
  experiment = config.load(path, ["landscape.grid=5", "landscape.connect_steps=3"])
  assert (experiment.landscape["grid"], experiment.landscape["connect_steps"]) == (5, 3)
  assert "landscape" not in experiment.runs[0].config  # a file-level section, not a point's


def test_set_without_equals_is_an_error(tmp_path):
  assert error(write(tmp_path), ["train.steps"]) == "--set train.steps: expected KEY=VALUE, e.g. --set train.steps=100"


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid_and_open_with_their_question_and_command(name):
  text = (ROOT / "configs" / name).read_text()
  header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
  assert text.startswith("# ") and f" configs/{name}" in header  # `optlab run` or an experiment script
  assert config.load(str(ROOT / "configs" / name)).runs


def test_quickstart_compares_four_optimizers_over_three_seeds_with_sharpness():
  runs = config.load(str(ROOT / "configs" / "quickstart.yaml")).runs
  assert [r.config["optimizer"]["name"] for r in runs[::3]] == ["sgd", "adam", "adamw", "adahessian"]
  assert runs[0].config["optimizer"]["momentum"] == 0.9 and [r.config["seed"] for r in runs[:3]] == [0, 1, 2]
  assert {r.config["problem"]["name"] for r in runs} == {"digits_mlp"}
  assert {(r.config["monitor"]["every"], tuple(r.config["monitor"]["metrics"])) for r in runs} == {(50, ("lambda_max",))}


def test_a_config_with_several_mistakes_reports_each_once(tmp_path):
  text = """
      problem: {name: quadratic, dims: 4}
      optimizer: {name: sgd, learning_rate: 0.1, momentum: 1.5, nesterv: true}
      train: {steps: 0}
      monitor: {metrics: [lamda_max]}
      sweep: {grid: {optimizer.learning_rate: [0.1, 0.2, 0.3]}}
      seeds: [0, 0]
      """
  with pytest.raises(config.ConfigError) as e:
    config.load(write(tmp_path, text), ["train.eval_every=-1"])
  path = tmp_path / "x.yaml"
  # Every section's mistakes and the file's own, once each although three sweep points repeat
  # them; a typo's "missing" twin is not reported.
  assert sorted(e.value.messages) == sorted(f"{path}: {m}" for m in [
      "seeds: seeds repeat: [0, 0]",
      "problem.dims: unknown key; did you mean 'dim'?",
      "optimizer.nesterv: unknown key; did you mean 'nesterov'?",
      "train.steps: Input should be greater than 0, got 0",
      "--set train.eval_every: Input should be greater than or equal to 0, got -1",
      "monitor.metrics[0]: unknown metric 'lamda_max'; did you mean 'lambda_max'? (known: " + ", ".join(sorted(monitor.METRICS)) + ")",
  ])
  assert str(e.value) == "\n".join(e.value.messages)


def test_errors_of_sweep_points_are_attributed_to_their_values(tmp_path):
  text = BASE + "sweep: {grid: {optimizer.momentum: [0.5, 2.0, -1.0]}, zip: {problem.dim: [0]}}\n"
  with pytest.raises(config.ConfigError) as e:
    config.load(write(tmp_path, text))
  path = tmp_path / "x.yaml"
  assert e.value.messages == [
      f"{path}: sweep.zip.problem.dim[0]: dim=0 is out of range; expected an integer dim >= 1",
      f"{path}: sweep.grid.optimizer.momentum[1]: momentum=2.0 is out of range; expected momentum in [0.0, 1.0)",
      f"{path}: sweep.grid.optimizer.momentum[2]: momentum=-1.0 is out of range; expected momentum in [0.0, 1.0)",
  ]


TEACHER = "problem: {name: teacher_student, input_dim: 3, teacher_hidden: [2], student_hidden: [2], num_train: 8}\ntrain: {steps: 2}\n"


# The teacher's Gaussian likelihood differs from every factory's default (categorical), so only
# plumbing can give it; the saddle has no likelihood, so the factory's default must stand.
@pytest.mark.parametrize("name", ["natural_gradient", "sophia_g", "kfac"])
def test_an_unset_likelihood_is_the_problems(tmp_path, name):
  default = inspect.signature(optim.get(name)).parameters["likelihood"].default
  assert default != "gaussian"
  (run,) = config.load(write(tmp_path, TEACHER + f"optimizer: {{name: {name}, learning_rate: 0.1}}\n")).runs
  assert config.build_problem(run.config["problem"]).likelihood == "gaussian"
  assert run.config["optimizer"]["likelihood"] == "gaussian"
  assert config.optimizer_kwargs(run.config["optimizer"])["likelihood"] == "gaussian"  # what the runner builds
  path = write(tmp_path, f"problem: {{name: saddle}}\ntrain: {{steps: 2}}\noptimizer: {{name: {name}, learning_rate: 0.1}}\n")
  (run,) = config.load(path).runs
  assert config.build_problem(run.config["problem"]).likelihood is None
  assert run.config["optimizer"]["likelihood"] == default


def test_a_likelihood_contradicting_the_problems_is_an_error(tmp_path):
  path = write(tmp_path, TEACHER + "optimizer: {name: kfac, learning_rate: 0.1, likelihood: categorical}\n")
  assert error(path).startswith(f"{path}: optimizer.likelihood: likelihood='categorical' contradicts problem 'teacher_student'")
  path = write(tmp_path, TEACHER + "optimizer: {name: sophia_g, learning_rate: 0.1, likelihood: gaussian}\n")
  assert config.load(path).runs[0].config["optimizer"]["likelihood"] == "gaussian"  # agreeing is fine


def test_the_config_package_imports_nothing_above_it():
  # sweep imports config (Axis, expand, the builders); config importing sweep, train or cli is a cycle.
  above = {"optlab_jax.sweep", "optlab_jax.cli", "optlab_jax.train", "optlab_jax.results", "optlab_jax.plots"}
  paths = sorted((ROOT / "optlab_jax" / "config").glob("*.py"))
  assert len(paths) >= 6 and not (ROOT / "optlab_jax" / "config.py").exists()
  for path in paths:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        imported = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
      elif isinstance(node, ast.Import):
        imported = {a.name for a in node.names}
      else:
        continue
      assert not imported & above, f"{path.name} imports {imported & above}"
