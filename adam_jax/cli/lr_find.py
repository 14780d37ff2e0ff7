"""``adam-jax lr-find``: the learning-rate range test on a digits problem."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from adam_jax.cli import _common as common

PROG = "adam-jax lr-find"


def add_parser(sub: Any) -> None:
  p = sub.add_parser(
      "lr-find",
      help="the learning-rate range test: suggests a learning rate for Adam",
      description="Trains the task while the learning rate grows exponentially from --start-lr "
                  "to --end-lr, stops when the smoothed loss exceeds 4x its best, and suggests "
                  "the learning rate where the loss falls fastest. Writes lr_find.json and "
                  "lr_find.png.",
      epilog="examples:\n"
             "  adam-jax lr-find\n"
             "  adam-jax lr-find --start-lr 1e-7 --end-lr 10 --num-steps 100\n"
             "  adam-jax lr-find --optimizer nadamw --task digits-autoencoder --out runs/lr-ae",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  common.add_common(p, "runs/lr-find")
  p.add_argument("--start-lr", default=1e-6, type=common.POS_FLOAT,
                 help="first learning rate (1e-6)")
  p.add_argument("--end-lr", default=1.0, type=common.POS_FLOAT, help="last learning rate (1)")
  p.add_argument("--num-steps", default=200, type=common.positive_int,
                 help="most steps of the test (200; at least 10)")
  p.add_argument("--optimizer", default="adam", type=common.optimizer_name,
                 help="any optimizer of adam_jax.optimizers() (default: adam)")
  p.add_argument("--layers", default=1, type=common.positive_int, help="hidden layers (1)")
  p.add_argument("--hidden", default=128, type=common.positive_int,
                 help="units per hidden layer (128)")
  p.add_argument("--batch-size", default=32, type=common.positive_int, help="mini-batch size (32)")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  if args.end_lr <= args.start_lr:
    raise common.UsageError(f"--end-lr ({args.end_lr:g}) must be greater than --start-lr "
                            f"({args.start_lr:g})", PROG)
  if args.num_steps < 10:
    raise common.UsageError(f"--num-steps must be at least 10, got {args.num_steps}", PROG)
  out = common.make_out(args.out, PROG)
  problem = common.build_problem(args, PROG, layers=args.layers, hidden=args.hidden,
                                 batch_size=args.batch_size)

  from adam_jax.tuning import lr_find

  print(f"{PROG}: {common.task_label(args)}, {args.optimizer}, learning rate from "
        f"{args.start_lr:g} to {args.end_lr:g} over at most {args.num_steps} steps")
  start = time.perf_counter()
  try:
    result = lr_find(problem, optimizer=args.optimizer, start_lr=args.start_lr,
                     end_lr=args.end_lr, num_steps=args.num_steps, seed=args.seed,
                     max_memory=args.max_memory)
  except ValueError as err:
    raise common.UsageError(str(err), PROG) from None
  elapsed = time.perf_counter() - start
  payload = {
      "task": args.task, "optimizer": args.optimizer, "seed": args.seed, "data": args.data,
      "suggestion": result.suggestion, "valley": result.valley, "reason": result.reason,
      "diverged": result.diverged, "steps_run": len(result.lrs),
      "lrs": result.lrs.tolist(), "losses": result.losses.tolist(),
      "raw_losses": result.raw_losses.tolist(),
  }
  common.write_json(os.path.join(out, "lr_find.json"), payload)
  result.plot(os.path.join(out, "lr_find.png"), title=f"LR range test: {args.task}")
  stop = (f"stopped at lr {result.lrs[-1]:.3g} (loss diverged)" if result.diverged
          else "no divergence")
  print(f"{len(result.lrs)} steps in {elapsed:.1f} s, {stop}")
  if result.suggestion is not None:
    print(f"suggested learning rate: {result.suggestion:.3g} (steepest descent); "
          f"valley rule: {result.valley:.3g}")
  print(f"wrote {os.path.join(out, 'lr_find.json')} and {os.path.join(out, 'lr_find.png')}")
  if result.suggestion is None:
    print(f"{PROG}: no suggested learning rate: {result.reason}", file=sys.stderr)
    return 1
  return 0
