"""tuning.open_storage and a shared study's bookkeeping, without a database server.

Outages are made by a backend that raises what SQLAlchemy raises when PostgreSQL goes
away; the real server's tests are in ``tests/test_postgres.py``.
"""

import datetime
import re
import threading
import time
import warnings

import pytest

from adam_jax import tuning
from adam_jax.tuning import _storage
from tests.test_search import small_problem

optuna = pytest.importorskip("optuna")
sa_exc = pytest.importorskip("sqlalchemy.exc")
TrialState = optuna.trial.TrialState

GONE = "consuming input failed: server closed the connection unexpectedly"


@pytest.fixture(autouse=True)
def _quiet():
  optuna.logging.set_verbosity(optuna.logging.WARNING)


def _lr(trial):
  return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True)}


def _dropped() -> Exception:
  """What Optuna raises when the server closed the connection mid-call."""
  try:
    try:
      raise sa_exc.OperationalError("SELECT 1", {}, Exception(GONE))
    except sa_exc.OperationalError as err:
      raise optuna.exceptions.StorageInternalError(
          "An exception is raised during the commit. This typically happens due to invalid "
          "data in the commit, e.g. exceeding max length.") from err
  except optuna.exceptions.StorageInternalError as err:
    return err


class Flaky:
  """A storage backend whose calls fail as a dropped database does while ``down``."""

  def __init__(self, backend):
    self.backend, self.down, self.failed = backend, False, 0

  def __getattr__(self, name):
    method = getattr(self.backend, name)

    def call(*args, **kwargs):
      if self.down:
        self.failed += 1
        raise _dropped()
      return method(*args, **kwargs)

    return call


def _storage_on(tmp_path, **kwargs):
  lines = []
  storage = tuning.open_storage(f"sqlite:///{tmp_path / 'study.db'}", on_outage=lines.append,
                                **kwargs)
  storage.backend = flaky = Flaky(storage.backend)
  return storage, flaky, lines


def test_open_storage_checks_connections_and_keeps_the_user_engine_options(tmp_path):
  storage = tuning.open_storage(f"sqlite:///{tmp_path / 'a.db'}", heartbeat_interval=2,
                                grace_period=7, timeout=5, engine_kwargs={"echo": False})
  rdb = storage.backend._backend
  assert rdb.engine_kwargs == {"pool_pre_ping": True, "echo": False}
  assert (rdb.heartbeat_interval, rdb.grace_period) == (2, 7)
  assert isinstance(rdb.get_heartbeat_stale_trial_callback(),
                    optuna.storages.RetryHeartbeatStaleTrialCallback)
  assert storage.get_heartbeat_interval() == 2 and storage.timeout == 5
  off = tuning.open_storage(f"sqlite:///{tmp_path / 'b.db'}", heartbeat_interval=None,
                            engine_kwargs={"pool_pre_ping": False})
  assert off.backend._backend.engine_kwargs == {"pool_pre_ping": False}
  assert off.get_heartbeat_interval() is None
  for bad in (dict(heartbeat_interval=0), dict(grace_period=1.5), dict(timeout=-1),
              dict(timeout=float("inf"))):
    with pytest.raises(ValueError, match="must be"):
      tuning.open_storage(f"sqlite:///{tmp_path / 'c.db'}", **bad)


def test_postgresql_urls_name_psycopg_and_a_missing_driver_names_the_extra():
  pytest.importorskip("psycopg")
  assert _storage._with_driver("postgresql://me@db.example.org/s") == (
      "postgresql+psycopg://me@db.example.org/s", "postgresql+psycopg")
  assert _storage._with_driver("postgresql+psycopg2://me:pw@h/s") == (
      "postgresql+psycopg2://me:pw@h/s", "postgresql+psycopg2")
  for url, hint, module in (
      ("postgresql+psycopg2://me@127.0.0.1:1/s", "pip install 'adam-jax[postgres]'", "psycopg2"),
      ("mysql+pymysql://me@127.0.0.1:1/s", "pip install pymysql", "pymysql")):
    try:
      __import__(module)
    except ImportError:
      with pytest.raises(ImportError, match=f"no driver for .* is installed .*{re.escape(hint)}"):
        tuning.open_storage(url)


def test_a_transient_error_is_retried_with_backoff_until_the_database_answers(tmp_path):
  storage, flaky, lines = _storage_on(tmp_path, timeout=30, heartbeat_interval=None)
  study = optuna.create_study(study_name="s", storage=storage)
  flaky.down = True
  threading.Timer(0.4, lambda: setattr(flaky, "down", False)).start()
  start = time.monotonic()
  trial = study.ask()
  assert 0.3 < time.monotonic() - start < 5 and flaky.failed >= 3  # tried again, not spun
  study.tell(trial, 1.0)
  assert lines[0] == (f"the database sqlite:///{tmp_path / 'study.db'} does not answer "
                      f"({GONE}); retrying for up to 30 s")
  assert lines[1].startswith(f"the database sqlite:///{tmp_path / 'study.db'} answers again "
                             "after ") and len(lines) == 2
  assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def test_past_the_timeout_the_database_error_is_named_and_others_are_not_retried(tmp_path):
  storage, flaky, _ = _storage_on(tmp_path, timeout=0.3, heartbeat_interval=None)
  study = optuna.create_study(study_name="s", storage=storage)
  flaky.down = True
  start = time.monotonic()
  with pytest.raises(tuning.StorageUnavailable) as err:
    study.ask()
  assert 0.3 <= time.monotonic() - start < 3
  assert str(err.value) == (f"the database sqlite:///{tmp_path / 'study.db'} did not answer "
                            f"for 0.3 s: {GONE}")
  assert err.value.error == GONE and err.value.seconds == 0.3
  flaky.down = False
  calls = []

  def broken(*args, **kwargs):
    calls.append(args)
    raise ValueError("not a database error")

  storage.backend = broken_backend = Flaky(storage.backend.backend)
  broken_backend.get_all_trials = broken
  with pytest.raises(ValueError, match="not a database error"):
    study.get_trials()
  assert len(calls) == 1


@pytest.mark.slow
def test_past_the_timeout_optuna_search_leaves_its_batch_running_for_the_heartbeat(tmp_path):
  """The database goes away after the first trial is told: the error names it, the other
  trials stay RUNNING (nothing can be told), on_trial saw what the study was told."""
  problem, _, _ = small_problem()
  storage, flaky, _ = _storage_on(tmp_path, timeout=0.2, heartbeat_interval=1)
  study = optuna.create_study(study_name="s", storage=storage)
  finished = []

  def on_trial(trial):
    finished.append(trial)
    flaky.down = True

  with pytest.raises(tuning.StorageUnavailable, match=GONE):
    tuning.optuna_search(study, problem, _lr, n_trials=3, batch_size_trials=3, steps=4,
                         report_every=4, on_trial=on_trial)
  flaky.down = False
  trials = study.get_trials()
  assert [(t.number, t.state) for t in trials] == [
      (0, TrialState.COMPLETE), (1, TrialState.RUNNING), (2, TrialState.RUNNING)]
  [record] = finished
  assert record == tuning.FinishedTrial(0, "COMPLETE", trials[0].params,
                                        {k: trials[0].user_attrs[k] for k in record.metrics},
                                        4, None)
  assert record.metrics["val_loss"] == trials[0].value


def _failed_as_stale(study, number_of_peers_trial):
  """A trial of a dead worker, just failed as stale by a peer (marked; no retry queued yet)."""
  study.add_trial(optuna.trial.create_trial(
      state=TrialState.FAIL, params={"learning_rate": 0.01},
      distributions={"learning_rate": optuna.distributions.FloatDistribution(
          1e-3, 1e-1, log=True)},
      user_attrs={"worker": "dead"}, system_attrs={_storage.STALE: number_of_peers_trial}))
  return study.get_trials()[-1]


def test_a_stale_trial_awaiting_its_retry_is_pending_then_redone():
  study = optuna.create_study()
  study.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}))
  stale = _failed_as_stale(study, 1)
  counts = _storage.count_trials(study.get_trials())
  assert (counts.counted, counts.pending, counts.failed, counts.redone) == (2, 1, 0, 0)
  later = stale.datetime_complete + datetime.timedelta(seconds=61)
  counts = _storage.count_trials(study.get_trials(), patience=60, now=later)
  assert (counts.counted, counts.pending, counts.failed) == (2, 0, 1)  # its failer died
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, stale)
  counts = _storage.count_trials(study.get_trials())
  assert (counts.counted, counts.pending, counts.redone, counts.waiting) == (1, 0, 1, 1)
  # A retry carries its original's mark (the callback copies system attributes): it is not
  # pending when it fails of its own.
  retry = study.get_trials()[-1]
  assert retry.system_attrs[_storage.STALE] == 1 and retry.number == 2


@pytest.mark.slow
def test_a_worker_does_not_return_while_a_stale_trial_awaits_its_retry(tmp_path):
  """Before the mark, a worker counting between a peer's failing and queueing saw the study
  complete and returned with the retry still to run."""
  problem, _, _ = small_problem()
  storage = tuning.open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1,
                                grace_period=30)
  study = optuna.create_study(study_name="s", storage=storage)
  study.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}))
  stale = _failed_as_stale(study, 1)

  def peer_queues_the_retry():
    time.sleep(1.0)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      optuna.storages.RetryHeartbeatStaleTrialCallback()(study, stale)

  peer = threading.Thread(target=peer_queues_the_retry)
  peer.start()
  start = time.monotonic()
  result = tuning.optuna_search(study, problem, _lr, n_trials=2, steps=2)
  peer.join()
  assert time.monotonic() - start >= 1.0
  assert [row.config for row in result.rows] == [{"learning_rate": 0.01}]
  trials = study.get_trials()
  assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                       TrialState.COMPLETE]
  assert trials[2].system_attrs["failed_trial"] == 1
  counts = _storage.count_trials(trials)
  assert (counts.counted, counts.running, counts.pending, counts.redone) == (2, 0, 0, 1)


def test_fail_stale_trials_marks_each_before_it_fails_and_queues_its_retry(tmp_path,
                                                                         monkeypatch):
  storage = tuning.open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1)
  study = optuna.create_study(study_name="s", storage=storage)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    trial = study.ask()
  trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True)
  monkeypatch.setattr(storage.backend, "_get_stale_trial_ids",
                      lambda study_id: [trial._trial_id])
  seen = []
  retry = storage.backend.get_heartbeat_stale_trial_callback()

  def callback(study, frozen):  # what a peer counting at that moment sees
    seen.append(_storage.count(study))
    retry(study, frozen)

  monkeypatch.setattr(storage.backend, "get_heartbeat_stale_trial_callback", lambda: callback)
  _storage.fail_stale_trials(study)
  assert [(c.counted, c.pending) for c in seen] == [(1, 1)]
  failed, queued = study.get_trials()
  assert failed.state == TrialState.FAIL and failed.system_attrs[_storage.STALE] == 0
  assert queued.state == TrialState.WAITING and queued.params == failed.params
  _storage.fail_stale_trials(study)  # failed already: nothing happens twice
  assert len(study.get_trials()) == 2


def test_a_retry_asked_past_n_trials_is_given_back_and_queued_again():
  problem, _, _ = small_problem()
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  killed = _failed_as_stale(study, 0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, killed)
  ask, peer = study.ask, []

  def ask_beside_a_peer(*args, **kwargs):
    trial = ask(*args, **kwargs)  # pops the retry
    if not peer:
      peer.append(ask())  # a peer asks at the same moment: a fresh trial, still training
    return trial

  study.ask = ask_beside_a_peer
  result = tuning.optuna_search(study, problem, _lr, n_trials=1, steps=2)
  assert result.rows == []
  _, given_back, running, queued = study.get_trials()
  assert given_back.state == TrialState.FAIL and given_back.user_attrs["surplus"]
  assert running.state == TrialState.RUNNING
  assert queued.state == TrialState.WAITING and queued.params == killed.params
  assert queued.system_attrs["failed_trial"] == 0  # still the killed trial's retry
  counts = _storage.count_trials(study.get_trials())
  assert (counts.counted, counts.redone, counts.given_back, counts.waiting) == (1, 1, 1, 1)


def test_a_trial_failed_by_a_peer_meanwhile_is_dropped_not_told():
  """Its heartbeats late (an outage longer than the grace period), a peer failed it and
  queued its retry: the worker stops training it, tells nothing, and goes on."""
  problem, _, _ = small_problem()

  class PeerFailsTrialZero(optuna.pruners.BasePruner):
    def prune(self, study, trial):
      if trial.number == 0 and not study._storage.get_trial(trial._trial_id).state.is_finished():
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # at step 2
      return False

  study = optuna.create_study(pruner=PeerFailsTrialZero(),
                              sampler=optuna.samplers.RandomSampler(seed=0))
  told = []
  result = tuning.optuna_search(study, problem, _lr, n_trials=2, steps=6, report_every=2,
                                on_trial=told.append)
  lost, done = study.get_trials()
  assert lost.state == TrialState.FAIL and "steps" not in lost.user_attrs
  assert done.state == TrialState.COMPLETE and [t.number for t in told] == [1]
  # Its report at step 4 found it failed: it left the batch, trained no further.
  assert result.best.config == done.params and result.rows[0].steps == 4


def test_a_trial_failed_by_a_peer_before_space_fn_sampled_it_leaves_the_batch():
  problem, _, _ = small_problem()
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

  def space_fn(trial):
    if trial.number == 0:  # a peer found its heartbeat late, and failed it
      study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return _lr(trial)

  result = tuning.optuna_search(study, problem, space_fn, n_trials=2, batch_size_trials=2,
                                steps=2)
  lost, done = study.get_trials()
  assert lost.state == TrialState.FAIL and not lost.params
  assert done.state == TrialState.COMPLETE and [r.config for r in result.rows] == [done.params]


def test_journal_paths():
  assert _storage.journal_path("journal:/shared/s.log") == "/shared/s.log"
  assert _storage.journal_path("journal:relative/s") == "relative/s"
  assert _storage.journal_path("/shared/study.log") == "/shared/study.log"
  assert _storage.journal_path("sqlite:///study.log") is None
  assert _storage.journal_path("postgresql://me@host/db") is None
  with pytest.raises(ValueError, match="journal: needs a file path"):
    _storage.journal_path("journal:")


@pytest.mark.slow
def test_a_journal_file_holds_the_study_for_every_worker(tmp_path):
  problem, _, _ = small_problem()
  path = tmp_path / "study.log"
  for url in (f"journal:{path}", str(path)):  # one worker, then another on the same file
    study = optuna.create_study(study_name="s", storage=tuning.open_storage(url),
                                load_if_exists=True)
    assert isinstance(study._storage, optuna.storages.JournalStorage)
  tuning.optuna_search(study, problem, _lr, n_trials=2, steps=2)
  again = optuna.load_study(study_name="s", storage=tuning.open_storage(f"journal:{path}"))
  assert [t.state for t in again.get_trials()] == [TrialState.COMPLETE] * 2
