"""Two processes joined by jax.distributed train FSDP, checkpoint and resume like one."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import fsdp_training

TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(tmp_path) -> dict[str, np.ndarray]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
  coordinator = f"127.0.0.1:{_free_port()}"
  out = tmp_path / "two_processes.npz"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.fsdp_training", coordinator, str(i),
       str(tmp_path / "ckpt_two"), str(out)],
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
