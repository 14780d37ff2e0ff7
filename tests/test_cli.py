"""The adam-jax command line, run in-process (plus one run of the real entry point)."""

import json
import subprocess
import sys

import pytest

from adam_jax import cli


def test_demo_trains_and_writes_results(tmp_path, capsys):
  out = tmp_path / "demo"
  code = cli.main(["demo", "--steps", "300", "--eval-every", "100", "--hidden", "32",
                   "--lr", "1e-2", "--out", str(out)])
  assert code == 0
  printed = capsys.readouterr().out
  assert [line.split()[1] for line in printed.splitlines() if line.startswith("step")] == [
      "100/300", "200/300", "300/300"]
  assert "val accuracy" in printed and "steps/s" in printed
  results = json.loads((out / "results.json").read_text())
  assert results["steps"] == 300 and len(results["curve"]) == 300
  assert [h["step"] for h in results["history"]] == [100, 200, 300]
  assert results["val_accuracy"] > 0.85
  assert results["val_loss"] < 0.3 * results["curve"][0]
  assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--lr", "-1"], "argument --lr: '-1' is outside (0.0, inf)"),
        (["demo", "--steps", "abc"], "argument --steps: expected a positive integer, got 'abc'"),
        (["demo", "--task", "mnist"], "'mnist' is not one of digits-mlp, digits-autoencoder"),
        (["demo", "--data", "/nonexistent.npz"], "data file not found: /nonexistent.npz"),
        (["demo", "--steps", "10", "--warmup", "10"], "--warmup (10) must be smaller"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
  code = cli.main(argv + (["--out", str(tmp_path)] if argv and argv[0] == "demo" else []))
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


def test_help_lists_examples(capsys):
  assert cli.main(["demo", "--help"]) == 0
  out = capsys.readouterr().out
  assert "examples:" in out and "--seed" in out and "--data" in out and "--out" in out
