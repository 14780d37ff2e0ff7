"""The ``adam-jax`` command line: demo, lr-find, sweep, bench (a module per command).

Heavy modules (jax, flax, scikit-learn, matplotlib) are imported inside the
commands, so ``adam-jax --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from adam_jax import _lock
from adam_jax.cli import _common as common
from adam_jax.cli import bench, demo, lr_find, sweep


def _build_parser() -> argparse.ArgumentParser:
  parser = common.Parser(
      prog="adam-jax",
      description="The Adam family for JAX: a demo, a learning-rate finder, vectorized "
                  "hyperparameter sweeps and a step-time benchmark.",
      epilog="examples:\n"
             "  adam-jax demo\n"
             "  adam-jax lr-find\n"
             "  adam-jax sweep --lr 1e-4,3e-4,1e-3,3e-3 --b1 0.9,0.95 --steps 500\n"
             "  adam-jax sweep --search optuna --trials 64 --lr 1e-5:1e-1 --b1 0.8:0.99\n"
             "  adam-jax sweep --help\n"
             "  adam-jax bench --rounds 10",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=common.Parser)
  sub.required = True
  demo.add_parser(sub)
  lr_find.add_parser(sub)
  sweep.add_parser(sub)
  bench.add_parser(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``adam-jax``; returns the exit code (2 for bad input or a model that does not fit
  in memory, 130 when interrupted)."""
  code = _main(argv)
  if argv is None:  # the console script: its files are written and closed; skip the teardown
    common.exit_now(code)
  return code


def _main(argv: Sequence[str] | None) -> int:
  parser = _build_parser()
  as_program = argv is None  # the console script: this process is ours to configure
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    # Ctrl-C is held while JAX and Flax load (see common.interrupts_held), then honoured.
    with common.interrupts_held(as_program):
      args = None if argv[:1] == ["bench"] else parser.parse_args(argv)
      if as_program:
        common.prefer_fast_compilation()
        if args is not None:  # bench times optimizer steps: no model, no flax
          common.import_flax_outside_ipython()
        common.import_jax()
    if args is None:  # its own flags: see adam-jax bench --help
      return bench.run(argv[1:])
    common.preload("matplotlib.figure", "matplotlib.backends.backend_agg")
    with _lock.scope():  # the lock of --out is given back when the command ends
      return args.run(args)
  except common.UsageError as err:
    print(f"{err.prog}: error: {err}", file=sys.stderr)
    return 2
  except SystemExit as err:  # --help
    return err.code if isinstance(err.code, int) else 0
  except KeyboardInterrupt:
    print("adam-jax: interrupted; files written so far are kept", file=sys.stderr)
    return 130
  except Exception as err:  # noqa: BLE001 - only XLA's allocation failure is handled
    if not common.is_out_of_memory(err):
      raise
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"adam-jax: error: out of device memory ({first}); files written so far are kept; "
          "use fewer or smaller models, or smaller batches", file=sys.stderr)
    return 2

