"""optuna_search: batches of a study's trials against configurations trained alone."""

import jax
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
def test_tpe_study_runs_exactly_n_trials_each_as_if_alone(monkeypatch):
  problem, init, loss_fn = small_problem()
  sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True, n_startup_trials=4)
  study = optuna.create_study(sampler=sampler)
  compiled = []
  compile_ = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, "compile",
                      lambda self, *a, **k: compiled.append(self.as_text()) or compile_(
                          self, *a, **k))
  result = tuning.optuna_search(study, problem, _lr, n_trials=6, batch_size_trials=4,
                                steps=STEPS, report_every=4)
  # Batches of 4 and 2 trials, 2 chunks each: init, one chunk and the evaluation per batch
  # size (padded to the devices, one size on 8), each compiled once, not again per chunk.
  assert len(set(compiled)) == len(compiled)
  assert len(compiled) == 3 * len([text for text in compiled if "jit_scan_chunk" in text]) <= 6
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


def test_a_heartbeat_that_cannot_be_recorded_leaves_its_trial_failed(monkeypatch):
  import warnings

  problem, _, _ = small_problem()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    storage = optuna.storages.RDBStorage("sqlite:///:memory:", heartbeat_interval=1)
  study = optuna.create_study(storage=storage)

  def unreachable(trial_id):
    raise RuntimeError("the database is gone")

  monkeypatch.setattr(study._storage, "record_heartbeat", unreachable)
  with pytest.raises(RuntimeError, match="the database is gone"):
    tuning.optuna_search(study, problem, _lr, n_trials=2, steps=2)
  assert [t.state for t in study.trials] == [TrialState.FAIL]  # not running without a heartbeat


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


@pytest.mark.slow
def test_two_workers_share_a_study_and_redo_the_trials_of_one_killed_mid_batch(tmp_path):
  """Together exactly n_trials COMPLETE; the killed worker's batch FAIL, each redone once."""
  from tests import optuna_worker as worker

  url = f"sqlite:///{tmp_path / 'study.db'}"
  optuna.create_study(study_name=worker.STUDY, storage=url)
  logs = worker.run_with_one_killed(url, 1, tmp_path)
  worker.check_one_killed_batch(optuna.load_study(study_name=worker.STUDY,
                                                  storage=url).get_trials(), logs)


@pytest.mark.slow
def test_n_trials_is_the_study_total_and_a_trial_asked_past_it_is_given_back():
  problem, _, _ = small_problem()
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  assert len(tuning.optuna_search(study, problem, _lr, n_trials=2, steps=2).rows) == 2
  again = tuning.optuna_search(study, problem, _lr, n_trials=3, steps=2)  # a restart goes on
  assert len(again.rows) == 1 and len(study.trials) == 3
  done = tuning.optuna_search(study, problem, _lr, n_trials=3, steps=2)
  assert done.rows == [] and done.best is None

  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  ask, peer = study.ask, []

  def ask_beside_a_peer(*args, **kwargs):
    trial = ask(*args, **kwargs)
    if not peer:
      peer.append(ask())  # another worker asks at the same moment, and is still training
    return trial

  study.ask = ask_beside_a_peer
  result = tuning.optuna_search(study, problem, _lr, n_trials=2, batch_size_trials=2, steps=2)
  first, running, surplus = study.trials
  assert [row.config for row in result.rows] == [first.params]
  assert first.state == TrialState.COMPLETE and running.state == TrialState.RUNNING
  assert surplus.state == TrialState.FAIL and surplus.user_attrs == {"surplus": True}
  assert not surplus.params


def test_trials_of_an_nnx_model_with_dropout_continue_over_chunks():
  from tests.test_search import dropout_problem

  problem, loss_fn = dropout_problem()
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  result = tuning.optuna_search(study, problem, _lr, n_trials=3, steps=STEPS, report_every=4)
  assert all(t.state == TrialState.COMPLETE for t in study.trials)
  assert result.best.metrics["val_loss"] == study.best_value == pytest.approx(
      float(loss_fn(result.best.model, problem.val_data)), rel=1e-5)
