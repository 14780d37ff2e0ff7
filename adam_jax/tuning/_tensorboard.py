"""TensorBoard event files of searches and training runs, through tensorboardX (an extra).

Written from the recorded results once a group (a batch of trials, a run) has finished,
never from inside a training loop. A search writes one run per configuration,
``log_dir/<key>=<value>,...`` (its configuration; with several seeds the curve and metrics
are their means), a training run writes ``log_dir`` itself; each holds

* ``train/loss``: the mini-batch loss of the steps (at most 1000 points: over longer runs,
  the mean of each stretch of steps, at its last step);
* the evaluations of :func:`train` at their steps (``val_loss``, ``val_accuracy``, ...) and
  the final metrics at the last step, under their names;
* the hyperparameters, for TensorBoard's HParams tab.

``tensorboard --logdir LOG_DIR`` shows them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

POINTS = 1000  # the most points of train/loss per run


def check(log_dir: str | os.PathLike[str] | None) -> str | None:
  """``log_dir`` as a string, after checking that tensorboardX is there (before training)."""
  if log_dir is None:
    return None
  try:
    import tensorboardX  # noqa: F401
  except ImportError:
    raise ValueError("log_dir needs tensorboardX, which is not installed: "
                     "pip install 'adam-jax[tensorboard]'") from None
  return os.fspath(log_dir)


def varied(values: Mapping[str, Sequence[Any]]) -> list[str]:
  """The keys of a space that take several values (they name the runs)."""
  return [k for k, v in values.items() if len(v) > 1]


def run_name(config: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
  """The folder of a configuration's run: ``key=value`` over ``keys`` (default or none: all),
  joined by commas, numbers with 4 significant digits, ``/`` and spaces replaced."""
  keys = keys or list(config)
  parts = []
  for k in keys:
    v = config[k]
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    parts.append(f"{k}={text}")
  name = ",".join(parts) or "run"
  return "".join(c if c.isalnum() or c in "=,._-+" else "_" for c in name)


def write_run(path: str, *, curve: Any, metrics: Mapping[str, float], step: int | None = None,
              config: Mapping[str, Any] | None = None,
              evaluations: Sequence[Mapping[str, float]] = ()) -> None:
  """Writes one run to the folder ``path``: the curve, the evaluations, the final
  ``metrics`` at ``step`` (default: the curve's length) and the ``config`` as hparams.
  Process 0 alone writes (every process of a ``jax.distributed`` run has the results)."""
  import jax
  import numpy as np

  if jax.process_index() != 0:
    return
  from tensorboardX import SummaryWriter

  curve = np.asarray([] if curve is None else curve, np.float64)
  step = len(curve) if step is None else int(step)
  with SummaryWriter(logdir=path, flush_secs=3600) as writer:
    stride = max(1, math.ceil(len(curve) / POINTS))
    for lo in range(0, len(curve), stride):
      part = curve[lo:lo + stride]
      writer.add_scalar("train/loss", float(part.mean()), lo + len(part))
    written = set()
    for item in evaluations:
      for k, v in item.items():
        if k != "step":
          tag = "train/loss_since_last_eval" if k == "loss" else k
          writer.add_scalar(tag, float(v), int(item["step"]))
          written.add((tag, int(item["step"])))
    for k, v in metrics.items():
      if (k, step) not in written:  # the last evaluation was of the final model
        writer.add_scalar(k, float(v), step)
    if config:
      from tensorboardX.summary import hparams

      values = {k: v if isinstance(v, (bool, str)) else
                float(v) if isinstance(v, (int, float, np.integer, np.floating)) else str(v)
                for k, v in config.items()}
      for summary in hparams(values, {k: float(v) for k, v in metrics.items()}):
        writer.file_writer.add_summary(summary)


def write_rows(log_dir: str | None, rows: Sequence[Any], keys: Sequence[str] | None = None
               ) -> None:
  """One run per row of a search (see the module's docstring); nothing without ``log_dir``."""
  if log_dir is None:
    return
  for row in rows:
    write_run(os.path.join(log_dir, run_name(row.config, keys)), curve=row.curve,
              metrics=row.metrics, step=row.steps, config=row.config)


def row_logger(log_dir: str | os.PathLike[str] | None,
               on_row: Callable[[Any], None] | None, keys: Sequence[str] | None = None
               ) -> Callable[[Any], None] | None:
  """``on_row`` that first writes the row's run to ``log_dir`` (``on_row`` itself without
  one): the searches call it with each row as its group finishes."""
  log_dir = check(log_dir)
  if log_dir is None:
    return on_row

  def log(row: Any) -> None:
    write_rows(log_dir, [row], keys)
    if on_row is not None:
      on_row(row)

  return log
