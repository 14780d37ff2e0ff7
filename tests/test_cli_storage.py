"""adam-jax sweep --search optuna with a storage: flags, journal files, counts, local rows."""

import csv
import json
import re

import pytest

from adam_jax import cli

optuna = pytest.importorskip("optuna")
TrialState = optuna.trial.TrialState

TINY = ["--search", "optuna", "--hidden", "4", "--steps", "2"]


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--search", "optuna", "--storage-timeout", "5"],
         "--storage-timeout needs --storage: a study in memory has no database"),
        (["--search", "random", "--heartbeat-interval", "5"],
         "--heartbeat-interval needs --search optuna (this is --search random)"),
        (["--search", "optuna", "--storage", "journal:s.log", "--grace-period", "30"],
         "--grace-period applies to a database --storage; a journal file has neither"),
        (["--search", "optuna", "--storage", "sqlite:///s.db", "--grace-period", "5"],
         "--grace-period (5 s) must be longer than --heartbeat-interval (10 s)"),
        (["--search", "optuna", "--storage", "journal:"],
         "--storage journal:: journal: needs a file path"),
        (["--search", "optuna", "--storage", "sqlite:///s.db", "--storage-timeout", "-1"],
         "argument --storage-timeout: '-1' is outside [0.0, inf)"),
        (["--search", "optuna", "--storage", "journal:/nonexistent/dir/s.log"],
         "--storage journal:/nonexistent/dir/s.log: cannot open the journal file ("),
    ],
)
def test_bad_storage_flags_are_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
  out = tmp_path / "out"
  assert cli.main(["sweep"] + argv + ["--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1 and "Traceback" not in err
  assert not out.exists()  # refused before anything was written


def test_a_missing_database_driver_names_the_extra(capsys, tmp_path):
  try:
    import psycopg2  # noqa: F401
  except ImportError:
    pass
  else:
    pytest.skip("psycopg2 is installed")
  argv = ["sweep", "--search", "optuna", "--storage", "postgresql+psycopg2://me:secret@h/db",
          "--out", str(tmp_path / "out")]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert ("--storage postgresql+psycopg2://me:***@h/db: cannot open the database (no driver "
          "for postgresql+psycopg2:// is installed (No module named 'psycopg2'); pip install "
          "'adam-jax[postgres]' (psycopg 3)") in err
  assert err.count("\n") == 1 and "secret" not in err


def test_help_names_the_drivers_the_journal_and_the_outage_flags(capsys):
  assert cli.main(["sweep", "--help"]) == 0
  out = re.sub(r"-\n\s+", "-", capsys.readouterr().out)  # argparse breaks lines at hyphens
  for text in ("--storage-timeout", "--heartbeat-interval", "--grace-period", "PGPASSWORD",
               "postgresql+psycopg2://", "mysql+pymysql://", "journal:PATH",
               "adam-jax[postgres]"):
    assert text in out, text


@pytest.mark.slow
def test_a_journal_file_is_a_storage_for_workers_that_share_a_file_system(tmp_path, capsys):
  path = tmp_path / "study.log"
  argv = ["sweep", "--study-name", "j", "--trials", "2"] + TINY
  assert cli.main(argv + ["--storage", f"journal:{path}", "--out", str(tmp_path / "w0")]) == 0
  assert "trained 2 trials" in capsys.readouterr().out
  # Another worker, the same file named by its .log ending: the study is there, and done.
  assert cli.main(argv + ["--storage", str(path), "--out", str(tmp_path / "w1")]) == 0
  printed = capsys.readouterr().out
  assert f"({path})" in printed and "trained 0 trials" in printed
  assert "the study holds 2 trials (--trials 2): 2 complete" in printed
  storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
  study = optuna.load_study(study_name="j", storage=storage)
  assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
  assert [r["trial"] for r in _rows(tmp_path / "w1" / "results.csv")] == ["0", "1"]


@pytest.mark.slow
def test_the_count_leaves_out_redone_trials_and_rows_are_appended_as_told(tmp_path, capsys,
                                                                         monkeypatch):
  """A study whose trial 0 was redone as trial 1 (its worker died): 'the study holds 3 trials'
  once two more ran, not '4 of the study's 3'; each trial this worker finished is a line
  of results.csv as soon as it is told, and at the end the file lists the whole study."""
  from adam_jax.cli import _searches

  url = f"sqlite:///{tmp_path / 'study.db'}"
  study = optuna.create_study(study_name="s", storage=url)
  lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
  study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL,
                                            params={"learning_rate": 1e-3},
                                            distributions={"learning_rate": lr}))
  study.add_trial(optuna.trial.create_trial(
      value=2.5, params={"learning_rate": 1e-3}, distributions={"learning_rate": lr},
      user_attrs={"val_loss": 2.5, "steps": 2, "worker": "elsewhere:1"},
      system_attrs={"failed_trial": 0, "retry_history": [0]}))
  seen = []
  append = _searches.TrialLog.append

  def append_and_look(self, trial):
    append(self, trial)
    seen.append(_rows(self.path))

  monkeypatch.setattr(_searches.TrialLog, "append", append_and_look)
  out = tmp_path / "w"
  assert cli.main(["sweep", "--storage", url, "--study-name", "s", "--trials", "3",
                   "--out", str(out)] + TINY) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[1].startswith("trained 2 trials in ")
  assert printed[1].endswith("; the study holds 3 trials (--trials 3): 3 complete, 0 pruned, "
                             "0 failed; 1 trials of stopped workers were redone (each counted "
                             "once)")
  worker = printed[0].rsplit("as worker ", 1)[1]
  assert [[r["trial"] for r in rows] for rows in seen] == [["2"], ["2", "3"]]
  assert all(r["worker"] == worker and r["state"] == "COMPLETE" for r in seen[-1])
  rows = _rows(out / "results.csv")  # the whole study: the redone trial, and its retry
  assert [(r["trial"], r["state"], r["retry_of"]) for r in rows] == [
      ("0", "FAIL", ""), ("1", "COMPLETE", "0"), ("2", "COMPLETE", ""), ("3", "COMPLETE", "")]
  assert rows[2:] == seen[-1]
  best = json.loads((out / "best.json").read_text())
  study = optuna.load_study(study_name="s", storage=url)
  assert best["trial"] == study.best_trial.number and best["best_of"] == "the study"
  mine = min((t for t in study.trials if t.user_attrs.get("worker") == worker),
             key=lambda t: t.value)
  assert best["this_worker"]["best"]["trial"] == mine.number
  assert best["this_worker"]["worker"] == worker
  assert best["counts"]["redone"] == 1 and best["trials_in_study"] == 3
  assert printed[-1].startswith(f"best of the study (3 complete): trial {best['trial']}, ")
  assert "| best of this worker (2 complete): trial " in printed[-1]
