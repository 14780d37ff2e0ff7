"""``adam-jax sweep --search pbt``: population-based training, its files and its summary."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

from adam_jax import _plotting
from adam_jax.cli import _common as common


def check_flags(args: argparse.Namespace, prog: str) -> None:
  """The flags population-based training cannot take, refused in one line each."""
  for given, flag, why in (
      (args.seeds != 1, "--seeds", "every member trains from --seed (one initial model and "
       "batch order)"),
      (args.eval_every is not None, "--eval-every", "members are evaluated at every "
       "--ready-every steps"),
      (args.patience is not None, "--patience", "a poor member copies a better one instead"),
      (args.diagnostics, "--diagnostics", "only grid and random searches record them"),
      (args.tensorboard is not None, "--tensorboard", "write population.csv's history "
       "instead")):
    if given:
      raise common.UsageError(f"{flag} cannot be used with --search pbt: {why}", prog)
  args.population = 16 if args.population is None else args.population
  if args.ready_every is None:
    args.ready_every = max(1, args.steps // 10)
  if args.ready_every >= args.steps:
    raise common.UsageError(f"--ready-every ({args.ready_every}) must be below --steps "
                            f"({args.steps})", prog)


def run_pbt(args: argparse.Namespace, problem: Any, space: dict[str, Any], out: str,
            prog: str) -> int:
  """Trains the population; writes best.json and pbt.png beside the library's files."""
  from adam_jax import tuning
  from adam_jax.cli import _searches

  print(f"{prog}: population-based training of {args.population} members of "
        f"{common.task_label(args)} ({args.optimizer}, {args.steps} steps, ready every "
        f"{args.ready_every}, seed {args.seed}) -> {out}")
  start = time.perf_counter()
  try:
    result = tuning.pbt(problem, _searches.distributions(space), population=args.population,
                        steps=args.steps, ready_every=args.ready_every,
                        optimizer=args.optimizer, seed=args.seed, keep=args.keep,
                        out_dir=out, resume=args.resume, max_memory=args.max_memory,
                        loop=args.loop, checkpoint_every=args.checkpoint_every)
  except ValueError as err:
    raise common.UsageError(str(err), prog) from None
  except KeyboardInterrupt:
    kept = (f"{os.path.join(out, 'checkpoints')} keeps the population in training; run the "
            "same command with --resume to go on" if os.path.isdir(os.path.join(
                out, "checkpoints")) else "no checkpoint was written yet (--checkpoint-every)")
    print(f"{prog}: interrupted; {os.path.join(out, 'population.csv')} keeps the history so "
          f"far; {kept}", file=sys.stderr)
    return 130
  elapsed = time.perf_counter() - start
  return _report(args, out, result, space, elapsed, prog)


def _report(args: argparse.Namespace, out: str, result: Any, space: dict[str, Any],
            elapsed: float, prog: str) -> int:
  best = result.best
  info = {"task": args.task, "optimizer": args.optimizer, "steps": args.steps,
          "seed": args.seed, "data": args.data, "search": "pbt",
          "population": args.population, "ready_every": args.ready_every, "keep": args.keep,
          "wall_s": elapsed, "loop": result.loop}
  print(f"trained {len(result.members)} members in {elapsed:.1f} s "
        f"({len(result.ready_steps)} ready points)")
  if best is None or not math.isfinite(best.metrics["val_loss"]):
    common.write_json(os.path.join(out, "best.json"), {"best": None, **info})
    print(f"{prog}: no member reached a finite validation loss (every one diverged); try "
          "smaller learning rates", file=sys.stderr)
    return 1
  sched = best.schedule
  common.write_json(os.path.join(out, "best.json"), {
      "member": best.index, "initial": best.config, **best.metrics,
      "best_step": best.best_step,
      "schedule": [{"step": s, **{k: v[i] for k, v in sched.values.items()}}
                   for i, s in enumerate(sched.starts)],
      "lineage": [{"step": s, "member": m} for s, m in best.lineage], **info})
  acc = best.metrics.get("val_accuracy")
  acc = "" if acc is None else f", val accuracy {100 * acc:.1f}%"
  at = "" if best.best_step in (-1, args.steps) else f" at step {best.best_step}"
  print(f"best: member {best.index}{at}: val loss {best.metrics['val_loss']:.4f}{acc}",
        flush=True)
  keys = list(sched.values)
  steps = " -> ".join(
      f"{_plotting.config_label({k: sched.values[k][i] for k in keys}, keys)} from {s}"
      for i, s in enumerate(sched.starts))
  print(f"its schedule: {steps}")
  result.plot(os.path.join(out, "pbt.png"))  # after the result lines
  print(f"wrote {os.path.join(out, 'results.csv')}, population.csv, best.json, pbt.png in "
        f"{out}")
  return 0
