"""Many workers on a real PostgreSQL server, started by the test run itself.

Each test gets a throw-away cluster (``tests/postgres_server.py``: Debian's binaries,
``initdb`` in a temporary folder, a free port of 127.0.0.1, a password passed as
``PGPASSWORD``), removed at the end. Without the binaries or psycopg the tests skip and
say why; ``.ci/run`` installs the server and sets ``ADAM_JAX_REQUIRE_POSTGRES``, so that
in CI they run or fail, never skip.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import postgres_server

optuna = pytest.importorskip("optuna")
TrialState = optuna.trial.TrialState

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny sweep: up to 16 trials a batch, 4 steps each, reported to the pruner after each.
TINY = ["--hidden", "4", "--steps", "4", "--lr", "1e-3:1e-1"]


@pytest.fixture
def server(monkeypatch):
  reason = postgres_server.why_not()
  if reason is not None:
    if os.environ.get(postgres_server.REQUIRED):
      pytest.fail(f"{postgres_server.REQUIRED} is set, but {reason}")
    pytest.skip(reason)
  with postgres_server.Server() as srv:
    for key, value in srv.env().items():  # the password, as the docs advise: not in the URL
      monkeypatch.setenv(key, value)
    yield srv


@pytest.fixture
def reader():
  """``reader(url)``: the study's trials as the database holds them now (one engine per URL,
  checked before use so that it outlives a restart, disposed at the end)."""
  engines = {}

  def trials(url: str) -> list:
    if url not in engines:
      engines[url] = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    return optuna.load_study(study_name="s", storage=engines[url]).get_trials()

  yield trials
  for storage in engines.values():
    storage.engine.dispose()


def _sweep(url: str, out, trials: int, *flags: str) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
  argv = [sys.executable, "-m", "adam_jax.cli", "sweep", "--search", "optuna", "--trials",
          str(trials), "--storage", url, "--study-name", "s", "--out", str(out), *TINY, *flags]
  return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _worker_id(proc: subprocess.Popen) -> str:
  return f"{socket.gethostname()}:{proc.pid}"


def _wait_for(trials_of, url: str, found, procs, what: str, limit: float = 120):
  """Polls the study until ``found(trials)`` is true; every worker must still run."""
  deadline = time.monotonic() + limit
  while True:
    for proc in procs:
      if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"a worker ended before {what}: {out[-2000:]}{err[-2000:]}")
    try:
      trials = trials_of(url)
    except KeyError:  # the study is not created yet
      trials = []
    hit = found(trials)
    if hit:
      return hit
    assert time.monotonic() < deadline, f"never {what}"
    time.sleep(0.05)


def _completed(trials) -> bool:
  return any(t.state == TrialState.COMPLETE for t in trials)


def _finish(procs, limit: float = 180) -> list[tuple[int, str, str]]:
  """Each worker's exit code, stdout and stderr; none is left behind."""
  done = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=limit)
      done.append((proc.returncode, out, err))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  return done


def _rows(path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _whole_study(trials) -> set[int]:
  """The trials a worker's final results.csv lists: every one that ran, but those given
  back unused."""
  return {t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                                  TrialState.FAIL)
          and not t.user_attrs.get("surplus")}


def _check_reports_the_whole_study(out, log: str, trials, n: int) -> None:
  """What a worker that returned 0 wrote: the whole study, its best, and its own best."""
  from adam_jax.tuning._storage import count_trials

  counts = count_trials(trials)
  assert f"the study holds {n} trials (--trials {n}): {counts.complete} complete" in log
  rows = _rows(out / "results.csv")
  assert sorted(int(r["trial"]) for r in rows) == sorted(_whole_study(trials))
  by_number = {t.number: t for t in trials}
  for r in rows:
    assert r["state"] == by_number[int(r["trial"])].state.name
  best = json.loads((out / "best.json").read_text())
  top = min((t for t in trials if t.state == TrialState.COMPLETE),
            key=lambda t: (t.value, t.number))
  assert best["best_of"] == "the study" and best["trial"] == top.number
  assert best["val_loss"] == top.value and best["trials_in_study"] == n
  last = log.strip().splitlines()[-1]
  assert last.startswith(f"best of the study ({counts.complete} complete): trial {top.number}")
  assert "| best of this worker (" in last


def test_three_cli_workers_one_killed_mid_batch(server, tmp_path, reader):
  """Exactly n_trials counted; each killed trial redone once with its params; no
  duplicates; each worker that returns 0 reports the whole study."""
  url = server.create_database("cli")
  n = 24  # batches of up to 16: the workers ask 16 and 8 (or give back, and ask again)
  # A grace period that a loaded machine's heartbeats keep: a live worker's trials never go
  # stale (the killed worker's trials do, 6 s after the kill).
  grace = ["--heartbeat-interval", "1", "--grace-period", "6"]
  procs = [_sweep(url, tmp_path / f"w{i}", n, *grace) for i in range(3)]
  ids = {_worker_id(p): p for p in procs}

  def in_batch(trials):  # a worker's trial, running and sampled: its batch has started
    running = [t.user_attrs.get("worker") for t in trials
               if t.state == TrialState.RUNNING and t.params]
    return next((w for w in running if w in ids), None)

  try:
    victim_id = _wait_for(reader, url, in_batch, procs, "a worker started a batch")
    victim = ids[victim_id]
    victim.send_signal(signal.SIGKILL)
    survivors = [p for p in procs if p is not victim]
    results = _finish(survivors)
  finally:
    _finish(procs)
  assert victim.returncode == -signal.SIGKILL
  for code, out, err in results:
    assert code == 0, out[-3000:] + err[-3000:]

  from adam_jax.tuning._storage import count_trials

  trials = reader(url)
  counts = count_trials(trials)
  assert (counts.counted, counts.running, counts.pending, counts.waiting) == (n, 0, 0, 0)
  assert len({t.number for t in trials}) == len(trials)  # no duplicates
  killed = [t for t in trials if t.state == TrialState.FAIL
            and not t.user_attrs.get("surplus") and "steps" not in t.user_attrs]
  # The victim's batch: the trials space_fn had seen carry its name, the rest none yet.
  assert victim_id in {t.user_attrs.get("worker") for t in killed}
  assert {t.user_attrs.get("worker") for t in killed} <= {victim_id, None}
  assert counts.redone == len(killed) and counts.failed == 0
  retries = {}
  for t in trials:
    if "failed_trial" in t.system_attrs and not t.user_attrs.get("surplus"):
      assert t.system_attrs["failed_trial"] not in retries  # redone once, not twice
      assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
      retries[t.system_attrs["failed_trial"]] = t
  assert sorted(retries) == sorted(t.number for t in killed)
  for t in killed:  # each retry trains what the killed trial had sampled
    assert t.params.items() <= retries[t.number].params.items()
    assert retries[t.number].user_attrs["worker"] != victim_id
  assert any(t.params for t in killed)
  for proc, (_, log, _) in zip(survivors, results):
    out = tmp_path / f"w{procs.index(proc)}"
    _check_reports_the_whole_study(out, log, trials, n)
    rows = {int(r["trial"]): r for r in _rows(out / "results.csv")}
    for t in killed:
      assert rows[retries[t.number].number]["retry_of"] == str(t.number)
  # What the victim had finished before the kill is in its own results.csv, as told.
  by_number = {t.number: t for t in trials}
  victim_csv = tmp_path / f"w{procs.index(victim)}" / "results.csv"
  for r in _rows(victim_csv) if victim_csv.exists() else []:
    t = by_number[int(r["trial"])]
    assert r["worker"] == victim_id == t.user_attrs["worker"] and r["state"] == t.state.name


def test_optuna_search_with_an_nnx_model_three_workers_one_killed(server, tmp_path):
  """The same through the API: tuning.open_storage, an NNX model with BatchNorm and
  Dropout; each survivor returns with the whole study counted and its best model's own
  loss equal to the reported one."""
  from tests import optuna_worker as worker

  url = server.create_database("api")
  storage = optuna.storages.RDBStorage(url)
  try:
    optuna.create_study(study_name=worker.STUDY, storage=storage)
    logs = worker.run_with_one_killed(url, 2, tmp_path, model="nnx", grace=5,
                                      env=server.env())
    worker.check_one_killed_batch(
        optuna.load_study(study_name=worker.STUDY, storage=storage).get_trials(), logs)
  finally:
    storage.engine.dispose()
  for log in logs.values():
    if "best reported" in log:
      reported, own = (float(v) for v in log.split("best reported ")[1].split()[::2][:2])
      assert own == pytest.approx(reported, rel=1e-5)


def test_a_server_restart_mid_run_is_survived(server, tmp_path, reader):
  """A 3-second restart while two workers tell and ask: both exit 0, exactly n_trials
  counted, nothing failed or redone (the outage is shorter than the grace period)."""
  url = server.create_database("restart")
  n = 32
  beat = ["--heartbeat-interval", "1", "--grace-period", "15"]
  procs = [_sweep(url, tmp_path / f"w{i}", n, *beat) for i in range(2)]
  try:
    _wait_for(reader, url, _completed, procs, "a trial completed")
    server.restart(3.0)
    results = _finish(procs)
  finally:
    _finish(procs)
  logs = []
  for code, out, err in results:
    assert code == 0, out[-3000:] + err[-3000:]
    assert "Traceback" not in err
    logs.append(out)
  assert any("does not answer" in log and "answers again after" in log for log in logs), logs

  from adam_jax.tuning._storage import count_trials

  trials = reader(url)
  counts = count_trials(trials)
  assert (counts.counted, counts.running, counts.pending) == (n, 0, 0)
  assert counts.redone == counts.failed == 0
  for i, log in enumerate(logs):
    _check_reports_the_whole_study(tmp_path / f"w{i}", log, trials, n)


def test_a_dropped_database_is_one_line_and_resume_finishes(server, tmp_path, reader):
  """Past --storage-timeout: one line, exit 2, every trial the worker finished in its
  results.csv, the trials in flight left running; the same command with --resume, the
  database back, finishes the study, redoing them."""
  url = server.create_database("dropped")
  n = 32
  out = tmp_path / "w"
  flags = ["--storage-timeout", "3", "--heartbeat-interval", "1", "--grace-period", "3"]
  proc = _sweep(url, out, n, *flags)
  me = _worker_id(proc)
  try:
    _wait_for(reader, url, _completed, [proc], "a trial completed")
    server.stop("immediate")
    [(code, log, err)] = _finish([proc], limit=60)
  finally:
    _finish([proc])
  assert code == 2, log[-3000:] + err[-3000:]
  assert err.count("\n") == 1 and "Traceback" not in err, err
  assert err.startswith(f"adam-jax sweep: error: the database {url} did not answer for 3 s "
                        "(--storage-timeout): ")
  assert any(text in err for text in ("Connection refused", "server closed the connection",
                                      "terminating connection")), err
  assert "run the same command with --resume to go on" in err
  assert server.password not in err + log

  server.start()
  trials = reader(url)
  mine = [t for t in trials if t.user_attrs.get("worker") == me]
  told = {t.number: t for t in mine if t.state.is_finished()}
  rows = _rows(out / "results.csv")
  assert told and sorted(int(r["trial"]) for r in rows) == sorted(told)
  assert f"the {len(rows)} trials this worker finished are in {out / 'results.csv'}" in err
  for r in rows:
    t = told[int(r["trial"])]
    assert r["state"] == t.state.name and r["worker"] == me
    if t.state == TrialState.COMPLETE:
      assert float(r["val_loss"]) == t.value
  in_flight = [t.number for t in mine if t.state == TrialState.RUNNING]
  assert in_flight  # not told FAIL: left for the heartbeat to fail and retry

  again = _sweep(url, out, n, *flags, "--resume")
  [(code, log, err)] = _finish([again])
  assert code == 0, log[-3000:] + err[-3000:]
  from adam_jax.tuning._storage import count_trials

  trials = reader(url)
  counts = count_trials(trials)
  assert (counts.counted, counts.running, counts.pending) == (n, 0, 0)
  retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs
             and t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
  assert set(in_flight) <= retried
  _check_reports_the_whole_study(out, log, trials, n)
