"""A worker of a shared Optuna study, and the harness that runs several with one killed.

``python -m tests.optuna_worker URL ROLE DIR [MODEL GRACE]`` runs one worker.

Used by ``tests/test_optuna_search.py`` (SQLite) and ``tests/test_postgres.py``: several of
these run ``optuna_search`` on one study in a storage of ``tuning.open_storage`` with
heartbeats every second (a trial is stale after GRACE seconds, 2 by default). The
``victim`` trains its first batch, then, in ``space_fn`` of its second batch's first
trial, writes ``DIR/victim_hung`` and waits (its trials running, their heartbeats
recorded) until the test kills it with SIGKILL. Each ``survivor...`` waits for that file
before training its first batch, then runs the study to its end, redoing the victim's
trials once they go stale, and prints what it trained and the study's counts as it
returns. MODEL: ``linear`` (a functional linear model, the default) or ``nnx`` (a Flax NNX
model with BatchNorm and Dropout; the best trial's reported loss and the loss of its
returned model are printed too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
import optuna

from adam_jax import tuning
from adam_jax.tuning import _storage

STUDY = "shared"
N_TRIALS, BATCH, STEPS = 12, 3, 6


def problem(model: str) -> tuple[tuning.Problem, object]:
  x = np.linspace(-1, 1, 32, dtype=np.float32)[:, None]
  if model == "linear":
    loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    return tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x)), loss
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1, self.bn = nnx.Linear(1, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
      self.drop, self.l2 = nnx.Dropout(0.2, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))

  loss = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
  return tuning.Problem(Net, loss, (x, 3 * x), (x, 3 * x), batch_size=16), loss


def main(url: str, role: str, folder: str, model: str = "linear", grace: str = "2") -> None:
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage = tuning.open_storage(url, heartbeat_interval=1, grace_period=int(grace))
  study = optuna.create_study(study_name=STUDY, storage=storage, load_if_exists=True,
                              sampler=optuna.samplers.RandomSampler(seed=os.getpid()))
  hung = os.path.join(folder, "victim_hung")
  calls = [0]

  def space_fn(trial):
    calls[0] += 1
    trial.set_user_attr("worker", role)
    high = 1.0 if model == "linear" else 0.1
    config = {"learning_rate": trial.suggest_float("learning_rate", 1e-3, high, log=True)}
    if role == "victim" and calls[0] == BATCH + 1:  # the second batch has started
      open(hung, "w").close()
      time.sleep(600)
    if role.startswith("survivor"):
      deadline = time.monotonic() + 120
      while not os.path.exists(hung) and time.monotonic() < deadline:
        time.sleep(0.05)
    return config

  train, loss = problem(model)
  result = tuning.optuna_search(study, train, space_fn, n_trials=N_TRIALS,
                                batch_size_trials=BATCH, steps=STEPS, report_every=STEPS)
  counts = _storage.count(study)
  print("trained", len(result.rows))
  print(f"counted {counts.counted} running {counts.running} pending {counts.pending} "
        f"waiting {counts.waiting}")
  if result.best is not None:
    print(f"best reported {result.best.metrics['val_loss']!r} "
          f"own {float(loss(result.best.model, train.val_data))!r}")


def run_with_one_killed(url: str, survivors: int, folder: Any, *, model: str = "linear",
                        grace: int = 2, env: dict[str, str] | None = None) -> dict[str, str]:
  """Runs a victim and ``survivors`` workers on the study of ``url`` (created by the caller);
  kills the victim mid-batch; returns each survivor's output (each exited 0)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, **(env or {}), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
  roles = ["victim"] + [f"survivor{i}" for i in range(survivors)]
  procs = {role: subprocess.Popen(
      [sys.executable, "-m", "tests.optuna_worker", url, role, str(folder), model, str(grace)],
      cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for role in roles}
  hung = os.path.join(str(folder), "victim_hung")
  logs = {}
  try:
    deadline = time.monotonic() + 120
    while not os.path.exists(hung):
      assert procs["victim"].poll() is None, procs["victim"].communicate()[0][-3000:]
      assert time.monotonic() < deadline, "the victim never started its second batch"
      time.sleep(0.05)
    # Alive, the victim beats for its hung batch: past the grace period nothing is stale.
    time.sleep(grace + 1.5)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=grace)
    try:
      watcher = optuna.load_study(study_name=STUDY, storage=storage)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(watcher)
      assert optuna.trial.TrialState.FAIL not in [t.state for t in watcher.get_trials()]
    finally:
      storage.engine.dispose()
    procs["victim"].send_signal(signal.SIGKILL)
    for role in roles[1:]:
      logs[role] = procs[role].communicate(timeout=120)[0]
      assert procs[role].returncode == 0, logs[role][-3000:]
  finally:
    for proc in procs.values():  # never leave a process behind
      if proc.poll() is None:
        proc.kill()
      proc.communicate()
  assert procs["victim"].returncode == -signal.SIGKILL
  return logs


def check_one_killed_batch(trials: list[Any], logs: dict[str, str]) -> None:
  """The study after :func:`run_with_one_killed`: exactly N_TRIALS COMPLETE; the victim's
  hung batch FAIL, each trial redone once with its params; every survivor saw it all."""
  from optuna.trial import TrialState

  states = [t.state for t in trials]
  complete = [t for t in trials if t.state == TrialState.COMPLETE]
  failed = [t for t in trials if t.state == TrialState.FAIL]
  assert len(complete) == N_TRIALS, states
  assert TrialState.RUNNING not in states and TrialState.WAITING not in states
  assert len({t.number for t in trials}) == len(trials)
  # Given back unused (a peer asked at the same moment): no params, never trained.
  unused = [t for t in failed if t.user_attrs.get("surplus")]
  assert all(not t.params and "steps" not in t.user_attrs for t in unused)
  killed = [t for t in failed if not t.user_attrs.get("surplus")]
  assert len(killed) == BATCH
  # The victim hung in space_fn of its second batch's first trial (the others not yet seen).
  assert [t.user_attrs.get("worker") for t in killed] == ["victim"] + [None] * (BATCH - 1)
  retries = {}
  for t in complete:
    if "failed_trial" in t.system_attrs:
      assert t.system_attrs["failed_trial"] not in retries  # redone once, not twice
      retries[t.system_attrs["failed_trial"]] = t
  assert sorted(retries) == sorted(t.number for t in killed)
  for t in killed:  # the retry keeps what the killed trial had sampled, and trains in full
    assert t.params.items() <= retries[t.number].params.items()
    assert retries[t.number].user_attrs["steps"] == STEPS
  assert killed[0].params  # the victim had sampled its first trial's params
  by_worker = [t.user_attrs["worker"] for t in complete]
  assert by_worker.count("victim") == BATCH  # its first batch, told before the kill
  trained = 0
  for role, log in logs.items():  # each returned only once the study was whole
    assert f"counted {N_TRIALS} running 0 pending 0 waiting 0" in log, log[-3000:]
    trained += int(log.split("trained ")[1].split()[0])
    assert by_worker.count(role) == int(log.split("trained ")[1].split()[0])
  assert trained == N_TRIALS - BATCH


if __name__ == "__main__":
  main(*sys.argv[1:])
