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


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _nonnegative_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
  return value


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
             "  adam-jax demo --data mine.npz --batch-size 64",
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
  p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
  warmup = args.warmup if args.warmup is not None else args.steps // 20
  if warmup >= args.steps:
    raise _UsageError(f"--warmup ({warmup}) must be smaller than --steps ({args.steps})")
  out = _make_out(args.out)
  task = _build_task(args, layers=args.layers, hidden=args.hidden, batch_size=args.batch_size)

  import jax
  import numpy as np

  import adam_jax
  from adam_jax.tasks import fit

  schedule = adam_jax.schedules.warmup_cosine(args.lr, warmup, args.steps)
  tx = adam_jax.adam(schedule)

  @jax.jit
  def chunk(params, opt_state, idx, x, y, x_val, y_val):
    params, opt_state, losses = fit(task, tx, params, opt_state, idx, x, y)
    return params, opt_state, losses, task.evaluate(params, x_val, y_val)

  idx = task.batch_indices(args.steps, args.seed)
  params, opt_state = task.params, tx.init(task.params)
  curve: list[float] = []
  history: list[dict[str, Any]] = []
  print(f"adam-jax demo: {task.name}, {args.layers}x{args.hidden} hidden, batch {task.batch_size}, "
        f"{len(task.x_train)} train / {len(task.x_val)} validation examples, "
        f"Adam with warm-up ({warmup} steps) + cosine to 0 from peak lr {args.lr:g}")
  start = time.perf_counter()
  first_chunk_end = None
  with _progress(args.steps, "training", "step") as bar:
    for lo in range(0, args.steps, args.eval_every):
      hi = min(lo + args.eval_every, args.steps)
      params, opt_state, losses, (val_loss, val_acc) = chunk(
          params, opt_state, idx[lo:hi], task.x_train, task.y_train, task.x_val, task.y_val)
      losses = np.asarray(losses)
      curve.extend(float(v) for v in losses)
      if first_chunk_end is None:
        first_chunk_end = (time.perf_counter(), hi)
      row = {"step": hi, "train_loss": float(losses.mean()), "val_loss": float(val_loss),
             "lr": float(schedule(hi - 1))}
      line = (f"step {hi:>6}/{args.steps}  train loss {row['train_loss']:.4f}  "
              f"val loss {row['val_loss']:.4f}")
      if task.classification:
        row["val_accuracy"] = float(val_acc)
        line += f"  val acc {100 * row['val_accuracy']:.1f}%"
      history.append(row)
      bar.update(hi - lo)
      bar.write(line)
  elapsed = time.perf_counter() - start
  t0, s0 = first_chunk_end
  rate = (args.steps - s0) / (time.perf_counter() - t0) if args.steps > s0 else s0 / elapsed

  train_loss, train_acc = (float(v) for v in task.evaluate(params, task.x_train, task.y_train))
  val_loss, val_acc = (float(v) for v in task.evaluate(params, task.x_val, task.y_val))
  summary: dict[str, Any] = {
      "task": task.name, "steps": args.steps, "seed": args.seed, "lr": args.lr,
      "warmup": warmup, "layers": args.layers, "hidden": args.hidden,
      "batch_size": task.batch_size, "data": args.data,
      "train_loss": train_loss, "val_loss": val_loss,
      "train_accuracy": train_acc if task.classification else None,
      "val_accuracy": val_acc if task.classification else None,
      "steps_per_s": rate, "wall_s": elapsed,
      "history": history, "curve": curve,
  }
  _write_json(os.path.join(out, "results.json"), summary)
  _plot_demo(os.path.join(out, "loss_curve.png"), curve, history, task.name)
  print(f"done: train loss {train_loss:.4f}, val loss {val_loss:.4f}"
        + (f", val accuracy {100 * val_acc:.1f}%" if task.classification else "")
        + f"; {rate:,.0f} steps/s ({elapsed:.1f} s in all, compilation included)")
  print(f"wrote {os.path.join(out, 'results.json')} and {os.path.join(out, 'loss_curve.png')}")
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


# ---------------------------------------------------------------------------- entry point


def _build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="adam-jax",
      description="The Adam family for JAX: a demo, a learning-rate finder, vectorized "
                  "hyperparameter sweeps and a step-time benchmark.",
      epilog="examples:\n"
             "  adam-jax demo\n"
             "  adam-jax demo --help",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  sub.required = True
  _demo_parser(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``adam-jax``; returns the exit code (2 for bad input, 130 when interrupted)."""
  parser = _build_parser()
  try:
    args = parser.parse_args(argv)
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
