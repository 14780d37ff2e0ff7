"""adam-jax sweep --search random, halving and optuna: tiny runs and every bad input."""

import csv
import json
import sys

import pytest

from adam_jax import cli, tuning

optuna = pytest.importorskip("optuna")

TINY = ["--hidden", "4", "--steps", "6", "--checkpoint-every", "0"]
# Optuna's batches train in chunks between reports to the pruner, each chunk compiled: 2 steps.
TINY_OPTUNA = ["--hidden", "4", "--steps", "2"]


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _png(path):
  return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--search", "random", "--lr", "1e-1:1e-5"], "argument --lr: range '1e-1:1e-5' needs LO"),
        (["--search", "random", "--lr", "0:1e-1"],
         "argument --lr: range '0:1e-1' is log-uniform and needs LO > 0"),
        (["--search", "optuna", "--weight-decay", "0:1e-2"],
         "argument --weight-decay: range '0:1e-2' is log-uniform and needs LO > 0"),
        (["--search", "random", "--b1", "0.5:1.0"], "argument --b1: '1.0' is outside [0.0, 1.0)"),
        (["--search", "random", "--lr", "1e-3:1e-2:1e-1"], "expected a range LO:HI, got"),
        (["--search", "random", "--lr", "1e-3:"], "expected a range LO:HI, got '1e-3:'"),
        (["--search", "random", "--hidden", "4:8"], "argument --hidden: expected a positive"),
        (["--lr", "1e-3:1e-1"],
         "--lr: a range (0.001:0.1) needs --search random, halving, optuna or pbt"),
        (["--search", "annealing"], "'annealing' is not one of grid, random, halving, optuna"),
        (["--trials", "4"], "--trials needs --search random, halving or optuna (this is --sea"),
        (["--search", "random", "--eta", "2"], "--eta needs --search halving (this is --search"),
        (["--search", "halving", "--eta", "1"], "argument --eta: expected an integer >= 2"),
        (["--search", "halving", "--min-steps", "50", "--steps", "10"],
         "--min-steps (50) must be at most --steps (10)"),
        (["--storage", "sqlite:///s.db"], "--storage needs --search optuna (this is --search"),
        (["--search", "random", "--study-name", "s"], "--study-name needs --search optuna"),
        (["--search", "halving", "--resume"], "--resume: successive halving keeps no checkpoi"),
        (["--search", "optuna", "--resume"], "--resume with --search optuna needs --storage"),
        (["--search", "optuna", "--diagnostics"], "--diagnostics: only grid and random searc"),
        (["--search", "optuna", "--storage", "foo://x"],
         "--storage foo://x: cannot open the database (Can't load plugin"),
        (["--search", "optuna", "--storage", "not a url"], "cannot open the database (Could"),
        (["--search", "optuna", "--storage", "sqlite:////nonexistent/dir/s.db"],
         "cannot open the database ((sqlite3.OperationalError) unable to open database file"),
        (["--search", "optuna", "--storage", "postgresql://me:secret@127.0.0.1:1/db"],
         "--storage postgresql://me:***@127.0.0.1:1/db: cannot open the database"),
        (["--search", "random", "--trials", "3", "--lr", "1e-3,1e-2"],
         "space has fewer than num_configs=3 distinct configurations (found 2)"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
  out = tmp_path / "out"
  code = cli.main(["sweep"] + argv + ["--out", str(out)])
  err = capsys.readouterr().err
  assert code == 2
  assert message in err
  assert err.count("\n") == 1 and "Traceback" not in err
  if "--storage" in argv:
    assert not out.exists()  # refused before anything was written
  assert "secret" not in err


def test_help_documents_the_searches_and_ranges(capsys):
  assert cli.main(["sweep", "--help"]) == 0
  out = capsys.readouterr().out
  for text in ("--search", "--trials", "--min-steps", "--eta", "--storage", "--study-name",
               "LO:HI", "log-uniform", "halving cannot resume", "--search optuna --trials",
               "--search random --trials 64 --lr 1e-5:1e-1 --b1 0.8:0.99"):
    assert text in out, text


def test_optuna_not_installed_is_one_line(capsys, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
  assert cli.main(["sweep", "--search", "optuna", "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err == ("adam-jax sweep: error: --search optuna needs Optuna, which is not installed: "
                 "pip install 'adam-jax[optuna]'\n")


def test_a_study_that_maximizes_is_refused(capsys, tmp_path):
  url = f"sqlite:///{tmp_path / 's.db'}"
  optuna.create_study(study_name="up", storage=url, direction="maximize")
  argv = ["sweep", "--search", "optuna", "--storage", url, "--study-name", "up"]
  assert cli.main(argv + ["--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "--study-name 'up': the study in --storage does not minimize one objective" in err
  assert err.count("\n") == 1


@pytest.mark.slow
def test_random_search_draws_its_configurations_and_resumes(tmp_path, capsys):
  out = tmp_path / "random"
  argv = ["sweep", "--search", "random", "--trials", "4", "--lr", "1e-3:1e-1",
          "--b1", "0.8:0.95", "--schedule", "constant,cosine", "--seed", "5", "--out", str(out)]
  assert cli.main(argv + TINY) == 0
  printed = capsys.readouterr().out
  assert "4 random configurations" in printed and "trained 4 configurations" in printed
  rows = _rows(out / "results.csv")
  want = tuning.sample_configs({"learning_rate": tuning.log_uniform(1e-3, 1e-1),
                                "b1": tuning.uniform(0.8, 0.95),
                                "schedule": tuning.choice(["constant", "cosine"])}, 4, seed=5)
  assert [(float(r["learning_rate"]), float(r["b1"]), r["schedule"]) for r in rows] == [
      (c["learning_rate"], c["b1"], c["schedule"]) for c in want]
  best = json.loads((out / "best.json").read_text())
  top = min(rows, key=lambda r: float(r["val_loss"]))
  assert best["search"] == "random" and best["val_loss"] == float(top["val_loss"])
  assert best["learning_rate"] == float(top["learning_rate"])
  assert _png(out / "heatmap.png") and _png(out / "curves.png")

  assert cli.main(argv + TINY + ["--resume"]) == 0
  assert "trained 0 configurations" in capsys.readouterr().out  # every row kept
  assert _rows(out / "results.csv") == rows
  assert cli.main(argv[:4] + ["5"] + argv[5:] + TINY + ["--resume"]) == 2
  assert "cannot resume" in capsys.readouterr().err


@pytest.mark.slow
def test_halving_continues_the_best_third_to_the_last_rung(tmp_path, capsys):
  out = tmp_path / "halving"
  argv = ["sweep", "--search", "halving", "--trials", "9", "--min-steps", "2", "--steps", "6",
          "--eta", "3", "--lr", "1e-3:1e-1", "--hidden", "4", "--out", str(out)]
  assert cli.main(argv) == 0
  assert "trained 9 configurations" in capsys.readouterr().out
  rows = _rows(out / "results.csv")
  assert sorted((r["rung"], r["steps"]) for r in rows) == [("0", "2")] * 6 + [("1", "6")] * 3
  survivors = [r for r in rows if r["rung"] == "1"]
  best = json.loads((out / "best.json").read_text())
  top = min(survivors, key=lambda r: float(r["val_loss"]))
  assert best["steps_trained"] == 6 and best["val_loss"] == float(top["val_loss"])
  assert best["search"] == "halving" and best["min_steps"] == 2 and best["eta"] == 3
  assert _png(out / "heatmap.png") and _png(out / "curves.png")


@pytest.mark.slow
def test_optuna_writes_its_plots_and_a_persistent_study_goes_on(tmp_path, capsys):
  url = f"sqlite:///{tmp_path / 'study.db'}"
  argv = ["sweep", "--search", "optuna", "--lr", "1e-3:1e-1", "--b1", "0.8:0.95",
          "--storage", url, "--study-name", "s"] + TINY_OPTUNA
  out = tmp_path / "w1"
  assert cli.main(argv + ["--trials", "3", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "trained 3 trials" in printed
  for name in ("heatmap.png", "curves.png", "optuna_history.png", "optuna_importances.png"):
    assert _png(out / name), name
  rows = _rows(out / "results.csv")
  assert [(r["trial"], r["state"], r["steps"]) for r in rows] == [
      (str(i), "COMPLETE", "2") for i in range(3)]

  # The same command, --trials raised: the study goes on (another --out: another worker).
  out2 = tmp_path / "w2"
  assert cli.main(argv + ["--trials", "4", "--out", str(out2)]) == 0
  assert "trained 1 trials" in capsys.readouterr().out
  study = optuna.load_study(study_name="s", storage=url)
  assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
  rows = _rows(out2 / "results.csv")
  assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
  best = json.loads((out2 / "best.json").read_text())
  assert best["trial"] == study.best_trial.number and best["val_loss"] == study.best_value
  assert best["learning_rate"] == study.best_params["learning_rate"]
  assert best["trials_in_study"] == 4 and best["trained_now"] == 1
  assert cli.main(argv + ["--trials", "4", "--out", str(out2)]) == 2  # an earlier sweep there
  assert "--resume" in capsys.readouterr().err
  assert cli.main(argv + ["--trials", "4", "--out", str(out2), "--resume"]) == 0
  assert "trained 0 trials" in capsys.readouterr().out


@pytest.mark.slow
def test_optuna_in_memory_with_one_parameter_skips_the_importances(tmp_path, capsys):
  out = tmp_path / "one"
  argv = ["sweep", "--search", "optuna", "--trials", "3", "--out", str(out)] + TINY_OPTUNA
  assert cli.main(argv) == 0
  printed = capsys.readouterr().out
  assert ("skipped optuna_importances.png: parameter importances need at least 2 complete "
          "trials and 2 sampled parameters (the study has 3 and 1)") in printed
  assert _png(out / "optuna_history.png") and not (out / "optuna_importances.png").exists()
  rows = _rows(out / "results.csv")
  assert len(rows) == 3 and all(1e-4 <= float(r["learning_rate"]) <= 1e-2 for r in rows)
