"""Optuna decides, adam_jax trains: batches of a study's trials in one vectorized program."""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from adam_jax.tuning import _group, _identity, _runner, _storage, _tensorboard
from adam_jax.tuning._diverged import diverged_members
from adam_jax.tuning._grid import evaluation_of, memory_budget
from adam_jax.tuning._problem import Problem
from adam_jax.tuning._random import space_of
from adam_jax.tuning._results import (
  Continued,
  Row,
  SearchResult,
  rank,
  seed_list,
  summarize_members,
)
from adam_jax.tuning._space import (
  parse_space,
  resolve_optimizer,
  tx_builder,
)


def optuna_search(
    study: Any,
    problem: Problem,
    space_fn: Callable[[Any], dict[str, Any]],
    *,
    n_trials: int,
    batch_size_trials: int = 16,
    steps: int,
    optimizer: str | Callable[..., optax.GradientTransformation] = "adam",
    report_every: int | None = None,
    seeds: int | Sequence[int] = 1,
    metric: str = "val_loss",
    devices: Sequence[jax.Device] | None = None,
    loop: str = "auto",
    log_dir: str | os.PathLike[str] | None = None,
    max_memory: int | str | None = None,
    on_trial: Callable[[_storage.FinishedTrial], None] | None = None,
    eval_every: int | None = None,
    keep: str = "last",
    patience: int | None = None,
) -> SearchResult:
  """Runs ``n_trials`` trials of an Optuna ``study``, a batch of them trained at once.

  The study is asked for ``batch_size_trials`` trials; ``space_fn(trial)`` returns
  each one's configuration (the keys :func:`grid_search` accepts, values from
  ``trial.suggest_*``), and the batch trains in one vectorized program per shape
  group. Every ``report_every`` steps ``metric`` (on the validation data) is
  reported to each trial; trials the study's pruner stops are told ``PRUNED`` (Optuna
  records their last reported value) and leave the batch, the others continue from
  their params and optimizer state. Finished trials are told their ``metric``, with
  every metric as a user attribute. A trial whose loss, metrics or parameters turn NaN
  or infinite (it diverged) is told ``FAIL`` at once, with the user attribute
  ``"diverged"``. The study's sampler, pruner and storage are the user's: TPE with
  ``constant_liar=True`` suits batches.

  The study records what defines the run (the user attribute ``"adam_jax_run"``: the
  optimizer, the model, ``loss_fn`` and ``metrics_fn``, the data, the batch size, the
  steps and the seeds, as in :func:`grid_search`'s ``search.json``); a call on a study
  recorded by a run with any of them changed is refused, naming what changed.

  ``n_trials`` is the study's total, not this call's: before each batch the trials
  already in the study are counted -- every state but ``WAITING`` (queued trials are
  asked first), a ``FAIL`` that has been queued again, and a trial given back unused
  -- and the call asks for at most the rest, so a restart goes on where the last run
  stopped and several processes (on one machine or many) calling ``optuna_search``
  on one study in a shared storage run ``n_trials`` trials together. Right after each
  ask the count is taken again; a trial that takes it past ``n_trials`` (a peer asked
  at the same moment) is given back: told ``FAIL`` with the user attribute
  ``"surplus"``, never trained, not counted.

  A worker that dies mid-batch leaves its trials ``RUNNING``. With a storage that records
  heartbeats -- :func:`open_storage` (or an ``optuna.storages.RDBStorage`` built with
  ``heartbeat_interval``, ``grace_period`` and
  ``heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback()``)
  -- a heartbeat is recorded for each trial of a batch while it trains; the workers fail
  stale trials before each batch, each failed one is queued again with its parameters and
  redone by whichever worker asks next (counted once: the failed trial no longer counts).
  A stale trial is marked before it is failed, so that a peer counting before its retry
  is queued sees it as pending, not as finished.

  With heartbeats a worker returns only when the study holds ``n_trials`` counted trials
  (unless it held more to begin with), none running and none failed-but-awaiting its
  retry: a peer's running trial either finishes or goes stale within the grace period.
  So every worker that returns sees the whole study: ``COMPLETE``, ``PRUNED`` and
  ``FAIL`` trials (diverged, or stale without a retry), plus the ``FAIL`` trials that
  were redone and any given back. (A running trial that never had a heartbeat, asked by
  a client without them, never goes stale: a worker waits for it.) Without heartbeats
  (in memory, a journal file) a dead worker's trials stay ``RUNNING`` and count; a
  worker returns as soon as ``n_trials`` trials are counted, peers' trials possibly
  still running.

  On a storage of :func:`open_storage` every call to the database is retried through an
  outage for the storage's ``timeout``; past it :class:`StorageUnavailable` is raised and
  the batch's trials stay ``RUNNING`` (nothing can be told): their heartbeats stop, and
  once the database is back a worker fails and redoes them. A trial that a peer failed
  while this worker still trained it (its heartbeats missed the grace period) is dropped
  from the batch and not told: its retry runs instead.

  Args:
    study: an ``optuna.Study`` with one objective; its direction gives the mode.
    problem: the :class:`Problem`.
    space_fn: ``trial -> dict`` of hyperparameters, the same keys for every trial.
    n_trials: how many trials the study holds when this call returns (see above).
    batch_size_trials: trials trained together.
    steps: optimizer steps per trial.
    optimizer: as in :func:`grid_search`.
    report_every: steps between reports to the pruner (default: a quarter of ``steps``;
      with ``eval_every``, the multiple of it nearest below, at least ``eval_every``).
    seeds: as in :func:`grid_search`; a trial's values are means over seeds.
    metric: the metric told to the study.
    devices: as in :func:`grid_search`.
    loop: as in :func:`grid_search`.
    log_dir: as in :func:`grid_search`, the runs of a batch written when it finishes
      (pruned trials too, up to the step they reached).
    max_memory: as in :func:`grid_search`.
    on_trial: called with a :class:`FinishedTrial` (number, state, config, metrics,
      steps, the trial it redoes) for each trial once the study has been told its end:
      e.g. to keep a local record that outlives the storage.
    eval_every: evaluate every member on ``val_data`` every this many steps (and at each
      report): each evaluation's ``metric`` (mean over seeds) is reported to the trial
      (``trial.report``), and each row's ``evals`` holds the validation curve and
      ``best_step`` each seed's best evaluated step; the pruner still decides every
      ``report_every`` steps.
    keep: ``"last"`` or ``"best"`` (needs ``eval_every``): a trial's row, the value told
      to the study and ``best.model`` are those of each seed's best evaluated step
      (``Row.best_step``), as in :func:`grid_search`; the reports are the evaluations
      as trained. A trial whose training diverges is told ``FAIL``, whatever step it
      kept.
    patience: not taken: the study's pruner stops trials early (for example
      ``optuna.pruners.PatientPruner``); a value is refused.

  Returns:
    A :class:`SearchResult` of the trials this call trained, in order (``Row.steps``:
    steps trained); ``best`` is the best of them that finished with a finite metric,
    with its trained model (None when there is none, e.g. when the study already
    held ``n_trials`` trials).

  Raises:
    ValueError: a study with several objectives, a study of another run, a
      ``space_fn`` whose keys change between trials, bad arguments, or anything
      :func:`grid_search` rejects.
    StorageUnavailable: the study's database (a storage of :func:`open_storage`) did not
      answer for its ``timeout``; the message names the database's own error.

  Examples:
    >>> import jax.numpy as jnp, numpy as np, optuna
    >>> from adam_jax import tuning
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> problem = tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x))
    >>> study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    >>> space_fn = lambda t: {"learning_rate": t.suggest_float("learning_rate", 1e-3, 1.0,
    ...                                                        log=True)}
    >>> result = tuning.optuna_search(study, problem, space_fn, n_trials=8,
    ...                               batch_size_trials=4, steps=40)
    >>> len(study.trials), study.best_value == result.best.metrics["val_loss"]
    (8, True)
  """
  import optuna
  from optuna.trial import TrialState

  if not isinstance(study, optuna.Study):
    raise ValueError(f"study must be an optuna.Study, got {type(study).__name__}")
  if len(study.directions) != 1:
    raise ValueError("optuna_search needs a study with one objective")
  mode = "min" if study.direction == optuna.study.StudyDirection.MINIMIZE else "max"
  if not isinstance(problem, Problem):
    raise ValueError(f"problem must be an adam_jax.tuning.Problem, got {type(problem).__name__}")
  for name, value in (("n_trials", n_trials), ("batch_size_trials", batch_size_trials),
                      ("steps", steps)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  every = max(1, steps // 4) if report_every is None else report_every
  if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
    raise ValueError(f"report_every must be a positive integer, got {report_every!r}")
  if loop not in _runner.LOOPS:
    raise ValueError(f"loop must be one of {', '.join(_runner.LOOPS)}, got {loop!r}")
  seeds = seed_list(seeds)
  budget = memory_budget(max_memory)
  evaluation = evaluation_of(problem, steps, eval_every, keep, patience, metric, mode)
  if patience is not None:
    raise ValueError("optuna_search does not take patience: the study's pruner stops trials "
                     "early (for example optuna.pruners.PatientPruner)")
  if evaluation is not None and report_every is None:
    every = evaluation.every * max(1, (steps // 4) // evaluation.every)
  factory, opt_name = resolve_optimizer(optimizer)
  log_dir = _tensorboard.check(log_dir)
  devices = list(jax.devices() if devices is None else devices)
  _identity.check_study(study, _identity.search_identity(problem, optimizer, steps, seeds))

  rows: list[Row] = []
  best: tuple[float, int, Any] | None = None  # (score, row index, models)
  loops: dict[str, str] = {}
  spread = 1
  heartbeat = _storage.heartbeat_interval(study)
  programs: dict[Any, dict[Any, Any]] = {}  # compiled programs, kept across chunks and batches
  while True:
    if heartbeat is not None:
      _storage.fail_stale_trials(study)
    counts = _storage.count(study)
    room = n_trials - counts.counted
    if room <= 0:
      if heartbeat is not None and (counts.running or counts.pending):
        time.sleep(min(1.0, heartbeat))  # a peer's trials may yet go stale and need redoing
        continue
      break
    asked: list[Any] = []
    trials: list[Any] = []
    told: set[int] = set()
    try:
      for _ in range(min(batch_size_trials, room)):
        asked.append(_storage.ask(study, heartbeat))
        if _storage.count(study).counted > n_trials:  # a peer asked at the same time
          _storage.give_back(study, asked[-1], told)
          break
        trials.append(asked[-1])
      if not trials:
        time.sleep(random.uniform(0.05, 0.25))  # apart from the peer that asked with us
        continue
      with _storage.heartbeats(study, trials, told, heartbeat):
        configs = _storage.sample(trials, space_fn, told)
        if not configs:
          continue
        trials = [t for t in trials if t.number in configs]
        configs = list(configs.values())
        keys = list(configs[0])
        for c in configs:
          if list(c) != keys:
            raise ValueError(f"space_fn must return the same keys for every trial: {keys} "
                             f"and {list(c)}")
        sp = parse_space(problem, space_of(configs), factory, opt_name)
        owns = [_storage.OwnTrial(t, c) for t, c in zip(trials, configs)]
        out = _train_batch(problem, sp, configs, make_tx=tx_builder(factory, sp, steps),
                           steps=steps, every=every, seeds=seeds, metric=metric, mode=mode,
                           trials=owns, tell=_storage.teller(study, told, on_trial),
                           devices=devices, loop=loop, programs=programs, budget=budget,
                           evaluation=evaluation)
    except BaseException as err:
      # None left running, unless the database is gone: then they stay running, and the
      # heartbeat they no longer get has them failed and redone.
      if not isinstance(err, _storage.StorageUnavailable):
        for t in asked:
          if t.number not in told:
            with contextlib.suppress(Exception):  # e.g. failed already, as stale, by a peer
              study.tell(t, state=TrialState.FAIL)
      raise
    batch_rows, models, batch_loops, batch_spread = out
    _tensorboard.write_rows(log_dir, batch_rows)
    loops.update({f"trials {trials[0].number}-{trials[-1].number}, {k}": v
                  for k, v in batch_loops.items()})
    spread = max(spread, batch_spread)
    for row, trained, own in zip(batch_rows, models, owns):
      rows.append(row)
      if trained is None or own.lost:  # lost: failed by a peer meanwhile, its retry queued
        continue
      score = rank(row, metric, mode)
      if math.isfinite(score) and (best is None or (score < best[0] if mode == "min"
                                                    else score > best[0])):
        best = (score, len(rows) - 1, trained)
  if best is None:
    return SearchResult(rows, None, metric, mode, spread, loops)
  _, i, (models, seed_metrics) = best
  scores = [m[metric] for m in seed_metrics]
  chosen = int(np.nanargmin(scores) if mode == "min" else np.nanargmax(scores))
  rows[i] = rows[i]._replace(model=models[chosen], models=models)
  return SearchResult(rows, rows[i], metric, mode, spread, loops)


DIVERGED = "diverged"  # user attribute of a trial told FAIL because it diverged


def _train_batch(problem, sp, configs, *, make_tx, steps, every, seeds, metric, mode, trials,
                 tell, devices, loop, programs, budget, evaluation):
  """Trains a batch of trials in chunks, reporting, pruning and telling as it goes.

  Pruned trials leave the batch, and the trials still alive are padded back to the batch's
  size (the last one repeated), so every chunk of every batch of the same size and group
  runs the programs compiled for the first: on a CPU, compiling a program for the smaller
  batch costs more than training the padding. With ``evaluation``, each chunk continues
  from the last step of the one before, whatever step is kept.
  """
  from optuna.trial import TrialState

  n_seeds = len(seeds)
  rows: list[Row | None] = [None] * len(configs)
  models: list[Any] = [None] * len(configs)
  loops: dict[str, str] = {}
  spread = 1
  for group_key in dict.fromkeys(tuple(c[k] for k in sp.group) for c in configs):
    group_cfg = dict(zip(sp.group, group_key))
    alive = [i for i, c in enumerate(configs) if tuple(c[k] for k in sp.group) == group_key]
    group = _group.group_of(problem, sp, group_cfg, make_tx, seeds, steps, metric)
    bound = group.bound
    carries: dict[int, Any] = {}
    curves: dict[int, list[np.ndarray]] = {i: [] for i in alive}
    evals = {i: Continued(metric, mode, evaluation.keep) for i in alive
             } if evaluation is not None else None
    kept_best = evaluation is not None and evaluation.keep == "best"
    known = programs.setdefault((tuple(sp.group), group_key, tuple(sp.traced)), {})
    size = len(alive) * n_seeds
    label = ", ".join(f"{k}={v}" for k, v in group_cfg.items()) or "all"
    for start in range(0, steps, every):
      stop = min(start + every, steps)
      carry = None
      if start:
        carry = _runner.concat_members(*[carries[i] for i in alive])
      out = _group.train(group, *_group.members([configs[i] for i in alive], sp.traced, n_seeds),
                         stop, loop=loops.get(label, loop), devices=devices, start=carry,
                         first_step=start, pad_to=size, programs=known, budget=budget,
                         evaluation=evaluation)
      loops[label] = out.loop  # the next chunks use the form chosen for the first
      n = len(alive) * n_seeds
      spread = max(spread, min(len(devices), n) if n > 1 else 1)
      last = (out.params, out.opt_state, out.state) if out.last is None else out.last
      diverged = diverged_members(out.metrics, out.params, out.trace[:, stop - 1])
      if kept_best:  # the kept models diverged, or the members that go on did
        at_end = {k: v[:, -1] for k, v in out.evals[1].items()}
        kept_diverged = diverged_members(out.metrics, out.params, np.zeros(len(diverged)))
        diverged = kept_diverged | diverged_members(at_end, last[0], out.trace[:, stop - 1])
      still = []
      for j, i in enumerate(alive):
        members = slice(j * n_seeds, (j + 1) * n_seeds)
        carries[i] = jax.tree.map(lambda a, m=members: a[m], last)
        curves[i].append(np.asarray(out.trace[members, start:stop], np.float32).mean(axis=0))
        per_seed = [{k: float(v[m]) for k, v in out.metrics.items()}
                    for m in range(j * n_seeds, (j + 1) * n_seeds)]
        extra = {}
        if evals is not None:
          evals[i].add(out, list(range(j * n_seeds, (j + 1) * n_seeds)),
                       kept_diverged if kept_best else diverged)
          extra = evals[i].row_fields()
          if kept_best:
            per_seed = evals[i].seed_metrics()
        metrics = summarize_members(per_seed)
        if metric not in metrics:
          raise ValueError(f"metric {metric!r} is not among the metrics "
                           f"({', '.join(metrics)}); pass val_data or metric=...")
        rows[i] = Row(dict(configs[i]), metrics, per_seed, np.concatenate(curves[i]),
                      steps=stop, diverged=bool(diverged[members].any()), **extra)
        trial = trials[i]
        value = metrics[metric]
        if rows[i].diverged:  # a NaN or infinite loss, metric or parameter: failed
          _attrs(trial, metrics, stop)
          trial.set_user_attr(DIVERGED, True)
          tell(trial, state=TrialState.FAIL)
          carries.pop(i)
          continue
        if evals is not None:  # the chunk's evaluations before its end (reported below)
          steps_done, curve = out.evals
          for col, step in enumerate(steps_done[:-1]):
            trial.report(float(np.mean(curve[metric][members, col])), int(step))
        if stop < steps:
          trial.report(_reported(value, out, members, metric, kept_best), stop)
          if trial.should_prune():
            _attrs(trial, metrics, stop)
            tell(trial, state=TrialState.PRUNED)
            carries.pop(i)
            continue
          still.append(i)
        else:
          _attrs(trial, metrics, stop)
          trial.report(_reported(value, out, members, metric, kept_best), stop)
          tell(trial, value)
          params, _, state = carries.pop(i)
          trained = (evals[i].models() if kept_best else
                     [jax.tree.map(lambda a, m=m: a[m], (params, state)) for m in range(n_seeds)])
          models[i] = ([bound.fns.to_user(*jax.tree.map(jax.numpy.asarray, t))
                        for t in trained], per_seed)
      alive = still
      if not alive:
        break
  return rows, models, loops, spread


def _reported(value: float, out: Any, members: slice, metric: str, kept_best: bool) -> float:
  """The value reported at a chunk's end: the members' ``metric`` at that step."""
  if not kept_best:
    return value
  return float(np.mean(out.evals[1][metric][members, -1]))


def _attrs(trial: Any, metrics: dict[str, float], steps: int) -> None:
  for k, v in metrics.items():
    trial.set_user_attr(k, v)
  trial.set_user_attr("steps", steps)
