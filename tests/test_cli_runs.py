"""The command line keeps every run's files to that run (issue 27's cases, in-process)."""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from adam_jax import cli

SMALL = ["--hidden", "8", "--checkpoint-every", "0"]


def _one_line(capsys):
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err, err
  return err


@pytest.mark.usefixtures("compile_once")
def test_demo_and_sweep_treat_an_existing_out_the_same_way(tmp_path, capsys):
  """Item 10: demo overwrote an existing --out while sweep refused."""
  out = tmp_path / "d"
  argv = ["demo", "--steps", "20", "--eval-every", "10", *SMALL, "--out", str(out)]
  assert cli.main(argv) == 0
  before = (out / "results.json").read_text()
  capsys.readouterr()
  assert cli.main(argv[:2] + ["30"] + argv[3:]) == 2
  err = _one_line(capsys)
  assert "already holds an earlier demo run (demo_config.json)" in err and "--resume" in err
  assert (out / "results.json").read_text() == before
  assert cli.main(argv[:2] + ["30"] + argv[3:] + ["--resume"]) == 2  # another run's flags
  assert "cannot resume" in _one_line(capsys)
  assert cli.main(argv + ["--resume"]) == 0  # the same flags: it goes on


def test_demo_refuses_to_resume_another_runs_checkpoint(tmp_path, capsys):
  """Item 2: a checkpoint of the same shapes run at --lr 3e-2 resumed silently under 3e-3."""
  base = ["demo", "--steps", "40", "--eval-every", "20", "--checkpoint-every", "20",
          "--hidden", "8", "--schedule", "constant"]
  other, mine = tmp_path / "other", tmp_path / "mine"
  assert cli.main(base + ["--lr", "3e-2", "--out", str(other)]) == 0
  assert cli.main(base + ["--lr", "3e-3", "--out", str(mine)]) == 0
  shutil.rmtree(mine / "checkpoint")
  shutil.copytree(other / "checkpoint", mine / "checkpoint")
  (mine / "checkpoint" / ".adam_jax.lock").unlink(missing_ok=True)
  capsys.readouterr()
  assert cli.main(base + ["--lr", "3e-3", "--out", str(mine), "--resume"]) == 2
  err = _one_line(capsys)
  assert "belongs to another run: optimizer was tx #" in err


def test_eps_zero_is_refused_with_its_reason(tmp_path, capsys):
  """Item 10: --eps 0 was accepted and its all-NaN sweep blamed on the learning rate."""
  assert cli.main(["sweep", "--eps", "0,1e-8", *SMALL, "--out", str(tmp_path)]) == 2
  err = _one_line(capsys)
  assert "eps must be > 0" in err and "0 by 0" in err
  assert cli.main(["sweep", "--search", "random", "--eps", "0:1e-3", *SMALL,
                   "--out", str(tmp_path)]) == 2
  assert "eps must be > 0" in _one_line(capsys)


def test_halving_into_an_earlier_sweep_says_what_to_do(tmp_path, capsys):
  """Item 10: halving into an existing --out said "pass --resume", and --resume said that
  halving cannot resume."""
  argv = ["sweep", "--search", "halving", "--trials", "3", "--steps", "9", "--min-steps", "3",
          *SMALL, "--out", str(tmp_path)]
  assert cli.main(argv) == 0
  rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
  assert [r["diverged"] for r in rows] == ["False"] * 3
  capsys.readouterr()
  assert cli.main(argv) == 2
  err = _one_line(capsys)
  assert "successive halving cannot resume: pass a new --out" in err and "--resume" not in err


def test_an_npz_header_that_claims_512_gib_is_one_line(tmp_path, capsys):
  """Item 10: an .npz whose header claimed 512 GiB was a traceback (exit 1)."""
  path = tmp_path / "big.npz"
  np.savez(path, x=np.zeros((10, 3), np.float32), y=np.arange(10) % 2)
  with zipfile.ZipFile(path) as z:
    members = {n: z.read(n) for n in z.namelist()}
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {"descr": "<f4", "fortran_order": False, "shape": (2**37, 1)})
  members["x.npy"] = header.getvalue() + members["x.npy"][-120:]
  with zipfile.ZipFile(path, "w") as z:
    for name, data in members.items():
      z.writestr(name, data)
  assert cli.main(["demo", "--data", str(path), "--out", str(tmp_path / "o")]) == 2
  err = _one_line(capsys)
  assert "'x.npy' claims 512 GiB" in err and "damaged" in err


def test_lr_find_says_in_words_when_there_is_no_suggestion(tmp_path, capsys):
  """Item 7: the plot and the command line say why there is no suggestion."""
  out = tmp_path / "lr"
  code = cli.main(["lr-find", "--start-lr", "1e-9", "--end-lr", "1e-7", "--num-steps", "30",
                   "--hidden", "8", "--out", str(out)])
  assert code == 1
  captured = capsys.readouterr()
  assert "suggested learning rate:" not in captured.out
  assert "no suggested learning rate: the smoothed loss fell by only" in captured.err
  assert captured.err.count("\n") == 1
  saved = json.loads((out / "lr_find.json").read_text())
  assert saved["suggestion"] is None and "larger end_lr" in saved["reason"]
  assert (out / "lr_find.png").exists()


def test_a_command_into_a_folder_another_one_writes_is_refused(tmp_path, capsys):
  """Item 5: two sweeps into one --out at once: tracebacks, duplicated rows, a lost group."""
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from adam_jax import _lock; "
       "_lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(120)",
       str(tmp_path)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    assert cli.main(["sweep", "--lr", "1e-2", "--steps", "5", *SMALL,
                     "--out", str(tmp_path)]) == 2
    err = _one_line(capsys)
    assert f"is in use by another run (pid {holder.pid} on " in err
    assert not (tmp_path / "results.csv").exists()
  finally:
    holder.kill()
    holder.communicate()


@pytest.mark.slow
def test_ctrl_c_during_a_checkpoint_save_is_one_line(tmp_path):
  """Item 10: Ctrl-C during a save printed the one line and then 26 asyncio tracebacks."""
  # The four runs are the same program: XLA compiles it in the first, the others read it
  # from a compilation cache of this test's own.
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  for attempt, delay in enumerate((0.0, 0.004, 0.012, 0.025)):  # into orbax's asyncio writes
    out = tmp_path / f"run{attempt}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "adam_jax.cli", "demo", "--steps", "100000", "--eval-every",
         "10", "--checkpoint-every", "10", "--hidden", "256", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
      deadline = time.monotonic() + 120
      while True:  # a save in progress, past the first one
        assert time.monotonic() < deadline and proc.poll() is None
        try:
          names = os.listdir(out / "checkpoint")
        except FileNotFoundError:
          names = []
        if "save_00000001" in names and any(n.startswith(".tmp-") for n in names):
          break
        time.sleep(0.0005)
      time.sleep(delay)
      proc.send_signal(signal.SIGINT)
      _, err = proc.communicate(timeout=120)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 130
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "rerun with --resume to continue from step" in err
