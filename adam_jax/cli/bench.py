"""``adam-jax bench``: forwards to the step-time benchmark."""

from __future__ import annotations

import sys
from typing import Any

from adam_jax.cli import _common as common


def add_parser(sub: Any) -> None:
  sub.add_parser(
      "bench",
      add_help=False,
      help="time one Adam step against optax on this machine (see adam-jax bench --help)",
  )


def run(argv: list[str]) -> int:
  """Forwards to the step-time benchmark, :func:`adam_jax._benchmarking.main`."""
  import contextlib
  import io

  from adam_jax import _benchmarking as benchmarking

  errors = io.StringIO()  # argparse's usage lines are held back: bad input gets one line
  try:
    with contextlib.redirect_stderr(errors):
      code = int(benchmarking.main(argv) or 0)
  except SystemExit as err:
    if err.code == 2:
      lines = errors.getvalue().strip().splitlines()
      print(lines[-1] if lines else "adam-jax bench: error: bad arguments", file=sys.stderr)
      return 2
    sys.stderr.write(errors.getvalue())
    raise
  except ValueError as err:
    raise common.UsageError(str(err), "adam-jax bench") from None
  sys.stderr.write(errors.getvalue())
  return code


