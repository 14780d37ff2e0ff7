"""Grid search over any optimizer's and model's hyperparameters, vectorized per model shape."""

from __future__ import annotations

import functools
import itertools
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _lock
from adam_jax.tuning import _group, _identity, _memory, _runner, _tensorboard
from adam_jax.tuning._batches import check_resumable
from adam_jax.tuning._diverged import diverged_members
from adam_jax.tuning._problem import Problem
from adam_jax.tuning._results import (
  Row,
  SearchResult,
  evaluated,
  finite_or_nan,
  monitor_columns,
  monitor_record,
  rank,
  seed_list,
  summarize_members,
)
from adam_jax.tuning._space import (
  parse_space,
  resolve_optimizer,
  tx_builder,
)
from adam_jax.tuning._store import CHECKPOINTS, Store, config_key, slug


def grid_search(
    problem: Problem,
    space: Mapping[str, Sequence[Any]],
    *,
    optimizer: str | Callable[..., optax.GradientTransformation] = "adam",
    steps: int,
    seeds: int | Sequence[int] = 1,
    metric: str = "val_loss",
    mode: str = "min",
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    devices: Sequence[jax.Device] | None = None,
    loop: str = "auto",
    checkpoint_every: int = 0,
    progress: bool | None = None,
    on_row: Callable[[Row], None] | None = None,
    diagnostics: bool = False,
    log_dir: str | os.PathLike[str] | None = None,
    max_memory: int | str | None = None,
    eval_every: int | None = None,
    keep: str = "last",
    patience: int | None = None,
) -> SearchResult:
  r"""Trains every configuration of a grid of hyperparameters on the user's problem.

  ``space`` maps names to lists of values:

  * keywords of the optimizer factory (``learning_rate``, ``b1``, ``b2``, ``eps``,
    ``weight_decay``, ... of any alias in :func:`adam_jax.optimizers`, or of the
    user's own ``(**hparams) -> GradientTransformation``, so clipping chains and
    schedules of one's own work): numeric keys with several values are traced and
    trained together, configurations x seeds, in one ``jax.vmap``-ed program; a key
    with one value is a compile-time constant; other keys with several values
    (booleans, strings) get a program each;
  * ``schedule``: names in :data:`SCHEDULES` applied to ``learning_rate`` (traced too);
  * ``batch_size`` and keywords of the model factory (``layers``, ``hidden``, ...):
    they change shapes, so each combination is one compiled group.

  Every configuration of a seed starts from the same initial model and sees the same
  mini-batches (:meth:`Problem.batch_indices`), so rows differ only by their
  hyperparameters; a configuration trained here equals the same configuration trained
  alone, to float32 rounding.

  Across processes (``jax.distributed``), every process calls ``grid_search`` with the
  same arguments. Each group's members are spread over one mesh of every process's
  devices, every process trains the members on its own devices, and the results are
  gathered (``multihost_utils.process_allgather``), so every process returns the same
  complete :class:`SearchResult`. No computation mixes members, so the rows agree with
  one process of the same device count to float32 rounding (bit-identical results
  across process counts are not promised). Process 0 alone reads and writes ``out_dir``
  (the other processes get the rows read back from it); group checkpoints are written
  together, each process its own shards, so ``checkpoint_every`` needs an ``out_dir``
  that every process sees.

  Args:
    problem: the :class:`Problem`.
    space: the grid (see above).
    optimizer: a name in :func:`adam_jax.optimizers` or a factory of transformations.
    steps: optimizer steps per configuration.
    seeds: ``k`` (seeds ``0..k-1``) or the list of seeds; each configuration trains
      from every seed (initial params of a factory, batch order, dropout streams)
      and its metrics are the mean over seeds, with ``<name>_std`` (their standard
      deviation) when there are several.
    metric: the metric that picks ``best`` (a key of the rows' metrics).
    mode: ``"min"`` or ``"max"``.
    out_dir: if given, ``results.csv`` (a line per configuration, written as each
      group finishes, with a ``diverged`` column) and ``curves.jsonl`` are written there,
      and ``search.json`` records the run's identity (the optimizer, the model,
      ``loss_fn``, ``metrics_fn``, the data, the batch size, the steps and the seeds; see
      the tuning guide's "Run identity"). A folder that holds an earlier search (its
      ``results.csv`` or ``checkpoints``) is refused without ``resume``. The search holds
      the folder's lock while it runs: a second writer is refused, naming the holder.
    resume: with ``out_dir``, keep the rows of its ``results.csv`` and train the others;
      a run whose identity differs is refused, naming what changed. The space may
      differ: the configurations it names are returned, every other row is kept.
    devices: spread each group over these devices (default: ``jax.devices()``, every
      process's; a group whose steps are driven from Python runs on the first one of
      each process).
    loop: ``"scan"`` (steps in ``jax.lax.scan`` chunks), ``"python"`` (a jitted,
      vmapped step called from Python) or ``"auto"``: Python steps for a model with
      convolutions on CPU (several times faster there), ``scan`` otherwise.
    checkpoint_every: with ``out_dir``, save the group in training every this many
      steps (``checkpoints/``) so that ``resume`` continues it; ``0``: no checkpoints.
    progress: a progress bar per group (default: when the output is a terminal).
    on_row: called with each :class:`Row` as it finishes.
    diagnostics: wrap the optimizer in :func:`adam_jax.diagnostics.monitor` and keep
      its statistics after every step in ``Row.diagnostics`` (not written to disk).
    log_dir: write each configuration's run for TensorBoard to ``log_dir/<its
      configuration>`` as its group finishes (the varied keys name it): the training
      loss over the steps, the final metrics and the hyperparameters (needs tensorboardX:
      ``pip install 'adam-jax[tensorboard]'``).
    max_memory: the most memory one compiled program may need, in bytes or a string
      like ``"4GB"`` (default: a share of what is free, see :ref:`memory sizing
      <memory-sizing>`). Members that do not fit together train in several programs,
      one after another, with the same results; a configuration that does not fit
      alone is refused before any training (:class:`MemoryBudgetError`).
    eval_every: evaluate every member on ``val_data`` every this many steps (and after
      the last): each row's ``evals`` holds the validation curve (mean over seeds).
    keep: ``"last"`` (the last step's model) or ``"best"``: each member's params and
      model state (BatchNorm statistics) at its best evaluated step by ``metric`` and
      ``mode`` are kept; the row's metrics and ``best.model`` are that step's
      (``Row.best_step``). Needs ``eval_every``.
    patience: stop a member after this many evaluations without a better ``metric``: it
      stops changing (``Row.stopped_step``). Needs ``eval_every``.

  Returns:
    A :class:`SearchResult`; ``best.model`` is the trained model of the best
    configuration (the seed with the best metric; ``best.models`` has every seed's).
    A diverged row (a seed's loss, metric or parameter NaN or infinite:
    ``Row.diverged``) is never the best, under any metric and mode: ``best`` is None
    when every configuration diverged.

  Raises:
    ValueError: an unknown space key (the accepted ones are listed), a bad value,
      an unknown metric, a resume of another run, an ``out_dir`` that holds an earlier
      search without ``resume`` or that another process writes to (a
      ``adam_jax.checkpoint.DirectoryLockedError``), or ``devices`` that leave out a
      process.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from adam_jax import tuning
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> problem = tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x))
    >>> result = tuning.grid_search(problem, {"learning_rate": [1e-3, 1e-1]}, steps=50)
    >>> result.best.config, result.best.metrics["val_loss"] < result.rows[0].metrics["val_loss"]
    ({'learning_rate': 0.1}, True)
  """
  return search(problem, space, None, optimizer=optimizer, steps=steps, seeds=seeds,
                metric=metric, mode=mode, out_dir=out_dir, resume=resume, devices=devices,
                loop=loop, checkpoint_every=checkpoint_every, progress=progress, on_row=on_row,
                diagnostics=diagnostics, max_memory=max_memory, eval_every=eval_every,
                keep=keep, patience=patience, log_dir=log_dir)


@_lock.scoped  # the lock of out_dir is given back when the search ends
def search(
    problem: Problem,
    space: Mapping[str, Sequence[Any]],
    configs: Sequence[Mapping[str, Any]] | None,
    *,
    optimizer: str | Callable[..., optax.GradientTransformation] = "adam",
    steps: int,
    seeds: int | Sequence[int] = 1,
    metric: str = "val_loss",
    mode: str = "min",
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    devices: Sequence[jax.Device] | None = None,
    loop: str = "auto",
    checkpoint_every: int = 0,
    progress: bool | None = None,
    on_row: Callable[[Row], None] | None = None,
    diagnostics: bool = False,
    meta: Mapping[str, Any] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    max_memory: int | str | None = None,
    eval_every: int | None = None,
    keep: str = "last",
    patience: int | None = None,
) -> SearchResult:
  """:func:`grid_search` over ``configs`` (default: every combination of ``space``'s values).

  Each config takes one of ``space``'s values for every key; ``meta`` is kept in
  ``search.json`` next to the rows (a resume must match it).
  """
  check_run(problem, mode, loop, resume, out_dir)
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps!r}")
  seeds = seed_list(seeds)
  if (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer))
      or checkpoint_every < 0):
    raise ValueError(f"checkpoint_every must be a nonnegative integer, got {checkpoint_every!r}")
  budget = memory_budget(max_memory)
  evaluation = evaluation_of(problem, steps, eval_every, keep, patience, metric, mode)
  factory, opt_name = resolve_optimizer(optimizer)
  sp = parse_space(problem, space, factory, opt_name)
  on_row = _tensorboard.row_logger(log_dir, on_row, _tensorboard.varied(sp.values))
  devices = list(jax.devices() if devices is None else devices)
  _runner.check_devices(devices)
  keys = list(sp.values)
  store = None
  if out_dir is not None:
    meta = {**_identity.search_identity(problem, optimizer, steps, seeds), **(meta or {}),
            "space": sp.values}
    store = Store(os.fspath(out_dir), meta, keys, resume, sp.values)
  done = {} if store is None else store.done
  ckpt_root = None
  if store is not None and checkpoint_every:
    ckpt_root = os.path.join(os.fspath(out_dir), CHECKPOINTS)

  if configs is None:
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*sp.values.values())]
  else:
    grid = [{k: c[k] for k in keys} for c in configs]
  make_tx = tx_builder(factory, sp, steps)
  record = None
  if diagnostics:
    from adam_jax.diagnostics import monitor

    inner = make_tx

    def make_tx(hp):
      kw = {**sp.const, **hp}
      return monitor(inner(hp), eps=kw.get("eps", 1e-8), b2=kw.get("b2", 0.999))

    record = monitor_record

  results: dict[tuple[str, ...], Row] = {}
  best: tuple[float, Row, Any, Any] | None = None  # (score, row, bound, per-seed models)
  spread, loops = 1, {}
  for combo in itertools.product(*(sp.values[k] for k in sp.group)):
    group_cfg = dict(zip(sp.group, combo))
    configs = [c for c in grid if all(c[k] == group_cfg[k] for k in sp.group)]
    todo = [c for c in configs if config_key(c) not in done]
    results.update({config_key(c): done[config_key(c)] for c in configs if config_key(c) in done})
    label = ", ".join(f"{k}={v}" for k, v in group_cfg.items()) or "all"
    ckpt = None if ckpt_root is None else os.path.join(ckpt_root, slug(label))
    if not todo:
      if ckpt is not None and store.writes and os.path.isdir(ckpt):
        shutil.rmtree(ckpt)
      continue
    group = _group.group_of(problem, sp, group_cfg, make_tx, seeds, steps, metric)
    bound = group.bound
    bar = _bar(progress, len(todo), label)
    try:
      out = _group.train(
          group, *_group.members(todo, sp.traced, len(seeds)), steps, loop=loop,
          chunk=checkpoint_every or None, record=record, devices=devices,
          checkpoint_path=ckpt, resume=resume, budget=budget, evaluation=evaluation,
          on_steps=None if bar is None else functools.partial(_advance, bar, len(todo), steps))
    finally:
      if bar is not None:
        bar.close()
    loops[label] = out.loop
    spread = max(spread, out.num_devices)
    if ckpt is not None and store.writes and os.path.isdir(ckpt):
      shutil.rmtree(ckpt)
    losses, records = out.trace if diagnostics else (out.trace, None)
    kept_best = evaluation is not None and evaluation.keep == "best"  # judged as returned
    diverged = diverged_members(out.metrics, out.params,
                                np.zeros(len(losses)) if kept_best else losses[:, -1])
    for i, config in enumerate(todo):
      members = list(range(i * len(seeds), (i + 1) * len(seeds)))
      per_seed = [{k: float(v[m]) for k, v in out.metrics.items()} for m in members]
      metrics = summarize_members(per_seed)
      diag = None
      if records is not None:
        diag = monitor_columns(jax.tree.map(lambda r, m=members[0]: r[m], records))
      row = Row(dict(config), metrics, per_seed,
                np.asarray(losses[members], np.float32).mean(axis=0), diagnostics=diag,
                diverged=bool(diverged[members].any()), **evaluated(out, members))
      if metric not in metrics:
        raise ValueError(f"metric {metric!r} is not among the metrics "
                         f"({', '.join(metrics)}); pass val_data or metric=...")
      results[config_key(config)] = row
      if store is not None:
        store.add(row)
      score = rank(row, metric, mode)
      if best is None or (score < best[0] if mode == "min" else score > best[0]):
        best = (score, row, bound, _take(out, members))
      if on_row is not None:
        on_row(row)
  if (ckpt_root is not None and store.writes and os.path.isdir(ckpt_root)
      and not os.listdir(ckpt_root)):
    os.rmdir(ckpt_root)
  rows = [results[config_key(c)] for c in grid]
  if rows and metric not in rows[0].metrics:
    raise ValueError(f"metric {metric!r} is not among the metrics "
                     f"({', '.join(rows[0].metrics)}); pass val_data or metric=...")
  pick = min if mode == "min" else max
  top = pick(rows, key=lambda r: rank(r, metric, mode))
  if not math.isfinite(rank(top, metric, mode)):  # every row diverged
    return SearchResult(rows, None, metric, mode, spread, loops)
  if best is not None and best[1] is top:
    _, row, bound, trained = best
  else:  # the best row was read back from an earlier run: train it again
    row = top
    group = _group.group_of(problem, sp, {k: top.config[k] for k in sp.group}, make_tx, seeds,
                            steps, metric)
    bound = group.bound
    out = _group.train(group, *_group.members([top.config], sp.traced, len(seeds)), steps,
                       loop=loop, devices=_runner.one_per_process(devices), budget=budget,
                       evaluation=evaluation)
    trained = _take(out, list(range(len(seeds))))
    row = row._replace(seed_metrics=[{k: float(v[m]) for k, v in out.metrics.items()}
                                     for m in range(len(seeds))])
  models = [bound.fns.to_user(p, s) for p, s in trained]
  scores = [finite_or_nan(m[metric], mode) for m in row.seed_metrics]
  chosen = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
  best_row = row._replace(model=models[chosen], models=models)
  rows = [best_row if r is top else r for r in rows]
  return SearchResult(rows, best_row, metric, mode, spread, loops)


def check_run(problem: Problem, mode: str, loop: str, resume: bool,
              out_dir: str | os.PathLike[str] | None) -> None:
  """What every search checks first: the problem, ``mode``, ``loop`` and a resume's folder."""
  if not isinstance(problem, Problem):
    raise ValueError(f"problem must be an adam_jax.tuning.Problem, got {type(problem).__name__}")
  if mode not in ("min", "max"):
    raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
  if loop not in _runner.LOOPS:
    raise ValueError(f"loop must be one of {', '.join(_runner.LOOPS)}, got {loop!r}")
  if resume and out_dir is None:
    raise ValueError("resume needs out_dir, the folder of the search to resume")
  check_resumable(problem, resume)


def evaluation_of(problem: Problem, steps: int, eval_every: int | None, keep: str,
                  patience: int | None, metric: str, mode: str) -> _runner.Evaluation | None:
  """The checked ``eval_every``, ``keep`` and ``patience`` of a search (None: no evaluation)."""
  if keep not in ("last", "best"):
    raise ValueError(f"keep must be 'last' or 'best', got {keep!r}")
  if eval_every is None:
    for name, unset in (("keep='best'", keep == "last"), ("patience", patience is None)):
      if not unset:
        raise ValueError(f"{name} needs eval_every, the steps between evaluations")
    return None
  if isinstance(eval_every, bool) or not isinstance(eval_every, (int, np.integer)) or not (
      1 <= eval_every <= steps):
    raise ValueError(f"eval_every must be an integer from 1 to steps ({steps}), "
                     f"got {eval_every!r}")
  if patience is not None and (isinstance(patience, bool) or not isinstance(
      patience, (int, np.integer)) or patience < 1):
    raise ValueError(f"patience must be a positive integer (evaluations), got {patience!r}")
  if problem.val_data is None:
    raise ValueError("eval_every evaluates on val_data: pass val_data to the Problem")
  if not metric.startswith("val_"):
    raise ValueError(f"with eval_every the metric must be a validation metric (val_...), "
                     f"got {metric!r}")
  return _runner.Evaluation(int(eval_every), metric, mode, keep,
                            None if patience is None else int(patience))


def memory_budget(max_memory: int | str | None) -> int | None:
  """The bytes one program may need: ``max_memory`` parsed, or the default budget."""
  budget = _memory.parse_bytes(max_memory)
  return _memory.default_budget() if budget is None else budget


def _take(out: Any, members: list[int]) -> list[tuple[Any, Any]]:
  """The trained ``(params, state)`` of each member, as JAX arrays."""
  return [jax.tree.map(lambda a, m=m: jnp.asarray(a[m]), (out.params, out.state))
          for m in members]


def _advance(bar: Any, configs: int, steps: int, done: int) -> None:
  bar.update(configs * done / steps - bar.n)


def _bar(progress: bool | None, total: int, label: str) -> Any:
  if progress is False or jax.process_index() != 0:
    return None
  from tqdm.std import tqdm  # tqdm.auto warns in Jupyter without ipywidgets

  return tqdm(total=total, desc=label, unit="config", dynamic_ncols=True,
              disable=None if progress is None else False, leave=True)
