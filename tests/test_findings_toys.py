"""The toy landscapes' and classic counterexamples' phenomena, asserted at a small size (issue #12).

Each test states the phenomenon, checks it against a reference that is not the code under test
(a float64 numpy transcription of the update, a closed form, scipy's roots), and fails when the
phenomenon does not appear.
"""

from __future__ import annotations

import math
import textwrap

import jax
import numpy as np
import optax
import pytest

from optlab_jax import config, optim, problems, results, schedules, sweep, toy_plots, train
from optlab_jax.problems import landscapes

# Claim 11 at a small size: one sweep of zipped (problem, optimizer) pairs, 700 steps each.
TOYS = """
    train: {steps: 700, batch_size: full, eval_every: 700}
    sweep:
      zip:
        problem:
          - {name: saddle, start: [1.0, 1.0e-2]}
          - {name: saddle, start: [1.0, 1.0e-4]}
          - {name: saddle, start: [1.0, 1.0e-6]}
          - {name: saddle, start: [1.0, 1.0e-2]}
          - {name: saddle, start: [1.0, 1.0e-4]}
          - {name: saddle, start: [1.0, 1.0e-6]}
          - {name: cubic, start: 1.0}
          - {name: cubic, start: 1.0}
          - {name: plateau, power: 7, start: 0.3}
          - {name: plateau, power: 7, start: 0.3}
          - {name: plateau, power: 7, start: 0.3}
          - {name: xcos, start: -0.5}
          - {name: xcos, start: 0.35}
          - {name: tanh_vanishing, start: 4.0}
          - {name: tanh_vanishing, start: 0.5}
        optimizer:
          - {name: sgd, learning_rate: 0.05}
          - {name: sgd, learning_rate: 0.05}
          - {name: sgd, learning_rate: 0.05}
          - {name: adam, learning_rate: 0.05}
          - {name: adam, learning_rate: 0.05}
          - {name: adam, learning_rate: 0.05}
          - {name: sgd, learning_rate: 0.05}
          - {name: sgd, learning_rate: 0.05, momentum: 0.9}
          - {name: sgd, learning_rate: 0.01}
          - {name: sgd, learning_rate: 0.01, momentum: 0.9}
          - {name: adam, learning_rate: 0.01}
          - {name: sgd, learning_rate: 0.05}
          - {name: sgd, learning_rate: 0.05}
          - {name: sgd, learning_rate: 0.05}
          - {name: sgd, learning_rate: 0.05}
    """


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
  """The sweep's directory and {(problem name, start, optimizer label): (record, per-step metrics)}."""
  tmp = tmp_path_factory.mktemp("toys")
  path = tmp / "toys.yaml"
  path.write_text(textwrap.dedent(TOYS))
  out = tmp / "out"
  sweep.run(config.load(str(path)), str(out), progress=False)
  runs = {}
  for r in results.load_records(out):
    cfg = r["config"]
    key = (cfg["problem"]["name"], json_key(cfg["problem"]["start"]), toy_plots.optimizer_label(cfg["optimizer"]))
    runs[key] = (r, results.load_metrics(out, r["id"]))
  return out, runs


def json_key(start):
  return tuple(start) if isinstance(start, list) else start


def test_gd_escapes_the_saddle_in_log_of_one_over_y0_steps_as_the_closed_form_says(toys):
  out, runs = toys
  lr = 0.05
  for y0 in (1e-2, 1e-4, 1e-6):
    # float64 numpy gradient descent on x² − y²: (x, y) ← (x − 2ηx, y + 2ηy), until x² − y² ≤ −1.
    x, y, steps = 1.0, y0, 0
    while x * x - y * y > -1.0:
      x, y, steps = x - 2 * lr * x, y + 2 * lr * y, steps + 1
    loss = runs[("saddle", (1.0, y0), "sgd(lr=0.05)")][1]["train_loss"]
    assert toy_plots.escape_step(loss, -1.0) == steps
    assert toy_plots.saddle_gd_escape_step((1.0, y0), lr) == steps
  escapes = toy_plots.saddle_escapes(out)
  gd, adam = escapes["sgd(lr=0.05)"], escapes["adam(lr=0.05)"]
  assert gd["slope"] == pytest.approx(1 / math.log(1 + 2 * lr), rel=0.01)  # 10.49 steps per e-fold of y₀
  assert gd["closed_slope"] == pytest.approx(1 / math.log(1 + 2 * lr), rel=1e-12)
  # Adam divides the tiny gradient out: its escape hardly depends on y₀ (the mechanism removed).
  assert abs(adam["slope"]) < 0.2 * gd["slope"]


def test_gd_stalls_at_the_degenerate_saddle_of_x_cubed_and_momentum_passes_it(toys):
  _, runs = toys
  lr, steps = 0.05, 700
  x = 1.0
  for _ in range(steps):  # float64 numpy: x ← x − 3ηx², so x ~ 1/(3ηt) and never reaches 0
    x -= 3 * lr * x * x
  gd, _ = runs[("cubic", 1.0, "sgd(lr=0.05)")]
  assert gd["final"]["x"] == pytest.approx(x, rel=1e-3)
  assert 0.9 < 3 * lr * steps * gd["final"]["x"] < 1.0 and gd["final"]["loss"] > 0
  momentum, metrics = runs[("cubic", 1.0, "sgd(lr=0.05, momentum=0.9)")]
  assert toy_plots.escape_step(metrics["train_loss"], -1.0) < 100  # overshoots 0 and runs off to −∞


def test_momentum_and_adam_cross_the_plateau_of_w7_minus_1_squared_sooner(toys):
  _, runs = toys
  escape = {label: toy_plots.escape_step(runs[("plateau", 0.3, label)][1]["train_loss"], 0.5)
            for label in ("sgd(lr=0.01)", "sgd(lr=0.01, momentum=0.9)", "adam(lr=0.01)")}
  gd = escape["sgd(lr=0.01)"]  # 590 steps measured; the plateau's gradient at 0.3 is 14·0.3⁶ ≈ 0.01
  assert 400 < gd < 700
  assert escape["sgd(lr=0.01, momentum=0.9)"] < gd / 3 and escape["adam(lr=0.01)"] < gd / 5
  assert all(runs[("plateau", 0.3, label)][0]["final"]["x"] == pytest.approx(1.0, abs=1e-3) for label in escape)


def test_the_start_picks_the_minimum_of_x_cos_pi_x(toys):
  _, runs = toys
  # Either side of the local maximum at 0.2739 (scipy's root of πx·tan(πx) = 1, in the problem module).
  assert runs[("xcos", -0.5, "sgd(lr=0.05)")][0]["final"]["x"] == pytest.approx(-landscapes.XCOS_ROOT_1, abs=1e-4)
  assert runs[("xcos", 0.35, "sgd(lr=0.05)")][0]["final"]["x"] == pytest.approx(landscapes.XCOS_ROOT_2, abs=1e-4)
  assert runs[("xcos", 0.35, "sgd(lr=0.05)")][0]["final"]["loss"] == pytest.approx(-1.0467, abs=1e-4)


def test_tanh_vanishing_gradient_stalls_gd_from_a_large_start(toys):
  _, runs = toys
  far, near = runs[("tanh_vanishing", 4.0, "sgd(lr=0.05)")][0], runs[("tanh_vanishing", 0.5, "sgd(lr=0.05)")][0]
  # From 4 each step moves η·(1 − tanh²(x)) ≈ 0.05 · 0.00134: ~0.05 in 700 steps, the loss barely moves.
  moved = 4.0 - far["final"]["x"]
  assert moved == pytest.approx(700 * 0.05 * (1 - np.tanh(4.0) ** 2), rel=0.1)
  assert math.tanh(4.0) - far["final"]["loss"] < 1e-3
  assert near["final"]["loss"] < -0.99  # from 0.5 the same steps reach the tail near the infimum −1


# Claim 15: Reddi et al.'s online problem, projected onto [−1, 1].


def test_projected_adam_is_optax_adam_followed_by_a_clip_of_the_iterate():
  lr, lower, upper = 0.3, -0.5, 0.7
  target = {"a": np.array([2.0, -3.0, 0.1]), "b": np.array([[0.2, -0.4], [1.5, 0.0]])}
  grad_fn = lambda p: jax.tree.map(lambda w, c: w - c, p, target)  # of ½‖p − target‖², minimum outside the box
  params = jax.tree.map(np.zeros_like, target)
  tx = optim.projected(lr, lower=lower, upper=upper, base="adam", base_kwargs={"b1": 0.5})
  state, update = tx.init(params), jax.jit(tx.update)
  ref, ref_tx = params, optax.adam(lr, b1=0.5)
  ref_state, ref_update = ref_tx.init(ref), jax.jit(ref_tx.update)
  for _ in range(6):
    updates, state = update(grad_fn(params), state, params)
    params = optax.apply_updates(params, updates)
    u, ref_state = ref_update(grad_fn(ref), ref_state, ref)
    ref = jax.tree.map(lambda w, d: np.clip(w + d, lower, upper), ref, u)  # numpy's clip is the projection
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), params, ref)
  assert float(params["a"][0]) == upper and float(params["a"][1]) == lower  # both bounds active
  with pytest.raises(ValueError, match="upper"):
    optim.projected(lr, lower=1.0, upper=0.0)
  with pytest.raises(ValueError, match="base"):
    optim.projected(lr, base="adamm")


def test_online_linear_draws_the_large_slope_with_its_probability():
  problem = problems.build("online_linear", dtype="float64")
  slopes = jax.jit(problem.sample_batch, static_argnums=1)(jax.random.key(0), 200_000)["x"]
  assert set(np.unique(slopes)) == {1010.0, -10.0}
  # Binomial(200000, 0.01): the fraction's standard error is 2.2e-4; 5 of them.
  assert np.mean(slopes == 1010.0) == pytest.approx(0.01, abs=1.1e-3)
  assert problem.info["expected_slope"] == pytest.approx(0.01 * 1010 - 0.99 * 10, rel=1e-12)
  with pytest.raises(ValueError, match="probability"):
    problems.build("online_linear", probability=0.005)  # expected slope < 0: x* would be +1


@pytest.fixture(scope="module")
def regrets():
  """Average expected regret (1/T) Σ δ(x_t + 1) at T/4 and T for Adam and AMSGrad, 4 seeds each."""
  problem = problems.build("online_linear")
  steps, every, out = 20_000, 100, {}
  for base in ("adam", "amsgrad"):
    tx_factory = lambda base=base: optim.projected(  # α/√t steps, as in the paper
        schedules.inverse_sqrt_decay(1.0, 1.0), lower=-1.0, upper=1.0, base=base, base_kwargs={"b1": 0.9, "b2": 0.99})
    histories = train.fit_vmapped(problem, tx_factory, {}, np.arange(4), steps=steps, eval_every=every)
    regret = np.stack([h.eval["regret"] for h in histories])
    average = np.cumsum(regret, axis=1) / np.arange(1, regret.shape[1] + 1)
    out[base] = (average[:, regret.shape[1] // 4 - 1], average[:, -1], np.array([h.final["x"] for h in histories]))
  return out


def test_adam_average_regret_stays_near_its_worst_while_amsgrad_goes_down(regrets):
  delta = 0.01 * 1010 - 0.99 * 10  # worst average regret 2δ = 0.4, at x = +1
  adam_quarter, adam_end, adam_x = regrets["adam"]
  ams_quarter, ams_end, ams_x = regrets["amsgrad"]
  # Adam is pulled to x = +1 on every seed, and its average regret does not fall.
  assert np.all(adam_x > 0.5) and np.all(adam_end > 0.7 * delta * 2) and np.all(adam_end >= adam_quarter - 0.01)
  # AMSGrad heads for x* = −1: its average regret falls from T/4 to T, below Adam's.
  assert np.median(ams_end) < 0.6 * np.median(adam_end) and np.median(ams_end) < np.median(ams_quarter)



# Claim 10: deep chains at initialisation.


def _chain_metrics(seed=0, **options):
  problem = problems.build("deep_chain", width=32, **options)
  return jax.jit(problem.eval_metrics)(problem.init_params(jax.random.key(seed))), problem


@pytest.mark.parametrize("w", [0.5, 2.0])
def test_identity_chain_signal_and_gradient_scale_like_w_to_the_depth(w):
  for depth in (4, 16):
    metrics, problem = _chain_metrics(depth=depth, weight_scale=w)
    x = np.asarray(problem.data["train"]["x"], np.float64)
    sigma = x.T @ x / len(x)
    # ∂/∂W₁ of ½ tr((P − I)ᵀ Σ (P − I)) at W = w·I is w^{L−1}(w^L − 1)·Σ (numpy, float64).
    np.testing.assert_allclose(metrics["first_layer_grad_norm"],
                               abs(w) ** (depth - 1) * abs(w**depth - 1) * np.linalg.norm(sigma), rtol=1e-4)
    np.testing.assert_allclose(metrics["signal_ratio"], w**depth, rtol=1e-5)


def test_xavier_and_kaiming_keep_signal_and_gradient_order_one_where_the_wrong_init_does_not():
  def ratios(act, init, depth):  # seeds 0–2 through one compiled evaluation
    problem = problems.build("deep_chain", width=32, depth=depth, activation=act, init=init)
    metrics = jax.jit(problem.eval_metrics)
    return [float(metrics(problem.init_params(jax.random.key(s)))["signal_ratio"]) for s in range(3)]

  # O(1) up to width-32 fluctuations (0.63–2.4 over these seeds for ReLU) against 2^{±8} below.
  assert all(0.25 < r < 4 for r in ratios("linear", "xavier", 16) + ratios("relu", "kaiming", 16))
  # The mechanism swapped: Kaiming's doubled variance on a linear chain grows like 2^{L/2} = 256,
  # Xavier's halved one on ReLU shrinks like 2^{−L/2}.
  assert all(r > 50 for r in ratios("linear", "kaiming", 16)) and all(r < 0.05 for r in ratios("relu", "xavier", 16))
  grads = [float(_chain_metrics(0, depth=d, activation="linear", init="xavier")[0]["first_layer_grad_norm"])
           for d in (2, 16)]
  assert 0.1 < grads[1] / grads[0] < 10


def test_gradient_clipping_keeps_the_exploding_chain_trainable():
  explode = problems.build("deep_chain", depth=20, width=8, weight_scale=1.2)  # ‖g‖ ≈ 3·10³ at the start
  sgd = train.fit(explode, optim.sgd(0.01), steps=300, batch_size=64)
  clipped = train.fit(explode, optim.clipped(0.01, max_norm=1.0), steps=300, batch_size=64)
  assert sgd.status == "diverged" and clipped.status == "ok"
  assert clipped.final["loss"] < 1e-3 * clipped.loss[0]
  assert sgd.diverged_at < 10  # the first steps of length 0.01 · 3·10³ overshoot at once
