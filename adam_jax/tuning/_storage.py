"""A study shared by many workers: its storage, outages ridden out, and its trials counted.

:func:`open_storage` opens an Optuna storage for workers on many machines: a database
(SQLAlchemy URL) whose connections are checked before use and whose transient errors are
retried with backoff for a bounded time, or a journal file. The rest is the bookkeeping
:func:`~adam_jax.tuning.optuna_search` does on a shared study: counting the trials toward
``n_trials``, failing stale trials, heartbeats, giving back a trial asked past the total.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import logging
import math
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

HEARTBEAT_S = 10  # default heartbeat interval of open_storage, in seconds
GRACE_S = 60  # default grace period: a trial without a heartbeat this long is failed and retried
TIMEOUT_S = 60.0  # default time a database call is retried before StorageUnavailable
CONNECT_TIMEOUT_S = 10  # PostgreSQL: a connection attempt gives up after this (libpq's option)

SURPLUS = "surplus"  # user attribute of a trial given back unused (told FAIL, never trained)
# System attribute set on a stale trial, to its own number, before it is failed: until its retry
# is queued a moment later, counters see it as awaiting that retry, not as a finished FAIL.
STALE = "adam_jax_stale"
_RETRY_HISTORY = "retry_history"  # system attributes of optuna's RetryHeartbeatStaleTrialCallback
_FAILED_TRIAL = "failed_trial"
_BACKOFF_S = (0.05, 2.0)  # first and longest wait between two tries of a database call

_log = logging.getLogger("adam_jax.tuning")


class StorageUnavailable(RuntimeError):
  """The study's database did not answer within the storage's timeout.

  Raised by the storages of :func:`open_storage` (so by ``optuna_search`` on them) once
  a database call has failed with a transient error (a refused or lost connection, a
  deadlock, a lock timeout) for ``timeout`` seconds. ``error`` is the database's own
  message, ``url`` the database's URL without its password.
  """

  def __init__(self, url: str, seconds: float, error: str):
    super().__init__(f"the database {url} did not answer for {seconds:g} s: {error}")
    self.url, self.seconds, self.error = url, seconds, error


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = HEARTBEAT_S,
    grace_period: int | None = GRACE_S,
    timeout: float = TIMEOUT_S,
    engine_kwargs: Mapping[str, Any] | None = None,
    on_outage: Callable[[str], None] | None = None,
) -> Any:
  """An Optuna storage for a study that many workers share, on one machine or many.

  A database URL (``sqlite:///study.db``, ``postgresql://user@host/db``,
  ``postgresql+psycopg2://...``, ``mysql+pymysql://user@host/db``) gives an
  ``optuna.storages.RDBStorage`` that:

  * checks each pooled connection before use (SQLAlchemy's ``pool_pre_ping``; Optuna sets it
    for MySQL only), so a connection the server dropped (a restart, an idle timeout) is
    replaced instead of failing the call; PostgreSQL connection attempts give up after
    10 s (libpq's ``connect_timeout``);
  * retries a call that fails with a transient database error (a refused or lost
    connection, a deadlock, a lock timeout) with exponential backoff (50 ms doubling to
    2 s) for up to ``timeout`` seconds, then raises :class:`StorageUnavailable` naming the
    database's own error (other errors are raised at once). The first connection, made
    here, is not retried: a wrong host or password fails at once;
  * records heartbeats for running trials every ``heartbeat_interval`` seconds and has
    trials without one for ``grace_period`` seconds failed and queued again with their
    parameters (``optuna.storages.RetryHeartbeatStaleTrialCallback``) by
    :func:`optuna_search`; ``heartbeat_interval=None``: no heartbeats.

  ``postgresql://`` uses psycopg 3 when it is installed (``pip install
  'adam-jax[postgres]'``; SQLAlchemy 2.1's default driver for it), else SQLAlchemy's
  default; a password is best kept out of the URL (libpq reads ``PGPASSWORD`` or
  ``~/.pgpass``). ``engine_kwargs`` go to ``sqlalchemy.create_engine`` over the defaults
  above (e.g. ``{"pool_size": 2, "connect_args": {"connect_timeout": 5}}``).

  ``journal:PATH``, or a path ending in ``.log``, gives Optuna's ``JournalStorage`` on a
  file (``JournalFileBackend``): for machines that share a file system but no database
  server. It has no heartbeats (a killed worker's trials stay ``RUNNING``, count toward
  ``n_trials`` and are never redone) and no retries: the other arguments do not apply.

  Keep ``timeout`` below ``grace_period - heartbeat_interval``: a worker cut off from the
  database longer than that may find its trials failed by a peer when it comes back (their
  retries run, each counted once; its own results for them are dropped).

  Args:
    url: a SQLAlchemy database URL, ``journal:PATH`` or ``PATH.log``.
    heartbeat_interval: seconds between two heartbeats of a running trial (None: none).
    grace_period: seconds without a heartbeat after which a trial is failed and retried
      (None: twice ``heartbeat_interval``).
    timeout: seconds a failing database call is retried before :class:`StorageUnavailable`.
    engine_kwargs: more keyword arguments of ``sqlalchemy.create_engine``.
    on_outage: called with a line when the database stops answering and when it answers
      again (default: a warning of the ``adam_jax.tuning`` logger).

  Returns:
    A storage for ``optuna.create_study(storage=...)`` / ``optuna.load_study``.

  Raises:
    ValueError: a bad argument, or a URL SQLAlchemy cannot parse.
    ImportError: no driver for the URL's database is installed (the message names one).
    Exception: whatever the database says to the first connection (e.g.
      ``sqlalchemy.exc.OperationalError`` for a refused connection or a wrong password).

  Examples:
    >>> import optuna
    >>> from adam_jax import tuning
    >>> storage = tuning.open_storage("sqlite:///:memory:", heartbeat_interval=10)
    >>> study = optuna.create_study(study_name="s", storage=storage)
    >>> storage.get_heartbeat_interval()
    10
  """
  import optuna

  if not isinstance(url, str) or not url.strip():
    raise ValueError(f"url must be a database URL or journal:PATH, got {url!r}")
  path = journal_path(url)
  if path is not None:
    return _journal(path)
  for name, value in (("heartbeat_interval", heartbeat_interval),
                      ("grace_period", grace_period)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
      raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
  if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
      or not math.isfinite(timeout) or timeout < 0):
    raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
  shown = shown_url(url)
  url, driver = _with_driver(url)
  kwargs = {"pool_pre_ping": True, **(engine_kwargs or {})}
  if driver.startswith("postgresql"):
    kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S,
                              **kwargs.get("connect_args", {})}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    callback = None
    if heartbeat_interval is not None:
      callback = optuna.storages.RetryHeartbeatStaleTrialCallback()
    for attempt in range(_CREATE_TRIES):
      try:
        backend = optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
            grace_period=grace_period, heartbeat_stale_trial_callback=callback)
        break
      except ImportError as err:
        raise ImportError(_missing_driver(driver, err)) from err
      except Exception as err:
        # Workers started together on an empty database all create Optuna's tables: on
        # PostgreSQL all but one fail ("duplicate key value violates unique constraint"
        # or "already exists"); the tables are there a moment later.
        if attempt == _CREATE_TRIES - 1 or not _raced_at_creation(err):
          raise
        time.sleep(random.uniform(0.1, 0.5))
  cached = getattr(optuna.storages, "_CachedStorage", None)  # what optuna itself wraps it in
  return _retrying_class()(backend if cached is None else cached(backend), timeout, shown,
                           on_outage)


_CREATE_TRIES = 5


def _raced_at_creation(err: BaseException) -> bool:
  """Whether ``err`` is a peer's creation of the same tables (SQLAlchemy's Integrity or
  ProgrammingError: a duplicate key or an existing table)."""
  import sqlalchemy.exc as sa_exc

  seen: set[int] = set()
  cause: BaseException | None = err
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    if isinstance(cause, (sa_exc.IntegrityError, sa_exc.ProgrammingError)):
      text = str(cause).lower()
      return "duplicate" in text or "already exists" in text
    cause = cause.__cause__ or cause.__context__
  return False


def journal_path(url: str) -> str | None:
  """The file of a ``journal:PATH`` (or ``PATH.log``) storage, None for a database URL."""
  if url.startswith("journal:"):
    path = url[len("journal:"):]
    if not path:
      raise ValueError("journal: needs a file path, e.g. journal:/shared/study.log")
    return path
  return url if url.endswith(".log") and "://" not in url else None


def shown_url(url: str) -> str:
  """``url`` with its password hidden (for files and messages)."""
  try:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
  except Exception:  # noqa: BLE001 - not a URL: reported when the storage opens
    return url


def _journal(path: str) -> Any:
  import optuna

  journal = getattr(optuna.storages, "journal", None)
  backend = getattr(journal, "JournalFileBackend", None) or optuna.storages.JournalFileStorage
  return optuna.storages.JournalStorage(backend(path))


def _with_driver(url: str) -> tuple[str, str]:
  """``url`` with psycopg 3 named for a bare ``postgresql://`` when psycopg is installed.

  SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, 2.0 to psycopg2: naming the driver
  makes the ``postgres`` extra work with both.
  """
  import importlib.util

  import sqlalchemy
  from sqlalchemy.engine import make_url

  try:
    parsed = make_url(url)
  except Exception as err:  # noqa: BLE001 - SQLAlchemy's ArgumentError, in one line
    raise ValueError(str(err)) from None
  driver = parsed.drivername
  if (driver == "postgresql" and int(sqlalchemy.__version__.split(".")[0]) >= 2
      and importlib.util.find_spec("psycopg") is not None):
    driver = "postgresql+psycopg"
    url = parsed.set(drivername=driver).render_as_string(hide_password=False)
  return url, driver


def _missing_driver(driver: str, err: BaseException) -> str:
  cause = err.__cause__ or err
  if driver.startswith("postgresql"):
    hint = ("pip install 'adam-jax[postgres]' (psycopg 3) for postgresql://, or name an "
            "installed driver: postgresql+psycopg2://")
  elif driver.startswith("mysql"):
    hint = "pip install pymysql and use mysql+pymysql://"
  else:
    hint = "install the database's Python driver"
  return f"no driver for {driver}:// is installed ({cause}); {hint}"


def database_error(err: BaseException) -> BaseException | None:
  """The database's own error behind ``err`` if it is worth retrying, else None.

  Worth retrying: SQLAlchemy's ``OperationalError`` (a refused, lost or timed-out
  connection, a deadlock, a lock timeout), ``InterfaceError`` (a closed connection),
  ``DisconnectionError``, a pool timeout, and any error that invalidated its connection,
  also when Optuna wraps them (``StorageInternalError``).
  """
  try:
    import sqlalchemy.exc as sa_exc
  except ImportError:
    return None
  seen: set[int] = set()
  cause: BaseException | None = err
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    if isinstance(cause, (sa_exc.OperationalError, sa_exc.InterfaceError)) or (
        isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated):
      return cause.orig if cause.orig is not None else cause
    if isinstance(cause, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
      return cause
    cause = cause.__cause__ or cause.__context__
  return None


def first_line(err: BaseException) -> str:
  text = str(err).strip()
  return text.splitlines()[0].strip() if text else type(err).__name__


class _Retrying:
  """Every storage call of ``backend``, retried with backoff on transient database errors."""

  def __init__(self, backend: Any, timeout: float, shown: str,
               on_outage: Callable[[str], None] | None) -> None:
    self.backend = backend  # the storage without retries (heartbeats use it: a beat is periodic)
    self.timeout = float(timeout)
    self.shown = shown  # the database's URL without its password
    self._notify = on_outage or _log.warning
    self._lock = threading.Lock()
    self._down_since: float | None = None

  def __repr__(self) -> str:
    return f"RetryingStorage({self.shown}, timeout={self.timeout:g})"

  def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
    method = getattr(self.backend, name)
    deadline = None
    delay = _BACKOFF_S[0]
    while True:
      try:
        result = method(*args, **kwargs)
      except Exception as err:
        cause = database_error(err)
        if cause is None:
          raise
        now = time.monotonic()
        deadline = now + self.timeout if deadline is None else deadline
        if now >= deadline:
          raise StorageUnavailable(self.shown, self.timeout, first_line(cause)) from err
        with self._lock:
          if self._down_since is None:
            self._down_since = now
            self._notify(f"the database {self.shown} does not answer ({first_line(cause)}); "
                         f"retrying for up to {self.timeout:g} s")
        time.sleep(min(delay * random.uniform(0.5, 1.0), deadline - now))
        delay = min(2 * delay, _BACKOFF_S[1])
        continue
      if self._down_since is not None:
        with self._lock:
          if self._down_since is not None:
            self._notify(f"the database {self.shown} answers again after "
                         f"{time.monotonic() - self._down_since:.1f} s")
            self._down_since = None
      return result


@functools.cache
def _retrying_class() -> type:
  """``_Retrying`` as an Optuna storage (built on first use: Optuna is imported late)."""
  from optuna.storages import BaseStorage
  from optuna.storages._heartbeat import BaseHeartbeat

  def delegate(name: str) -> Callable[..., Any]:
    def method(self: _Retrying, *args: Any, **kwargs: Any) -> Any:
      return self.call(name, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method

  names = {name for base in (BaseStorage, BaseHeartbeat) for name, value in vars(base).items()
           if callable(value) and not name.startswith("__")}
  return type("RetryingStorage", (_Retrying, BaseStorage, BaseHeartbeat),
              {name: delegate(name) for name in sorted(names)})


def unretried(storage: Any) -> Any:
  """``storage`` without the retries of :func:`open_storage` (itself for any other)."""
  return storage.backend if isinstance(storage, _Retrying) else storage


def storage_of(study: Any) -> Any:
  return study._storage  # optuna keeps a study's storage private


def heartbeat_interval(study: Any) -> float | None:
  """The storage's heartbeat interval in seconds, or None without heartbeats."""
  get = getattr(storage_of(study), "get_heartbeat_interval", None)
  interval = None if get is None else get()
  return None if interval is None else float(interval)


def _grace_period(study: Any) -> float | None:
  """The storage's grace period in seconds (optuna's default: twice the interval)."""
  interval = heartbeat_interval(study)
  if interval is None:
    return None
  storage = unretried(storage_of(study))
  storage = getattr(storage, "_backend", storage)  # optuna's _CachedStorage
  grace = getattr(storage, "grace_period", None)
  return float(grace) if grace is not None else 2 * interval


class Counts(NamedTuple):
  """A study's trials as ``optuna_search`` counts them toward ``n_trials``."""

  counted: int  # every trial that counts: complete, pruned, failed, running, pending
  running: int  # counted trials still running (a peer's, or stale and not yet failed)
  pending: int  # counted: failed as stale, their retry about to be queued by a peer
  complete: int
  pruned: int
  failed: int  # failed for good: diverged, stopped by an error, stale without a retry
  redone: int  # failed as stale and queued again (not counted: the retry counts)
  waiting: int  # queued, not started (not counted until a worker asks for it)
  given_back: int  # asked past n_trials and given back unused (not counted)


def count_trials(trials: list[Any], patience: float | None = None,
                 now: datetime.datetime | None = None) -> Counts:
  """Counts ``trials`` (``FrozenTrial``s of one study) as :class:`Counts`.

  A stale trial failed with the :data:`STALE` mark and no retry yet is pending; after
  ``patience`` seconds (the worker that failed it died before queueing the retry) it is
  failed for good.
  """
  from optuna.trial import TrialState

  retried = {n for t in trials for n in t.system_attrs.get(_RETRY_HISTORY, ())}
  now = datetime.datetime.now() if now is None else now
  n = dict.fromkeys(Counts._fields, 0)
  for t in trials:
    if t.state == TrialState.WAITING:
      n["waiting"] += 1
      continue
    if t.state == TrialState.FAIL:
      if t.user_attrs.get(SURPLUS):
        n["given_back"] += 1
        continue
      if t.number in retried:
        n["redone"] += 1
        continue
      if t.system_attrs.get(STALE) == t.number and (
          patience is None or t.datetime_complete is None
          or (now - t.datetime_complete).total_seconds() < patience):
        n["pending"] += 1
      else:
        n["failed"] += 1
    n["counted"] += 1
    n["running"] += t.state == TrialState.RUNNING
    n["complete"] += t.state == TrialState.COMPLETE
    n["pruned"] += t.state == TrialState.PRUNED
  return Counts(**n)


def count(study: Any) -> Counts:
  """:func:`count_trials` of the study as its storage holds it now."""
  return count_trials(study.get_trials(deepcopy=False), patience=_grace_period(study))


def fail_stale_trials(study: Any) -> None:
  """``optuna.storages.fail_stale_trials``, with each stale trial marked before it fails.

  Optuna fails every stale trial first and queues their retries after: a peer counting in
  between would take them for finished FAIL trials, see the study complete and return with
  retries still to run. Here each trial gets the :data:`STALE` mark while running, is
  failed (by one worker: the storage lets only one change its state) and has its retry
  queued at once; until then counters see it as pending.
  """
  import optuna
  from optuna.trial import TrialState

  storage = storage_of(study)
  if heartbeat_interval(study) is None:
    return
  stale = storage._get_stale_trial_ids(study._study_id)
  if not stale:
    return
  get_callback = getattr(storage, "get_heartbeat_stale_trial_callback", None)
  if get_callback is None:  # optuna < 4.9
    get_callback = storage.get_failed_trial_callback
  callback = get_callback()
  for trial_id in stale:
    try:
      if callback is not None:
        storage.set_trial_system_attr(trial_id, STALE, storage.get_trial(trial_id).number)
      if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
        continue
    except optuna.exceptions.UpdateFinishedTrialError:
      continue  # told by its worker, or failed by a peer, meanwhile
    if callback is not None:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback(study, copy.deepcopy(storage.get_trial(trial_id)))


def ask(study: Any, heartbeat: float | None) -> Any:
  """``study.ask()``; with heartbeats, the trial's first one is recorded at once."""
  if heartbeat is None:
    return study.ask()
  from optuna.trial import TrialState

  with warnings.catch_warnings():
    # Optuna warns that heartbeats are meant for Study.optimize: here they are ours to beat.
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed")
    trial = study.ask()
  try:  # a running trial without a heartbeat would never go stale
    storage_of(study).record_heartbeat(trial._trial_id)
  except StorageUnavailable:
    # The database went away in the moment between the ask and this beat: nothing can be
    # told. (Without a heartbeat the trial never goes stale: peers wait for it.)
    raise
  except BaseException:
    study.tell(trial, state=TrialState.FAIL)
    raise
  return trial


def give_back(study: Any, trial: Any, told: set[int]) -> None:
  """Tells ``trial`` (asked past ``n_trials``) FAIL with the :data:`SURPLUS` mark.

  A trial that was queued (a killed worker's trial queued again, or one the user
  enqueued) is queued again first, with its parameters and history, so that it still runs
  once room opens.
  """
  import optuna
  from optuna.trial import TrialState

  frozen = storage_of(study).get_trial(trial._trial_id)
  if _FAILED_TRIAL in frozen.system_attrs or "fixed_params" in frozen.system_attrs:
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
        user_attrs=frozen.user_attrs, system_attrs=frozen.system_attrs))
  trial.set_user_attr(SURPLUS, True)
  told.add(trial.number)
  study.tell(trial, state=TrialState.FAIL)


@contextlib.contextmanager
def heartbeats(study: Any, trials: list[Any], told: set[int],
               interval: float | None) -> Iterator[None]:
  """Records a heartbeat for each untold trial of the batch every ``interval`` seconds.

  A beat is not retried: the database may be away (the next beat is in time when it is
  back), and the batch never waits for a beat.
  """
  if interval is None:
    yield
    return
  storage = unretried(storage_of(study))
  stop = threading.Event()

  def beat() -> None:
    while not stop.wait(interval):
      for t in trials:
        if t.number not in told:
          try:
            storage.record_heartbeat(t._trial_id)
          except Exception:  # noqa: BLE001 - a busy or absent database: the next beat
            pass

  thread = threading.Thread(target=beat, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()


def sample(trials: list[Any], space_fn: Callable[[Any], Any],
           told: set[int]) -> dict[int, dict[str, Any]]:
  """``space_fn(trial)`` of each trial, by number, but for trials a peer failed meanwhile.

  A trial whose heartbeats were late (a stalled or cut-off worker) may have been failed and
  queued again by a peer before ``space_fn`` sets its parameters: it is dropped from the
  batch (its retry runs elsewhere), not an error.
  """
  import optuna

  configs = {}
  for t in trials:
    try:
      configs[t.number] = dict(space_fn(t))
    except optuna.exceptions.UpdateFinishedTrialError:
      told.add(t.number)
  return configs


class FinishedTrial(NamedTuple):
  """A trial that :func:`~adam_jax.tuning.optuna_search` finished, as it was told."""

  number: int  # the trial's number in the study
  state: str  # "COMPLETE", "PRUNED" or "FAIL" (a non-finite metric)
  config: dict[str, Any]  # what space_fn returned
  metrics: dict[str, float]  # mean over seeds (also set as the trial's user attributes)
  steps: int  # steps trained
  retry_of: int | None  # the number of the trial this one redoes (its worker died), or None


class OwnTrial:
  """A trial of this worker's batch as the training loop sees it.

  Its reports and user attributes go to the study and are kept here. A trial that a peer
  failed meanwhile (its heartbeats missed the grace period, e.g. through a database
  outage) is ``lost``: its retry is queued, so it takes no more reports, asks to be
  pruned, and its end is not told.
  """

  def __init__(self, trial: Any, config: dict[str, Any]) -> None:
    self.trial, self.config = trial, config
    self.number = trial.number
    frozen = storage_of(trial.study).get_trial(trial._trial_id)
    self.retry_of = frozen.system_attrs.get(_FAILED_TRIAL)
    self.attrs: dict[str, Any] = {}
    self.lost = False

  def _guard(self, method: Callable[..., Any], *args: Any) -> None:
    import optuna

    if self.lost:
      return
    try:
      method(*args)
    except optuna.exceptions.UpdateFinishedTrialError:
      self.lost = True

  def report(self, value: float, step: int) -> None:
    self._guard(self.trial.report, value, step)

  def should_prune(self) -> bool:
    return self.lost or self.trial.should_prune()

  def set_user_attr(self, key: str, value: Any) -> None:
    self.attrs[key] = value
    self._guard(self.trial.set_user_attr, key, value)


def teller(study: Any, told: set[int],
           on_trial: Callable[[FinishedTrial], None] | None) -> Callable[..., None]:
  """``study.tell`` for :class:`OwnTrial`s; ``on_trial`` gets each one told."""
  import optuna
  from optuna.trial import TrialState

  def tell(own: OwnTrial, value: float | None = None, *,
           state: TrialState = TrialState.COMPLETE) -> None:
    told.add(own.number)
    if own.lost:
      return
    try:
      frozen = study.tell(own.trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
      own.lost = True  # failed by a peer between the check and the change
      return
    if frozen.state != state:
      own.lost = True
      return
    if on_trial is not None:
      metrics = {k: v for k, v in own.attrs.items() if k != "steps"}
      on_trial(FinishedTrial(own.number, state.name, dict(own.config), metrics,
                             own.attrs.get("steps"), own.retry_of))

  return tell
