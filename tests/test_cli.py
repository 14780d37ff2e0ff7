"""The adam-jax command line, run in-process (plus one run of the real entry point)."""

import csv
import importlib
import json
import math
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from adam_jax import cli

_common = importlib.import_module("adam_jax.cli._common")
_runner = importlib.import_module("adam_jax.tuning._runner")

DEMO = ["demo", "--steps", "300", "--eval-every", "100", "--checkpoint-every", "100",
        "--hidden", "32", "--lr", "1e-2", "--diagnostics"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo")
  code = cli.main(DEMO + ["--out", str(out)])
  return code, out


def test_demo_trains_and_writes_results(demo_run, capsys):
  code, out = demo_run
  assert code == 0
  results = json.loads((out / "results.json").read_text())
  assert results["steps"] == 300 and len(results["curve"]) == 300
  assert [h["step"] for h in results["history"]] == [100, 200, 300]
  assert results["val_accuracy"] > 0.85
  assert results["val_loss"] < 0.3 * results["curve"][0]
  assert results["steps_per_s"] > 0
  assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  diag = results["diagnostics"]
  assert 0 < diag["final_update_to_param_ratio"] < diag["max_update_to_param_ratio"] < 1
  assert 0 <= diag["final_eps_dominated_fraction"] <= 1
  assert (out / "diagnostics.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_prints_progress(tmp_path, capsys):
  code = cli.main(["demo", "--steps", "40", "--eval-every", "20", "--hidden", "8",
                   "--checkpoint-every", "0", "--out", str(tmp_path)])
  assert code == 0
  printed = capsys.readouterr().out
  assert [line.split()[1] for line in printed.splitlines() if line.startswith("step")] == [
      "20/40", "40/40"]
  assert "val accuracy" in printed and "steps/s" in printed
  assert not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--lr", "-1"], "argument --lr: '-1' is outside (0.0, inf)"),
        (["demo", "--steps", "abc"], "argument --steps: expected a positive integer, got 'abc'"),
        (["demo", "--task", "mnist"], "'mnist' is not one of digits-mlp, digits-autoencoder"),
        (["demo", "--data", "/nonexistent.npz"], "data file not found: /nonexistent.npz"),
        (["demo", "--steps", "10", "--warmup", "10"], "--warmup (10) must be smaller"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["sweep", "--lr", "1e-3,abc"], "argument --lr: expected a number, got 'abc'"),
        (["sweep", "--lr", "1e-3,1e-3"], "argument --lr: repeated value in '1e-3,1e-3'"),
        (["sweep", "--b2", "0.9,1.0"], "argument --b2: '1.0' is outside [0.0, 1.0)"),
        (["sweep", "--schedule", "linear"], "'linear' is not one of constant, cosine"),
        (["sweep", "--batch-size", "32,5000"], "batch_size must be at most the number of"),
        (["sweep", "--optimizer", "sgd"], "argument --optimizer: 'sgd' is not one of adabelief"),
        (["sweep", "--optimizer", "lazy_adam", "--weight-decay", "0.1"],
         "--weight-decay: lazy_adam has no weight_decay hyperparameter"),
        (["sweep", "--seeds", "0"], "argument --seeds: expected a positive integer"),
        (["sweep", "--data", "/nonexistent.npz"], "data file not found"),
        (["demo", "--lr", "inf"], "argument --lr: 'inf' is not a finite float32 number"),
        (["demo", "--lr", "1e39"], "argument --lr: '1e39' is not a finite float32 number"),
        (["demo", "--lr", "nan"], "argument --lr: 'nan' is outside"),
        (["sweep", "--lr", "1e-3,inf"], "argument --lr: 'inf' is not a finite float32"),
        (["sweep", "--eps", "inf"], "argument --eps: 'inf' is not a finite float32 number"),
        (["sweep", "--weight-decay", "inf"], "argument --weight-decay: 'inf' is not a finite"),
        (["sweep", "--weight-decay", "1e300"], "argument --weight-decay: '1e300' is not a"),
        (["lr-find", "--end-lr", "inf"], "argument --end-lr: 'inf' is not a finite float32"),
        (["demo", "--seed", str(2**64)], "argument --seed: expected a seed below 2**63"),
        (["demo", "--seed", str(2**31)], "--seed must be below 2**31 for demo"),
        (["demo", "--schedule", "cosine"], "'cosine' is not one of warmup-cosine, constant, "
         "plateau"),
        (["demo", "--plateau-factor", "0.5"],
         "--plateau-factor applies to --schedule plateau only, not to --schedule warmup-cosine"),
        (["demo", "--schedule", "plateau", "--warmup", "5"],
         "--warmup applies to --schedule warmup-cosine only, not to --schedule plateau"),
        (["demo", "--schedule", "plateau", "--plateau-factor", "1"],
         "argument --plateau-factor: '1' is outside (0.0, 1.0)"),
        (["demo", "--schedule", "plateau", "--plateau-patience", "-1"],
         "argument --plateau-patience: expected a non-negative integer"),
        (["sweep", "--schedule", "constant,plateau"],
         "argument --schedule: plateau is not available in sweep"),
        (["sweep", "--seed", str(2**63)], "argument --seed: expected a seed below 2**63"),
        (["sweep", "--seed", str(2**63 - 1), "--seeds", "2"], "goes beyond the largest seed"),
        (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "--end-lr (0.1) must be greater"),
        (["lr-find", "--num-steps", "5"], "--num-steps must be at least 10"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
  code = cli.main(argv + (["--out", str(tmp_path)] if argv and argv[0] != "frobnicate" else []))
  err = capsys.readouterr().err
  assert code == 2
  assert message in err
  assert err.count("\n") == 1 and "Traceback" not in err


def test_console_entry_point_bad_input(tmp_path):
  """The real process: exit status 2, one line on stderr, nothing written."""
  proc = subprocess.run(
      [sys.executable, "-c", "import sys; from adam_jax.cli import main; sys.exit(main())",
       "demo", "--batch-size", "0", "--out", str(tmp_path / "x")],
      capture_output=True, text=True, timeout=120,
  )
  assert proc.returncode == 2
  assert proc.stderr == (
      "adam-jax demo: error: argument --batch-size: expected a positive integer, got '0'\n")
  assert not (tmp_path / "x").exists()


def test_console_entry_point_interrupted_while_jax_loads(tmp_path):
  """Ctrl-C while the first command imports JAX: exit 130 and one line, no traceback.

  The package imports nothing heavy (``import adam_jax`` stays cheap), so the console
  script's own imports finish at once and JAX loads inside the command, where the
  interrupt is handled. The signal is sent once jaxlib's shared library is mapped,
  that is, while ``import jax`` runs."""
  code = "import sys; from adam_jax.cli import main; sys.exit(main())"
  proc = subprocess.Popen([sys.executable, "-c", code, "demo", "--out", str(tmp_path / "x")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  maps = f"/proc/{proc.pid}/maps"
  try:
    deadline = time.monotonic() + 60
    while True:
      try:
        with open(maps) as f:
          if "jaxlib" in f.read():
            break
      except OSError:
        pytest.skip("needs /proc")
      assert proc.poll() is None and time.monotonic() < deadline
      time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == 130, err
  assert err.count("\n") == 1 and "Traceback" not in err, err
  assert "interrupted" in err


def test_importing_the_package_imports_no_jax():
  code = ("import sys, adam_jax, adam_jax.cli\n"
          "print('jax' in sys.modules)\n"
          "adam_jax.adam\n"
          "print('jax' in sys.modules, 'adam' in dir(adam_jax),\n"
          "      callable(adam_jax.tuning.grid_search))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["False", "True", "True", "True"]


def test_the_package_stub_names_every_lazily_loaded_name():
  """``__init__.pyi`` gives type checkers and editors what ``__getattr__`` loads."""
  import ast
  import pathlib

  import adam_jax

  stub = pathlib.Path(adam_jax.__file__).with_suffix(".pyi")
  imported = {}
  for node in ast.parse(stub.read_text()).body:
    if isinstance(node, ast.ImportFrom):
      for alias in node.names:
        assert alias.asname == alias.name  # an explicit re-export
        imported[alias.name] = node.module
  assert set(imported) == set(adam_jax.__all__) | {"tasks", "tuning"}
  for name, module in imported.items():
    source = importlib.import_module(module)
    assert getattr(adam_jax, name) is getattr(source, name)


def test_console_script_imports_flax_without_ipython():
  """The start-up shortcut: flax.nnx loads, IPython stays unloaded and importable afterwards."""
  code = (
      "import importlib.util, sys\n"
      "from adam_jax import cli\n"
      "cli._common.import_flax_outside_ipython()\n"
      "print('flax.nnx' in sys.modules, 'IPython' in sys.modules)\n"
      "if importlib.util.find_spec('IPython') is not None:\n"
      "  import IPython\n"
      "  print(IPython.get_ipython() is None)\n"
      "else:\n"
      "  print(True)\n"
  )
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["True", "False", "True"]


def test_help_lists_examples(capsys):
  assert cli.main(["demo", "--help"]) == 0
  out = capsys.readouterr().out
  assert "examples:" in out and "--seed" in out and "--data" in out and "--out" in out


def test_lr_find_writes_suggestion_and_plot(tmp_path, capsys):
  out = tmp_path / "lr"
  assert cli.main(["lr-find", "--hidden", "16", "--num-steps", "60", "--out", str(out)]) == 0
  result = json.loads((out / "lr_find.json").read_text())
  printed = capsys.readouterr().out
  assert f"suggested learning rate: {result['suggestion']:.3g}" in printed
  assert len(result["lrs"]) == result["steps_run"] == 60
  assert result["lrs"][0] == 1e-6 and abs(result["lrs"][-1] - 1.0) < 1e-9
  assert 1e-6 < result["suggestion"] < 1 and 1e-6 < result["valley"] < 1
  assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


class _InterruptingBar:
  """Stands in for the progress bar: Ctrl-C arrives after ``after`` finished rows."""

  def __init__(self, after):
    self.after, self.n = after, 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def update(self, k):
    self.n += k
    if self.n >= self.after:
      raise KeyboardInterrupt

  def set_description(self, text):
    pass

  def write(self, text):
    pass

  def close(self):
    pass


def _interrupt_chunk(monkeypatch, at):
  """Ctrl-C arrives when the ``at``-th chunk of steps starts; returns the chunks started."""
  run = _runner.run_chunk_hook
  chunks = []

  def hook(*args):
    chunks.append(args[2])
    if len(chunks) == at:
      raise KeyboardInterrupt
    return run(*args)

  monkeypatch.setattr(_runner, "run_chunk_hook", hook)
  return chunks


@pytest.mark.usefixtures("compile_once")
def test_sweep_interrupt_then_resume(tmp_path, capsys, monkeypatch):
  out = tmp_path / "sweep"
  argv = ["sweep", "--lr", "3e-3,3e-2", "--hidden", "8,16", "--steps", "15", "--out", str(out)]
  _interrupt_chunk(monkeypatch, at=2)  # during the second group (hidden 16)
  assert cli.main(argv) == 130
  err = capsys.readouterr().err
  assert "interrupted" in err and "--resume" in err and "Traceback" not in err
  with open(out / "results.csv") as f:
    first = list(csv.DictReader(f))
  assert [(r["learning_rate"], r["hidden"]) for r in first] == [("0.003", "8"), ("0.03", "8")]

  monkeypatch.undo()
  assert cli.main(argv + ["--resume", "--diagnostics", "--seeds", "1"]) == 0
  printed = capsys.readouterr().out
  assert "trained 2 configurations" in printed and "(2 resumed)" in printed
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["learning_rate", "b1", "b2", "eps", "weight_decay", "schedule",
                           "layers", "hidden", "batch_size", "train_loss", "val_loss",
                           "val_accuracy", "diverged"]
  assert sorted((r["learning_rate"], r["hidden"]) for r in rows) == [
      ("0.003", "16"), ("0.003", "8"), ("0.03", "16"), ("0.03", "8")]
  assert rows[:2] == first  # the finished rows were kept as they were
  best = json.loads((out / "best.json").read_text())
  want = min(rows, key=lambda r: float(r["val_loss"]))
  assert (best["learning_rate"], best["hidden"], best["val_loss"]) == (
      float(want["learning_rate"]), int(want["hidden"]), float(want["val_loss"]))
  assert best["diagnostics"]["config"]["hidden"] == 16  # only the resumed group was monitored
  for name in ("heatmap.png", "curves.png", "diagnostics.png"):
    assert (out / name).read_bytes()[:4] == b"\x89PNG"

  assert cli.main(argv[:-4] + ["--steps", "16", "--out", str(out), "--resume"]) == 2
  assert "cannot resume" in capsys.readouterr().err


def test_sweep_seeds_and_any_optimizer(tmp_path, capsys):
  out = tmp_path / "seeds"
  argv = ["sweep", "--lr", "1e-2", "--b1", "0.9,0.5", "--hidden", "8", "--steps", "10",
          "--optimizer", "nadamw", "--weight-decay", "1e-2", "--seeds", "2", "--seed", "3",
          "--out", str(out)]
  assert cli.main(argv) == 0
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["b1"] for r in rows] == ["0.9", "0.5"]
  assert float(rows[0]["val_loss_std"]) > 0  # two seeds: initial params and batches differ
  best = json.loads((out / "best.json").read_text())
  assert best["optimizer"] == "nadamw" and best["seeds"] == [3, 4]
  assert "best: b1=" in capsys.readouterr().out


@pytest.mark.usefixtures("compile_once")
def test_sweep_resumes_an_interrupted_group_from_its_checkpoint(tmp_path, capsys, monkeypatch):
  argv = ["sweep", "--lr", "3e-3,3e-2", "--hidden", "8", "--steps", "30",
          "--checkpoint-every", "10"]
  assert cli.main(argv + ["--out", str(tmp_path / "full")]) == 0
  _interrupt_chunk(monkeypatch, at=2)
  out = tmp_path / "cut"
  assert cli.main(argv + ["--out", str(out)]) == 130
  err = capsys.readouterr().err
  assert "checkpoints the training in progress" in err and "--resume" in err
  monkeypatch.undo()
  chunks = _interrupt_chunk(monkeypatch, at=0)
  assert cli.main(argv + ["--out", str(out), "--resume"]) == 0
  assert chunks == [10, 20]  # the first of the three chunks was restored, not retrained
  assert "trained 2 configurations" in capsys.readouterr().out
  for name in ("results.csv", "curves.jsonl"):
    assert (out / name).read_text() == (tmp_path / "full" / name).read_text()
  assert not (out / "checkpoints").exists()


@pytest.mark.usefixtures("compile_once")
def test_demo_interrupt_then_resume_matches_an_uninterrupted_run(demo_run, tmp_path, capsys,
                                                                  monkeypatch):
  _, full = demo_run
  out = tmp_path / "demo"
  monkeypatch.setattr(_common, "progress", lambda *a, **k: _InterruptingBar(after=200))
  assert cli.main(DEMO + ["--out", str(out)]) == 130
  assert "continue from step 100" in capsys.readouterr().err
  monkeypatch.undo()
  assert cli.main(DEMO[:2] + ["400"] + DEMO[3:] + ["--out", str(out), "--resume"]) == 2
  assert "cannot resume" in capsys.readouterr().err
  assert cli.main(DEMO + ["--out", str(out), "--resume"]) == 0
  assert "resuming from step 100" in capsys.readouterr().out
  got = json.loads((out / "results.json").read_text())
  want = json.loads((full / "results.json").read_text())
  assert got["resumed_from_step"] == 100
  np.testing.assert_allclose(got["curve"], want["curve"], rtol=1e-6)
  assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-6)


def test_demo_numbers_are_the_library_training_evaluated_by_the_users_loss(tmp_path, capsys):
  """demo runs tuning.train on tasks.digits_mlp; its numbers are loss_fn of the trained model."""
  import adam_jax
  from adam_jax import tasks, tuning

  argv = ["demo", "--steps", "60", "--eval-every", "30", "--hidden", "8", "--lr", "1e-2",
          "--schedule", "constant", "--seed", "3", "--checkpoint-every", "0"]
  assert cli.main(argv + ["--out", str(tmp_path)]) == 0
  assert "Adam at a constant lr 0.01" in capsys.readouterr().out
  got = json.loads((tmp_path / "results.json").read_text())
  problem = tasks.digits_mlp(hidden=8, seed=3)
  result = tuning.train(problem, adam_jax.adam(1e-2), 60, seed=3, eval_every=30)
  np.testing.assert_allclose(got["curve"], result.curve, rtol=1e-6)
  for split in ("train", "val"):
    loss, aux = problem.loss_fn(result.model, getattr(problem, f"{split}_data"))
    assert got[f"{split}_loss"] == pytest.approx(float(loss), rel=1e-6)
    assert got[f"{split}_accuracy"] == pytest.approx(float(aux["accuracy"]), abs=1e-7)
  assert [h["lr"] for h in got["history"]] == [pytest.approx(1e-2)] * 2
  assert got["history"][-1]["val_loss"] == pytest.approx(got["val_loss"], rel=1e-5)


def test_demo_plateau_schedule_reduces_the_rate_on_the_mean_train_loss(tmp_path, capsys):
  argv = ["demo", "--schedule", "plateau", "--lr", "0.1", "--plateau-factor", "0.5",
          "--plateau-patience", "0", "--steps", "200", "--eval-every", "10", "--hidden", "16",
          "--checkpoint-every", "0", "--out", str(tmp_path)]
  assert cli.main(argv) == 0
  assert "times 0.5 when the mean train loss" in capsys.readouterr().out
  got = json.loads((tmp_path / "results.json").read_text())
  assert got["schedule"] == "plateau" and got["plateau_patience"] == 0
  # torch's rule (relative threshold 1e-4), replayed on the printed interval means.
  best, bad, lr, want = math.inf, 0, 0.1, []
  for h in got["history"]:
    if h["train_loss"] < best * (1 - 1e-4):
      best, bad = h["train_loss"], 0
    else:
      bad += 1
    if bad > 0:
      lr, bad = lr * 0.5, 0
    want.append(lr)
  lrs = [h["lr"] for h in got["history"]]
  assert min(lrs) < 0.1  # the rate was reduced
  np.testing.assert_allclose(lrs, want, rtol=1e-6)


def test_bench_forwards_its_arguments(capsys):
  assert cli.main(["bench", "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: adam-jax bench") and "--rounds" in out and "--loop" in out
  assert cli.main(["bench", "--rounds", "0"]) == 2
  err = capsys.readouterr().err
  assert err == "adam-jax bench: error: --rounds and --loop must be >= 1\n"


def test_sweep_where_every_configuration_diverges_names_no_best(tmp_path, capsys):
  out = tmp_path / "nan"
  argv = ["sweep", "--lr", "1e30", "--hidden", "8", "--steps", "5", "--checkpoint-every", "0",
          "--out", str(out)]
  assert cli.main(argv) == 1
  assert "no configuration reached a finite validation loss" in capsys.readouterr().err
  best = json.loads((out / "best.json").read_text(), parse_constant=pytest.fail)
  assert best["best"] is None and best["configurations"] == 1
  with open(out / "results.csv") as f:
    assert len(list(csv.DictReader(f))) == 1  # the diverged row is kept


def test_json_files_never_hold_a_bare_nan(tmp_path):
  path = str(tmp_path / "x.json")
  _common.write_json(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf}})
  with open(path) as f:
    got = json.load(f, parse_constant=pytest.fail)
  assert got == {
      "a": None, "b": [1.0, None], "c": {"d": None}}


@pytest.mark.parametrize("command", [["lr-find", "--num-steps", "10"], ["demo", "--steps", "5"],
                                     ["sweep", "--steps", "5"]])
def test_an_unwritable_out_is_refused_before_training(command, capsys, monkeypatch):
  monkeypatch.setattr(_runner, "run_chunk_hook", pytest.fail)  # no sweep training starts
  code = cli.main(command + ["--hidden", "8", "--out", "/proc/self"])  # a folder nobody writes
  err = capsys.readouterr().err
  assert code == 2 and "cannot write to output folder /proc/self" in err
  assert err.count("\n") == 1 and "Traceback" not in err


def test_sweep_into_an_earlier_sweep_needs_resume(tmp_path, capsys):
  out = tmp_path / "s"
  argv = ["sweep", "--lr", "1e-2", "--hidden", "8", "--steps", "5", "--out", str(out)]
  assert cli.main(argv) == 0
  before = (out / "results.csv").read_text()
  capsys.readouterr()
  assert cli.main(argv[:-3] + ["6", "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "already holds an earlier sweep (results.csv)" in err and "--resume" in err
  assert err.count("\n") == 1
  assert (out / "results.csv").read_text() == before


def _write_data(path, n=60, label_offset=0):
  rng = np.random.default_rng(0)
  np.savez(path, x=rng.standard_normal((n, 5)).astype(np.float32),
           y=(rng.integers(0, 3, n) + label_offset) % 3)


@pytest.mark.usefixtures("compile_once")
def test_sweep_resume_refuses_changed_data_or_flags_and_names_a_damaged_record(tmp_path, capsys):
  data, out = tmp_path / "d.npz", tmp_path / "s"
  _write_data(data)
  argv = ["sweep", "--data", str(data), "--lr", "1e-2,1e-1", "--hidden", "4", "--steps", "4",
          "--batch-size", "8", "--checkpoint-every", "0", "--out", str(out)]
  assert cli.main(argv) == 0
  before = (out / "results.csv").read_text()
  capsys.readouterr()
  _write_data(data, label_offset=1)  # same shapes, other labels
  assert cli.main(argv + ["--resume"]) == 2
  err = capsys.readouterr().err
  assert "cannot resume: the data differs" in err and err.count("\n") == 1
  _write_data(data)
  assert cli.main(argv + ["--resume", "--seed", "1"]) == 2
  assert "records a run with seed=0, this one has seed=1" in capsys.readouterr().err
  assert cli.main(argv + ["--resume", "--b1", "0.5"]) == 2
  assert "records a run with b1=[0.9], this one has b1=[0.5]" in capsys.readouterr().err
  assert (out / "results.csv").read_text() == before
  assert cli.main(argv + ["--resume", "--diagnostics"]) == 0  # the same run: nothing to train
  assert "trained 0 configurations" in capsys.readouterr().out
  moved = tmp_path / "moved.npz"
  data.rename(moved)  # the same contents elsewhere: the same run
  assert cli.main(argv[:2] + [str(moved)] + argv[3:] + ["--resume"]) == 0
  capsys.readouterr()
  moved.rename(data)
  for name in ("sweep.json", "search.json"):
    saved = (out / name).read_text()
    (out / name).write_text("{not json")
    assert cli.main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume: {out / name} is damaged" in err and err.count("\n") == 1
    assert "Traceback" not in err
    (out / name).write_text(saved)
  assert (out / "results.csv").read_text() == before


def test_demo_resume_refuses_changed_data_and_names_a_damaged_record(tmp_path, capsys,
                                                                      monkeypatch):
  data, out = tmp_path / "d.npz", tmp_path / "demo"
  _write_data(data)
  argv = ["demo", "--data", str(data), "--steps", "20", "--eval-every", "10",
          "--checkpoint-every", "10", "--hidden", "4", "--batch-size", "8", "--out", str(out)]
  monkeypatch.setattr(_common, "progress", lambda *a, **k: _InterruptingBar(after=20))
  assert cli.main(argv) == 130
  monkeypatch.undo()
  assert (out / "checkpoint").exists()
  capsys.readouterr()
  _write_data(data, label_offset=1)
  assert cli.main(argv + ["--resume"]) == 2
  err = capsys.readouterr().err
  assert "cannot resume: the data differs" in err and err.count("\n") == 1
  _write_data(data)
  (out / "demo_config.json").write_text("[1, 2")
  assert cli.main(argv + ["--resume"]) == 2
  err = capsys.readouterr().err
  assert f"cannot resume: {out / 'demo_config.json'} is damaged" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", [["demo", "--hidden", "3000000", "--layers", "3"],
                                     ["lr-find", "--hidden", "3000000", "--layers", "3"],
                                     ["sweep", "--hidden", "8,3000000", "--layers", "3",
                                      "--lr", "1e-2"]])
def test_a_model_too_large_for_memory_is_refused_before_training(command, tmp_path, capsys):
  code = cli.main(command + ["--out", str(tmp_path / "big")])
  err = capsys.readouterr().err
  assert code == 2 and "needs" in err and "max_memory allows" in err, err
  assert err.count("\n") == 1 and "Traceback" not in err


def test_an_allocation_failure_is_one_line(tmp_path, capsys, monkeypatch):
  import jax

  def exhausted(*args):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                     "allocate 1234 bytes.\nmore detail")

  monkeypatch.setattr(_runner, "run_chunk_hook", exhausted)
  code = cli.main(["sweep", "--lr", "1e-2", "--hidden", "8", "--steps", "5",
                   "--out", str(tmp_path / "oom")])
  err = capsys.readouterr().err
  assert code == 2 and "out of device memory (RESOURCE_EXHAUSTED: Out of memory" in err
  assert err.count("\n") == 1 and "Traceback" not in err


def test_demo_resume_falls_back_from_a_damaged_checkpoint(tmp_path, capsys, monkeypatch):
  out = tmp_path / "demo"
  argv = ["demo", "--steps", "40", "--eval-every", "10", "--checkpoint-every", "10",
          "--hidden", "4", "--out", str(out)]
  monkeypatch.setattr(_common, "progress", lambda *a, **k: _InterruptingBar(after=30))
  assert cli.main(argv) == 130
  monkeypatch.undo()
  saves = sorted((out / "checkpoint").glob("save_*"))
  assert len(saves) == 2  # steps 10 and 20: the previous save is kept
  (saves[-1] / "adam_jax_manifest.json").write_text("")
  capsys.readouterr()
  assert cli.main(argv + ["--resume"]) == 0
  captured = capsys.readouterr()
  assert "resuming from step 10" in captured.out
  warned = [line for line in captured.err.splitlines() if "warning" in line]
  assert len(warned) == 1 and saves[-1].name in warned[0] and "Traceback" not in captured.err
  for save in (out / "checkpoint").glob("save_*"):  # every save damaged: an error, no restart
    (save / "adam_jax_manifest.json").write_text("")
  assert cli.main(argv + ["--resume"]) == 2
  err = capsys.readouterr().err
  assert "cannot resume from" in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.usefixtures("compile_once")
def test_sweep_resume_falls_back_from_a_damaged_checkpoint(tmp_path, capsys, monkeypatch):
  argv = ["sweep", "--lr", "1e-2", "--hidden", "8", "--steps", "40", "--checkpoint-every", "10"]
  _interrupt_chunk(monkeypatch, at=4)  # saves after steps 10, 20 and 30; the last two kept
  assert cli.main(argv + ["--out", str(tmp_path / "newest")]) == 130
  monkeypatch.undo()
  # the same interrupted sweep in a second folder: a copy of the first (less its lock file)
  shutil.copytree(tmp_path / "newest", tmp_path / "every",
                  ignore=shutil.ignore_patterns(".adam_jax.lock"))
  capsys.readouterr()
  group = tmp_path / "newest" / "checkpoints"
  saves = sorted(group.glob("*/save_*"))
  assert len(saves) == 2
  (saves[-1] / "adam_jax_manifest.json").write_text("")
  chunks = _interrupt_chunk(monkeypatch, at=0)
  assert cli.main(argv + ["--out", str(tmp_path / "newest"), "--resume"]) == 0
  assert chunks == [20, 30]  # from the previous save, not from step 0
  err = capsys.readouterr().err
  assert err.count("warning") == 1 and saves[-1].name in err and "Traceback" not in err
  for save in (tmp_path / "every" / "checkpoints").glob("*/save_*"):
    (save / "adam_jax_manifest.json").write_text("")
  assert cli.main(argv + ["--out", str(tmp_path / "every"), "--resume"]) == 2
  err = capsys.readouterr().err
  assert "cannot resume" in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--optimizer", "adamww"], "(did you mean 'adamw'?)"),
    (["sweep", "--task", "digits-mpl"], "(did you mean 'digits-mlp'?)"),
    (["sweep", "--search", "randon"], "(did you mean 'random'?)"),
])
def test_a_misspelt_choice_gets_the_closest_one(argv, message, capsys, tmp_path):
  assert cli.main(argv + ["--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.strip().endswith(message) and err.count("\n") == 1


def test_sweep_prints_its_result_before_drawing_and_writes_tensorboard_runs(tmp_path, capsys,
                                                                             monkeypatch):
  pytest.importorskip("tensorboardX")
  figures = importlib.import_module("adam_jax.cli._figures")
  drawn = []
  heatmap = figures.grid_heatmap

  def grid_heatmap(*args, **kwargs):
    drawn.append(capsys.readouterr().out)  # what was on screen when the figure was drawn
    return heatmap(*args, **kwargs)

  monkeypatch.setattr(figures, "grid_heatmap", grid_heatmap)
  code = cli.main(["sweep", "--lr", "1e-3,1e-2", "--b1", "0.8,0.9", "--weight-decay", "0",
                   "--hidden", "8", "--steps", "20", "--checkpoint-every", "0",
                   "--out", str(tmp_path / "out"), "--tensorboard", str(tmp_path / "tb")])
  assert code == 0
  assert "best: learning_rate=" in drawn[0] and "wrote" not in drawn[0]
  assert "wrote" in capsys.readouterr().out
  assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == [
      "learning_rate=0.001,b1=0.8", "learning_rate=0.001,b1=0.9", "learning_rate=0.01,b1=0.8",
      "learning_rate=0.01,b1=0.9"]
  record = json.loads((tmp_path / "out" / "sweep.json").read_text())
  assert "tensorboard" not in record  # where the logs go changes no result


def test_tensorboard_without_tensorboardx_is_one_line(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
  code = cli.main(["demo", "--out", str(tmp_path), "--tensorboard", str(tmp_path / "tb")])
  err = capsys.readouterr().err
  assert code == 2 and "pip install 'adam-jax[tensorboard]'" in err and err.count("\n") == 1
