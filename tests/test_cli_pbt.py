"""adam-jax sweep --search pbt: a tiny population, its files, and every bad input."""

import csv
import json

import pytest

from adam_jax import cli

TINY = ["--hidden", "4", "--steps", "20", "--checkpoint-every", "0"]


@pytest.mark.parametrize("argv, message", [
    (["--population", "4"], "--population needs --search pbt (this is --search grid)"),
    (["--search", "random", "--ready-every", "5"], "--ready-every needs --search pbt"),
    (["--search", "pbt", "--trials", "4"], "--trials needs --search random, halving or optuna"),
    (["--search", "pbt", "--seeds", "2"], "--seeds cannot be used with --search pbt"),
    (["--search", "pbt", "--eval-every", "5"],
     "--eval-every needs --search grid, random, halving or optuna"),
    (["--search", "pbt", "--diagnostics"], "--diagnostics cannot be used with --search pbt"),
    (["--search", "pbt", "--ready-every", "20", "--steps", "20"],
     "--ready-every (20) must be below --steps (20)"),
    (["--search", "pbt", "--lr", "1e-2", "--b1", "0.9"], "space has nothing to vary"),
    (["--search", "pbt", "--hidden", "4,8"], "space key 'hidden' cannot vary"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
  code = cli.main(["sweep"] + argv + ["--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == 2
  assert message in err
  assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_a_population_trains_and_writes_its_history(tmp_path, capsys):
  out = tmp_path / "pbt"
  argv = ["sweep", "--search", "pbt", "--population", "4", "--ready-every", "5",
          "--lr", "1e-3:1e-1", "--b1", "0.8:0.95", "--out", str(out)] + TINY
  assert cli.main(argv) == 0
  printed = capsys.readouterr().out
  assert "population-based training of 4 members" in printed
  assert "trained 4 members" in printed and "its schedule: " in printed
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  with open(out / "population.csv") as f:
    history = list(csv.DictReader(f))
  assert len(rows) == 4 and len(history) == 4 * 4  # step 0 and the ready points 5, 10, 15
  best = json.loads((out / "best.json").read_text())
  top = min(rows, key=lambda r: float(r["val_loss"]))
  assert best["member"] == int(top["member"]) and best["val_loss"] == float(top["val_loss"])
  assert best["schedule"][0]["step"] == 0 and best["lineage"][-1]["member"] == best["member"]
  assert (out / "pbt.png").read_bytes()[:4] == b"\x89PNG"
  assert cli.main(argv) == 2  # an earlier run is not overwritten
  assert "already holds an earlier" in capsys.readouterr().err
