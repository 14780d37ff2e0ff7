"""One writer per directory: searches, train, save_rotating and the commands take a lock."""

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from adam_jax import checkpoint, tuning

_lock = importlib.import_module("adam_jax._lock")

_HOLDER = """
import sys, time
from adam_jax import _lock, checkpoint
import numpy as np
if sys.argv[2] == "save":
  checkpoint.save_rotating(sys.argv[1], {"w": np.ones(2, np.float32)})
else:
  _lock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
  """A second process that holds a folder's lock (taken by ``save_rotating`` or directly)."""
  procs = []

  def start(path, how="lock"):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), how],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc

  yield start
  for proc in procs:
    proc.kill()
    proc.communicate()


def _problem():
  x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
  loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)  # noqa: E731
  return tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x))


def test_a_second_search_into_one_out_dir_is_refused_at_once_naming_the_holder(tmp_path,
                                                                                holder):
  """Item 5: two searches into one --out were not refused until results.csv existed."""
  proc = holder(tmp_path)
  start = time.perf_counter()
  with pytest.raises(_lock.DirectoryLockedError,
                     match=f"is in use by another run \\(pid {proc.pid} on "
                           f"{socket.gethostname()}, since "):
    tuning.grid_search(_problem(), {"learning_rate": [1e-2]}, steps=5, out_dir=tmp_path,
                       progress=False)
  assert time.perf_counter() - start < 10
  assert not (tmp_path / "results.csv").exists()
  proc.kill()
  proc.communicate()
  with pytest.warns(_lock.StaleLockWarning, match="is no longer running"):
    tuning.grid_search(_problem(), {"learning_rate": [1e-2]}, steps=5, out_dir=tmp_path,
                       progress=False)
  assert not (tmp_path / _lock.LOCK_NAME).exists()  # given back when the search ended


def test_two_processes_saving_into_one_checkpoint_are_refused(tmp_path, holder):
  """Item 5: two processes save_rotating into one folder: 57 of 60 saves raised raw errors
  and a committed save lacked a file."""
  proc = holder(tmp_path, "save")
  with pytest.raises(checkpoint.DirectoryLockedError, match=f"pid {proc.pid}"):
    checkpoint.save_rotating(tmp_path, {"w": np.zeros(2, np.float32)})
  with pytest.raises(ValueError, match=f"pid {proc.pid}"):
    tuning.train(_problem(), __import__("adam_jax").adam(1e-2), 4, checkpoint_dir=tmp_path,
                 checkpoint_every=2, eval_every=2, resume=True)
  assert checkpoint.restore_latest(tmp_path, {"w": np.zeros(2, np.float32)})["w"].tolist() == [
      1.0, 1.0]  # reading is never refused
  proc.send_signal(signal.SIGINT)  # it ends (KeyboardInterrupt): the lock is given back
  proc.communicate()
  checkpoint.save_rotating(tmp_path, {"w": np.zeros(2, np.float32)})
  assert _lock.holds(tmp_path)  # outside any search or train: held until this process exits
  _lock.release(tmp_path)


def test_stale_locks_are_taken_over_with_one_line(tmp_path):
  lock = tmp_path / _lock.LOCK_NAME
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  lock.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(),
                              "started": time.time() - 5}))
  with pytest.warns(_lock.StaleLockWarning) as caught:
    _lock.acquire(tmp_path)
  assert len(caught) == 1 and "\n" not in str(caught[0].message)
  assert f"pid {dead}" in str(caught[0].message)
  _lock.release(tmp_path)
  assert not lock.exists()

  # Another host: held while it refreshes its lock, stale once it has not for the limit.
  lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": time.time()}))
  with pytest.raises(_lock.DirectoryLockedError, match="pid 1 on elsewhere"):
    _lock.acquire(tmp_path)
  old = time.time() - _lock.STALE_AFTER_S - 5
  os.utime(lock, (old, old))
  with pytest.warns(_lock.StaleLockWarning, match="has not refreshed it for"):
    _lock.acquire(tmp_path)
  _lock.release(tmp_path)


def test_the_holder_refreshes_its_locks(tmp_path, monkeypatch):
  monkeypatch.setattr(_lock, "REFRESH_S", 0.05)
  monkeypatch.setattr(_lock, "_refresher", None)
  _lock.acquire(tmp_path)
  try:
    old = time.time() - 100
    os.utime(tmp_path / _lock.LOCK_NAME, (old, old))
    deadline = time.time() + 10
    while os.stat(tmp_path / _lock.LOCK_NAME).st_mtime < old + 50:
      assert time.time() < deadline
      time.sleep(0.02)
  finally:
    _lock.release(tmp_path)
