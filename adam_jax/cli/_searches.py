"""The sampled searches of ``adam-jax sweep``: spaces from flags, Optuna studies, files, plots."""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from adam_jax import _plotting
from adam_jax.cli import _common as common
from adam_jax.cli import _figures

BATCH_TRIALS = 16  # trials trained together

HEARTBEAT_S = 10  # a running trial's heartbeat, recorded in --storage this often
GRACE_S = 60  # a trial without a heartbeat for this long is failed and queued again
TIMEOUT_S = 60.0  # a database call failing with a lost connection is retried this long
_NOT_METRICS = ("steps", "surplus", "worker", "diverged")  # user attributes, not metrics


def distributions(space: dict[str, Any]) -> dict[str, Any]:
  """The flags' values as :func:`adam_jax.tuning.random_search` distributions."""
  from adam_jax import tuning

  out = {}
  for key, value in space.items():
    if isinstance(value, common.Range):
      make = tuning.log_uniform if value.log else tuning.uniform
      out[key] = make(value.lo, value.hi)
    else:
      out[key] = tuning.choice(value) if len(value) > 1 else value[0]
  return out


def space_fn(space: dict[str, Any]) -> Any:
  """The flags' values as an Optuna ``space_fn``: ranges and lists are suggested."""

  def suggest(trial: Any) -> dict[str, Any]:
    config = {}
    for key, value in space.items():
      if isinstance(value, common.Range):
        config[key] = trial.suggest_float(key, value.lo, value.hi, log=value.log)
      elif len(value) > 1:
        config[key] = trial.suggest_categorical(key, value)
      else:
        config[key] = value[0]
    return config

  return suggest


def shown_url(url: str) -> str:
  """``url`` with its password hidden (for files and messages)."""
  from adam_jax.tuning._storage import shown_url as shown

  return shown(url)


def check_storage_flags(args: argparse.Namespace, prog: str) -> None:
  """--storage-timeout, --heartbeat-interval and --grace-period need a database --storage."""
  from adam_jax.tuning._storage import journal_path

  given = [flag for dest, flag in (("storage_timeout", "--storage-timeout"),
                                   ("heartbeat_interval", "--heartbeat-interval"),
                                   ("grace_period", "--grace-period"))
           if getattr(args, dest) is not None]
  if given and args.storage is None:
    raise common.UsageError(f"{given[0]} needs --storage: a study in memory has no database",
                            prog)
  try:
    journal = args.storage is not None and journal_path(args.storage) is not None
  except ValueError as err:
    raise common.UsageError(f"--storage {args.storage}: {err}", prog) from None
  if given and journal:
    raise common.UsageError(f"{given[0]} applies to a database --storage; a journal file has "
                            "neither connections nor heartbeats", prog)
  beat = args.heartbeat_interval or HEARTBEAT_S
  grace = args.grace_period or GRACE_S
  if grace <= beat:
    raise common.UsageError(f"--grace-period ({grace} s) must be longer than "
                            f"--heartbeat-interval ({beat} s)", prog)


def open_study(args: argparse.Namespace, prog: str) -> Any:
  """The Optuna study of ``--storage`` and ``--study-name`` (created or loaded), TPE-sampled."""
  try:
    import optuna
  except ImportError:
    raise common.UsageError("--search optuna needs Optuna, which is not installed: "
                            "pip install 'adam-jax[optuna]'", prog) from None
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage = None if args.storage is None else _open_storage(args, prog)
  # In memory the run is reproducible; workers sharing a storage must draw apart.
  seed = args.seed % 2**32 if storage is None else None
  sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
  try:
    study = optuna.create_study(storage=storage, study_name=args.study_name, sampler=sampler,
                                direction="minimize", load_if_exists=True)
  except Exception as err:  # noqa: BLE001 - a database error of any driver: one line
    raise common.UsageError(f"--storage {shown_url(args.storage)}: cannot open study "
                            f"{args.study_name!r}: {_first_line(err)}", prog) from None
  if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MINIMIZE:
    raise common.UsageError(f"--study-name {args.study_name!r}: the study in --storage does "
                            "not minimize one objective (this sweep minimizes val_loss)", prog)
  return study


def _open_storage(args: argparse.Namespace, prog: str) -> Any:
  from adam_jax.tuning._storage import journal_path, open_storage

  journal = journal_path(args.storage) is not None
  try:
    return open_storage(
        args.storage, heartbeat_interval=args.heartbeat_interval or HEARTBEAT_S,
        grace_period=args.grace_period or GRACE_S,
        timeout=TIMEOUT_S if args.storage_timeout is None else args.storage_timeout,
        on_outage=lambda line: print(f"{prog}: {line}", flush=True))
  except Exception as err:  # noqa: BLE001 - a bad URL, a missing driver, no database
    what = "the journal file" if journal else "the database"
    raise common.UsageError(
        f"--storage {shown_url(args.storage)}: cannot open {what} ({_first_line(err)}); "
        "expected a URL such as sqlite:///study.db, postgresql://user@host/db (pip install "
        "'adam-jax[postgres]'), mysql+pymysql://user@host/db, or journal:PATH", prog) from None


def _first_line(err: BaseException) -> str:
  from adam_jax.tuning._storage import first_line

  return first_line(err)


def write_rows(path: str, rows: Sequence[Any], extra: Sequence[str] = ()) -> None:
  """``results.csv``: a line per row (config, metrics, the ``extra`` fields, ``diverged``)."""
  from adam_jax import _files

  keys = list(rows[0].config)
  names = list(rows[0].metrics)
  _files.write_atomic(path, _files.csv_text(
      [keys + names + list(extra) + ["diverged"]]
      + [[row.config[k] for k in keys] + [repr(row.metrics.get(m, math.nan)) for m in names]
         + [getattr(row, e) for e in extra] + [row.diverged] for row in rows]))


def write_curves(path: str, rows: Sequence[Any]) -> None:
  """``curves.jsonl``: a line per row (its training loss; with --eval-every its validation
  curve and kept steps), as grid and random searches write it."""
  import json

  from adam_jax import _files
  from adam_jax.tuning._store import config_key

  lines = []
  for row in rows:
    item = {"key": list(config_key(row.config)), "curve": [float(v) for v in row.curve]}
    if row.evals is not None:
      item.update(evals={k: [float(v) for v in vs] for k, vs in row.evals.items()},
                  best_step=row.best_step, stopped_step=row.stopped_step)
    lines.append(json.dumps(item) + "\n")
  _files.write_atomic(path, "".join(lines))


_COLUMNS = ("trial", "state")  # results.csv of optuna: these, the space, the metrics, then
_LAST = ("steps", "retry_of", "worker", "diverged")  # these


def _study_table(trials: Sequence[Any], space: dict[str, Any]
                 ) -> tuple[list[str], list[dict[str, Any]]]:
  """The metric names, and a line of results.csv for each trial that ran (in order).

  The trials of killed workers that were redone are listed (``FAIL``), their retries
  name them in ``retry_of``; trials given back unused are not.
  """
  from optuna.trial import TrialState

  names: dict[str, None] = {}
  table = []
  for t in trials:
    if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) \
        or t.user_attrs.get("surplus"):
      continue
    config = {k: t.params.get(k, v[0] if isinstance(v, list) and len(v) == 1 else None)
              for k, v in space.items()}
    metrics = {k: v for k, v in t.user_attrs.items() if k not in _NOT_METRICS}
    names.update(dict.fromkeys(metrics))
    table.append({"trial": t.number, "state": t.state.name, "config": config,
                  "metrics": metrics, "steps": t.user_attrs.get("steps"), "value": t.value,
                  "retry_of": t.system_attrs.get("failed_trial"),
                  "worker": t.user_attrs.get("worker"),
                  "diverged": bool(t.user_attrs.get("diverged", False))})
  return list(names), table


def _csv_line(values: Sequence[Any]) -> str:
  buffer = io.StringIO()
  csv.writer(buffer).writerow(["" if v is None else v for v in values])
  return buffer.getvalue()


def _line_of(item: dict[str, Any], columns: Sequence[str]) -> str:
  """``item`` (a :func:`_study_table` entry) as a line of results.csv with ``columns``."""
  values = {**item["config"], **{k: repr(v) for k, v in item["metrics"].items()},
            **{k: item.get(k) for k in _COLUMNS + _LAST}}
  return _csv_line([values.get(c) for c in columns])


def _write_table(path: str, space: dict[str, Any], names: Sequence[str],
                 table: Sequence[dict[str, Any]]) -> None:
  """results.csv of the whole study, replacing the worker's own lines at once."""
  columns = list(_COLUMNS) + list(space) + list(names) + list(_LAST)
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    f.write(_csv_line(columns) + "".join(_line_of(item, columns) for item in table))
  os.replace(tmp, path)


class TrialLog:
  """results.csv while the worker runs: each trial it finishes, appended as it is told.

  A line is one ``write`` to the file opened with ``O_APPEND``, then ``fsync``: a worker
  killed, or cut off from its database, leaves every trial it finished in the file, each
  line whole. A file already there (``--resume``) keeps its header and columns.
  """

  def __init__(self, path: str, space: dict[str, Any], worker: str) -> None:
    self.path, self.space, self.worker = path, space, worker
    self.columns: list[str] | None = None
    self.written = 0

  def append(self, trial: Any) -> None:
    """Appends a :class:`adam_jax.tuning.FinishedTrial`."""
    item = {"trial": trial.number, "state": trial.state, "steps": trial.steps,
            "config": {k: trial.config.get(k) for k in self.space}, "metrics": trial.metrics,
            "retry_of": trial.retry_of, "worker": self.worker,
            "diverged": trial.state == "FAIL"}  # told FAIL by the search: it diverged
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      header = ""
      if self.columns is None:
        self.columns = self._header()
        if self.columns is None:
          self.columns = (list(_COLUMNS) + list(self.space) + list(trial.metrics)
                          + list(_LAST))
      if os.fstat(fd).st_size == 0:
        header = _csv_line(self.columns)
      os.write(fd, (header + _line_of(item, self.columns)).encode())
      os.fsync(fd)
    finally:
      os.close(fd)
    self.written += 1

  def _header(self) -> list[str] | None:
    try:
      with open(self.path, newline="") as f:
        return next(csv.reader(f), None)
    except FileNotFoundError:
      return None


def run_optuna(args: argparse.Namespace, study: Any, problem: Any, space: dict[str, Any],
               out: str, prog: str) -> int:
  """Runs the study up to ``--trials`` trials; writes the files of the whole study."""
  from adam_jax import tuning

  seeds = list(range(args.seed, args.seed + args.seeds))
  where = "in memory" if args.storage is None else shown_url(args.storage)
  worker = f"{socket.gethostname()}:{os.getpid()}"
  print(f"{prog}: Optuna study {args.study_name!r} ({where}) up to {args.trials} trials of "
        f"{common.task_label(args)} ({args.optimizer}, {args.steps} steps each, batches of up to "
        f"{min(args.trials, BATCH_TRIALS)}, {args.seeds} seed"
        f"{'s' if args.seeds > 1 else ''}) -> {out}, as worker {worker}")
  csv_path = os.path.join(out, "results.csv")
  log = TrialLog(csv_path, space, worker)
  suggest = space_fn(space)

  def suggest_here(trial: Any) -> dict[str, Any]:
    trial.set_user_attr("worker", worker)
    return suggest(trial)

  start = time.perf_counter()
  try:
    result = tuning.optuna_search(study, problem, suggest_here, n_trials=args.trials,
                                  batch_size_trials=min(args.trials, BATCH_TRIALS),
                                  steps=args.steps, optimizer=args.optimizer, seeds=seeds,
                                  loop=args.loop, on_trial=log.append,
                                  max_memory=args.max_memory, log_dir=args.tensorboard,
                                  eval_every=args.eval_every, keep=args.keep)
  except ValueError as err:
    raise common.UsageError(str(err), prog) from None
  except tuning.StorageUnavailable as err:
    raise _lost(err, args, log, prog) from None
  except KeyboardInterrupt:
    if args.storage is None:
      print(f"{prog}: interrupted; the study was in memory and is gone (--storage keeps one)",
            file=sys.stderr)
    else:
      print(f"{prog}: interrupted; {where} keeps every finished trial of "
            f"{args.study_name!r} ({log.written} of them this worker's, also in {csv_path}); "
            "run the same command with --resume to go on", file=sys.stderr)
    return 130
  elapsed = time.perf_counter() - start
  try:
    return _report_optuna(args, study, result, space, out, worker, elapsed, prog)
  except tuning.StorageUnavailable as err:
    raise _lost(err, args, log, prog) from None


def _lost(err: Any, args: argparse.Namespace, log: TrialLog, prog: str) -> Exception:
  """The one line of a worker whose database stayed away past --storage-timeout."""
  return common.UsageError(
      f"the database {err.url} did not answer for {err.seconds:g} s (--storage-timeout): "
      f"{err.error}; the {log.written} trials this worker finished are in {log.path}; its "
      f"trials in flight are redone by a worker once the database is back and their last "
      f"heartbeat is {args.grace_period or GRACE_S} s old; run the same command with "
      "--resume to go on", prog)


def _report_optuna(args: argparse.Namespace, study: Any, result: Any, space: dict[str, Any],
                   out: str, worker: str, elapsed: float, prog: str) -> int:
  """results.csv, best.json, the plots and the last lines: the whole study, as it is now."""
  from adam_jax.tuning._storage import count_trials

  seeds = list(range(args.seed, args.seed + args.seeds))
  trials = study.get_trials(deepcopy=False)
  counts = count_trials(trials)
  csv_path = os.path.join(out, "results.csv")
  names, table = _study_table(trials, space)
  _write_table(csv_path, space, names, table)
  held = (f"the study holds {counts.counted} trials (--trials {args.trials}): "
          f"{counts.complete} complete, {counts.pruned} pruned, {counts.failed} failed")
  if counts.redone:
    held += f"; {counts.redone} trials of stopped workers were redone (each counted once)"
  if counts.running:
    held += f"; {counts.running} still running in other workers"
  print(f"trained {len(result.rows)} trials in {elapsed:.1f} s; {held}")
  finished = [item for item in table if item["state"] == "COMPLETE"]
  info = {"task": args.task, "optimizer": args.optimizer, "steps": args.steps, "seeds": seeds,
          "data": args.data, "search": "optuna", "study_name": args.study_name,
          "storage": None if args.storage is None else shown_url(args.storage),
          "trials": args.trials, "trials_in_study": counts.counted,
          "trained_now": len(result.rows), "wall_s": elapsed, "loops": result.loops,
          "counts": counts._asdict()}
  if not finished:
    common.write_json(os.path.join(out, "best.json"), {"best": None, **info})
    print(f"{prog}: no trial finished with a finite validation loss (every one diverged or "
          f"was pruned); see {csv_path}; try smaller learning rates", file=sys.stderr)
    return 1
  top = min(finished, key=lambda item: item["value"])  # the first of equals, as optuna's
  mine = [item for item in finished if item["worker"] == worker]
  own = min(mine, key=lambda item: item["value"]) if mine else None

  def entry(item: dict[str, Any]) -> dict[str, Any]:
    return {**item["config"], **item["metrics"], "trial": item["trial"]}

  common.write_json(os.path.join(out, "best.json"), {
      **entry(top), "best_of": "the study",
      "this_worker": {"worker": worker, "best": None if own is None else entry(own)}, **info})
  keys = [k for k in space if common.varied(space, k)]
  _figures.samples(os.path.join(out, "heatmap.png"), [item["config"] for item in finished],
                   [item["metrics"].get("val_loss", math.nan) for item in finished], space,
                   keys, log_keys=common.log_keys(space), best=finished.index(top))
  written = ["best.json", "heatmap.png"]
  if result.rows:
    _figures.curves(os.path.join(out, "curves.png"), result.rows, result.best, keys)
    write_curves(os.path.join(out, "curves.jsonl"), result.rows)
    written += ["curves.png", "curves.jsonl"]
  written += _optuna_plots(study, out)
  print(f"wrote {csv_path}, {', '.join(written)} in {out}")

  def shown(item: dict[str, Any]) -> str:
    config = _plotting.config_label(item["config"], keys) or "the only configuration"
    acc = item["metrics"].get("val_accuracy")
    acc = "" if acc is None else f", val accuracy {100 * acc:.1f}%"
    return f"trial {item['trial']}, {config}: val loss {item['value']:.4f}{acc}"

  ours = ("none (it completed no trial)" if own is None
          else f"trial {own['trial']} too" if own is top else shown(own))
  print(f"best of the study ({len(finished)} complete): {shown(top)} | best of this worker "
        f"({len(mine)} complete): {ours}")
  return 0


def _optuna_plots(study: Any, out: str) -> list[str]:
  """Optuna's optimization history and parameter importances of the study, as PNG files."""
  import optuna
  from matplotlib import pyplot as plt
  from optuna.trial import TrialState
  from optuna.visualization import matplotlib as plots

  written = []
  completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
  params = {name for t in completed for name in t.params}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    for name, plot, ok in (
        ("optuna_history.png", plots.plot_optimization_history, True),
        ("optuna_importances.png", plots.plot_param_importances,
         len(completed) >= 2 and len(params) >= 2)):
      if not ok:
        print(f"skipped {name}: parameter importances need at least 2 complete trials and 2 "
              f"sampled parameters (the study has {len(completed)} and {len(params)})")
        continue
      ax = plot(study)
      ax.figure.savefig(os.path.join(out, name), dpi=110, bbox_inches="tight")
      plt.close(ax.figure)
      written.append(name)
  return written
