"""``adam-jax sweep``: vectorized grid, random, successive-halving and Optuna searches."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from typing import Any

from adam_jax import _plotting
from adam_jax.cli import _common as common
from adam_jax.cli import _figures

PROG = "adam-jax sweep"


def _schedule(text: str) -> str:
  """A ``--schedule`` value; ``plateau`` is refused (it is not a function of the step)."""
  if text == "plateau":
    raise argparse.ArgumentTypeError(
        "plateau is not available in sweep (reduce-on-plateau follows each run's own losses, "
        "so it cannot be vmapped with the step schedules); use adam-jax demo --schedule "
        "plateau, or tuning.grid_search with a factory chaining adam_jax.reduce_on_plateau")
  return common.choice_of(("constant", "cosine", "step", "exponential"))(text)


def _eps(text: str) -> float:
  """An ``--eps`` value: > 0 (with eps = 0, Adam divides 0 by 0 where a gradient is 0)."""
  value = common.NONNEG_FLOAT(text)
  if value == 0:
    raise argparse.ArgumentTypeError("eps must be > 0: with eps = 0 Adam divides 0 by 0 (NaN) "
                                     "wherever a gradient is zero")
  return value


# (space key, flag, parse, default, help): every flag takes comma-separated values; the
# numeric optimizer flags also take a range LO:HI for the sampled searches.
FLAGS = (
    ("learning_rate", "--lr", common.list_or_range(common.NONNEG_FLOAT, log=True),
     "1e-4,3e-4,1e-3,3e-3,1e-2", "peak learning rates (>= 0; a range: log-uniform)"),
    ("b1", "--b1", common.list_or_range(common.BETA, log=False), "0.9",
     "first-moment decay rates, in [0, 1) (a range: uniform)"),
    ("b2", "--b2", common.list_or_range(common.BETA, log=False), "0.999",
     "second-moment decay rates, in [0, 1) (a range: uniform)"),
    ("eps", "--eps", common.list_or_range(_eps, log=True), "1e-8",
     "eps values (> 0; a range: log-uniform)"),
    ("weight_decay", "--weight-decay", common.list_or_range(common.NONNEG_FLOAT, log=True), "0",
     "weight decay (>= 0; a range: log-uniform): coupled L2 for adam, decoupled for adamw"),
    ("schedule", "--schedule",
     common.list_of(_schedule), "constant",
     "constant, cosine (to 0), step (x0.1 each third), exponential (to 1%%)"),
    ("layers", "--layers", common.list_of(common.positive_int), "1", "hidden layers"),
    ("hidden", "--hidden", common.list_of(common.positive_int), "128", "units per hidden layer"),
    ("batch_size", "--batch-size", common.list_of(common.positive_int), "32", "mini-batch sizes"),
)
SAMPLED_LR = common.Range(1e-4, 1e-2, log=True)  # --lr of a sampled search, by default
SEARCHES = ("grid", "random", "halving", "optuna", "pbt")
SHAPE_KEYS = ("layers", "hidden", "batch_size")
RECORD = "sweep.json"  # the flags and the data digest of the run in --out
_NOT_RECORDED = ("run", "command", "out", "resume", "diagnostics",  # these change no result
                 "data",  # its contents are: data_sha256
                 "storage",  # recorded without its password: storage_url
                 "tensorboard",
                 "storage_timeout", "heartbeat_interval", "grace_period")  # how, not what
_SEARCH_FLAGS = ("search", "trials", "min_steps", "eta", "study_name", "population",
                 "ready_every")  # not in a grid's record


def add_parser(sub: Any) -> None:
  p = sub.add_parser(
      "sweep",
      help="grid, random, successive-halving or Optuna search over Adam's hyperparameters, "
           "vectorized with jax.vmap",
      description=_wrap("Searches the hyperparameters of --optimizer on the task with "
                  "adam_jax.tuning: --search grid (grid_search, the default) trains every "
                  "combination of the given values; random (random_search) and halving "
                  "(successive_halving) train --trials configurations drawn from the "
                  "flags; optuna (optuna_search) lets an Optuna study (TPE) pick --trials "
                  "trials, trained in batches of up to 16, its pruner stopping bad ones. "
                  "Values of lr, b1, b2, eps, weight decay and schedule, and the seeds, train "
                  "together in one compiled, vmapped program (spread over the devices "
                  "present); layers, hidden units and batch sizes each need their own "
                  "program.\n\n"
                  "Values: a flag takes comma-separated values (grid: each one; sampled "
                  "searches: a choice, one value: a constant). For random, halving and "
                  "optuna, --lr, --b1, --b2, --eps and --weight-decay also take a range "
                  "LO:HI: log-uniform for --lr, --eps and --weight-decay (LO > 0), uniform "
                  "for --b1 and --b2. Unless given, --lr is 1e-4:1e-2 for them.\n\n"
                  "Resume: grid and random continue an interrupted search with --resume "
                  "(same flags); halving cannot resume (it keeps no checkpoints) and refuses "
                  "--resume; for optuna the study is the record: with --storage and "
                  "--study-name a run loads the study if it exists and runs it up to --trials "
                  "trials, so several processes or machines given the same --storage and "
                  "--study-name (each its own --out) share one study, and a rerun finishes "
                  "it (trials of a worker that died are redone after about a minute; a "
                  "database outage is waited out for --storage-timeout).\n\n"
                  "Writes results.csv, best.json, heatmap.png (grid: validation loss over "
                  "two axes; sampled: over the two most varied sampled values) and "
                  "curves.png; optuna also writes optuna_history.png and "
                  "optuna_importances.png (Optuna's plots of the whole study); "
                  "--tensorboard DIR adds a TensorBoard run per configuration in DIR."),
      epilog="examples:\n"
             "  adam-jax sweep --lr 1e-4,3e-4,1e-3,3e-3 --b1 0.9,0.95 --steps 500\n"
             "  adam-jax sweep --lr 1e-3,1e-2 --schedule constant,cosine --hidden 64,128\n"
             "  adam-jax sweep --lr 1e-3,3e-3 --weight-decay 0,1e-2 --optimizer adamw --seeds 3\n"
             "  adam-jax sweep --lr 1e-3,1e-2 --out runs/s1 --resume   # after an interrupt\n"
             "  adam-jax sweep --lr 1e-4,1e-3,1e-2 --tensorboard runs/tb   # tensorboard --logdir "
             "runs/tb\n"
             "  adam-jax sweep --search random --trials 64 --lr 1e-5:1e-1 --b1 0.8:0.99\n"
             "  adam-jax sweep --search halving --trials 81 --min-steps 100 --steps 2700 "
             "--batch-size 32,64\n"
             "  adam-jax sweep --search optuna --trials 128 --lr 1e-5:1e-1 "
             "--weight-decay 1e-6:1e-2 --optimizer adamw\n"
             "  adam-jax sweep --search optuna --trials 256 --storage sqlite:///study.db "
             "--study-name digits --out runs/w1   # run again on other machines, own --out\n"
             "  PGPASSWORD=... adam-jax sweep --search optuna --trials 256 "
             "--storage postgresql://me@db.example.org/studies --study-name digits "
             "--out runs/w2",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  common.add_common(p, "runs/sweep")
  for dest, flag, parse, default, text in FLAGS:
    p.add_argument(flag, dest=dest, default=None, type=parse,
                   help=f"{text} (default: {default.replace('%', '%%')})")
  p.add_argument("--search", default="grid", type=common.choice_of(SEARCHES),
                 help="grid, random, halving (successive halving), optuna or pbt "
                      "(population-based training) (default: grid)")
  p.add_argument("--population", default=None, type=common.positive_int,
                 help="pbt: members training together (default: 16)")
  p.add_argument("--ready-every", default=None, type=common.positive_int, metavar="K",
                 help="pbt: every K steps the worst quarter of the population copies the "
                      "best quarter and perturbs its values (default: --steps / 10)")
  p.add_argument("--trials", default=None, type=common.positive_int,
                 help="configurations to train: random, halving, optuna (default: 16); with "
                      "optuna the study's total, shared by every process on the study")
  p.add_argument("--steps", default=1000, type=common.positive_int,
                 help="optimizer steps per configuration (1000; halving: of the last rung)")
  p.add_argument("--min-steps", default=None, type=common.positive_int,
                 help="halving: steps of the first rung (default: --steps / 27, at least 1)")
  p.add_argument("--eta", default=None, type=common.int_at_least(2, "an integer >= 2"),
                 help="halving: keep the best 1/eta at each rung, which trains eta times as "
                      "long (default: 3)")
  p.add_argument("--storage", default=None, metavar="URL",
                 help="optuna: where the study lives (default: in memory): a database URL -- "
                      "sqlite:///study.db on one machine; for many, "
                      "postgresql://user@host/db (pip install 'adam-jax[postgres]': psycopg 3; "
                      "postgresql+psycopg2://... for psycopg2; the password from PGPASSWORD or "
                      "~/.pgpass rather than the URL) or mysql+pymysql://user@host/db -- or "
                      "journal:PATH (or a PATH ending in .log), Optuna's journal file on a file "
                      "system the machines share (no heartbeats: a killed worker's trials are "
                      "not redone); with it the sampler is unseeded, so that workers draw apart")
  p.add_argument("--storage-timeout", default=None, type=common.NONNEG_FLOAT, metavar="SECONDS",
                 help="optuna with a database: how long a call that fails with a lost or "
                      "refused connection is retried (with backoff) before the worker stops "
                      "with exit code 2, its trials in flight left to be redone (default: 60)")
  p.add_argument("--heartbeat-interval", default=None, type=common.positive_int,
                 metavar="SECONDS",
                 help="optuna with a database: a running trial's heartbeat is recorded this "
                      "often (default: 10)")
  p.add_argument("--grace-period", default=None, type=common.positive_int, metavar="SECONDS",
                 help="optuna with a database: a trial without a heartbeat this long (its "
                      "worker died) is failed and redone by another worker (default: 60)")
  p.add_argument("--study-name", default=None, metavar="NAME",
                 help="optuna: the study's name in --storage (default: adam-jax-sweep)")
  p.add_argument("--optimizer", default="adam", type=common.optimizer_name,
                 help="any optimizer of adam_jax.optimizers(), e.g. adam (coupled L2 weight "
                      "decay), adamw (decoupled), nadamw, adopt (default: adam)")
  p.add_argument("--seeds", default=1, type=common.positive_int,
                 help="train every configuration from N seeds (--seed, --seed+1, ...; initial "
                      "params and batch order) and report the mean and spread (1)")
  p.add_argument("--loop", default="auto", type=common.choice_of(("auto", "scan", "python")),
                 help="steps in lax.scan chunks or a jitted step called from Python "
                      "(default: auto, Python steps for convolutions on CPU)")
  p.add_argument("--eval-every", default=None, type=common.positive_int, metavar="N",
                 help="grid, random, halving and optuna: evaluate every configuration on the "
                      "validation split every N steps (curves in curves.jsonl and curves.png; "
                      "default: once, after the last step); halving ranks each rung at its "
                      "end, optuna reports every evaluation to the trial")
  p.add_argument("--keep", default="last", type=common.choice_of(("last", "best")),
                 help="with --eval-every: report and keep each configuration's model of its "
                      "last step or of its best evaluated step (lowest validation loss; "
                      "halving: of any rung) (default: last)")
  p.add_argument("--patience", default=None, type=common.positive_int, metavar="K",
                 help="grid, random and halving, with --eval-every: stop a configuration "
                      "after K evaluations without a lower validation loss (halving: within a "
                      "rung, and it goes no further; optuna: the study's pruner stops trials)")
  p.add_argument("--checkpoint-every", default=1000, type=common.nonnegative_int,
                 help="grid and random: steps between checkpoints of the group in training "
                      "in DIR/checkpoints (1000; 0: none)")
  p.add_argument("--resume", action="store_true",
                 help="grid and random: keep the rows of results.csv in --out, continue an "
                      "interrupted group from its checkpoint and train the others (same flags "
                      "as the first run); optuna: go on into the same --out (the study in "
                      "--storage is the record); halving: refused")
  p.add_argument("--diagnostics", action="store_true",
                 help="grid and random: record update/param ratios and eps dominance every "
                      "step of every configuration; writes diagnostics.png for the best one")
  common.add_tensorboard(p)
  p.set_defaults(run=run)


def _wrap(text: str) -> str:
  """Paragraphs (split at blank lines) filled to 88 columns: the description keeps its breaks."""
  import textwrap

  return "\n\n".join(textwrap.fill(p, 88) for p in text.split("\n\n"))


def _space(args: argparse.Namespace) -> dict[str, Any]:
  """The flags the optimizer takes, and the model's shape keys: lists (and ranges)."""
  import inspect

  import adam_jax

  accepted = inspect.signature(adam_jax.get_optimizer(args.optimizer)).parameters
  space = {}
  for dest, flag, parse, default, _ in FLAGS:
    given = getattr(args, dest)
    if args.search == "grid" and isinstance(given, common.Range):
      raise common.UsageError(f"{flag}: a range ({given.lo:g}:{given.hi:g}) needs --search "
                              "random, halving, optuna or pbt; a grid takes comma-separated values",
                              PROG)
    if given is None:
      given = SAMPLED_LR if dest == "learning_rate" and args.search != "grid" else parse(default)
    if dest in SHAPE_KEYS or dest == "schedule" or dest in accepted:
      space[dest] = given
    elif given != parse(default):
      raise common.UsageError(f"{flag}: {args.optimizer} has no {dest} hyperparameter", PROG)
  return space


def _check_search_flags(args: argparse.Namespace) -> None:
  """Flags that belong to another search, and a --resume that cannot be honoured."""
  only = {"trials": ("--trials", ("random", "halving", "optuna")),
          "min_steps": ("--min-steps", ("halving",)), "eta": ("--eta", ("halving",)),
          "storage": ("--storage", ("optuna",)), "study_name": ("--study-name", ("optuna",)),
          "population": ("--population", ("pbt",)),
          "ready_every": ("--ready-every", ("pbt",)),
          "eval_every": ("--eval-every", ("grid", "random", "halving", "optuna")),
          "patience": ("--patience", ("grid", "random", "halving")),
          "storage_timeout": ("--storage-timeout", ("optuna",)),
          "heartbeat_interval": ("--heartbeat-interval", ("optuna",)),
          "grace_period": ("--grace-period", ("optuna",))}
  for dest, (flag, searches) in only.items():
    if getattr(args, dest) is not None and args.search not in searches:
      named = " or ".join([", ".join(searches[:-1]), searches[-1]] if len(searches) > 1
                          else searches)
      raise common.UsageError(f"{flag} needs --search {named} (this is --search "
                              f"{args.search})", PROG)
  if args.search == "pbt":
    from adam_jax.cli import _population

    _population.check_flags(args, PROG)
  if args.keep == "best" and args.eval_every is None and args.search != "pbt":
    raise common.UsageError("--keep best needs --eval-every, the steps between evaluations",
                            PROG)
  if args.patience is not None and args.eval_every is None:
    raise common.UsageError("--patience needs --eval-every, the steps between evaluations",
                            PROG)
  if args.eval_every is not None and args.eval_every > args.steps:
    raise common.UsageError(f"--eval-every ({args.eval_every}) must be at most --steps "
                            f"({args.steps})", PROG)
  if args.search == "optuna":
    from adam_jax.cli import _searches

    _searches.check_storage_flags(args, PROG)
  if args.diagnostics and args.search in ("halving", "optuna"):
    raise common.UsageError(f"--diagnostics: only grid and random searches record them, not "
                            f"--search {args.search}", PROG)
  if args.resume and args.search == "halving":
    raise common.UsageError("--resume: successive halving keeps no checkpoints and cannot "
                            "resume; run it afresh with a new --out", PROG)
  if args.resume and args.search == "optuna" and args.storage is None:
    raise common.UsageError("--resume with --search optuna needs --storage and --study-name: "
                            "the study is the record, and one in memory is gone", PROG)
  if args.search == "pbt" and args.trials is not None:
    raise common.UsageError("--trials: --search pbt trains --population members", PROG)
  if args.search not in ("grid", "pbt") and args.trials is None:
    args.trials = 16
  if args.search == "halving":
    args.eta = 3 if args.eta is None else args.eta
    args.min_steps = max(1, args.steps // 27) if args.min_steps is None else args.min_steps
    if args.min_steps > args.steps:
      raise common.UsageError(f"--min-steps ({args.min_steps}) must be at most --steps "
                              f"({args.steps})", PROG)
  if args.search == "optuna" and args.study_name is None:
    args.study_name = "adam-jax-sweep"


def run(args: argparse.Namespace) -> int:
  _check_search_flags(args)
  common.check_tensorboard(args, PROG)
  space = _space(args)
  if args.seed + args.seeds > common.SEED_LIMIT:
    raise common.UsageError(f"--seed {args.seed} with --seeds {args.seeds} goes beyond the "
                            "largest seed, 2**63 - 1", PROG)
  study = None
  if args.search == "optuna":  # before anything is written: a bad URL is one line
    from adam_jax.cli import _searches

    study = _searches.open_study(args, PROG)
  out = common.make_out(args.out, PROG)
  if not args.resume:
    common.refuse_earlier(out, ("results.csv", "checkpoints"), "sweep",
                          "successive halving cannot resume: pass a new --out"
                          if args.search == "halving" else
                          "pass --resume to continue it or a new --out", PROG)
  # Every flag that changes the results, and the data's digest: a resume must match them.
  # (optuna: the study in --storage is the record of its trials, and --trials may grow)
  record = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_RECORDED
            and not (args.search == "grid" and k in _SEARCH_FLAGS)
            and not (args.search == "optuna" and k == "trials")}
  record.update(space)  # the space as searched, defaults filled in
  record["data_sha256"] = common.file_digest(args.data)
  if args.storage is not None:
    from adam_jax.cli import _searches

    record["storage_url"] = _searches.shown_url(args.storage)
  record_path = os.path.join(out, RECORD)
  if args.resume and any(os.path.exists(os.path.join(out, name))
                         for name in ("results.csv", "checkpoints", RECORD)):
    common.check_resume(record_path, record, PROG)
  problem = common.build_problem(args, PROG, batch_size=min(space["batch_size"]))
  common.write_json(record_path, record)
  if args.search == "optuna":
    from adam_jax.cli import _searches

    return _searches.run_optuna(args, study, problem, space, out, PROG)
  if args.search == "pbt":
    from adam_jax.cli import _population

    return _population.run_pbt(args, problem, space, out, PROG)

  total = math.prod(len(v) for v in space.values()) if args.search == "grid" else args.trials
  what = {"grid": "configurations", "random": "random configurations",
          "halving": "configurations in successive halving"}[args.search]
  steps = (f"{args.steps} steps each" if args.search != "halving" else
           f"{args.min_steps} to {args.steps} steps, eta {args.eta}")
  print(f"{PROG}: {total} {what} of {common.task_label(args)} ({args.optimizer}, {steps}, "
        f"{args.seeds} seed{'s' if args.seeds > 1 else ''}) -> {out}")
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
      result = _search(args, problem, space, out, rows)
  except CheckpointFallbackWarning as err:
    raise common.UsageError(f"cannot resume: {err}; remove {os.path.join(out, 'checkpoints')} "
                            "to train that group afresh", PROG) from None
  except ValueError as err:
    raise common.UsageError(str(err), PROG) from None
  except KeyboardInterrupt:
    if args.search == "halving":
      print(f"{PROG}: interrupted; successive halving cannot resume: run it again",
            file=sys.stderr)
      return 130
    kept = (f" and {os.path.join(out, 'checkpoints')} the training in progress"
            if os.path.isdir(os.path.join(out, "checkpoints")) else "")
    print(f"{PROG}: interrupted; {csv_path} keeps every configuration that finished"
          f"{kept}; run the same command with --resume to train the rest", file=sys.stderr)
    return 130
  elapsed = time.perf_counter() - start
  if args.search == "halving":
    from adam_jax.cli import _searches

    _searches.write_rows(csv_path, result.rows, extra=("rung", "steps"))
    _searches.write_curves(os.path.join(out, "curves.jsonl"), result.rows)
  return _report(args, out, result, rows, space, total, elapsed)


def _search(args: argparse.Namespace, problem: Any, space: dict[str, Any], out: str,
            rows: list[Any]) -> Any:
  """Runs the grid, random or halving search of ``args``."""
  from adam_jax import tuning

  seeds = list(range(args.seed, args.seed + args.seeds))
  if args.search == "grid":
    return tuning.grid_search(problem, space, optimizer=args.optimizer, steps=args.steps,
                              seeds=seeds, out_dir=out, resume=args.resume, loop=args.loop,
                              checkpoint_every=args.checkpoint_every,
                              diagnostics=args.diagnostics, on_row=rows.append,
                              max_memory=args.max_memory, log_dir=args.tensorboard,
                              eval_every=args.eval_every, keep=args.keep,
                              patience=args.patience)
  from adam_jax.cli import _searches

  dists = _searches.distributions(space)
  if args.search == "random":
    return tuning.random_search(problem, dists, num_configs=args.trials, seed=args.seed,
                                optimizer=args.optimizer, steps=args.steps, seeds=seeds,
                                out_dir=out, resume=args.resume, loop=args.loop,
                                checkpoint_every=args.checkpoint_every,
                                diagnostics=args.diagnostics, on_row=rows.append,
                                max_memory=args.max_memory, log_dir=args.tensorboard,
                                eval_every=args.eval_every, keep=args.keep,
                                patience=args.patience)
  return tuning.successive_halving(problem, dists, num_configs=args.trials,
                                   min_steps=args.min_steps, max_steps=args.steps, eta=args.eta,
                                   seed=args.seed, optimizer=args.optimizer, seeds=seeds,
                                   loop=args.loop, on_row=rows.append,
                                   max_memory=args.max_memory, log_dir=args.tensorboard,
                                   eval_every=args.eval_every, keep=args.keep,
                                   patience=args.patience)


def _report(args: argparse.Namespace, out: str, result: Any, rows: list[Any],
            space: dict[str, Any], total: int, elapsed: float) -> int:
  """best.json, the plots and the summary lines of a grid, random or halving search."""
  csv_path = os.path.join(out, "results.csv")
  seeds = list(range(args.seed, args.seed + args.seeds))
  best = result.best
  if best is not None and not math.isfinite(best.metrics["val_loss"]):
    best = None
  resumed = f" ({total - len(rows)} resumed)" if args.search in ("grid", "random") else ""
  if best is None:  # every configuration diverged: nothing is "best"
    common.write_json(os.path.join(out, "best.json"), {
        "best": None, "task": args.task, "optimizer": args.optimizer, "steps": args.steps,
        "seeds": seeds, "data": args.data, "search": args.search, "configurations": total,
        "trained_now": len(rows), "wall_s": elapsed})
    print(f"trained {len(rows)} configurations in {elapsed:.1f} s{resumed}")
    print(f"{PROG}: no configuration reached a finite validation loss (every one diverged: "
          f"a NaN or infinite loss, metric or parameter; see the diverged column of "
          f"{csv_path}); try other hyperparameters, smaller learning rates first",
          file=sys.stderr)
    return 1
  payload = {**best.config, **best.metrics, "task": args.task, "optimizer": args.optimizer,
             "steps": args.steps, "seeds": seeds, "data": args.data, "search": args.search,
             "configurations": total, "trained_now": len(rows), "wall_s": elapsed,
             "loops": result.loops}
  if args.search == "halving":
    payload.update(min_steps=args.min_steps, eta=args.eta, steps_trained=best.steps)
  if best.best_step is not None:  # --eval-every: each seed's best evaluated step (--keep best:
    payload.update(best_step=best.best_step, stopped_step=best.stopped_step)  # the one kept)
  common.write_json(os.path.join(out, "best.json"), payload)
  keys = [k for k in space if common.varied(space, k)]
  acc = best.metrics.get("val_accuracy")
  acc = "" if acc is None else f", val accuracy {100 * acc:.1f}%"
  print(f"trained {len(rows)} configurations in {elapsed:.1f} s{resumed}")
  print(f"best: {_plotting.config_label(best.config, keys)}: val loss "
        f"{best.metrics['val_loss']:.4f}{acc}", flush=True)
  # The figures after the result lines: the answer is on screen while they are drawn.
  if args.search == "grid":
    _figures.grid_heatmap(os.path.join(out, "heatmap.png"), result.rows, space, keys, best)
  else:
    _figures.samples(os.path.join(out, "heatmap.png"), [r.config for r in result.rows],
                     [r.metrics["val_loss"] for r in result.rows], space, keys,
                     log_keys=common.log_keys(space), best=result.rows.index(best),
                     steps=[r.steps for r in result.rows] if args.search == "halving" else None)
  _figures.curves(os.path.join(out, "curves.png"), result.rows, best, keys)
  written = "best.json, heatmap.png, curves.png"
  monitored = [r for r in rows if r.diagnostics is not None]
  if monitored:
    from adam_jax.diagnostics import plot_history

    top = min(monitored, key=lambda r: _loss(r))
    plot_history(top.diagnostics, out,
                 title=f"diagnostics of the best run: {_plotting.config_label(top.config, keys)}")
    payload["diagnostics"] = {
        "config": top.config,
        "final_update_to_param_ratio": float(top.diagnostics["update_to_param_ratio"][-1]),
        "final_eps_dominated_fraction": float(top.diagnostics["eps_dominated_fraction"][-1]),
    }
    common.write_json(os.path.join(out, "best.json"), payload)
    written += ", diagnostics.png"
  print(f"wrote {csv_path}, {written} in {out}")
  return 0


def _one_line_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
  del category, args, kwargs
  print(f"{PROG}: warning: {message}", file=sys.stderr)


def _loss(row: Any) -> float:
  value = row.metrics["val_loss"]
  return value if math.isfinite(value) else math.inf
