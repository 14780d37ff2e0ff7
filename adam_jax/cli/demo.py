"""``adam-jax demo``: trains a digits model with Adam (by default a warm-up + cosine schedule).

A thin client of :func:`adam_jax.tuning.train` on :func:`adam_jax.tasks.digits_mlp` or
:func:`adam_jax.tasks.digits_autoencoder`: the training loop, its evaluations and its
checkpoints are the library's.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from adam_jax.cli import _common as common

SCHEDULES = ("warmup-cosine", "constant", "plateau")
_PLATEAU_FACTOR, _PLATEAU_PATIENCE = 0.5, 2


def add_parser(sub: Any) -> None:
  p = sub.add_parser(
      "demo",
      help="train the default task with Adam and a warm-up + cosine schedule",
      description="Trains a Flax MLP on scikit-learn's bundled digits with adam_jax.adam and a "
                  "linear warm-up + cosine learning-rate schedule (or --schedule constant or "
                  "plateau) with adam_jax.tuning.train; prints the loss and accuracy as it "
                  "goes, then writes results.json and loss_curve.png.",
      epilog="examples:\n"
             "  adam-jax demo\n"
             "  adam-jax demo --steps 5000 --lr 1e-3 --hidden 256 --out runs/big\n"
             "  adam-jax demo --task digits-autoencoder\n"
             "  adam-jax demo --data mine.npz --batch-size 64\n"
             "  adam-jax demo --diagnostics\n"
             "  adam-jax demo --schedule plateau --plateau-factor 0.3 --plateau-patience 1\n"
             "  adam-jax demo --steps 20000 --out runs/long --resume   # after an interrupt",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  common.add_common(p, "runs/demo")
  p.add_argument("--steps", default=3000, type=common.positive_int, help="optimizer steps (3000)")
  p.add_argument("--lr", default=3e-3, type=common.POS_FLOAT, help="peak learning rate (3e-3)")
  p.add_argument("--schedule", default="warmup-cosine", type=common.choice_of(SCHEDULES),
                 help="warmup-cosine (linear warm-up, then cosine to 0), constant, or plateau "
                      "(constant, times --plateau-factor when the mean train loss of an "
                      "evaluation interval stops improving; adam_jax.reduce_on_plateau) "
                      "(default: %(default)s)")
  p.add_argument("--warmup", default=None, type=common.nonnegative_int,
                 help="warm-up steps of warmup-cosine (default: 5%% of --steps)")
  p.add_argument("--plateau-factor", default=None, type=common.float_in(0.0, 1.0, low_open=True),
                 help=f"plateau: the factor on the learning rate at a plateau "
                      f"({_PLATEAU_FACTOR})")
  p.add_argument("--plateau-patience", default=None, type=common.nonnegative_int,
                 help=f"plateau: evaluation intervals without improvement before the rate is "
                      f"reduced ({_PLATEAU_PATIENCE})")
  p.add_argument("--layers", default=1, type=common.positive_int, help="hidden layers (1)")
  p.add_argument("--hidden", default=128, type=common.positive_int,
                 help="units per hidden layer (128)")
  p.add_argument("--batch-size", default=32, type=common.positive_int, help="mini-batch size (32)")
  p.add_argument("--eval-every", default=250, type=common.positive_int,
                 help="steps between validation reports (250)")
  p.add_argument("--keep", default="last", type=common.choice_of(("last", "best")),
                 help="report and keep the model of the last step or of the best validation "
                      "report (lowest validation loss) (default: last)")
  p.add_argument("--patience", default=None, type=common.positive_int, metavar="K",
                 help="stop after K validation reports without a lower validation loss")
  p.add_argument("--diagnostics", action="store_true",
                 help="record update/param ratios and eps dominance every step "
                      "(adam_jax.diagnostics.monitor); writes diagnostics.png")
  p.add_argument("--checkpoint-every", default=1000, type=common.nonnegative_int,
                 help="steps between checkpoints of the train state in DIR/checkpoint "
                      "(1000; 0: none)")
  p.add_argument("--resume", action="store_true",
                 help="continue the run in --out from its checkpoint (same flags as the first "
                      "run); without it, an --out that holds an earlier run is refused")
  common.add_tensorboard(p)
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  prog = "adam-jax demo"
  for flag, value in (("--warmup", args.warmup), ("--plateau-factor", args.plateau_factor),
                      ("--plateau-patience", args.plateau_patience)):
    wanted = "warmup-cosine" if flag == "--warmup" else "plateau"
    if value is not None and args.schedule != wanted:
      raise common.UsageError(f"{flag} applies to --schedule {wanted} only, not to "
                              f"--schedule {args.schedule}", prog)
  if args.seed >= 2**31:  # the training loop seeds its int32 random keys with it
    raise common.UsageError(f"--seed must be below 2**31 for demo, got {args.seed}", prog)
  warmup = args.warmup if args.warmup is not None else args.steps // 20
  if args.schedule == "warmup-cosine" and warmup >= args.steps:
    raise common.UsageError(
        f"--warmup ({warmup}) must be smaller than --steps ({args.steps})", prog)
  factor = _PLATEAU_FACTOR if args.plateau_factor is None else args.plateau_factor
  patience = _PLATEAU_PATIENCE if args.plateau_patience is None else args.plateau_patience
  common.check_tensorboard(args, prog)
  out = common.make_out(args.out, prog)
  config = {"task": args.task, "data": args.data, "seed": args.seed, "steps": args.steps,
            "lr": args.lr, "schedule": args.schedule, "warmup": warmup, "layers": args.layers,
            "hidden": args.hidden, "batch_size": args.batch_size, "eval_every": args.eval_every,
            "diagnostics": args.diagnostics, "data_sha256": common.file_digest(args.data)}
  if args.schedule == "plateau":
    config.update(plateau_factor=factor, plateau_patience=patience)
  config_path = os.path.join(out, "demo_config.json")
  ckpt_path = os.path.join(out, "checkpoint")
  if not args.resume:  # as sweep: an earlier run is continued or left alone, never replaced
    common.refuse_earlier(out, ("demo_config.json", "results.json", "checkpoint"), "demo run",
                          "pass --resume to continue it or a new --out", prog)
  resuming = args.resume and os.path.isdir(ckpt_path)
  if resuming or (args.resume and os.path.exists(config_path)):
    common.check_resume(config_path, config, prog)
  problem = common.build_problem(args, prog, layers=args.layers, hidden=args.hidden,
                                 batch_size=args.batch_size)
  common.write_json(config_path, config)

  import jax
  import numpy as np

  from adam_jax import checkpoint, tuning

  classification = args.task == "digits-mlp"
  tx, schedule, opt_metrics = _optimizer(args, warmup, factor, patience)
  record = None
  if args.diagnostics:
    from adam_jax.diagnostics import monitor
    from adam_jax.tuning._results import monitor_record

    tx, record = monitor(tx, eps=1e-8, b2=0.999), monitor_record

  n_train, n_val = (len(jax.tree.leaves(d)[0]) for d in (problem.train_data, problem.val_data))
  print(f"adam-jax demo: {common.task_label(args)}, {args.layers}x{args.hidden} hidden, batch "
        f"{args.batch_size}, {n_train} train / {n_val} validation examples, "
        f"{_describe(args, warmup, factor, patience)}")

  with common.progress(args.steps, "training", "step") as bar:
    done_to = [0]

    def on_start(first: int) -> None:
      if resuming:
        bar.write(f"resuming from step {first} (checkpoint in {ckpt_path})")
      bar.update(first)
      done_to[0] = first

    def on_eval(ev: dict[str, float]) -> None:
      line = (f"step {ev['step']:>6}/{args.steps}  train loss {ev['loss']:.4f}  "
              f"val loss {ev['val_loss']:.4f}")
      if classification:
        line += f"  val acc {100 * ev['val_accuracy']:.1f}%"
      bar.update(ev["step"] - done_to[0])
      done_to[0] = ev["step"]
      bar.write(line)

    try:
      with warnings.catch_warnings(record=True) as fallback:
        warnings.simplefilter("always", checkpoint.CheckpointFallbackWarning)
        result = tuning.train(problem, tx, args.steps, seed=args.seed,
                              eval_every=args.eval_every, checkpoint_dir=ckpt_path,
                              checkpoint_every=args.checkpoint_every, resume=resuming,
                              record=record, opt_metrics=opt_metrics, on_start=on_start,
                              on_eval=on_eval, max_memory=args.max_memory,
                              log_dir=args.tensorboard, keep=args.keep, patience=args.patience)
    except checkpoint.CheckpointError as err:
      raise common.UsageError(f"cannot resume from {ckpt_path}: {err}", prog) from None
    except ValueError as err:
      raise common.UsageError(str(err), prog) from None
    except tuning.TrainInterrupted as err:
      where = (f"rerun with --resume to continue from step {err.step}" if err.step
               else "no checkpoint was written yet")
      print(f"{prog}: interrupted; {where}", file=sys.stderr)
      return 130
    finally:
      for w in fallback:  # the newest save is damaged: the previous one was restored
        if issubclass(w.category, checkpoint.CheckpointFallbackWarning):
          print(f"{prog}: warning: {w.message}", file=sys.stderr)
        else:
          warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

  first = result.first_step
  done = args.steps - first
  rate = done / result.train_s if result.train_s > 0 else None
  history = []
  for ev in result.history:
    step = ev["step"]
    lr = float(schedule(step - 1)) * ev.get("lr_scale", 1.0)
    item = {"step": step, "train_loss": ev["loss"], "val_loss": ev["val_loss"], "lr": lr}
    if classification:
      item["val_accuracy"] = ev["val_accuracy"]
    history.append(item)
  # The final numbers: the task's loss_fn on the trained model that tuning.train returned.
  (train_loss, train_acc), (val_loss, val_acc) = _evaluate(
      problem.loss_fn, result.model, problem.train_data, problem.val_data)
  summary: dict[str, Any] = {
      **config, "train_loss": train_loss, "val_loss": val_loss,
      "train_accuracy": train_acc, "val_accuracy": val_acc,
      "steps_per_s": rate, "train_s": result.train_s, "compile_s": result.compile_s,
      "resumed_from_step": first if resuming else None,
      "history": history, "curve": [float(v) for v in result.curve],
      "best_step": result.best_step, "stopped_step": result.stopped_step,
  }
  written = ["results.json", "loss_curve.png"]
  if result.records is not None:
    from adam_jax.diagnostics import plot_history
    from adam_jax.tuning._results import monitor_columns

    cols = monitor_columns(result.records, first_step=first + 1)
    summary["diagnostics"] = {
        "final_update_to_param_ratio": float(cols["update_to_param_ratio"][-1]),
        "max_update_to_param_ratio": float(np.nanmax(cols["update_to_param_ratio"])),
        "final_eps_dominated_fraction": float(cols["eps_dominated_fraction"][-1]),
    }
    plot_history(cols, out, title=f"adam-jax demo: {args.task}")
    written.append("diagnostics.png")
  common.write_json(os.path.join(out, "results.json"), summary)
  _plot_demo(os.path.join(out, "loss_curve.png"), list(result.curve), history, args.task)
  speed = (f"{rate:,.0f} steps/s (compilation {result.compile_s:.1f} s)" if done
           else "nothing left to train")
  kept = ""
  if args.keep == "best" and result.best_step is not None:
    kept = f" (the model of step {result.best_step}, the best report)"
  if result.stopped_step is not None and result.stopped_step < args.steps:
    kept += f"; stopped at step {result.stopped_step} (--patience {args.patience})"
  print(f"done: train loss {train_loss:.4f}, val loss {val_loss:.4f}"
        + (f", val accuracy {100 * val_acc:.1f}%" if classification else "")
        + f"{kept}; {speed}")
  if result.records is not None:
    d = summary["diagnostics"]
    print(f"diagnostics: update/param ratio {d['final_update_to_param_ratio']:.2e} at the end "
          f"(at most {d['max_update_to_param_ratio']:.2e}), eps dominates "
          f"{100 * d['final_eps_dominated_fraction']:.1f}% of the elements")
  print(f"wrote {', '.join(written)} in {out}")
  return 0


def _optimizer(args: argparse.Namespace, warmup: int, factor: float, patience: int
               ) -> tuple[Any, Any, Any]:
  """Adam with the ``--schedule``: (tx, the schedule of the base rate, opt_metrics)."""
  import optax

  import adam_jax

  if args.schedule == "warmup-cosine":
    schedule = adam_jax.schedules.warmup_cosine(args.lr, warmup, args.steps)
    return adam_jax.adam(schedule), schedule, None
  schedule = optax.constant_schedule(args.lr)
  if args.schedule == "constant":
    return adam_jax.adam(args.lr), schedule, None
  # torch's usual use: one decision per evaluation, on the mean training loss of the
  # interval (the mini-batch loss of every step is passed to update as value=).
  plateau = adam_jax.reduce_on_plateau(factor=factor, patience=patience,
                                       accumulation_size=args.eval_every)
  return optax.chain(adam_jax.adam(args.lr), plateau), schedule, _plateau_scale


def _plateau_scale(opt_state: Any) -> dict[str, Any]:
  """The learning-rate scale of the ``reduce_on_plateau`` inside ``opt_state``."""
  import jax

  import adam_jax

  is_plateau = lambda s: isinstance(s, adam_jax.ReduceOnPlateauState)
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_plateau) if is_plateau(s)]
  return {"lr_scale": found[0].scale}


def _describe(args: argparse.Namespace, warmup: int, factor: float, patience: int) -> str:
  if args.schedule == "warmup-cosine":
    return (f"Adam with warm-up ({warmup} steps) + cosine to 0 from peak lr {args.lr:g}")
  if args.schedule == "constant":
    return f"Adam at a constant lr {args.lr:g}"
  return (f"Adam from lr {args.lr:g}, times {factor:g} when the mean train loss of "
          f"{patience + 1} evaluation intervals in a row does not improve (reduce on plateau)")


def _evaluate(loss_fn: Any, model: Any, *splits: Any) -> list[tuple[float, float | None]]:
  """``loss_fn`` on each whole split, in one jitted call: (loss, accuracy or None) each."""
  from flax import nnx

  def both(model, *splits):
    return [loss_fn(model, data) for data in splits]

  found = []
  for out in nnx.jit(both)(model, *splits):
    loss, aux = out if isinstance(out, tuple) else (out, {})
    acc = aux.get("accuracy") if isinstance(aux, dict) else None
    found.append((float(loss), None if acc is None else float(acc)))
  return found


def _plot_demo(path: str, curve: list[float], history: list[dict[str, Any]], name: str) -> None:
  import numpy as np

  fig = common.figure()
  ax = fig.add_subplot()
  steps = np.arange(1, len(curve) + 1)
  ax.plot(steps, curve, color="C0", alpha=0.25, lw=0.6, label="mini-batch loss")
  ax.plot(steps, common.smooth(curve, 0.98), color="C0", lw=1.5, label="train loss (smoothed)")
  ax.plot([h["step"] for h in history], [h["val_loss"] for h in history], "o-", color="C1",
          ms=3, label="validation loss")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(f"adam-jax demo: {name}")
  ax.legend()
  fig.savefig(path, dpi=110)


