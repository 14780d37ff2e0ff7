"""``adam-jax demo``: trains a digits model with Adam and a warm-up + cosine schedule."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Any

from adam_jax.cli import _common as common


def add_parser(sub: Any) -> None:
  p = sub.add_parser(
      "demo",
      help="train the default task with Adam and a warm-up + cosine schedule",
      description="Trains a Flax MLP on scikit-learn's bundled digits with adam_jax.adam and a "
                  "linear warm-up + cosine learning-rate schedule; prints the loss and accuracy "
                  "as it goes, then writes results.json and loss_curve.png.",
      epilog="examples:\n"
             "  adam-jax demo\n"
             "  adam-jax demo --steps 5000 --lr 1e-3 --hidden 256 --out runs/big\n"
             "  adam-jax demo --task digits-autoencoder\n"
             "  adam-jax demo --data mine.npz --batch-size 64\n"
             "  adam-jax demo --diagnostics\n"
             "  adam-jax demo --steps 20000 --out runs/long --resume   # after an interrupt",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  common.add_common(p, "runs/demo")
  p.add_argument("--steps", default=3000, type=common.positive_int, help="optimizer steps (3000)")
  p.add_argument("--lr", default=3e-3, type=common.POS_FLOAT, help="peak learning rate (3e-3)")
  p.add_argument("--warmup", default=None, type=common.nonnegative_int,
                 help="warm-up steps (default: 5%% of --steps)")
  p.add_argument("--layers", default=1, type=common.positive_int, help="hidden layers (1)")
  p.add_argument("--hidden", default=128, type=common.positive_int,
                 help="units per hidden layer (128)")
  p.add_argument("--batch-size", default=32, type=common.positive_int, help="mini-batch size (32)")
  p.add_argument("--eval-every", default=250, type=common.positive_int,
                 help="steps between validation reports (250)")
  p.add_argument("--diagnostics", action="store_true",
                 help="record update/param ratios and eps dominance every step "
                      "(adam_jax.diagnostics.monitor); writes diagnostics.png")
  p.add_argument("--checkpoint-every", default=1000, type=common.nonnegative_int,
                 help="steps between checkpoints of the train state in DIR/checkpoint "
                      "(1000; 0: none)")
  p.add_argument("--resume", action="store_true",
                 help="continue from the checkpoint in --out (same flags as the first run)")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  prog = "adam-jax demo"
  warmup = args.warmup if args.warmup is not None else args.steps // 20
  if warmup >= args.steps:
    raise common.UsageError(
        f"--warmup ({warmup}) must be smaller than --steps ({args.steps})", prog)
  out = common.make_out(args.out, prog)
  config = {"task": args.task, "data": args.data, "seed": args.seed, "steps": args.steps,
            "lr": args.lr, "warmup": warmup, "layers": args.layers, "hidden": args.hidden,
            "batch_size": args.batch_size, "eval_every": args.eval_every,
            "diagnostics": args.diagnostics, "data_sha256": common.file_digest(args.data)}
  config_path = os.path.join(out, "demo_config.json")
  ckpt_path = os.path.join(out, "checkpoint")
  resuming = args.resume and os.path.isdir(ckpt_path)
  if resuming:
    common.check_resume(config_path, config, prog)
  common.check_task_memory(args.task, common.load_data(args, prog), layers=args.layers,
                           hidden=args.hidden, runs=1, batch=args.batch_size, prog=prog)
  task = common.build_task(args, layers=args.layers, hidden=args.hidden,
                           batch_size=args.batch_size)
  common.write_json(config_path, config)

  import jax
  import numpy as np

  import adam_jax
  from adam_jax.tasks import fit

  schedule = adam_jax.schedules.warmup_cosine(args.lr, warmup, args.steps)
  tx = adam_jax.adam(schedule)
  record = None
  if args.diagnostics:
    from adam_jax.diagnostics import monitor
    from adam_jax.tuning._grid import monitor_record

    tx, record = monitor(tx, eps=1e-8, b2=0.999), monitor_record

  def chunk(params, opt_state, idx, x, y, x_val, y_val):
    params, opt_state, fitted = fit(task, tx, params, opt_state, idx, x, y, record=record)
    return params, opt_state, fitted, task.evaluate(params, x_val, y_val)

  idx = task.batch_indices(args.steps, args.seed)
  n_evals = -(-args.steps // args.eval_every)
  # Everything a resumed run needs, in one checkpointed tree: params, optimizer state,
  # the step reached, the loss curve and the validation history (rows: step,
  # mean train loss of the chunk, val loss, val accuracy).
  state = {"params": task.params, "opt_state": tx.init(task.params),
           "step": np.zeros((), np.int32), "curve": np.full(args.steps, np.nan, np.float32),
           "evals": np.full((n_evals, 4), np.nan, np.float32)}
  if resuming:
    from adam_jax import checkpoint

    try:
      with warnings.catch_warnings(record=True) as fallback:
        warnings.simplefilter("always", checkpoint.CheckpointFallbackWarning)
        state = checkpoint.restore_latest(ckpt_path, like=state)
    except ValueError as err:
      raise common.UsageError(f"cannot resume from {ckpt_path}: {err}", prog) from None
    for w in fallback:  # the newest save is damaged: the previous one was restored
      print(f"{prog}: warning: {w.message}", file=sys.stderr)
  first = int(state["step"])
  data = (task.x_train, task.y_train, task.x_val, task.y_val)
  compile_start = time.perf_counter()
  compiled = {}
  for lo in range(first, args.steps, args.eval_every):  # at most two shapes
    n = min(args.eval_every, args.steps - lo)
    if n not in compiled:
      compiled[n] = jax.jit(chunk).lower(state["params"], state["opt_state"], idx[lo:lo + n],
                                         *data).compile()
  compile_s = time.perf_counter() - compile_start

  print(f"adam-jax demo: {task.name}, {args.layers}x{args.hidden} hidden, batch {task.batch_size}, "
        f"{len(task.x_train)} train / {len(task.x_val)} validation examples, "
        f"Adam with warm-up ({warmup} steps) + cosine to 0 from peak lr {args.lr:g}")
  if resuming:
    print(f"resuming from step {first} (checkpoint in {ckpt_path})")
  params, opt_state = state["params"], state["opt_state"]
  curve, evals = np.array(state["curve"]), np.array(state["evals"])
  records: list[Any] = []
  last_saved = first
  train_s = 0.0
  try:
    with common.progress(args.steps, "training", "step") as bar:
      bar.update(first)
      for lo in range(first, args.steps, args.eval_every):
        hi = min(lo + args.eval_every, args.steps)
        t0 = time.perf_counter()
        params, opt_state, fitted, (val_loss, val_acc) = compiled[hi - lo](
            params, opt_state, idx[lo:hi], *data)
        if record is not None:
          fitted, stats = fitted
          records.append(jax.device_get(stats))
        curve[lo:hi] = np.asarray(fitted)
        train_s += time.perf_counter() - t0
        row = evals[(hi - 1) // args.eval_every]
        row[:] = hi, curve[lo:hi].mean(), float(val_loss), float(val_acc)
        line = (f"step {hi:>6}/{args.steps}  train loss {row[1]:.4f}  val loss {row[2]:.4f}")
        if task.classification:
          line += f"  val acc {100 * row[3]:.1f}%"
        bar.update(hi - lo)
        bar.write(line)
        if args.checkpoint_every and (hi - last_saved >= args.checkpoint_every
                                      or hi == args.steps):
          from adam_jax import checkpoint

          checkpoint.save_rotating(ckpt_path, {
              "params": params, "opt_state": opt_state, "step": np.asarray(hi, np.int32),
              "curve": curve, "evals": evals}, keep=2)
          last_saved = hi
  except KeyboardInterrupt:
    where = (f"rerun with --resume to continue from step {last_saved}" if last_saved
             else "no checkpoint was written yet")
    print(f"{prog}: interrupted; {where}", file=sys.stderr)
    return 130

  done = args.steps - first
  rate = done / train_s if train_s > 0 else None
  history = []
  for step, tr, vl, va in evals:
    item = {"step": int(step), "train_loss": float(tr), "val_loss": float(vl),
            "lr": float(schedule(int(step) - 1))}
    if task.classification:
      item["val_accuracy"] = float(va)
    history.append(item)
  train_loss, train_acc = (float(v) for v in task.evaluate(params, task.x_train, task.y_train))
  val_loss, val_acc = (float(v) for v in task.evaluate(params, task.x_val, task.y_val))
  summary: dict[str, Any] = {
      **config, "batch_size": task.batch_size,
      "train_loss": train_loss, "val_loss": val_loss,
      "train_accuracy": train_acc if task.classification else None,
      "val_accuracy": val_acc if task.classification else None,
      "steps_per_s": rate, "train_s": train_s, "compile_s": compile_s,
      "resumed_from_step": first if resuming else None,
      "history": history, "curve": [float(v) for v in curve],
  }
  written = ["results.json", "loss_curve.png"]
  if records:
    from adam_jax.diagnostics import plot_history
    from adam_jax.tuning._grid import monitor_columns

    stacked = jax.tree.map(lambda *xs: np.concatenate(xs), *records)
    cols = monitor_columns(stacked, first_step=first + 1)
    summary["diagnostics"] = {
        "final_update_to_param_ratio": float(cols["update_to_param_ratio"][-1]),
        "max_update_to_param_ratio": float(np.nanmax(cols["update_to_param_ratio"])),
        "final_eps_dominated_fraction": float(cols["eps_dominated_fraction"][-1]),
    }
    plot_history(cols, out, title=f"adam-jax demo: {task.name}")
    written.append("diagnostics.png")
  common.write_json(os.path.join(out, "results.json"), summary)
  _plot_demo(os.path.join(out, "loss_curve.png"), list(curve), history, task.name)
  speed = (f"{rate:,.0f} steps/s (compilation {compile_s:.1f} s)" if done
           else "nothing left to train")
  print(f"done: train loss {train_loss:.4f}, val loss {val_loss:.4f}"
        + (f", val accuracy {100 * val_acc:.1f}%" if task.classification else "")
        + f"; {speed}")
  if records:
    d = summary["diagnostics"]
    print(f"diagnostics: update/param ratio {d['final_update_to_param_ratio']:.2e} at the end "
          f"(at most {d['max_update_to_param_ratio']:.2e}), eps dominates "
          f"{100 * d['final_eps_dominated_fraction']:.1f}% of the elements")
  print(f"wrote {', '.join(written)} in {out}")
  return 0


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


