"""What the commands share: argument parsing, start-up, plots and files."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

from adam_jax._names import did_you_mean

TASKS = ("digits-mlp", "digits-autoencoder")


class UsageError(Exception):
  """Bad input from the user: reported as one line, exit code 2."""

  def __init__(self, message: str, prog: str = "adam-jax"):
    super().__init__(message)
    self.prog = prog


class Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line (no usage dump) and exit code 2."""

  def error(self, message: str) -> NoReturn:
    raise UsageError(message, self.prog)


# ---------------------------------------------------------------------------- parsing helpers


def int_at_least(low: int, what: str) -> Callable[[str], int]:
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


positive_int = int_at_least(1, "a positive integer")
nonnegative_int = int_at_least(0, "a non-negative integer")

SEED_LIMIT = 2**63  # jax.random.key takes an int64


def seed_int(text: str) -> int:
  """An argparse type: a seed, an integer in [0, 2**63) (what ``jax.random.key`` takes)."""
  value = nonnegative_int(text)
  if value >= SEED_LIMIT:
    raise argparse.ArgumentTypeError(f"expected a seed below 2**63, got {text!r}")
  return value


_FLOAT32_MAX = 3.4028234663852886e38


def float_in(low: float, high: float | None, *, low_open: bool = False,
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
    if not abs(value) <= _FLOAT32_MAX:  # inf, or too large for the float32 it trains in
      raise argparse.ArgumentTypeError(f"{text!r} is not a finite float32 number")
    return value

  return parse


def list_of(parse: Callable[[str], Any]) -> Callable[[str], list[Any]]:
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


class Range(NamedTuple):
  """``LO:HI`` on the command line: the range a sampled search draws a value from."""

  lo: float
  hi: float
  log: bool  # log-uniform (scales: learning rate, eps, weight decay) or uniform


def list_or_range(parse: Callable[[str], float], *, log: bool
                  ) -> Callable[[str], list[Any] | Range]:
  """An argparse type: comma-separated values (:func:`list_of`) or a range ``LO:HI``.

  Both bounds are parsed by ``parse``; ``LO < HI``, and ``LO > 0`` for a log-uniform one.
  """
  parse_list = list_of(parse)

  def parse_range(text: str) -> list[Any] | Range:
    if ":" not in text:
      return parse_list(text)
    parts = [part.strip() for part in text.split(":")]
    if len(parts) != 2 or not all(parts):
      raise argparse.ArgumentTypeError(f"expected a range LO:HI, got {text!r}")
    lo, hi = parse(parts[0]), parse(parts[1])
    if not lo < hi:
      raise argparse.ArgumentTypeError(f"range {text!r} needs LO < HI")
    if log and lo <= 0:
      raise argparse.ArgumentTypeError(f"range {text!r} is log-uniform and needs LO > 0")
    return Range(lo, hi, log)

  return parse_range


def varied(space: dict[str, Any], key: str) -> bool:
  """Whether ``key`` of a sweep's space takes several values (a range or a list of several)."""
  return isinstance(space[key], Range) or len(space[key]) > 1


def log_keys(space: dict[str, Any]) -> list[str]:
  """The keys of a sweep's space drawn log-uniformly (a log axis in the figures)."""
  return [k for k, v in space.items() if isinstance(v, Range) and v.log]


def choice_of(choices: Sequence[str]) -> Callable[[str], str]:
  def parse(text: str) -> str:
    if text not in choices:
      raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}"
                                       f"{did_you_mean(text, choices)}")
    return text

  return parse


def optimizer_name(text: str) -> str:
  """An argparse type: a name in :func:`adam_jax.optimizers`."""
  import adam_jax

  if text not in adam_jax.optimizers():
    raise argparse.ArgumentTypeError(
        f"{text!r} is not one of {', '.join(adam_jax.optimizers())}"
        f"{did_you_mean(text, adam_jax.optimizers())}")
  return text


POS_FLOAT = float_in(0.0, None, low_open=True)
BETA = float_in(0.0, 1.0)
NONNEG_FLOAT = float_in(0.0, None)


def memory_size(text: str) -> int:
  """``--max-memory``: bytes, or a number with a unit (``4GB``, ``512MiB``)."""
  from adam_jax.tuning import _memory

  try:
    return _memory.parse_bytes(text, "--max-memory")
  except ValueError as err:
    raise argparse.ArgumentTypeError(str(err)) from None


def add_common(p: argparse.ArgumentParser, out_default: str) -> None:
  p.add_argument("--task", default="digits-mlp", type=choice_of(TASKS),
                 help="digits-mlp (classifier) or digits-autoencoder (default: %(default)s)")
  p.add_argument("--data", default=None, metavar="FILE.npz",
                 help="your own data: an .npz with array x (and integer labels y for the "
                      "classifier) instead of scikit-learn's digits")
  p.add_argument("--seed", default=0, type=seed_int,
                 help="seeds the split, the initial params and the batch order (default: 0)")
  p.add_argument("--out", default=out_default, metavar="DIR",
                 help="output folder (default: %(default)s)")
  p.add_argument("--max-memory", default=None, type=memory_size, metavar="SIZE",
                 help="the most memory one compiled program may hold, e.g. 4GB or 512MiB, by "
                      "XLA's own analysis; models that do not fit together train one group after "
                      "another (default: half of the free RAM, 80%% of an accelerator's)")


def add_tensorboard(p: argparse.ArgumentParser) -> None:
  p.add_argument("--tensorboard", default=None, metavar="DIR",
                 help="also write the runs for TensorBoard to DIR (tensorboard --logdir DIR; "
                      "needs pip install 'adam-jax[tensorboard]')")


def check_tensorboard(args: argparse.Namespace, prog: str) -> None:
  """A ``--tensorboard`` without tensorboardX is one line, before anything is trained."""
  import importlib.util

  if args.tensorboard is not None and importlib.util.find_spec("tensorboardX") is None:
    raise UsageError("--tensorboard needs tensorboardX, which is not installed: "
                     "pip install 'adam-jax[tensorboard]'", prog)


# ---------------------------------------------------------------------------- start-up


def prefer_fast_compilation() -> None:
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


def import_flax_outside_ipython() -> None:
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


def interrupts_held(hold: bool = True) -> contextlib.AbstractContextManager[None]:
  """Holds Ctrl-C (SIGINT) until the block ends, then raises ``KeyboardInterrupt``.

  For the imports of compiled extensions: an interrupt raised half-way through
  ``import jax`` leaves the module half-initialized (later imports fail with an
  ``AttributeError`` traceback), and one raised inside JAX's garbage-collector
  callback is printed and lost, so the command would run on. Only in the main
  thread and when ``hold`` (the console script), where the signal handler is ours.
  """
  from adam_jax import _files

  return _files.interrupts_held(hold)


def exit_now(code: int) -> None:
  """Ends the process with ``code`` once output is flushed and exit handlers have run,
  without the interpreter's teardown.

  Tearing down a process that has loaded JAX, Flax and matplotlib (every module's objects,
  XLA's client and its thread pools) took 0.6-1 s of a 6-s ``adam-jax sweep`` on a 2-core
  CPU, after its files were written. Every file the commands write is closed when they return
  (checkpoints are saved synchronously), so nothing is lost by skipping it.
  """
  import atexit
  import logging

  if os.environ.get("ADAM_JAX_SLOW_EXIT"):  # for a before/after measurement
    return
  atexit._run_exitfuncs()  # noqa: SLF001 - what exiting would run: JAX's own clean-up
  logging.shutdown()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can be said
      pass
  os._exit(code)


def import_jax() -> None:
  """Imports JAX, optax and the library (the commands' common heavy imports)."""
  import jax  # noqa: F401
  import optax  # noqa: F401

  import adam_jax.aliases  # noqa: F401


_preloads: list[tuple[str, ...]] = []  # what preload() was asked for in this process


def preload(*modules: str) -> None:
  """Imports ``modules`` in a background thread once the command's first programs are
  compiled, while they train (:func:`adam_jax.tuning._runner.when_compiled`): earlier, the
  imports would hold the GIL while the main thread traces the programs."""
  import importlib

  from adam_jax.tuning import _runner

  if all(name in sys.modules for name in modules) or modules in _preloads:
    return  # loaded, or waiting for the programs of an earlier command of this process
  _preloads.append(modules)

  def load() -> None:
    for name in modules:
      try:
        importlib.import_module(name)
      except ImportError:  # reported properly where the module is used
        return

  _runner.when_compiled(load)


# ---------------------------------------------------------------------------- plots and files


def figure(width: float = 6.4, height: float = 4.2):
  """A matplotlib Figure with an Agg canvas (no pyplot, no display)."""
  from adam_jax import _plotting

  return _plotting.figure(width, height)


def smooth(values: Any, beta: float = 0.9) -> Any:
  """Bias-corrected exponential moving average (for plotting noisy mini-batch losses)."""
  import numpy as np

  values = np.asarray(values, np.float64)
  out = np.empty_like(values)
  avg = 0.0
  for i, v in enumerate(values):
    avg = beta * avg + (1 - beta) * v
    out[i] = avg / (1 - beta ** (i + 1))
  return out


def json_safe(value: Any) -> Any:
  """``value`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json(path: str, payload: dict[str, Any]) -> None:
  """Writes valid JSON (a NaN or infinite number becomes null) atomically."""
  from adam_jax import _files

  _files.write_atomic(path, json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n")


def make_out(path: str, prog: str = "adam-jax") -> str:
  """Creates the output folder, checks that files can be written there (before training)
  and takes its lock (one command writes a folder; another is refused, naming it)."""
  import tempfile

  from adam_jax import _lock

  try:
    os.makedirs(path, exist_ok=True)
  except OSError as err:
    raise UsageError(f"cannot create output folder {path}: {err.strerror}", prog) from None
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix=".adam-jax-write-test-"):
      pass
  except OSError as err:
    raise UsageError(f"cannot write to output folder {path}: {err.strerror or err}",
                     prog) from None
  try:
    _lock.acquire(path)
  except _lock.DirectoryLockedError as err:
    raise UsageError(str(err), prog) from None
  return path


def refuse_earlier(out: str, names: Sequence[str], what: str, hint: str, prog: str) -> None:
  """Refuses an ``out`` that holds an earlier run's files (``names``): ``hint`` says what to do."""
  earlier = [name for name in names if os.path.exists(os.path.join(out, name))]
  if earlier:
    raise UsageError(f"{out} already holds an earlier {what} ({earlier[0]}); {hint}", prog)


def file_digest(path: str | None) -> str | None:
  """The SHA-256 of a file's bytes (None for no file): tells a resumed run its data changed."""
  import hashlib

  if path is None:
    return None
  digest = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  except OSError:  # reported when the data is loaded
    return None
  return digest.hexdigest()


def check_resume(path: str, record: dict[str, Any], prog: str) -> None:
  """Refuses to resume when ``record`` differs from the one saved at ``path`` by the first run."""
  try:
    with open(path) as f:
      old = json.load(f)
  except FileNotFoundError:
    raise UsageError(f"cannot resume: {path} is missing, so the earlier run's flags and data "
                     "are unknown; start afresh with a new --out", prog) from None
  except (OSError, ValueError) as err:
    raise UsageError(f"cannot resume: {path} is damaged ({err}); start afresh with a new --out",
                     prog) from None
  if not isinstance(old, dict):
    raise UsageError(f"cannot resume: {path} is damaged (not a JSON object); start afresh with "
                     "a new --out", prog)
  for key, value in record.items():
    if old.get(key) == json_safe(value):
      continue
    if key == "data_sha256":
      raise UsageError(f"cannot resume: the data differs from the run recorded in {path} (its "
                       "SHA-256 changed); start afresh with a new --out", prog)
    raise UsageError(f"cannot resume: {path} records a run with {key}={old.get(key)!r}, this "
                     f"one has {key}={value!r}", prog)


def is_out_of_memory(err: BaseException) -> bool:
  """Whether ``err`` is XLA's allocation failure (``RESOURCE_EXHAUSTED``)."""
  return type(err).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and (
      "RESOURCE_EXHAUSTED" in str(err) or "Out of memory" in str(err))


def task_label(args: argparse.Namespace) -> str:
  """What the command trains, for its first line: the task, and the user's data file if any."""
  return args.task if args.data is None else f"{args.task} on {os.path.basename(args.data)}"


def build_problem(args: argparse.Namespace, prog: str, **sizes: Any) -> Any:
  """The ``--task`` as an :class:`adam_jax.tuning.Problem` (its split seeded by ``--seed``)."""
  from adam_jax import tasks

  make = tasks.digits_mlp if args.task == "digits-mlp" else tasks.digits_autoencoder
  try:
    return make(seed=args.seed, data=args.data, **sizes)
  except ValueError as err:
    raise UsageError(str(err), prog) from None


def progress(total: int, desc: str, unit: str) -> Any:
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)


