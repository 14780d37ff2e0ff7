"""Training one configuration of a problem: evaluated as it goes, checkpointed, resumable."""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _lock
from adam_jax.tuning import _identity, _runner, _tensorboard
from adam_jax.tuning._batches import check_resumable
from adam_jax.tuning._memory import check_fits
from adam_jax.tuning._problem import Problem


class TrainResult(NamedTuple):
  """What :func:`train` returns."""

  model: Any  # the trained model: an nnx.Module in eval mode, or the params
  metrics: dict[str, float]  # the problem's metrics of ``model`` (train_loss, val_loss, ...)
  curve: np.ndarray  # shape=(steps,), float32: the mini-batch loss of every step
  history: list[dict[str, float]]  # per evaluation: step, loss (mean mini-batch loss since
  #   the previous evaluation), the validation metrics and ``opt_metrics``
  opt_state: Any  # the optimizer's final state
  records: Any  # ``record``'s outputs, stacked over the steps trained by this call (or None)
  first_step: int  # 0, or the step a resumed run continued from
  train_s: float  # wall time of the steps trained by this call (after compilation)
  compile_s: float  # wall time of the compilation
  loop: str  # the loop form used: "scan" or "python"
  best_step: int | None = None  # with keep="best" or patience: the best evaluated step
  #   (with keep="best", that of ``model`` and ``metrics``); None: no finite evaluation
  stopped_step: int | None = None  # with patience: the step it stopped at (``steps``: never)


class TrainInterrupted(KeyboardInterrupt):
  """A :func:`train` interrupted (Ctrl-C); ``step`` is its newest checkpoint's step (0: none)."""

  def __init__(self, step: int):
    super().__init__(f"interrupted; the newest checkpoint holds step {step}" if step
                     else "interrupted before any checkpoint was written")
    self.step = step


@_lock.scoped  # the lock of checkpoint_dir is given back when the run ends
def train(
    problem: Problem,
    tx: optax.GradientTransformation | None,
    steps: int,
    *,
    schedule: Any = None,
    seed: int = 0,
    eval_every: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    record: Callable[[Any], Any] | None = None,
    opt_metrics: Callable[[Any], dict[str, Any]] | None = None,
    loop: str = "auto",
    on_start: Callable[[int], None] | None = None,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    max_memory: int | str | None = None,
    keep: str = "last",
    patience: int | None = None,
    metric: str = "val_loss",
    mode: str = "min",
) -> TrainResult:
  r"""Trains the problem's model with ``tx`` for ``steps`` steps, evaluating as it goes.

  The step is the one :func:`grid_search` vectorizes (same initial model, same
  mini-batches :meth:`Problem.batch_indices` for ``seed``, BatchNorm statistics and
  dropout streams carried the same way), here for one configuration: a run equals the
  same configuration trained by a search. Each step passes its mini-batch loss to
  ``tx.update`` as ``value=`` when ``tx`` takes extra arguments (optax's convention),
  so ``optax.chain(adam_jax.adam(1e-3), adam_jax.reduce_on_plateau(
  accumulation_size=k))`` reduces the rate when the mean training loss over ``k``
  steps stops improving.

  Steps run in chunks of ``eval_every``; after each chunk the model is evaluated on
  ``val_data`` in eval mode (the problem's ``val_*`` metrics), ``on_eval`` is called,
  and then, every ``checkpoint_every`` steps and after the last step, the run is saved
  to ``checkpoint_dir`` (params, optimizer and model state, the loss curve and the
  evaluations), so that ``resume=True`` continues it.

  Args:
    problem: the :class:`Problem` (a factory is built with its default keywords).
    tx: any optax ``GradientTransformation`` (None with ``schedule``).
    steps: the number of optimizer steps (>= 1).
    schedule: instead of ``tx``, hyperparameters that change during training: a
      :class:`Schedule` (what :func:`pbt` found: ``result.best.schedule``), its optimizer
      built from the values of each segment at the segment's steps (traced, so the run
      compiles once). With the same ``seed`` a member of :func:`pbt` that never copied
      another is reproduced to float32 rounding.
    seed: seeds the initial model (of a factory), the batch order and dropout streams.
    eval_every: steps between evaluations (default: one evaluation, after the last step).
    checkpoint_dir: where to save the run (None: no checkpoints). The run holds the
      folder's lock while it trains (another writer is refused, naming the holder), and
      each save records the run's identity (``tx`` with its hyperparameters, the model,
      ``loss_fn``, ``metrics_fn``, the data, the batch size, ``steps``, ``seed`` and
      ``eval_every``). A folder that holds saves already needs ``resume``.
    checkpoint_every: with ``checkpoint_dir``, the least number of steps between saves,
      made after an evaluation (and after the last step); 0: none.
    resume: continue from the newest intact save in ``checkpoint_dir`` when there is one
      (a damaged newest save falls back to the previous one, with a
      ``CheckpointFallbackWarning``); a save of another run (anything in its identity
      changed) is refused with a ``CheckpointIdentityError`` naming what changed.
    record: a function of the optimizer state kept after every step (for example the
      statistics of :func:`adam_jax.diagnostics.monitor`).
    opt_metrics: a function of the optimizer state returning a dict of scalars added
      to each evaluation (for example the scale of ``reduce_on_plateau``).
    loop: ``"scan"`` (each chunk one ``jax.lax.scan``), ``"python"`` (a jitted step
      called from Python) or ``"auto"``: Python steps for a model with convolutions on
      CPU, ``scan`` otherwise (as :func:`grid_search`).
    on_start: called with the first step to train (0, or the step resumed from).
    on_eval: called with each evaluation (a dict: ``step``, ``loss``, the metrics),
      before the checkpoint of that step is written.
    log_dir: write the run for TensorBoard to this folder when it ends: the training
      loss of every step, the evaluations at their steps and the final metrics (needs
      tensorboardX: ``pip install 'adam-jax[tensorboard]'``).
    keep: ``"last"`` or ``"best"``: return the model (params and model state) of the
      best evaluation by ``metric`` and ``mode``, and its metrics.
    patience: stop after this many evaluations without a better ``metric``.
    metric: what ``keep`` and ``patience`` judge by: ``val_loss`` or another metric of
      the evaluations.
    mode: ``"min"`` or ``"max"``.
    max_memory: as in :func:`grid_search`: a run whose programs need more is refused
      before it trains (:class:`MemoryBudgetError`, with the figures).

  Returns:
    A :class:`TrainResult`: the trained model and its metrics (computed by the
    problem's ``loss_fn`` and ``metrics_fn`` on it), the loss curve and the evaluations.

  Raises:
    ValueError: a bad argument, a checkpoint that does not match this run
      (a ``adam_jax.checkpoint.CheckpointError``), a ``checkpoint_dir`` with saves
      already and no ``resume``, or one that another process writes to (a
      ``adam_jax.checkpoint.DirectoryLockedError``).
    TrainInterrupted: on Ctrl-C (a ``KeyboardInterrupt``), with the newest saved step.

  Examples:
    >>> import adam_jax
    >>> from adam_jax import tasks, tuning
    >>> problem = tasks.digits_mlp(hidden=16)
    >>> result = tuning.train(problem, adam_jax.adam(1e-2), 100, eval_every=50)
    >>> [h["step"] for h in result.history], result.curve.shape
    ([50, 100], (100,))
    >>> bool(result.metrics["val_loss"] < result.curve[0])
    True
  """
  if not isinstance(problem, Problem):
    raise ValueError(f"problem must be an adam_jax.tuning.Problem, got {type(problem).__name__}")
  _check_int("steps", steps, 1)
  _check_int("checkpoint_every", checkpoint_every, 0)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
      0 <= seed < 2**31):
    raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
  eval_every = steps if eval_every is None else eval_every
  _check_int("eval_every", eval_every, 1)
  if loop not in _runner.LOOPS:
    raise ValueError(f"loop must be one of {', '.join(_runner.LOOPS)}, got {loop!r}")
  if resume and checkpoint_dir is None:
    raise ValueError("resume needs checkpoint_dir, the folder of the run to resume")
  check_resumable(problem, resume)
  if keep not in ("last", "best"):
    raise ValueError(f"keep must be 'last' or 'best', got {keep!r}")
  if mode not in ("min", "max"):
    raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
  if patience is not None:
    _check_int("patience", patience, 1)
  judged = keep == "best" or patience is not None
  steps, eval_every, seed = int(steps), min(int(eval_every), int(steps)), int(seed)
  fns = problem.bind().fns
  batch_fn = problem.batch_fn
  make_tx, hp_at = _optimizer(tx, schedule)
  if schedule is not None:
    tx = schedule

  one_step = _runner.member_step(fns, make_tx, batch_fn, record)

  def step(carry, t, idx, data):  # one member: its seed and batch rows at position 0
    rows = None if idx is None else idx[:, None]
    return one_step(carry, hp_at(t), 0, t, rows, jnp.asarray([seed], jnp.int32), data)

  def evaluate(carry, val):
    params, opt_state, state = carry
    out = {} if val is None else fns.metrics(params, state, None, val)
    if opt_metrics is not None:
      out.update({k: jnp.asarray(v, jnp.float32) for k, v in opt_metrics(opt_state).items()})
    return out

  def init(seed):
    params, state = fns.init(seed)
    return params, make_tx(hp_at(0)).init(params), state

  stream = problem.stream

  def scan_chunk(carry, lo, idx, data, val, length):
    ts = lo + jnp.arange(length, dtype=jnp.int32)
    if stream is not None:  # data: the chunk's batches, stacked
      carry, out = jax.lax.scan(lambda c, tb: step(c, tb[0], None, tb[1]), carry, (ts, data))
    else:
      carry, out = jax.lax.scan(lambda c, t: step(c, t, idx, data), carry, ts)
    return carry, out, evaluate(carry, val)

  seed32 = np.int32(seed)
  carry = jax.eval_shape(init, seed32)  # the arrays come from init or a checkpoint
  idx = None if problem.num_train is None else jax.device_put(problem.batch_indices(steps, seed))
  data = None if problem.train_data is None else jax.device_put(problem.train_data)
  fed = lambda length=None: data if stream is None else stream.shapes(length)
  val = None if problem.val_data is None else jax.device_put(problem.val_data)
  t_shape = jax.ShapeDtypeStruct((), jnp.int32)
  if loop == "auto":
    loop = _runner.choose_loop(step, carry, t_shape, idx, fed())
  names = _ordered(list(jax.eval_shape(evaluate, carry, val)))
  n_evals = -(-steps // eval_every)
  saved = {"carry": carry, "step": np.zeros((), np.int32),
           "curve": np.full(steps, np.nan, np.float32),
           "evals": np.full((n_evals, 2 + len(names)), np.nan, np.float32)}
  if judged:
    if metric not in names:
      raise ValueError(f"metric {metric!r} is not among the evaluations' metrics "
                       f"({', '.join(names)}); pass val_data or metric=...")
    saved["kept"] = _Kept.start(carry)
  ckpt = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
  identity = None if ckpt is None else _identity.train_identity(problem, tx, steps, seed,
                                                                eval_every)
  if ckpt is not None and _identity.claim_checkpoints(ckpt, resume, bool(checkpoint_every)):
    from adam_jax import checkpoint

    saved = checkpoint.restore_latest(ckpt, like=saved, identity=identity)
  first = int(saved["step"])
  curve, evals = np.array(saved["curve"]), np.array(saved["evals"])
  kept = _Kept(metric, mode, keep, patience, saved.get("kept"), steps) if judged else None

  compile_start = time.perf_counter()
  lowered = {}
  if first == 0:
    lowered["init"] = jax.jit(init).lower(seed32)
  if loop == "scan":
    for lo in range(first, steps, eval_every):
      length = min(eval_every, steps - lo)
      if length not in lowered:
        lowered[length] = jax.jit(functools.partial(scan_chunk, length=length),
                                  donate_argnums=0).lower(carry, t_shape, idx, fed(length),
                                                          val)
  elif first < steps:
    lowered["step"] = jax.jit(step, donate_argnums=0).lower(carry, t_shape, idx, fed())
    lowered["evaluate"] = jax.jit(evaluate).lower(carry, val)
  lowered["metrics"] = jax.jit(fns.metrics).lower(carry[0], carry[2], data, val)
  # At XLA's default level: one run is what a user's own jax.jit loop is compared with.
  compiled = _runner.compile_all(lowered, None)
  check_fits(compiled.values(), max_memory, "this run")
  compile_s = time.perf_counter() - compile_start
  # A restored carry is copied (the chunks donate it); init's is fresh.
  carry = compiled["init"](seed32) if first == 0 else jax.tree.map(jnp.array, saved["carry"])

  bounds = [(lo, min(lo + eval_every, steps)) for lo in range(first, steps, eval_every)]
  feed = None if stream is None else _runner.feeder(stream, bounds)

  def run_chunk(carry, lo, hi):
    chunk = data if feed is None else feed(lo, hi)
    if loop == "scan":
      carry, out, ev = compiled[hi - lo](carry, np.int32(lo), idx, chunk, val)
      return carry, jax.device_get(out), jax.device_get(ev)
    outs = []
    for t in range(lo, hi):
      batch = chunk if feed is None else jax.tree.map(lambda a, i=t - lo: a[i], chunk)
      carry, out = compiled["step"](carry, np.int32(t), idx, batch)
      outs.append(out)
    outs = jax.tree.map(lambda *o: np.stack(o), *jax.device_get(outs))
    return carry, outs, jax.device_get(compiled["evaluate"](carry, val))

  if on_start is not None:
    on_start(first)
  records: list[Any] = []
  last_saved = first
  train_s = 0.0
  try:
    for lo in range(first, steps, eval_every):
      hi = min(lo + eval_every, steps)
      start = time.perf_counter()
      carry, out, ev = run_chunk(carry, lo, hi)
      train_s += time.perf_counter() - start
      if record is not None:
        out, rec = out
        records.append(rec)
      curve[lo:hi] = np.asarray(out)
      row = evals[(hi - 1) // eval_every]
      row[:] = [hi, curve[lo:hi].mean()] + [float(ev[k]) for k in names]
      if on_eval is not None:
        on_eval(_history_item(row, names))
      stop = kept is not None and kept.update(hi, float(ev[metric]), carry)
      if ckpt is not None and checkpoint_every and (hi - last_saved >= checkpoint_every
                                                    or hi == steps or stop):
        from adam_jax import checkpoint

        last_saved = hi  # a Ctrl-C during the save waits until it is committed
        checkpoint.save_rotating(ckpt, {"carry": carry, "step": np.asarray(
            steps if stop else hi, np.int32), "curve": curve, "evals": evals,
            **({} if kept is None else {"kept": kept.saved(carry)})}, keep=2, identity=identity)
      if stop:
        break
  except KeyboardInterrupt:
    raise TrainInterrupted(last_saved) from None
  finally:
    if feed is not None:
      feed.close()
  params, opt_state, state = carry
  if kept is not None and keep == "best" and kept.step >= 0:
    params, state = kept.model
  metrics = {k: float(v) for k, v in jax.device_get(
      compiled["metrics"](params, state, data, val)).items()}
  metrics = {k: metrics[k] for k in _ordered(list(metrics))}
  stacked = (jax.tree.map(lambda *r: np.concatenate(r), *records) if records else None)
  if log_dir is not None:  # the run for TensorBoard, from what was recorded
    _tensorboard.write_run(log_dir, curve=curve, metrics=metrics, evaluations=[
        _history_item(r, names) for r in evals if np.isfinite(r[0])])
  return TrainResult(
      model=fns.to_user(params, state),
      metrics=metrics,
      curve=curve,
      history=[_history_item(row, names) for row in evals if np.isfinite(row[0])],
      opt_state=opt_state,
      records=stacked,
      first_step=first,
      train_s=train_s,
      compile_s=compile_s,
      loop=loop,
      best_step=None if kept is None or kept.step < 0 else kept.step,
      stopped_step=None if kept is None else kept.stopped,
  )


def _optimizer(tx: Any, schedule: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """``(make_tx, hp_at)``: the optimizer of traced values and the values at step ``t``."""
  if schedule is None:
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
      raise ValueError(f"tx must be an optax GradientTransformation (or schedule=...), got "
                       f"{type(tx).__name__}")
    return (lambda hp: tx), (lambda t: {})
  from adam_jax.tuning._pbt import Schedule

  if tx is not None:
    raise ValueError("pass tx or schedule, not both (a schedule names its optimizer)")
  if not isinstance(schedule, Schedule):
    raise ValueError(f"schedule must be an adam_jax.tuning.Schedule (a pbt result's "
                     f"member.schedule), got {type(schedule).__name__}")
  starts, values = schedule.table()

  def hp_at(t):
    k = jnp.maximum(jnp.searchsorted(starts, t, side="right") - 1, 0)
    return {key: jnp.asarray(v)[k] for key, v in values.items()}

  return schedule.make_tx(), hp_at


class _Kept:
  """The best evaluation of a run so far (``keep="best"``) and the evaluations since
  (``patience``); its model is a copy (the next chunk donates the carry)."""

  def __init__(self, metric: str, mode: str, keep: str, patience: int | None,
               saved: dict[str, Any], steps: int):
    self.metric, self.mode, self.keep, self.patience = metric, mode, keep, patience
    self.model = saved["model"]
    self.step, self.since = int(saved["step"]), int(saved["since"])
    self.score, self.steps = float(saved["score"]), steps
    self.stopped = int(saved["stopped"]) or steps

  @staticmethod
  def start(carry: Any) -> dict[str, Any]:
    """What a checkpoint holds before any evaluation (``carry``: arrays or their shapes)."""
    return {"model": (carry[0], carry[2]), "step": np.asarray(-1, np.int32),
            "since": np.zeros((), np.int32), "score": np.asarray(np.nan, np.float64),
            "stopped": np.zeros((), np.int32)}

  def update(self, step: int, score: float, carry: Any) -> bool:
    """Takes the evaluation at ``step``; whether the run stops there (``patience``)."""
    better = math.isfinite(score) and (
        self.step < 0 or (score < self.score if self.mode == "min" else score > self.score))
    if better:
      self.step, self.score, self.since = step, score, 0
      if self.keep == "best":
        self.model = jax.tree.map(jnp.copy, (carry[0], carry[2]))
    else:
      self.since += 1
    if self.patience is not None and self.since >= self.patience:
      self.stopped = step
      return True
    return False

  def saved(self, carry: Any) -> dict[str, Any]:
    """What a checkpoint keeps (``carry`` stands in for a model before any is kept)."""
    return {"model": self.model if self.step >= 0 else (carry[0], carry[2]),
            "step": np.asarray(self.step, np.int32), "since": np.asarray(self.since, np.int32),
            "score": np.asarray(self.score),
            "stopped": np.asarray(self.stopped if self.stopped < self.steps else 0, np.int32)}


def _ordered(names: list[str]) -> list[str]:
  first = [k for k in ("train_loss", "val_loss") if k in names]
  return first + [k for k in names if k not in first]


def _history_item(row: np.ndarray, names: list[str]) -> dict[str, float]:
  return {"step": int(row[0]), "loss": float(row[1]),
          **{k: float(v) for k, v in zip(names, row[2:])}}


def _check_int(name: str, value: Any, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    kind = "a positive integer" if low == 1 else f"an integer >= {low}"
    raise ValueError(f"{name} must be {kind}, got {value!r}")
