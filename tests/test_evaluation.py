"""Validation during training: curves, the best step's model, early stopping."""

import importlib

import jax
import numpy as np
import pytest
from flax import nnx

import adam_jax
from adam_jax import tasks, tuning
from tests.helpers import batchnorm_mlp, cross_entropy

_runner = importlib.import_module("adam_jax.tuning._runner")
ONE_DEVICE = jax.devices()[:1]


def Net(rngs: nnx.Rngs, hidden: int = 32):  # noqa: N802 - a model factory, as a class is
  return batchnorm_mlp(rngs, hidden)


loss_fn = cross_entropy


@pytest.fixture(scope="module")
def problem():
  d = tasks.load_digits()  # 100 training examples: the larger learning rate overfits
  return tuning.Problem(Net, loss_fn, (d.x[:100], d.y[:100]), (d.x[1000:1250], d.y[1000:1250]),
                        batch_size=20)


@pytest.fixture(scope="module")
def best_search(problem):
  return tuning.grid_search(problem, {"learning_rate": [1e-3, 3e-2, 1e30]}, steps=240,
                            eval_every=20, keep="best", patience=4, progress=False,
                            devices=ONE_DEVICE)


@pytest.mark.slow
def test_keep_best_returns_the_best_step_with_its_batchnorm_state(problem, best_search):
  best = best_search.best
  curve = best.evals["val_loss"]
  assert best.metrics["val_loss"] == pytest.approx(float(np.min(curve)), rel=1e-6)
  assert best.best_step[0] == best.evals["step"][int(np.argmin(curve))]
  assert best.best_step[0] < 240  # the overfitting member's best is an earlier step
  own = float(nnx.jit(loss_fn)(best.model, problem.val_data)[0])
  assert best.metrics["val_loss"] == pytest.approx(own, rel=1e-5)
  # the BatchNorm statistics are those of the kept step, not of the last one
  last = tuning.grid_search(problem, {"learning_rate": [best.config["learning_rate"]]},
                            steps=240, progress=False, devices=ONE_DEVICE).best.model
  assert not np.allclose(best.model.bn.mean[...], last.bn.mean[...])


@pytest.mark.slow
def test_patience_stops_a_diverging_member_that_is_never_the_best(best_search):
  rows = {r.config["learning_rate"]: r for r in best_search.rows}
  wild = rows[1e30]
  assert wild.stopped_step[0] < 240
  stop = list(wild.evals["step"]).index(wild.stopped_step[0])
  after = wild.evals["val_loss"][stop:]
  np.testing.assert_array_equal(after, after[0])  # it stopped changing
  assert best_search.best.config["learning_rate"] != 1e30


@pytest.mark.slow
def test_curves_equal_tuning_train_evaluations():
  # no bias before a BatchNorm here: its gradient is rounding noise that Adam amplifies, and
  # the search compiles at another XLA level than train (see _runner.compiler_options)
  problem = tasks.digits_mlp(hidden=16)
  row = tuning.grid_search(problem, {"learning_rate": [1e-2]}, steps=60, eval_every=20,
                           progress=False, devices=ONE_DEVICE).rows[0]
  alone = tuning.train(problem, adam_jax.adam(1e-2), 60, eval_every=20)
  assert list(row.evals["step"]) == [h["step"] for h in alone.history]
  np.testing.assert_allclose(row.evals["val_loss"], [h["val_loss"] for h in alone.history],
                             rtol=1e-5)
  assert row.best_step == [60] and row.stopped_step == [60]  # keep="last": no early stop


@pytest.mark.slow
@pytest.mark.usefixtures("compile_once")
def test_resumed_evaluations_equal_an_uninterrupted_run(problem, tmp_path, monkeypatch):
  kwargs = dict(steps=60, eval_every=15, keep="best", patience=2, checkpoint_every=20,
                progress=False, devices=ONE_DEVICE)
  space = {"learning_rate": [1e-2, 1e30]}
  full = tuning.grid_search(problem, space, out_dir=tmp_path / "full", **kwargs)
  run = _runner.run_chunk_hook
  calls = []

  def interrupt(*args):
    calls.append(args[2])
    if args[2] >= 40:
      raise KeyboardInterrupt
    return run(*args)

  monkeypatch.setattr(_runner, "run_chunk_hook", interrupt)
  with pytest.raises(KeyboardInterrupt):
    tuning.grid_search(problem, space, out_dir=tmp_path / "cut", **kwargs)
  monkeypatch.setattr(_runner, "run_chunk_hook", run)
  resumed = tuning.grid_search(problem, space, out_dir=tmp_path / "cut", resume=True, **kwargs)
  for a, b in zip(resumed.rows, full.rows):
    np.testing.assert_array_equal(a.evals["val_loss"], b.evals["val_loss"])
    np.testing.assert_equal(a.metrics, b.metrics)  # NaN where the wild member diverged
    assert a.best_step == b.best_step
    assert a.stopped_step == b.stopped_step


@pytest.mark.parametrize("kwargs, message", [
    (dict(eval_every=0), "eval_every must be an integer from 1 to steps"),
    (dict(eval_every=50), "eval_every must be an integer from 1 to steps"),
    (dict(keep="best"), "keep='best' needs eval_every"),
    (dict(patience=3), "patience needs eval_every"),
    (dict(eval_every=5, patience=0), "patience must be a positive integer"),
    (dict(eval_every=5, keep="first"), "keep must be 'last' or 'best'"),
    (dict(eval_every=5, metric="train_loss"), "must be a validation metric"),
])
def test_bad_evaluation_arguments(problem, kwargs, message):
  with pytest.raises(ValueError, match=message):
    tuning.grid_search(problem, {"learning_rate": [1e-2]}, steps=40, progress=False, **kwargs)


@pytest.mark.slow
@pytest.mark.usefixtures("compile_once")
def test_tuning_train_keeps_the_best_step_and_stops(problem, tmp_path):
  run = tuning.train(problem, adam_jax.adam(3e-2), 240, eval_every=20, keep="best", patience=4)
  losses = [h["val_loss"] for h in run.history]
  assert run.best_step == run.history[int(np.argmin(losses))]["step"] < 240
  assert run.stopped_step < 240 and run.history[-1]["step"] == run.stopped_step
  assert run.metrics["val_loss"] == pytest.approx(min(losses), rel=1e-5)
  own = float(nnx.jit(loss_fn)(run.model, problem.val_data)[0])
  assert run.metrics["val_loss"] == pytest.approx(own, rel=1e-5)
  # checkpointed at the stop: a resume finds the run complete and returns the same model
  kwargs = dict(eval_every=20, keep="best", patience=4, checkpoint_dir=tmp_path / "c",
                checkpoint_every=20)
  first = tuning.train(problem, adam_jax.adam(3e-2), 240, **kwargs)
  again = tuning.train(problem, adam_jax.adam(3e-2), 240, resume=True, **kwargs)
  assert again.best_step == first.best_step and again.stopped_step == first.stopped_step
  assert again.metrics == first.metrics
  with pytest.raises(ValueError, match="keep must be 'last' or 'best'"):
    tuning.train(problem, adam_jax.adam(3e-2), 20, keep="first")
