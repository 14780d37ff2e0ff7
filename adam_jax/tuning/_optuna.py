"""Optuna decides, adam_jax trains: batches of a study's trials in one vectorized program."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from adam_jax.tuning import _runner
from adam_jax.tuning._grid import (
  Row,
  SearchResult,
  check_metric,
  parse_space,
  resolve_optimizer,
  seed_list,
  summarize_members,
  traced_values,
  tx_builder,
  with_constants,
)
from adam_jax.tuning._problem import Problem
from adam_jax.tuning._random import space_of


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
) -> SearchResult:
  """Runs ``n_trials`` trials of an Optuna ``study``, a batch of them trained at once.

  The study is asked for ``batch_size_trials`` trials; ``space_fn(trial)`` returns
  each one's configuration (the keys :func:`grid_search` accepts, values from
  ``trial.suggest_*``), and the batch trains in one vectorized program per shape
  group. Every ``report_every`` steps ``metric`` (on the validation data) is
  reported to each trial; trials the study's pruner stops are told ``PRUNED`` (Optuna
  records their last reported value) and leave the batch, the others continue from
  their params and optimizer state. Finished trials are told their ``metric``, with
  every metric as a user attribute. The study's sampler, pruner and storage are the
  user's: TPE with ``constant_liar=True`` suits batches.

  Args:
    study: an ``optuna.Study`` with one objective; its direction gives the mode.
    problem: the :class:`Problem`.
    space_fn: ``trial -> dict`` of hyperparameters, the same keys for every trial.
    n_trials: how many trials this call runs.
    batch_size_trials: trials trained together.
    steps: optimizer steps per trial.
    optimizer: as in :func:`grid_search`.
    report_every: steps between reports to the pruner (default: a quarter of ``steps``).
    seeds: as in :func:`grid_search`; a trial's values are means over seeds.
    metric: the metric told to the study.
    devices: as in :func:`grid_search`.
    loop: as in :func:`grid_search`.

  Returns:
    A :class:`SearchResult` of this call's trials in order (``Row.steps``: steps
    trained); ``best`` is the best finished trial, with its trained model.

  Raises:
    ValueError: a study with several objectives, a ``space_fn`` whose keys change
      between trials, bad arguments, or anything :func:`grid_search` rejects.

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
  factory, opt_name = resolve_optimizer(optimizer)
  devices = list(jax.devices() if devices is None else devices)

  rows: list[Row] = []
  best: tuple[float, int, Any] | None = None  # (score, row index, models)
  loops: dict[str, str] = {}
  spread = 1
  done = 0
  while done < n_trials:
    trials = [study.ask() for _ in range(min(batch_size_trials, n_trials - done))]
    done += len(trials)
    told: set[int] = set()
    try:
      configs = [dict(space_fn(t)) for t in trials]
      keys = list(configs[0])
      for c in configs:
        if list(c) != keys:
          raise ValueError(f"space_fn must return the same keys for every trial: {keys} "
                           f"and {list(c)}")
      sp = parse_space(problem, space_of(configs), factory, opt_name)
      out = _train_batch(problem, sp, configs, make_tx=tx_builder(factory, sp, steps),
                         steps=steps, every=every, seeds=seeds, metric=metric, mode=mode,
                         trials=trials, tell=_teller(study, told), devices=devices,
                         loop=loop)
    except BaseException:
      for t in trials:
        if t.number not in told:
          study.tell(t, state=TrialState.FAIL)
      raise
    batch_rows, models, batch_loops, batch_spread = out
    loops.update({f"trials {trials[0].number}-{trials[-1].number}, {k}": v
                  for k, v in batch_loops.items()})
    spread = max(spread, batch_spread)
    for row, trained in zip(batch_rows, models):
      rows.append(row)
      if trained is None:
        continue
      score = row.metrics[metric]
      if math.isfinite(score) and (best is None or (score < best[0] if mode == "min"
                                                    else score > best[0])):
        best = (score, len(rows) - 1, trained)
  if best is None:
    raise ValueError(f"no trial of this search finished with a finite {metric}")
  _, i, (models, seed_metrics) = best
  scores = [m[metric] for m in seed_metrics]
  chosen = int(np.nanargmin(scores) if mode == "min" else np.nanargmax(scores))
  rows[i] = rows[i]._replace(model=models[chosen], models=models)
  return SearchResult(rows, rows[i], metric, mode, spread, loops)


def _teller(study: Any, told: set[int]) -> Callable[..., None]:
  def tell(trial: Any, *args: Any, **kwargs: Any) -> None:
    told.add(trial.number)
    study.tell(trial, *args, **kwargs)

  return tell


def _train_batch(problem, sp, configs, *, make_tx, steps, every, seeds, metric, mode, trials,
                 tell, devices, loop):
  """Trains a batch of trials in chunks, reporting, pruning and telling as it goes."""
  from optuna.trial import TrialState

  n_seeds = len(seeds)
  rows: list[Row | None] = [None] * len(configs)
  models: list[Any] = [None] * len(configs)
  loops: dict[str, str] = {}
  spread = 1
  for group_key in dict.fromkeys(tuple(c[k] for k in sp.group) for c in configs):
    group_cfg = dict(zip(sp.group, group_key))
    alive = [i for i, c in enumerate(configs) if tuple(c[k] for k in sp.group) == group_key]
    bound = problem.bind(**{k: group_cfg[k] for k in sp.shape})
    check_metric(bound, problem, metric)
    idx = None
    if problem.batch_fn is None:
      idx = np.stack([problem.batch_indices(steps, s, bound.batch_size) for s in seeds])
    const = {k: v for k, v in group_cfg.items() if k not in sp.shape}
    tx = make_tx if not const else with_constants(make_tx, const)
    carries: dict[int, Any] = {}
    curves: dict[int, list[np.ndarray]] = {i: [] for i in alive}
    label = ", ".join(f"{k}={v}" for k, v in group_cfg.items()) or "all"
    for start in range(0, steps, every):
      stop = min(start + every, steps)
      hp = traced_values([configs[i] for i in alive], sp.traced)
      carry = None
      if start:
        carry = jax.tree.map(lambda *a: np.concatenate(a), *[carries[i] for i in alive])
      out = _runner.train_group(
          bound.fns, tx, {k: np.repeat(v, n_seeds) for k, v in hp.items()},
          np.tile(np.arange(n_seeds, dtype=np.int32), len(alive)), seeds, stop,
          train_data=problem.train_data, val_data=problem.val_data, batch_fn=problem.batch_fn,
          idx=idx, loop=loop, devices=devices, start=carry, first_step=start)
      loops[label] = out.loop
      n = len(alive) * n_seeds
      spread = max(spread, min(len(devices), n) if n > 1 else 1)
      still = []
      for j, i in enumerate(alive):
        members = slice(j * n_seeds, (j + 1) * n_seeds)
        carries[i] = jax.tree.map(lambda a, m=members: a[m],
                                  (out.params, out.opt_state, out.state))
        curves[i].append(np.asarray(out.trace[members, start:stop], np.float32).mean(axis=0))
        per_seed = [{k: float(v[m]) for k, v in out.metrics.items()}
                    for m in range(j * n_seeds, (j + 1) * n_seeds)]
        metrics = summarize_members(per_seed)
        if metric not in metrics:
          raise ValueError(f"metric {metric!r} is not among the metrics "
                           f"({', '.join(metrics)}); pass val_data or metric=...")
        rows[i] = Row(dict(configs[i]), metrics, per_seed, np.concatenate(curves[i]),
                      steps=stop)
        trial = trials[i]
        value = metrics[metric]
        if stop < steps:
          if math.isfinite(value):
            trial.report(value, stop)
          if not math.isfinite(value) or trial.should_prune():
            _attrs(trial, metrics, stop)
            tell(trial, state=TrialState.PRUNED)
            carries.pop(i)
            continue
          still.append(i)
        else:
          _attrs(trial, metrics, stop)
          if math.isfinite(value):
            trial.report(value, stop)
            tell(trial, value)
            params, _, state = carries.pop(i)
            models[i] = ([bound.fns.to_user(*jax.tree.map(
                lambda a, m=m: jax.numpy.asarray(a[m]), (params, state))) for m in
                range(n_seeds)], per_seed)
          else:
            tell(trial, state=TrialState.FAIL)
      alive = still
      if not alive:
        break
  return rows, models, loops, spread


def _attrs(trial: Any, metrics: dict[str, float], steps: int) -> None:
  for k, v in metrics.items():
    trial.set_user_attr(k, v)
  trial.set_user_attr("steps", steps)
