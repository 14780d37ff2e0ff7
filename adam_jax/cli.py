"""The ``adam-jax`` command line: demo, lr-find, sweep, bench.

Heavy modules (jax, flax, scikit-learn, matplotlib) are imported inside the
commands, so ``adam-jax --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

_TASKS = ("digits-mlp", "digits-autoencoder")


class _UsageError(Exception):
  """Bad input from the user: reported as one line, exit code 2."""

  def __init__(self, message: str, prog: str = "adam-jax"):
    super().__init__(message)
    self.prog = prog


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line (no usage dump) and exit code 2."""

  def error(self, message: str) -> NoReturn:
    raise _UsageError(message, self.prog)


# ---------------------------------------------------------------------------- parsing helpers


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
  """An argparse type: an integer >= ``low``, described as ``what`` in errors."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = low - 1
    if value < low:
      raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value

  return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "a non-negative integer")


def _float_in(low: float, high: float | None, *, low_open: bool = False,
              high_open: bool = True) -> Callable[[str], float]:
  """An argparse type: a float in the given interval."""
  lo = "(" if low_open else "["
  hi = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
  interval = f"{lo}{low}, {hi}"

  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    ok = value > low if low_open else value >= low
    if high is not None:
      ok = ok and (value < high if high_open else value <= high)
    if not ok or value != value:
      raise argparse.ArgumentTypeError(f"{text!r} is outside {interval}")
    return value

  return parse


def _list_of(parse: Callable[[str], Any]) -> Callable[[str], list[Any]]:
  """An argparse type: comma-separated values, each parsed by ``parse``, no duplicates."""

  def parse_list(text: str) -> list[Any]:
    items = [item.strip() for item in text.split(",")]
    if not items or any(not item for item in items):
      raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
    values = [parse(item) for item in items]
    if len(set(values)) != len(values):
      raise argparse.ArgumentTypeError(f"repeated value in {text!r}")
    return values

  return parse_list


def _choice_of(choices: Sequence[str]) -> Callable[[str], str]:
  def parse(text: str) -> str:
    if text not in choices:
      raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
    return text

  return parse


_POS_FLOAT = _float_in(0.0, None, low_open=True)
_BETA = _float_in(0.0, 1.0)
_NONNEG_FLOAT = _float_in(0.0, None)


def _add_common(p: argparse.ArgumentParser, out_default: str) -> None:
  p.add_argument("--task", default="digits-mlp", type=_choice_of(_TASKS),
                 help="digits-mlp (classifier) or digits-autoencoder (default: %(default)s)")
  p.add_argument("--data", default=None, metavar="FILE.npz",
                 help="your own data: an .npz with array x (and integer labels y for the "
                      "classifier) instead of scikit-learn's digits")
  p.add_argument("--seed", default=0, type=_nonnegative_int,
                 help="seeds the split, the initial params and the batch order (default: 0)")
  p.add_argument("--out", default=out_default, metavar="DIR",
                 help="output folder (default: %(default)s)")


# ---------------------------------------------------------------------------- start-up


def _prefer_fast_compilation() -> None:
  """Asks XLA's CPU backend for its level-1 optimizations unless told otherwise.

  The commands train small models for seconds, so compilation is a large share of
  their time: on a 2-core CPU level 1 compiles the sweep's program about 1.5x
  faster than the default level, with the same step time and the same numbers.
  Only done when ``adam-jax`` runs as a program (not for ``main(argv)`` called from
  Python), and nothing changes when ``XLA_FLAGS`` already sets the level, when a GPU
  plugin is installed, or once the backend has started (the flag is read at its start).
  """
  import importlib.util

  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" in flags:
    return
  if any(importlib.util.find_spec(name) is not None
         for name in ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")):
    return
  try:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
      return
  except (ImportError, AttributeError):  # pragma: no cover - another jax layout
    pass
  os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=1").strip()


def _import_flax_outside_ipython() -> None:
  """Imports ``flax.nnx`` without the IPython probe it runs at import time.

  ``flax.nnx`` asks ``IPython.get_ipython()`` whether it runs in a notebook (to
  colour its reprs), and importing IPython for that costs ~0.3 s of a command's
  start-up. A console script never runs inside IPython, so while flax is
  imported the probe finds no IPython (``sys.modules[name] = None`` makes that
  import fail) -- unless IPython is already loaded, in which case nothing changes.
  """
  if "flax.nnx" in sys.modules or "IPython" in sys.modules:
    return
  sys.modules["IPython"] = None  # type: ignore[assignment]
  try:
    import flax.nnx  # noqa: F401
  except ImportError:  # reported properly where flax is used
    pass
  finally:
    del sys.modules["IPython"]


def _preload(*modules: str) -> None:
  """Imports ``modules`` in a background thread (while XLA compiles and trains)."""
  import importlib
  import threading

  def load() -> None:
    for name in modules:
      try:
        importlib.import_module(name)
      except ImportError:  # reported properly where the module is used
        return

  threading.Thread(target=load, daemon=True).start()


# ---------------------------------------------------------------------------- plots and files


def _figure(width: float = 6.4, height: float = 4.2):
  """A matplotlib Figure with an Agg canvas (no pyplot, no display)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _smooth(values: Any, beta: float = 0.9) -> Any:
  """Bias-corrected exponential moving average (for plotting noisy mini-batch losses)."""
  import numpy as np

  values = np.asarray(values, np.float64)
  out = np.empty_like(values)
  avg = 0.0
  for i, v in enumerate(values):
    avg = beta * avg + (1 - beta) * v
    out[i] = avg / (1 - beta ** (i + 1))
  return out


def _write_json(path: str, payload: dict[str, Any]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def _make_out(path: str) -> str:
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as err:
    raise _UsageError(f"cannot create output folder {path}: {err.strerror}") from None
  return path


def _build_task(args: argparse.Namespace, **sizes: Any) -> Any:
  from adam_jax.tasks import get_task

  try:
    return get_task(args.task, seed=args.seed, data=args.data, **sizes)
  except ValueError as err:
    raise _UsageError(str(err)) from None


def _progress(total: int, desc: str, unit: str) -> Any:
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)


# ---------------------------------------------------------------------------- demo


def _demo_parser(sub: Any) -> None:
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
  _add_common(p, "runs/demo")
  p.add_argument("--steps", default=3000, type=_positive_int, help="optimizer steps (3000)")
  p.add_argument("--lr", default=3e-3, type=_POS_FLOAT, help="peak learning rate (3e-3)")
  p.add_argument("--warmup", default=None, type=_nonnegative_int,
                 help="warm-up steps (default: 5%% of --steps)")
  p.add_argument("--layers", default=1, type=_positive_int, help="hidden layers (1)")
  p.add_argument("--hidden", default=128, type=_positive_int, help="units per hidden layer (128)")
  p.add_argument("--batch-size", default=32, type=_positive_int, help="mini-batch size (32)")
  p.add_argument("--eval-every", default=250, type=_positive_int,
                 help="steps between validation reports (250)")
  p.add_argument("--diagnostics", action="store_true",
                 help="record update/param ratios and eps dominance every step "
                      "(adam_jax.diagnostics.monitor); writes diagnostics.png")
  p.add_argument("--checkpoint-every", default=1000, type=_nonnegative_int,
                 help="steps between checkpoints of the train state in DIR/checkpoint "
                      "(1000; 0: none)")
  p.add_argument("--resume", action="store_true",
                 help="continue from the checkpoint in --out (same flags as the first run)")
  p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
  prog = "adam-jax demo"
  warmup = args.warmup if args.warmup is not None else args.steps // 20
  if warmup >= args.steps:
    raise _UsageError(f"--warmup ({warmup}) must be smaller than --steps ({args.steps})", prog)
  out = _make_out(args.out)
  config = {"task": args.task, "data": args.data, "seed": args.seed, "steps": args.steps,
            "lr": args.lr, "warmup": warmup, "layers": args.layers, "hidden": args.hidden,
            "batch_size": args.batch_size, "eval_every": args.eval_every,
            "diagnostics": args.diagnostics}
  config_path = os.path.join(out, "demo_config.json")
  ckpt_path = os.path.join(out, "checkpoint")
  resuming = args.resume and os.path.isdir(ckpt_path)
  if resuming:
    try:
      with open(config_path) as f:
        old = json.load(f)
    except (OSError, ValueError):
      old = {}
    diff = [k for k in config if old.get(k) != config[k]]
    if diff:
      raise _UsageError(f"cannot resume: {out} holds a run with {diff[0]}={old.get(diff[0])!r}, "
                        f"this one has {diff[0]}={config[diff[0]]!r}", prog)
  task = _build_task(args, layers=args.layers, hidden=args.hidden, batch_size=args.batch_size)
  _write_json(config_path, config)

  import jax
  import numpy as np

  import adam_jax
  from adam_jax.tasks import fit

  schedule = adam_jax.schedules.warmup_cosine(args.lr, warmup, args.steps)
  tx = adam_jax.adam(schedule)
  record = None
  if args.diagnostics:
    from adam_jax.diagnostics import monitor
    from adam_jax.tuning.grid_search import monitor_record

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
      state = checkpoint.restore(ckpt_path, like=state)
    except ValueError as err:
      raise _UsageError(f"cannot resume from {ckpt_path}: {err}", prog) from None
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
    with _progress(args.steps, "training", "step") as bar:
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

          checkpoint.save(ckpt_path, {"params": params, "opt_state": opt_state,
                                      "step": np.asarray(hi, np.int32), "curve": curve,
                                      "evals": evals}, overwrite=True)
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
    from adam_jax.tuning.grid_search import monitor_columns

    stacked = jax.tree.map(lambda *xs: np.concatenate(xs), *records)
    cols = monitor_columns(stacked, first_step=first + 1)
    summary["diagnostics"] = {
        "final_update_to_param_ratio": float(cols["update_to_param_ratio"][-1]),
        "max_update_to_param_ratio": float(np.nanmax(cols["update_to_param_ratio"])),
        "final_eps_dominated_fraction": float(cols["eps_dominated_fraction"][-1]),
    }
    plot_history(cols, out, title=f"adam-jax demo: {task.name}")
    written.append("diagnostics.png")
  _write_json(os.path.join(out, "results.json"), summary)
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

  fig = _figure()
  ax = fig.add_subplot()
  steps = np.arange(1, len(curve) + 1)
  ax.plot(steps, curve, color="C0", alpha=0.25, lw=0.6, label="mini-batch loss")
  ax.plot(steps, _smooth(curve, 0.98), color="C0", lw=1.5, label="train loss (smoothed)")
  ax.plot([h["step"] for h in history], [h["val_loss"] for h in history], "o-", color="C1",
          ms=3, label="validation loss")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(f"adam-jax demo: {name}")
  ax.legend()
  fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------- lr-find


def _lr_find_parser(sub: Any) -> None:
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
             "  adam-jax lr-find --task digits-autoencoder --out runs/lr-ae",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  _add_common(p, "runs/lr-find")
  p.add_argument("--start-lr", default=1e-6, type=_POS_FLOAT, help="first learning rate (1e-6)")
  p.add_argument("--end-lr", default=1.0, type=_POS_FLOAT, help="last learning rate (1)")
  p.add_argument("--num-steps", default=200, type=_positive_int,
                 help="most steps of the test (200; at least 10)")
  p.add_argument("--optimizer", default="adam", type=_choice_of(("adam", "adamw")),
                 help="adam or adamw (default: adam)")
  p.add_argument("--layers", default=1, type=_positive_int, help="hidden layers (1)")
  p.add_argument("--hidden", default=128, type=_positive_int, help="units per hidden layer (128)")
  p.add_argument("--batch-size", default=32, type=_positive_int, help="mini-batch size (32)")
  p.set_defaults(run=_lr_find)


def _lr_find(args: argparse.Namespace) -> int:
  if args.end_lr <= args.start_lr:
    raise _UsageError(f"--end-lr ({args.end_lr:g}) must be greater than --start-lr "
                      f"({args.start_lr:g})", "adam-jax lr-find")
  if args.num_steps < 10:
    raise _UsageError(f"--num-steps must be at least 10, got {args.num_steps}",
                      "adam-jax lr-find")
  out = _make_out(args.out)
  task = _build_task(args, layers=args.layers, hidden=args.hidden, batch_size=args.batch_size)

  import adam_jax
  from adam_jax.tuning import lr_find

  factory = adam_jax.adam if args.optimizer == "adam" else adam_jax.adamw
  print(f"adam-jax lr-find: {task.name}, {args.optimizer}, learning rate from "
        f"{args.start_lr:g} to {args.end_lr:g} over at most {args.num_steps} steps")
  start = time.perf_counter()
  try:
    result = lr_find(task, optimizer=factory, start_lr=args.start_lr, end_lr=args.end_lr,
                     num_steps=args.num_steps, seed=args.seed)
  except ValueError as err:
    raise _UsageError(str(err), "adam-jax lr-find") from None
  elapsed = time.perf_counter() - start
  payload = {
      "task": task.name, "optimizer": args.optimizer, "seed": args.seed, "data": args.data,
      "suggestion": result.suggestion, "steepest": result.steepest, "valley": result.valley,
      "diverged": result.diverged, "steps_run": len(result.lrs),
      "lrs": result.lrs.tolist(), "losses": result.losses.tolist(),
      "raw_losses": result.raw_losses.tolist(),
  }
  _write_json(os.path.join(out, "lr_find.json"), payload)
  _plot_lr_find(os.path.join(out, "lr_find.png"), result, task.name)
  stop = (f"stopped at lr {result.lrs[-1]:.3g} (loss diverged)" if result.diverged
          else "no divergence")
  print(f"{len(result.lrs)} steps in {elapsed:.1f} s, {stop}")
  print(f"suggested learning rate: {result.suggestion:.3g} (steepest descent); "
        f"valley rule: {result.valley:.3g}")
  print(f"wrote {os.path.join(out, 'lr_find.json')} and {os.path.join(out, 'lr_find.png')}")
  return 0


def _plot_lr_find(path: str, result: Any, name: str) -> None:
  fig = _figure()
  ax = fig.add_subplot()
  ax.plot(result.lrs, result.raw_losses, color="C0", alpha=0.3, lw=0.7, label="mini-batch loss")
  ax.plot(result.lrs, result.losses, color="C0", lw=1.5, label="smoothed loss")
  ax.axvline(result.steepest, color="C1", ls="--", label=f"steepest {result.steepest:.2g}")
  ax.axvline(result.valley, color="C2", ls=":", label=f"valley {result.valley:.2g}")
  ax.set_xscale("log")
  finite = result.losses[result.losses == result.losses]
  if len(finite):
    ax.set_ylim(top=min(float(finite.max()), 3 * float(finite[0])) * 1.05)
  ax.set_xlabel("learning rate")
  ax.set_ylabel("loss")
  ax.set_title(f"LR range test: {name}")
  ax.legend()
  fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------- sweep


_SWEEP_FLAGS = (
    ("lr", "--lr", _list_of(_POS_FLOAT), "1e-4,3e-4,1e-3,3e-3,1e-2",
     "peak learning rates"),
    ("b1", "--b1", _list_of(_BETA), "0.9", "first-moment decay rates, in [0, 1)"),
    ("b2", "--b2", _list_of(_BETA), "0.999", "second-moment decay rates, in [0, 1)"),
    ("eps", "--eps", _list_of(_NONNEG_FLOAT), "1e-8", "eps values (>= 0)"),
    ("weight_decay", "--weight-decay", _list_of(_NONNEG_FLOAT), "0",
     "weight decay (>= 0): coupled L2 for adam, decoupled for adamw"),
    ("schedule", "--schedule",
     _list_of(_choice_of(("constant", "cosine", "step", "exponential"))), "constant",
     "constant, cosine (to 0), step (x0.1 each third), exponential (to 1%%)"),
    ("layers", "--layers", _list_of(_positive_int), "1", "hidden layers"),
    ("hidden", "--hidden", _list_of(_positive_int), "128", "units per hidden layer"),
    ("batch_size", "--batch-size", _list_of(_positive_int), "32", "mini-batch sizes"),
)


def _sweep_parser(sub: Any) -> None:
  p = sub.add_parser(
      "sweep",
      help="grid search over Adam's hyperparameters, vectorized with jax.vmap",
      description="Trains every combination of the given values. Values of lr, b1, b2, eps, "
                  "weight decay and schedule are trained together in one compiled, vmapped "
                  "program (spread over the devices present); layers, hidden units and batch "
                  "sizes each need their own program. Each flag takes comma-separated values. "
                  "Writes results.csv (a row as each configuration finishes), best.json, "
                  "heatmap.png and curves.png.",
      epilog="examples:\n"
             "  adam-jax sweep --lr 1e-4,3e-4,1e-3,3e-3 --b1 0.9,0.95 --steps 500\n"
             "  adam-jax sweep --lr 1e-3,1e-2 --schedule constant,cosine --hidden 64,128\n"
             "  adam-jax sweep --lr 1e-3,3e-3 --weight-decay 0,1e-2 --optimizer adamw\n"
             "  adam-jax sweep --lr 1e-3,1e-2 --out runs/s1 --resume   # after an interrupt",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  _add_common(p, "runs/sweep")
  for dest, flag, parse, default, text in _SWEEP_FLAGS:
    p.add_argument(flag, dest=dest, default=default, type=parse,
                   help=f"{text} (default: {default.replace('%', '%%')})")
  p.add_argument("--steps", default=1000, type=_positive_int,
                 help="optimizer steps per configuration (1000)")
  p.add_argument("--optimizer", default="adam", type=_choice_of(("adam", "adamw")),
                 help="adam (coupled L2 weight decay) or adamw (decoupled); default adam")
  p.add_argument("--sequential", action="store_true",
                 help="train one configuration at a time (for comparison and debugging)")
  p.add_argument("--checkpoint-every", default=1000, type=_nonnegative_int,
                 help="steps between checkpoints of the group in training in DIR/checkpoints "
                      "(1000; 0: none)")
  p.add_argument("--resume", action="store_true",
                 help="keep the rows of results.csv in --out, continue an interrupted group "
                      "from its checkpoint and train the others (same flags as the first run)")
  p.add_argument("--diagnostics", action="store_true",
                 help="record update/param ratios and eps dominance every step of every "
                      "configuration; writes diagnostics.png for the best one")
  p.set_defaults(run=_sweep)


def _sweep(args: argparse.Namespace) -> int:
  prog = "adam-jax sweep"
  grid = {dest: getattr(args, dest) for dest, *_ in _SWEEP_FLAGS}
  for dest in grid:
    if isinstance(grid[dest], str):  # an argparse default, not yet parsed
      grid[dest] = [v if dest == "schedule" else float(v) for v in grid[dest].split(",")]
  for dest in ("layers", "hidden", "batch_size"):
    grid[dest] = [int(v) for v in grid[dest]]
  out = _make_out(args.out)
  from adam_jax.tasks import get_task

  try:  # the largest batch must fit the training split
    get_task(args.task, layers=grid["layers"][0], hidden=grid["hidden"][0],
             batch_size=max(grid["batch_size"]), seed=args.seed, data=args.data)
  except ValueError as err:
    raise _UsageError(str(err), prog) from None

  from adam_jax.tuning import grid_search

  total = 1
  for values in grid.values():
    total *= len(values)
  mode = "one at a time" if args.sequential else "vectorized"
  print(f"adam-jax sweep: {total} configurations of {args.task} ({args.optimizer}, "
        f"{args.steps} steps each, {mode}) -> {out}")
  rows: list[Any] = []
  csv_path = os.path.join(out, "results.csv")
  start = time.perf_counter()
  with _progress(total, "configurations", "config") as bar:
    def on_group(shape: dict[str, int], n: int) -> None:
      bar.set_description(f"layers={shape['layers']} hidden={shape['hidden']} "
                          f"batch={shape['batch_size']}: {n} to train")

    def on_row(row: Any) -> None:
      rows.append(row)
      bar.update(1)

    try:
      result = grid_search(args.task, **grid, steps=args.steps, optimizer=args.optimizer,
                           seed=args.seed, data=args.data, out_dir=out, resume=args.resume,
                           sequential=args.sequential, on_row=on_row, on_group=on_group,
                           diagnostics=args.diagnostics, checkpoint_every=args.checkpoint_every)
    except ValueError as err:
      raise _UsageError(str(err), prog) from None
    except KeyboardInterrupt:
      bar.close()
      kept = (f" and {os.path.join(out, 'checkpoints')} the training in progress"
              if os.path.isdir(os.path.join(out, "checkpoints")) else "")
      print(f"adam-jax sweep: interrupted; {csv_path} keeps every configuration that finished"
            f"{kept}; run the same command with --resume to train the rest", file=sys.stderr)
      return 130
    bar.update(total - bar.n)
  elapsed = time.perf_counter() - start
  best = result.best
  payload = {**best.config, "train_loss": best.train_loss, "val_loss": best.val_loss,
             "val_accuracy": best.val_accuracy, "task": args.task, "optimizer": args.optimizer,
             "steps": args.steps, "seed": args.seed, "data": args.data,
             "configurations": total, "trained_now": len(rows), "wall_s": elapsed}
  _write_json(os.path.join(out, "best.json"), payload)
  _plot_heatmap(os.path.join(out, "heatmap.png"), result.rows, grid)
  _plot_curves(os.path.join(out, "curves.png"), result.rows, best)
  written = "best.json, heatmap.png, curves.png"
  monitored = [r for r in rows if r.diagnostics is not None]
  if monitored:
    from adam_jax.diagnostics import plot_history

    top = min(monitored, key=lambda r: r.val_loss if r.val_loss == r.val_loss else float("inf"))
    label = ", ".join(f"{k}={_label(k, v)}" for k, v in top.config.items() if len(grid[k]) > 1)
    plot_history(top.diagnostics, out, title=f"diagnostics of the best run: {label}")
    payload["diagnostics"] = {
        "config": top.config,
        "final_update_to_param_ratio": float(top.diagnostics["update_to_param_ratio"][-1]),
        "final_eps_dominated_fraction": float(top.diagnostics["eps_dominated_fraction"][-1]),
    }
    _write_json(os.path.join(out, "best.json"), payload)
    written += ", diagnostics.png"
  acc = "" if best.val_accuracy is None else f", val accuracy {100 * best.val_accuracy:.1f}%"
  shown = ", ".join(f"{k}={v:g}" if not isinstance(v, str) else f"{k}={v}"
                    for k, v in best.config.items() if len(grid[k]) > 1) or "the only one"
  print(f"trained {len(rows)} configurations in {elapsed:.1f} s ({total - len(rows)} resumed)")
  print(f"best: {shown}: val loss {best.val_loss:.4f}{acc}")
  print(f"wrote {csv_path}, {written} in {out}")
  return 0


def _label(name: str, value: Any) -> str:
  return value if isinstance(value, str) else f"{value:g}"


def _plot_heatmap(path: str, rows: list[Any], grid: dict[str, list[Any]]) -> None:
  """Validation loss over the two axes with the most values (best over the other axes)."""
  import numpy as np

  swept = sorted((a for a in grid if len(grid[a]) > 1), key=lambda a: -len(grid[a]))
  fig = _figure()
  ax = fig.add_subplot()
  if len(swept) >= 2:
    ya, xa = swept[0], swept[1]
    table = np.full((len(grid[ya]), len(grid[xa])), np.inf)
    for r in rows:
      i, j = grid[ya].index(r.config[ya]), grid[xa].index(r.config[xa])
      loss = r.val_loss if r.val_loss == r.val_loss else np.inf
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
    xa = swept[0] if swept else "lr"
    xs = grid[xa]
    ys = [min(r.val_loss for r in rows if r.config[xa] == v) for v in xs]
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
  fig = _figure()
  ax = fig.add_subplot()
  for r in rows:
    if r.curve is None or r is best:
      continue
    ax.plot(_smooth(r.curve, 0.95), lw=0.8, alpha=0.5, color="0.5")
  if best.curve is not None:
    ax.plot(_smooth(best.curve, 0.95), lw=1.8, color="C3", label="best: " + ", ".join(
        f"{k}={_label(k, v)}" for k, v in best.config.items()
        if k in ("lr", "b1", "b2", "schedule", "hidden", "layers", "batch_size")))
    ax.legend(fontsize=7)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (smoothed)")
  ax.set_title("training curves of every configuration")
  fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------- bench


def _bench_parser(sub: Any) -> None:
  sub.add_parser(
      "bench",
      add_help=False,
      help="time one Adam step against optax on this machine (see adam-jax bench --help)",
  )


def _bench(argv: list[str]) -> int:
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
    raise _UsageError(str(err), "adam-jax bench") from None
  sys.stderr.write(errors.getvalue())
  return code


# ---------------------------------------------------------------------------- entry point


def _build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="adam-jax",
      description="The Adam family for JAX: a demo, a learning-rate finder, vectorized "
                  "hyperparameter sweeps and a step-time benchmark.",
      epilog="examples:\n"
             "  adam-jax demo\n"
             "  adam-jax lr-find\n"
             "  adam-jax sweep --lr 1e-4,3e-4,1e-3,3e-3 --b1 0.9,0.95 --steps 500\n"
             "  adam-jax sweep --help\n"
             "  adam-jax bench --rounds 10",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  sub.required = True
  _demo_parser(sub)
  _lr_find_parser(sub)
  _sweep_parser(sub)
  _bench_parser(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``adam-jax``; returns the exit code (2 for bad input, 130 when interrupted)."""
  parser = _build_parser()
  as_program = argv is None  # the console script: this process is ours to configure
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    if argv[:1] == ["bench"]:  # its own flags: see adam-jax bench --help
      return _bench(argv[1:])
    args = parser.parse_args(argv)
    if as_program:
      _prefer_fast_compilation()
      _import_flax_outside_ipython()
    _preload("matplotlib.figure", "matplotlib.backends.backend_agg")
    return args.run(args)
  except _UsageError as err:
    print(f"{err.prog}: error: {err}", file=sys.stderr)
    return 2
  except SystemExit as err:  # --help
    return err.code if isinstance(err.code, int) else 0
  except KeyboardInterrupt:
    print("adam-jax: interrupted; files written so far are kept", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
