"""optuna_search: batches of a study's trials against configurations trained alone."""

import pytest

from adam_jax import tuning
from tests.test_search import small_problem, train_alone

optuna = pytest.importorskip("optuna")
TrialState = optuna.trial.TrialState

STEPS = 8


@pytest.fixture(autouse=True)
def _quiet():
  optuna.logging.set_verbosity(optuna.logging.WARNING)


def _lr(trial):
  return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-1, log=True)}


@pytest.mark.slow
def test_tpe_study_runs_exactly_n_trials_each_as_if_alone():
  problem, init, loss_fn = small_problem()
  sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True, n_startup_trials=4)
  study = optuna.create_study(sampler=sampler)
  result = tuning.optuna_search(study, problem, _lr, n_trials=6, batch_size_trials=4,
                                steps=STEPS, report_every=4)
  assert len(study.trials) == 6 and len(result.rows) == 6
  assert all(t.state == TrialState.COMPLETE for t in study.trials)
  for trial, row in zip(study.trials, result.rows):
    assert row.config == trial.params and row.steps == STEPS
    _, want = train_alone(problem, init, loss_fn, row.config, STEPS)
    assert trial.value == pytest.approx(want, rel=2e-5)
    assert trial.user_attrs["train_loss"] == row.metrics["train_loss"]
    assert trial.user_attrs["steps"] == STEPS
    assert sorted(trial.intermediate_values) == [4, 8]
  assert result.best.metrics["val_loss"] == study.best_value
  assert result.best.metrics["val_loss"] == pytest.approx(
      float(loss_fn(result.best.model, problem.val_data)), rel=1e-5)


@pytest.mark.slow
def test_a_pruned_trial_keeps_its_last_value_and_the_others_continue():
  problem, init, loss_fn = small_problem()
  slow, fast = {"learning_rate": 1e-4}, {"learning_rate": 1e-1}
  slow_loss = train_alone(problem, init, loss_fn, slow, 4)[1]
  fast_loss = train_alone(problem, init, loss_fn, fast, 4)[1]
  assert fast_loss < slow_loss
  study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(
      upper=(slow_loss + fast_loss) / 2))
  study.enqueue_trial(slow)
  study.enqueue_trial(fast)
  result = tuning.optuna_search(study, problem, _lr, n_trials=2, steps=STEPS, report_every=4)
  pruned, done = study.trials
  assert pruned.state == TrialState.PRUNED and done.state == TrialState.COMPLETE
  assert pruned.value == pruned.intermediate_values[4] == pytest.approx(slow_loss, rel=2e-5)
  assert pruned.user_attrs["steps"] == 4 and result.rows[0].steps == 4
  want = train_alone(problem, init, loss_fn, fast, STEPS)[1]
  assert done.value == pytest.approx(want, rel=2e-5)
  assert result.best.config == fast


def test_bad_studies_and_spaces_are_named():
  problem, _, _ = small_problem()
  with pytest.raises(ValueError, match="one objective"):
    tuning.optuna_search(optuna.create_study(directions=["minimize", "minimize"]), problem, _lr,
                         n_trials=1, steps=2)
  with pytest.raises(ValueError, match="study must be an optuna.Study"):
    tuning.optuna_search("sqlite:///x.db", problem, _lr, n_trials=1, steps=2)
  study = optuna.create_study()
  with pytest.raises(ValueError, match="space key 'lr' is taken neither"):
    tuning.optuna_search(study, problem, lambda t: {"lr": t.suggest_float("lr", 0.1, 1.0)},
                         n_trials=2, steps=2)
  assert [t.state for t in study.trials] == [TrialState.FAIL] * 2  # none left running
