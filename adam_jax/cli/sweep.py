"""``adam-jax sweep``: a vectorized grid search on a digits problem."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from typing import Any

from adam_jax.cli import _common as common

PROG = "adam-jax sweep"


def _schedule(text: str) -> str:
  """A ``--schedule`` value; ``plateau`` is refused (it is not a function of the step)."""
  if text == "plateau":
    raise argparse.ArgumentTypeError(
        "plateau is not available in sweep (reduce-on-plateau follows each run's own losses, "
        "so it cannot be vmapped with the step schedules); use adam-jax demo --schedule "
        "plateau, or tuning.grid_search with a factory chaining adam_jax.reduce_on_plateau")
  return common.choice_of(("constant", "cosine", "step", "exponential"))(text)


# (space key, flag, parse, default, help): every flag takes comma-separated values.
FLAGS = (
    ("learning_rate", "--lr", common.list_of(common.POS_FLOAT), "1e-4,3e-4,1e-3,3e-3,1e-2",
     "peak learning rates"),
    ("b1", "--b1", common.list_of(common.BETA), "0.9", "first-moment decay rates, in [0, 1)"),
    ("b2", "--b2", common.list_of(common.BETA), "0.999", "second-moment decay rates, in [0, 1)"),
    ("eps", "--eps", common.list_of(common.NONNEG_FLOAT), "1e-8", "eps values (>= 0)"),
    ("weight_decay", "--weight-decay", common.list_of(common.NONNEG_FLOAT), "0",
     "weight decay (>= 0): coupled L2 for adam, decoupled for adamw"),
    ("schedule", "--schedule", common.list_of(_schedule), "constant",
     "constant, cosine (to 0), step (x0.1 each third), exponential (to 1%%)"),
    ("layers", "--layers", common.list_of(common.positive_int), "1", "hidden layers"),
    ("hidden", "--hidden", common.list_of(common.positive_int), "128", "units per hidden layer"),
    ("batch_size", "--batch-size", common.list_of(common.positive_int), "32", "mini-batch sizes"),
)
SHAPE_KEYS = ("layers", "hidden", "batch_size")
RECORD = "sweep.json"  # the flags and the data digest of the run in --out
_NOT_RECORDED = ("run", "command", "out", "resume", "diagnostics",  # these change no result
                 "data")  # its contents are: data_sha256


def add_parser(sub: Any) -> None:
  p = sub.add_parser(
      "sweep",
      help="grid search over Adam's hyperparameters, vectorized with jax.vmap",
      description="Trains every combination of the given values with adam_jax.tuning."
                  "grid_search. Values of lr, b1, b2, eps, weight decay and schedule, and the "
                  "seeds, are trained together in one compiled, vmapped program (spread over "
                  "the devices present); layers, hidden units and batch sizes each need their "
                  "own program. Each flag takes comma-separated values. Writes results.csv (a "
                  "row as each group finishes), best.json, heatmap.png and curves.png.",
      epilog="examples:\n"
             "  adam-jax sweep --lr 1e-4,3e-4,1e-3,3e-3 --b1 0.9,0.95 --steps 500\n"
             "  adam-jax sweep --lr 1e-3,1e-2 --schedule constant,cosine --hidden 64,128\n"
             "  adam-jax sweep --lr 1e-3,3e-3 --weight-decay 0,1e-2 --optimizer adamw --seeds 3\n"
             "  adam-jax sweep --lr 1e-3,1e-2 --out runs/s1 --resume   # after an interrupt",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  common.add_common(p, "runs/sweep")
  for dest, flag, parse, default, text in FLAGS:
    p.add_argument(flag, dest=dest, default=None, type=parse,
                   help=f"{text} (default: {default.replace('%', '%%')})")
  p.add_argument("--steps", default=1000, type=common.positive_int,
                 help="optimizer steps per configuration (1000)")
  p.add_argument("--optimizer", default="adam", type=common.optimizer_name,
                 help="any optimizer of adam_jax.optimizers(), e.g. adam (coupled L2 weight "
                      "decay), adamw (decoupled), nadamw, adopt (default: adam)")
  p.add_argument("--seeds", default=1, type=common.positive_int,
                 help="train every configuration from N seeds (--seed, --seed+1, ...; initial "
                      "params and batch order) and report the mean and spread (1)")
  p.add_argument("--loop", default="auto", type=common.choice_of(("auto", "scan", "python")),
                 help="steps in lax.scan chunks or a jitted step called from Python "
                      "(default: auto, Python steps for convolutions on CPU)")
  p.add_argument("--checkpoint-every", default=1000, type=common.nonnegative_int,
                 help="steps between checkpoints of the group in training in DIR/checkpoints "
                      "(1000; 0: none)")
  p.add_argument("--resume", action="store_true",
                 help="keep the rows of results.csv in --out, continue an interrupted group "
                      "from its checkpoint and train the others (same flags as the first run)")
  p.add_argument("--diagnostics", action="store_true",
                 help="record update/param ratios and eps dominance every step of every "
                      "configuration; writes diagnostics.png for the best one")
  p.set_defaults(run=run)


def _space(args: argparse.Namespace) -> dict[str, list[Any]]:
  """The grid: the flags the optimizer takes, and the model's shape keys."""
  import inspect

  import adam_jax

  accepted = inspect.signature(adam_jax.get_optimizer(args.optimizer)).parameters
  space = {}
  for dest, flag, parse, default, _ in FLAGS:
    given = getattr(args, dest)
    if dest in SHAPE_KEYS or dest == "schedule" or dest in accepted:
      space[dest] = given if given is not None else parse(default)
    elif given is not None and given != parse(default):
      raise common.UsageError(f"{flag}: {args.optimizer} has no {dest} hyperparameter", PROG)
  return space


def run(args: argparse.Namespace) -> int:
  space = _space(args)
  if args.seed + args.seeds > common.SEED_LIMIT:
    raise common.UsageError(f"--seed {args.seed} with --seeds {args.seeds} goes beyond the "
                            "largest seed, 2**63 - 1", PROG)
  out = common.make_out(args.out, PROG)
  if not args.resume:
    earlier = [name for name in ("results.csv", "checkpoints")
               if os.path.exists(os.path.join(out, name))]
    if earlier:
      raise common.UsageError(f"{out} already holds an earlier sweep ({earlier[0]}); pass "
                              "--resume to continue it or a new --out", PROG)
  # Every flag that changes the results, and the data's digest: a resume must match them.
  record = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_RECORDED}
  record.update(space)  # the grid as trained, defaults filled in
  record["data_sha256"] = common.file_digest(args.data)
  record_path = os.path.join(out, RECORD)
  if args.resume and any(os.path.exists(os.path.join(out, name))
                         for name in ("results.csv", "checkpoints", RECORD)):
    common.check_resume(record_path, record, PROG)
  problem = common.build_problem(args, PROG, batch_size=min(space["batch_size"]))
  runs = args.seeds * math.prod(len(v) for k, v in space.items() if k not in SHAPE_KEYS)
  common.check_task_memory(args.task, (problem.train_data, problem.val_data),
                           layers=max(space["layers"]), hidden=max(space["hidden"]), runs=runs,
                           batch=max(space["batch_size"]), prog=PROG)
  common.write_json(record_path, record)

  from adam_jax.tuning import grid_search

  total = math.prod(len(v) for v in space.values())
  print(f"{PROG}: {total} configurations of {args.task} ({args.optimizer}, {args.steps} steps "
        f"each, {args.seeds} seed{'s' if args.seeds > 1 else ''}) -> {out}")
  rows: list[Any] = []
  csv_path = os.path.join(out, "results.csv")
  start = time.perf_counter()
  from adam_jax.checkpoint import CheckpointFallbackWarning

  try:
    with warnings.catch_warnings():
      # A damaged newest checkpoint: one line, and the previous save is used. Every save of a
      # group damaged: an error, never a silent restart of the group.
      warnings.showwarning = _one_line_warning
      warnings.simplefilter("always", CheckpointFallbackWarning)
      warnings.filterwarnings("error", "the group starts over", CheckpointFallbackWarning)
      result = grid_search(problem, space, optimizer=args.optimizer, steps=args.steps,
                           seeds=list(range(args.seed, args.seed + args.seeds)), out_dir=out,
                           resume=args.resume, loop=args.loop,
                           checkpoint_every=args.checkpoint_every,
                           diagnostics=args.diagnostics, on_row=rows.append)
  except CheckpointFallbackWarning as err:
    raise common.UsageError(f"cannot resume: {err}; remove {os.path.join(out, 'checkpoints')} "
                            "to train that group afresh", PROG) from None
  except ValueError as err:
    raise common.UsageError(str(err), PROG) from None
  except KeyboardInterrupt:
    kept = (f" and {os.path.join(out, 'checkpoints')} the training in progress"
            if os.path.isdir(os.path.join(out, "checkpoints")) else "")
    print(f"{PROG}: interrupted; {csv_path} keeps every configuration that finished"
          f"{kept}; run the same command with --resume to train the rest", file=sys.stderr)
    return 130
  elapsed = time.perf_counter() - start
  best = result.best
  if best is None:  # every configuration diverged: nothing is "best"
    common.write_json(os.path.join(out, "best.json"), {
        "best": None, "task": args.task, "optimizer": args.optimizer, "steps": args.steps,
        "seeds": list(range(args.seed, args.seed + args.seeds)), "data": args.data,
        "configurations": total, "trained_now": len(rows), "wall_s": elapsed})
    print(f"trained {len(rows)} configurations in {elapsed:.1f} s ({total - len(rows)} resumed)")
    print(f"{PROG}: no configuration reached a finite validation loss (every one diverged); "
          f"see {csv_path}; try smaller learning rates", file=sys.stderr)
    return 1
  payload = {**best.config, **best.metrics, "task": args.task, "optimizer": args.optimizer,
             "steps": args.steps, "seeds": list(range(args.seed, args.seed + args.seeds)),
             "data": args.data, "configurations": total, "trained_now": len(rows),
             "wall_s": elapsed, "loops": result.loops}
  common.write_json(os.path.join(out, "best.json"), payload)
  _plot_heatmap(os.path.join(out, "heatmap.png"), result.rows, space)
  _plot_curves(os.path.join(out, "curves.png"), result.rows, best)
  written = "best.json, heatmap.png, curves.png"
  monitored = [r for r in rows if r.diagnostics is not None]
  if monitored:
    from adam_jax.diagnostics import plot_history

    top = min(monitored, key=lambda r: _loss(r))
    label = ", ".join(f"{k}={_label(k, v)}" for k, v in top.config.items() if len(space[k]) > 1)
    plot_history(top.diagnostics, out, title=f"diagnostics of the best run: {label}")
    payload["diagnostics"] = {
        "config": top.config,
        "final_update_to_param_ratio": float(top.diagnostics["update_to_param_ratio"][-1]),
        "final_eps_dominated_fraction": float(top.diagnostics["eps_dominated_fraction"][-1]),
    }
    common.write_json(os.path.join(out, "best.json"), payload)
    written += ", diagnostics.png"
  acc = best.metrics.get("val_accuracy")
  acc = "" if acc is None else f", val accuracy {100 * acc:.1f}%"
  shown = ", ".join(f"{k}={_label(k, v)}" for k, v in best.config.items()
                    if len(space[k]) > 1) or "the only one"
  print(f"trained {len(rows)} configurations in {elapsed:.1f} s ({total - len(rows)} resumed)")
  print(f"best: {shown}: val loss {best.metrics['val_loss']:.4f}{acc}")
  print(f"wrote {csv_path}, {written} in {out}")
  return 0


def _one_line_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
  del category, args, kwargs
  print(f"{PROG}: warning: {message}", file=sys.stderr)


def _loss(row: Any) -> float:
  value = row.metrics["val_loss"]
  return value if math.isfinite(value) else math.inf


def _label(name: str, value: Any) -> str:
  return value if isinstance(value, str) else f"{value:g}"


def _plot_heatmap(path: str, rows: list[Any], grid: dict[str, list[Any]]) -> None:
  """Validation loss over the two axes with the most values (best over the other axes)."""
  import numpy as np

  swept = sorted((a for a in grid if len(grid[a]) > 1), key=lambda a: -len(grid[a]))
  fig = common.figure()
  ax = fig.add_subplot()
  if len(swept) >= 2:
    ya, xa = swept[0], swept[1]
    table = np.full((len(grid[ya]), len(grid[xa])), np.inf)
    for r in rows:
      i, j = grid[ya].index(r.config[ya]), grid[xa].index(r.config[xa])
      loss = _loss(r)
      table[i, j] = min(table[i, j], loss)
    shown = np.where(np.isfinite(table), table, np.nan)
    im = ax.imshow(np.log10(shown), aspect="auto", cmap="viridis_r", origin="lower")
    fig.colorbar(im, ax=ax, label="log10 validation loss")
    ax.set_xticks(range(len(grid[xa])), [_label(xa, v) for v in grid[xa]])
    ax.set_yticks(range(len(grid[ya])), [_label(ya, v) for v in grid[ya]])
    for i in range(table.shape[0]):
      for j in range(table.shape[1]):
        ax.text(j, i, f"{shown[i, j]:.3g}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xlabel(xa)
    ax.set_ylabel(ya)
    title = "validation loss"
    if len(swept) > 2:
      title += " (best over " + ", ".join(swept[2:]) + ")"
    ax.set_title(title)
  else:
    xa = swept[0] if swept else "learning_rate"
    xs = grid[xa]
    ys = [min(_loss(r) for r in rows if r.config[xa] == v) for v in xs]
    if isinstance(xs[0], str):
      ax.bar(range(len(xs)), ys, tick_label=xs)
    else:
      ax.plot(xs, ys, "o-")
      if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xa)
    ax.set_ylabel("validation loss")
    ax.set_title("validation loss")
  fig.savefig(path, dpi=110)


def _plot_curves(path: str, rows: list[Any], best: Any) -> None:
  fig = common.figure()
  ax = fig.add_subplot()
  for r in rows:
    if r.curve is None or r is best:
      continue
    ax.plot(common.smooth(r.curve, 0.95), lw=0.8, alpha=0.5, color="0.5")
  if best.curve is not None:
    ax.plot(common.smooth(best.curve, 0.95), lw=1.8, color="C3", label="best: " + ", ".join(
        f"{k}={_label(k, v)}" for k, v in best.config.items()
        if k in ("learning_rate", "b1", "b2", "schedule", "hidden", "layers", "batch_size")))
    ax.legend(fontsize=7)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (smoothed)")
  ax.set_title("training curves of every configuration")
  fig.savefig(path, dpi=110)


