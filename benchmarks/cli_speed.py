"""The whole ``adam-jax sweep`` of 16 learning rates against a Python loop of 16 optax trainings.

Both as a user runs them, whole processes (start-up, imports, data, compilation, training,
files and figures included), interleaved round by round in one run of this script:

* ``adam-jax sweep --lr <16 values>``: the digits MLP (64-128-10, batch 32, Adam, 1000 steps),
  16 learning rates (geomspace 1e-4..1e-1) in one vectorized program;
* the plain script of ``sweep_speed.py``: the same model and data, 16 ``optax.adam`` trainings,
  each a Python loop over a jitted step (what users write).

For the command it also reads when each line appeared, so the fixed cost is split into the
time to its first line (imports and argument checks), the search (the "trained ... in X s"
line: data on the device, compilation, training, evaluation), the time to the result line
("best: ..."), and what follows it (figures, exit). Reports medians and the ratio of each round.

Usage::

  python benchmarks/cli_speed.py [--rounds 5] [--steps 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep_speed import PLAIN_SCRIPT  # noqa: E402 - the same plain loop as that benchmark

LRS = np.geomspace(1e-4, 1e-1, 16)


def _cli() -> list[str]:
  """The command as this interpreter runs it: the same Python as the plain loop, and the
  ``adam_jax`` its ``sys.path`` finds (``PYTHONPATH`` is passed through), not whatever
  ``adam-jax`` is first on ``PATH`` (another environment, or a version manager's shim that
  adds a shell start-up to every run)."""
  return [sys.executable, "-m", "adam_jax.cli"]


def _timed_lines(cmd: list[str]) -> tuple[float, list[tuple[float, str]]]:
  """Runs ``cmd``; returns its wall time and each stdout line with the second it appeared."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
  lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
  err = proc.stderr.read()
  if proc.wait() != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
  return time.perf_counter() - start, lines


def _phases(lines: list[tuple[float, str]]) -> dict[str, float]:
  first = lines[0][0]
  trained = next(line for _, line in lines if line.startswith("trained "))
  search = float(re.search(r"in ([0-9.]+) s", trained).group(1))
  result = next(t for t, line in lines if line.startswith("best: "))
  return {"first_line_s": first, "search_s": search, "result_line_s": result}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--json", default=None, help="also write the report to this file")
  args = parser.parse_args()
  lr_text = ",".join(f"{v:.6g}" for v in LRS)
  work = tempfile.mkdtemp(prefix="cli_speed_")
  plain = os.path.join(work, "plain.py")
  with open(plain, "w") as f:
    f.write(PLAIN_SCRIPT)
  times: dict[str, list[float]] = {"adam-jax sweep": [], "plain optax loop": []}
  phases: list[dict[str, float]] = []
  try:
    for r in range(args.rounds):
      wall, lines = _timed_lines(_cli() + ["sweep", "--lr", lr_text, "--steps", str(args.steps),
                                           "--out", os.path.join(work, f"sweep{r}")])
      times["adam-jax sweep"].append(wall)
      phases.append({**_phases(lines), "wall_s": wall})
      wall, _ = _timed_lines([sys.executable, plain, str(args.steps), lr_text])
      times["plain optax loop"].append(wall)
      print(f"round {r + 1}: sweep {times['adam-jax sweep'][-1]:.2f} s (result line at "
            f"{phases[-1]['result_line_s']:.2f} s, search {phases[-1]['search_s']:.2f} s), "
            f"plain loop {wall:.2f} s: {wall / times['adam-jax sweep'][-1]:.2f}x", flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  med_phase = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
      "load_average": os.getloadavg(),
      "steps": args.steps, "rounds": args.rounds, "times_s": times, "median_s": med,
      "sweep_phases_median_s": med_phase, "sweep_phases": phases,
      "ratio_of_medians": med["plain optax loop"] / med["adam-jax sweep"],
      "ratio_per_round": [p / s for p, s in zip(times["plain optax loop"],
                                                  times["adam-jax sweep"])],
      "ratio_to_result_line_per_round": [p / ph["result_line_s"] for p, ph in zip(
          times["plain optax loop"], phases)],
  }
  print(json.dumps(report, indent=2))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  main()
