"""The sampled searches of ``adam-jax sweep``: spaces from flags, Optuna studies, files, plots."""

from __future__ import annotations

import argparse
import math
import os
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
  try:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
  except Exception:  # noqa: BLE001 - not a URL: reported when the storage opens
    return url


def open_study(args: argparse.Namespace, prog: str) -> Any:
  """The Optuna study of ``--storage`` and ``--study-name`` (created or loaded), TPE-sampled."""
  try:
    import optuna
  except ImportError:
    raise common.UsageError("--search optuna needs Optuna, which is not installed: "
                            "pip install 'adam-jax[optuna]'", prog) from None
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage = None if args.storage is None else _rdb_storage(args.storage, prog)
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


def _rdb_storage(url: str, prog: str) -> Any:
  import optuna

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    try:
      return optuna.storages.RDBStorage(
          url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
    except Exception as err:  # noqa: BLE001 - a bad URL, a missing driver, no database
      raise common.UsageError(f"--storage {shown_url(url)}: cannot open the database "
                              f"({_first_line(err)}); expected a URL such as "
                              "sqlite:///study.db or postgresql://user@host/db", prog) from None


def _first_line(err: BaseException) -> str:
  text = str(err).strip()
  return text.splitlines()[0] if text else type(err).__name__


def write_rows(path: str, rows: Sequence[Any], extra: Sequence[str] = ()) -> None:
  """``results.csv``: a line per row (config, metrics, the ``extra`` fields, ``diverged``)."""
  from adam_jax import _files

  keys = list(rows[0].config)
  names = list(rows[0].metrics)
  _files.write_atomic(path, _files.csv_text(
      [keys + names + list(extra) + ["diverged"]]
      + [[row.config[k] for k in keys] + [repr(row.metrics.get(m, math.nan)) for m in names]
         + [getattr(row, e) for e in extra] + [row.diverged] for row in rows]))


def _study_table(trials: Sequence[Any], space: dict[str, Any]
                 ) -> tuple[list[str], list[dict[str, Any]]]:
  """The metric names and a config, metrics, state and steps for each trial that ran."""
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
                  "metrics": metrics, "steps": t.user_attrs.get("steps"),
                  "diverged": bool(t.user_attrs.get("diverged", False))})
  return list(names), table


def run_optuna(args: argparse.Namespace, study: Any, problem: Any, space: dict[str, Any],
               out: str, prog: str) -> int:
  """Runs the study up to ``--trials`` trials; writes the files of the whole study."""
  from optuna.trial import TrialState

  from adam_jax import tuning

  seeds = list(range(args.seed, args.seed + args.seeds))
  where = "in memory" if args.storage is None else shown_url(args.storage)
  print(f"{prog}: Optuna study {args.study_name!r} ({where}) up to {args.trials} trials of "
        f"{common.task_label(args)} ({args.optimizer}, {args.steps} steps each, batches of up to "
        f"{min(args.trials, BATCH_TRIALS)}, {args.seeds} seed"
        f"{'s' if args.seeds > 1 else ''}) -> {out}")
  start = time.perf_counter()
  try:
    result = tuning.optuna_search(study, problem, space_fn(space), n_trials=args.trials,
                                  batch_size_trials=min(args.trials, BATCH_TRIALS),
                                  steps=args.steps, optimizer=args.optimizer, seeds=seeds,
                                  loop=args.loop, max_memory=args.max_memory,
                                  log_dir=args.tensorboard)
  except ValueError as err:
    raise common.UsageError(str(err), prog) from None
  except KeyboardInterrupt:
    if args.storage is None:
      print(f"{prog}: interrupted; the study was in memory and is gone (--storage keeps one)",
            file=sys.stderr)
    else:
      print(f"{prog}: interrupted; {where} keeps every finished trial of "
            f"{args.study_name!r}; run the same command with --resume to go on",
            file=sys.stderr)
    return 130
  elapsed = time.perf_counter() - start
  csv_path = os.path.join(out, "results.csv")
  names, table = _study_table(study.get_trials(deepcopy=False), space)
  from adam_jax import _files

  _files.write_atomic(csv_path, _files.csv_text(
      [["trial", "state"] + list(space) + names + ["steps", "diverged"]]
      + [[item["trial"], item["state"]] + list(item["config"].values())
         + [repr(item["metrics"].get(m, math.nan)) for m in names]
         + [item["steps"], item["diverged"]] for item in table]))
  finished = [item for item in table if item["state"] == "COMPLETE"]
  info = {"task": args.task, "optimizer": args.optimizer, "steps": args.steps, "seeds": seeds,
          "data": args.data, "search": "optuna", "study_name": args.study_name,
          "storage": None if args.storage is None else where, "trials": args.trials,
          "trials_in_study": len(table), "trained_now": len(result.rows), "wall_s": elapsed,
          "loops": result.loops}
  print(f"trained {len(result.rows)} trials in {elapsed:.1f} s ({len(table)} of the study's "
        f"{args.trials} have run)")
  if not finished:
    common.write_json(os.path.join(out, "best.json"), {"best": None, **info})
    print(f"{prog}: no trial finished with a finite validation loss (every one diverged or "
          f"was pruned); see {csv_path}; try smaller learning rates", file=sys.stderr)
    return 1
  top = study.best_trial
  best = next(item for item in table if item["trial"] == top.number)
  common.write_json(os.path.join(out, "best.json"),
                    {**best["config"], **best["metrics"], "trial": top.number, **info})
  completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
  acc = best["metrics"].get("val_accuracy")
  acc = "" if acc is None else f", val accuracy {100 * acc:.1f}%"
  keys = [k for k in space if common.varied(space, k)]
  print(f"best (trial {top.number} of {len(completed)} complete): "
        f"{_plotting.config_label(best['config'], keys)}: val loss {top.value:.4f}{acc}",
        flush=True)
  _figures.samples(os.path.join(out, "heatmap.png"), [item["config"] for item in finished],
                   [item["metrics"].get("val_loss", math.nan) for item in finished], space,
                   keys, log_keys=common.log_keys(space), best=finished.index(best))
  written = ["best.json", "heatmap.png"]
  if result.rows:
    _figures.curves(os.path.join(out, "curves.png"), result.rows, result.best, keys)
    written.append("curves.png")
  written += _optuna_plots(study, out)
  print(f"wrote {csv_path}, {', '.join(written)} in {out}")
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
