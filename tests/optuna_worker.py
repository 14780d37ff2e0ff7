"""One worker of a shared Optuna study: ``python -m tests.optuna_worker URL ROLE DIR``.

Used by ``tests/test_optuna_search.py``: two of these run ``optuna_search`` on one
study in an SQLite storage with heartbeats. The ``victim`` trains its first batch,
then, in ``space_fn`` of its second batch's first trial, writes ``DIR/victim_hung``
and waits (its trials running, their heartbeats recorded) until the test kills it
with SIGKILL. The ``survivor`` waits for that file before training its first batch, then runs the
study to its end, redoing the victim's trials once they go stale.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import jax.numpy as jnp
import numpy as np
import optuna

from adam_jax import tuning

STUDY = "shared"
N_TRIALS, BATCH, STEPS = 12, 3, 6


def problem() -> tuning.Problem:
  x = np.linspace(-1, 1, 32, dtype=np.float32)[:, None]
  loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
  return tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x))


def storage(url: str) -> optuna.storages.RDBStorage:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=1, grace_period=2,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())


def main(url: str, role: str, folder: str) -> None:
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(study_name=STUDY, storage=storage(url), load_if_exists=True,
                              sampler=optuna.samplers.RandomSampler(seed=os.getpid()))
  hung = os.path.join(folder, "victim_hung")
  calls = [0]

  def space_fn(trial):
    calls[0] += 1
    trial.set_user_attr("worker", role)
    config = {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1.0, log=True)}
    if role == "victim" and calls[0] == BATCH + 1:  # the second batch has started
      open(hung, "w").close()
      time.sleep(600)
    if role == "survivor":
      deadline = time.monotonic() + 120
      while not os.path.exists(hung) and time.monotonic() < deadline:
        time.sleep(0.05)
    return config

  result = tuning.optuna_search(study, problem(), space_fn, n_trials=N_TRIALS,
                                batch_size_trials=BATCH, steps=STEPS, report_every=STEPS)
  print("trained", len(result.rows))


if __name__ == "__main__":
  main(*sys.argv[1:])
