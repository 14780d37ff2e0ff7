"""adam-jax sweep with validation during training: --eval-every, --keep, --patience."""

import json

import numpy as np
import pytest

from adam_jax import cli


@pytest.mark.parametrize("argv, message", [
    (["--keep", "best"], "--keep best needs --eval-every"),
    (["--patience", "2"], "--patience needs --eval-every"),
    (["--eval-every", "50", "--steps", "20"], "--eval-every (50) must be at most --steps (20)"),
    (["--eval-every", "5", "--patience", "2", "--search", "optuna"],
     "--patience needs --search grid, random or halving (this is --search optuna)"),
    (["--eval-every", "0"], "argument --eval-every"),
    (["--keep", "first"], "argument --keep"),
])
def test_bad_evaluation_flags_are_one_line(argv, message, tmp_path, capsys):
  code = cli.main(["sweep", "--hidden", "4", "--out", str(tmp_path / "o")] + argv)
  err = capsys.readouterr().err
  assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_curves_and_the_best_step_are_written_and_resumed(tmp_path, capsys):
  out = tmp_path / "s"
  argv = ["sweep", "--lr", "1e-2,1e30", "--hidden", "8", "--steps", "40", "--eval-every", "10",
          "--keep", "best", "--patience", "2", "--checkpoint-every", "0", "--out", str(out)]
  assert cli.main(argv) == 0
  items = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
  assert [it["evals"]["step"] for it in items] == [[10, 20, 30, 40]] * 2
  wild = next(it for it in items if it["key"][0] == "learning_rate=1e+30")
  assert wild["stopped_step"][0] < 40 and not np.isfinite(wild["evals"]["val_loss"]).any()
  sane = next(it for it in items if it["key"][0] == "learning_rate=0.01")
  best = json.loads((out / "best.json").read_text())
  assert best["val_loss"] == pytest.approx(min(sane["evals"]["val_loss"]), rel=1e-6)
  assert best["best_step"] == sane["best_step"]
  assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
  capsys.readouterr()
  # a resume trains nothing and keeps the curves it read back
  assert cli.main(argv + ["--resume"]) == 0
  assert "(2 resumed)" in capsys.readouterr().out


@pytest.mark.slow
def test_halving_writes_curves_and_keeps_the_best_of_any_rung(tmp_path, capsys):
  out = tmp_path / "h"
  code = cli.main(["sweep", "--search", "halving", "--trials", "4", "--eta", "2",
                   "--lr", "1e-3:3e-1", "--hidden", "8", "--min-steps", "20", "--steps", "40",
                   "--eval-every", "10", "--keep", "best", "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  items = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
  assert sorted(len(it["evals"]["step"]) for it in items) == [2, 2, 4, 4]
  best = json.loads((out / "best.json").read_text())
  lowest = min(min(it["evals"]["val_loss"]) for it in items)
  assert best["val_loss"] == pytest.approx(lowest, rel=1e-6)


def test_a_learning_rate_of_zero_is_a_baseline_the_sweep_accepts(tmp_path, capsys):
  """The library trains lr=0 (nothing moves); the command line takes it as well."""
  code = cli.main(["sweep", "--lr", "0,1e-2", "--hidden", "4", "--steps", "5",
                   "--checkpoint-every", "0", "--out", str(tmp_path / "z")])
  assert code == 0, capsys.readouterr().err
  rows = (tmp_path / "z" / "results.csv").read_text().splitlines()
  assert len(rows) == 3 and rows[1].startswith("0.0,")


@pytest.mark.slow
def test_demo_keeps_the_best_report_and_stops(tmp_path, capsys):
  out = tmp_path / "d"
  code = cli.main(["demo", "--steps", "400", "--eval-every", "50", "--keep", "best",
                   "--patience", "2", "--lr", "0.2", "--hidden", "16", "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  summary = json.loads((out / "results.json").read_text())
  reports = {h["step"]: h["val_loss"] for h in summary["history"]}
  assert summary["best_step"] == min(reports, key=reports.get)
  assert summary["val_loss"] == pytest.approx(reports[summary["best_step"]], rel=1e-5)
  if summary["stopped_step"] < 400:
    assert max(reports) == summary["stopped_step"]
