"""Validation during training in successive halving and Optuna searches."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adam_jax import tuning

_runner = importlib.import_module("adam_jax.tuning._runner")
ONE_DEVICE = jax.devices()[:1]
X = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]


def loss_fn(params, batch):
  x, y = batch
  return jnp.mean((x @ params["w"] - y) ** 2)


def line_problem(train_slope, val_slope):
  """A weight trained towards ``train_slope`` and validated at ``val_slope``: a fast
  learning rate passes the validation optimum early and ends far from it."""
  return tuning.Problem({"w": jnp.zeros((1, 1))}, loss_fn, (X, train_slope * X),
                        (X, val_slope * X), batch_size=64)


def halving(problem, space, **kwargs):
  return tuning.successive_halving(problem, space, progress=False, devices=ONE_DEVICE,
                                   **kwargs)


@pytest.mark.slow
def test_halving_keep_best_returns_the_best_evaluated_model_of_any_rung():
  # lr 0.1 passes w=2.5 near step 25, then sits at w=6 by the end of rung 0 (step 90):
  # ranked last there, it stops; the slower ones never come as close to 2.5 by step 180
  problem = line_problem(6.0, 2.5)
  space = {"learning_rate": [1e-3, 3e-3, 1e-2, 1e-1]}
  kwargs = dict(min_steps=90, max_steps=180, eta=2, eval_every=5)
  kept = halving(problem, space, keep="best", **kwargs)
  last = halving(problem, space, keep="last", **kwargs)
  rows = {r.config["learning_rate"]: r for r in kept.rows}
  assert rows[1e-1].rung == 0 and rows[1e-1].steps == 90  # stopped at the first rung
  assert kept.best.config == {"learning_rate": 1e-1} and kept.best.rung == 0
  assert last.best.config != kept.best.config and last.best.steps == 180
  best = kept.best
  assert best.best_step[0] < 90
  assert best.metrics["val_loss"] == pytest.approx(float(np.min(best.evals["val_loss"])),
                                                   rel=1e-6)
  assert best.evals["step"][int(np.argmin(best.evals["val_loss"]))] == best.best_step[0]
  assert best.metrics["val_loss"] < min(r.metrics["val_loss"] for r in last.rows)
  own = float(jax.jit(loss_fn)(best.model, problem.val_data))
  assert best.metrics["val_loss"] == pytest.approx(own, rel=1e-5)
  # every row's metrics are those of its best evaluated step, over every rung it trained
  for row in kept.rows:
    assert list(row.evals["step"]) == list(range(5, row.steps + 1, 5))
    assert row.metrics["val_loss"] == pytest.approx(float(np.min(row.evals["val_loss"])),
                                                    rel=1e-6)


def test_halving_continues_from_the_last_step_not_the_kept_one():
  # lr 0.1 passes w=4 near step 40 and is near w=6 at the end of rung 0 (step 60): its
  # kept model (step ~40) is not its last one, and rung 1 must go on from the last
  problem = line_problem(6.0, 4.0)
  space = {"learning_rate": [1e-2, 1e-1]}
  kwargs = dict(min_steps=60, max_steps=120, eta=2, eval_every=5)
  kept = halving(problem, space, keep="best", **kwargs)
  last = halving(problem, space, keep="last", **kwargs)
  a = {r.config["learning_rate"]: r for r in kept.rows}[1e-1]
  b = {r.config["learning_rate"]: r for r in last.rows}[1e-1]
  assert a.steps == b.steps == 120
  assert a.best_step[0] < 60  # kept != last at the end of rung 0
  np.testing.assert_array_equal(a.curve, b.curve)  # the same training, rung 1 included
  np.testing.assert_array_equal(a.evals["val_loss"], b.evals["val_loss"])
  assert a.best_step == b.best_step
  assert b.metrics["val_loss"] == pytest.approx(float(b.evals["val_loss"][-1]), rel=1e-5)


def test_halving_patience_stops_a_configuration_at_its_rung():
  problem = line_problem(6.0, 2.5)
  result = halving(problem, {"learning_rate": [1e-2, 1e-1]}, min_steps=90, max_steps=180,
                   eta=2, eval_every=5, keep="best", patience=3)
  rows = {r.config["learning_rate"]: r for r in result.rows}
  fast = rows[1e-1]
  assert fast.stopped_step[0] < 90 and fast.steps == 90  # not continued
  stop = list(fast.evals["step"]).index(fast.stopped_step[0])
  after = fast.evals["val_loss"][stop:]
  np.testing.assert_array_equal(after, after[0])  # it stopped changing
  assert rows[1e-2].steps == 180 and rows[1e-2].stopped_step == [180]
  assert result.best.config == {"learning_rate": 1e-1}  # its best step is the best of all


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep="best"), "keep='best' needs eval_every"),
    (dict(patience=2), "patience needs eval_every"),
    (dict(eval_every=200), "eval_every must be an integer from 1 to steps"),
    (dict(eval_every=5, metric="train_loss"), "must be a validation metric"),
])
def test_halving_refuses_bad_evaluation_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    halving(line_problem(3.0, 3.0), {"learning_rate": [1e-2, 1e-1]}, min_steps=10,
            max_steps=30, **kwargs)


@pytest.mark.slow
def test_split_programs_keep_the_evaluations():
  # members that do not fit one program train in several: the same curves and kept steps
  # (a large parameter that stays zero makes a member's memory most of a program's)
  problem = tuning.Problem({"w": jnp.zeros((1, 1)), "pad": jnp.zeros(2**16)},
                           lambda p, b: loss_fn(p, b) + jnp.mean(p["pad"] ** 2),
                           (X, 6.0 * X), (X, 2.5 * X), batch_size=64)
  space = {"learning_rate": [1e-3, 1e-2, 3e-2, 1e-1]}
  kwargs = dict(steps=30, seeds=2, eval_every=10, keep="best", progress=False,
                devices=ONE_DEVICE)
  whole = tuning.grid_search(problem, space, max_memory="8GB", **kwargs)
  with pytest.raises(tuning.MemoryBudgetError) as err:
    tuning.grid_search(problem, space, max_memory=1, **kwargs)
  sizes = []
  train_members = _runner._train_members
  original = _runner._train_members
  try:
    _runner._train_members = lambda g, hp, pos, *a: sizes.append(len(pos)) or train_members(
        g, hp, pos, *a)
    parts = tuning.grid_search(problem, space, max_memory=int(2.5 * err.value.needed),
                               **kwargs)
  finally:
    _runner._train_members = original
  assert len(sizes) > 1 and sum(sizes) == 8
  for a, b in zip(whole.rows, parts.rows):
    np.testing.assert_array_equal(a.evals["step"], b.evals["step"])
    np.testing.assert_allclose(b.evals["val_loss"], a.evals["val_loss"], rtol=1e-6)
    assert a.best_step == b.best_step and a.stopped_step == b.stopped_step
    np.testing.assert_allclose(b.metrics["val_loss"], a.metrics["val_loss"], rtol=1e-6)
  assert parts.best.config == whole.best.config


def test_optuna_rows_carry_evaluations_and_report_them():
  optuna = pytest.importorskip("optuna")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  problem = line_problem(6.0, 2.5)
  study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0),
                              pruner=optuna.pruners.NopPruner())
  space_fn = lambda t: {"learning_rate": t.suggest_float("learning_rate", 1e-2, 1e-1,
                                                         log=True)}
  result = tuning.optuna_search(study, problem, space_fn, n_trials=3, batch_size_trials=3,
                                steps=60, eval_every=10, keep="best", devices=ONE_DEVICE)
  for trial, row in zip(study.trials, result.rows):
    assert list(row.evals["step"]) == [10, 20, 30, 40, 50, 60]
    assert sorted(trial.intermediate_values) == [10, 20, 30, 40, 50, 60]
    np.testing.assert_allclose([trial.intermediate_values[s] for s in row.evals["step"]],
                               row.evals["val_loss"], rtol=1e-6)
    assert row.metrics["val_loss"] == pytest.approx(float(np.min(row.evals["val_loss"])),
                                                    rel=1e-6)
    assert trial.value == row.metrics["val_loss"]
  best = result.best
  own = float(jax.jit(loss_fn)(best.model, problem.val_data))
  assert best.metrics["val_loss"] == pytest.approx(own, rel=1e-5) == study.best_value


def test_optuna_refuses_patience_and_keep_best_without_eval_every():
  optuna = pytest.importorskip("optuna")
  study = optuna.create_study()
  problem = line_problem(3.0, 3.0)
  space_fn = lambda t: {"learning_rate": t.suggest_float("learning_rate", 1e-2, 1e-1)}
  with pytest.raises(ValueError, match="keep='best' needs eval_every"):
    tuning.optuna_search(study, problem, space_fn, n_trials=1, steps=10, keep="best")
  with pytest.raises(ValueError, match="the study's pruner stops trials early"):
    tuning.optuna_search(study, problem, space_fn, n_trials=1, steps=10, eval_every=5,
                         patience=2)
  assert not study.trials
