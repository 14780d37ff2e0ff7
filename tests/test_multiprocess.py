"""Two processes joined by jax.distributed train FSDP, checkpoint, resume and search like one."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import fsdp_training, multiprocess_search

TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two(module: str, args, cache_dir=None) -> None:
  """``python -m module coordinator process_id *args(process_id)`` in two processes.

  ``cache_dir``: a compilation cache of the two processes, where a program run again (a
  resumed search of the same shapes) is read instead of compiled again.
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cache = {} if cache_dir is None else {
      "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  env = {**os.environ, **cache, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "-m", module, coordinator, str(i), *map(str, args(i))],
      cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  logs = [""] * 2
  try:
    for i, proc in enumerate(procs):
      logs[i] = proc.communicate(timeout=TIMEOUT_S)[0]
  except subprocess.TimeoutExpired:
    pytest.fail(f"the two processes did not finish within {TIMEOUT_S} s")
  finally:
    for proc in procs:  # never leave a process behind
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  for i, proc in enumerate(procs):
    assert proc.returncode == 0, f"process {i} failed:\n{logs[i][-3000:]}"


def _two_processes(tmp_path) -> dict[str, np.ndarray]:
  out = tmp_path / "two_processes.npz"
  _run_two("tests.fsdp_training", lambda i: (tmp_path / "ckpt_two", out))
  with np.load(out) as f:
    return dict(f)


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume_like_one(tmp_path):
  assert jax.device_count() == 8 and jax.process_count() == 1
  two = _two_processes(tmp_path)
  one = fsdp_training.train(str(tmp_path / "ckpt_one"))
  for name in ("w1", "b1", "w2"):
    # Resuming from the checkpoint is bitwise the run that never stopped, in both setups.
    assert np.array_equal(two[f"params/{name}"], two[f"resumed/{name}"])
    assert np.array_equal(one["params"][name], one["resumed"][name])
    # One process and two agree to float32 rounding (reductions may be ordered differently).
    np.testing.assert_allclose(two[f"params/{name}"], one["params"][name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two[f"mu/{name}"], one["mu"][name], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
  assert one["losses"][-1] < 0.8 * one["losses"][0]  # it trained
  # Both processes wrote one checkpoint together.
  assert sorted(p.name for p in (tmp_path / "ckpt_two").iterdir()) == [
      "adam_jax_checkpoint.json", "save_00000001"]


def _assert_close(two, one):
  """Two processes' search results equal one process's to float32 rounding."""
  assert two["best"] == one["best"]
  assert [r["config"] for r in two["rows"]] == [r["config"] for r in one["rows"]]
  for a, b in zip(two["rows"], one["rows"]):
    assert list(a["metrics"]) == list(b["metrics"])
    np.testing.assert_allclose(list(a["metrics"].values()), list(b["metrics"].values()),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["curve"], b["curve"], rtol=1e-5)
  for k in one["best_model"]:
    np.testing.assert_allclose(two["best_model"][k], one["best_model"][k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.usefixtures("compile_once")
def test_two_processes_search_like_one(tmp_path):
  assert jax.device_count() == 8 and jax.process_count() == 1
  # Each process has its own out_dir, as hosts that share no disk; group checkpoints go to
  # a folder both see.
  _run_two("tests.multiprocess_search",
           lambda i: (tmp_path / f"out{i}", tmp_path / "shared", tmp_path / f"result{i}.json"),
           cache_dir=tmp_path / "xla_cache")
  two = []
  for i in range(2):
    with open(tmp_path / f"result{i}.json") as f:
      two.append(json.load(f))
  one = multiprocess_search.search(str(tmp_path / "one"))
  for name in ("grid", "random", "dropout", "halving"):
    assert two[0][name] == two[1][name]  # both processes return the same complete result
    _assert_close(two[0][name], one[name])
  pbt = two[0]["pbt"]
  assert pbt == two[1]["pbt"]
  assert pbt["sources"] == one["pbt"]["sources"] and pbt["best"] == one["pbt"]["best"]
  np.testing.assert_allclose(pbt["learning_rate"], one["pbt"]["learning_rate"], rtol=1e-6)
  for a, b in zip(pbt["metrics"], one["pbt"]["metrics"]):
    np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-5, atol=1e-6)
  assert any(s != list(range(8)) for s in pbt["sources"])  # members copied others
  one_rows = one["grid"]["rows"]
  assert len(one_rows) == 10 and one_rows[0]["metrics"]["val_loss"] > 2 * min(
      r["metrics"]["val_loss"] for r in one_rows)  # the learning rate mattered: it trained
  # Process 0 alone wrote the rows, all of them, once.
  assert not (tmp_path / "out1").exists()
  with open(tmp_path / "out0" / "results.csv") as f:
    written = f.read().splitlines()
  with open(tmp_path / "one" / "results.csv") as f:
    assert len(written) == 1 + len(one_rows) and written[0] == f.readline().strip()
  for out in two:
    # Another search into process 0's out_dir is refused by both processes.
    assert "results.csv); pass resume=True" in out["refused"]
    # Resumed, every row is read back (none trained) and the best is trained again.
    assert out["resumed_trained"] == 0
    assert out["resumed"]["rows"] == two[0]["grid"]["rows"]
    _assert_close(out["resumed"], two[0]["grid"])
    assert "devices must include devices of every process" in out["local_devices"]
    # Cut in its third chunk, the search resumed from the group checkpoint that both
    # processes wrote (the first two chunks were not trained again).
    assert out["checkpointed"]["chunks"] == [8]
    assert out["checkpointed"]["rows"] == two[0]["checkpointed"]["rows"]
    _assert_close(out["checkpointed"], one["grid"])
  assert not (tmp_path / "shared" / "checkpoints").exists()
  with open(tmp_path / "shared" / "results.csv") as f:
    shared = f.read().splitlines()
  assert len(shared) == len(written) and shared[0] == written[0]  # once, by process 0
