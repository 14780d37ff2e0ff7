"""Training a task with any optax transformation: one compiled program per call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from adam_jax.tasks._tasks import Task


class TrainResult(NamedTuple):
  """What :func:`train` returns."""

  train_loss: float  # loss on the whole training split after the last step
  val_loss: float  # loss on the validation split after the last step
  val_accuracy: float | None  # validation accuracy in [0, 1]; None for the autoencoder
  curve: np.ndarray  # shape=(steps,), dtype=float32: the mini-batch loss of every step
  params: Any  # the trained parameters (an nnx.State)


def fit(
    task: Task,
    tx: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    idx: jax.Array,
    x: jax.Array,
    y: jax.Array,
    *,
    record: Callable[[Any], Any] | None = None,
) -> tuple[Any, Any, Any]:
  """Runs ``len(idx)`` optimizer steps inside ``jax.lax.scan`` (call it under ``jit``).

  Args:
    task: the task (its loss).
    tx: the optimizer.
    params: parameters to start from.
    opt_state: the optimizer's state for ``params``.
    idx: mini-batch indices into ``x``/``y``, shape ``(steps, batch_size)``.
    x: training features.
    y: training targets.
    record: optional function of the optimizer state after each step (for example
      ``lambda s: s.stats`` of a :func:`adam_jax.diagnostics.monitor` state); its
      outputs are stacked over the steps.

  Returns:
    ``(params, opt_state, losses)`` with the mini-batch loss of each step, or
    ``(params, opt_state, (losses, records))`` when ``record`` is given.

  Examples:
    >>> import functools, jax, adam_jax
    >>> from adam_jax.tasks import fit, get_task
    >>> task = get_task("digits-mlp", hidden=16)
    >>> tx = adam_jax.adam(1e-2)
    >>> run = jax.jit(functools.partial(fit, task, tx))
    >>> params, state, losses = run(task.params, tx.init(task.params),
    ...                             task.batch_indices(30, seed=0), task.x_train, task.y_train)
    >>> losses.shape, bool(losses[-5:].mean() < losses[:5].mean())
    ((30,), True)
  """

  def step(carry, batch):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(task.loss)(params, x[batch], y[batch])
    updates, opt_state = tx.update(grads, opt_state, params)
    out = loss if record is None else (loss, record(opt_state))
    return (optax.apply_updates(params, updates), opt_state), out

  (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
  return params, opt_state, losses


def train(task: Task, tx: optax.GradientTransformation, steps: int, *, seed: int = 0
          ) -> TrainResult:
  """Trains ``task``'s model from its initial params for ``steps`` steps of ``tx``.

  The whole run (optimizer init, the scanned loop, the final evaluation) is one
  jitted program; the data and the mini-batch indices are its arguments.

  Args:
    task: from :func:`adam_jax.tasks.get_task`.
    tx: any optax ``GradientTransformation``.
    steps: number of optimizer steps (>= 1).
    seed: seeds the order of the mini-batches.

  Returns:
    A :class:`TrainResult`.

  Examples:
    >>> import adam_jax
    >>> from adam_jax.tasks import get_task, train
    >>> result = train(get_task("digits-mlp", hidden=16), adam_jax.adam(1e-2), steps=20)
    >>> result.curve.shape, bool(result.val_loss < result.curve[0])
    ((20,), True)
  """
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps!r}")

  @jax.jit
  def run(params, idx, x_tr, y_tr, x_val, y_val):
    params, _, curve = fit(task, tx, params, tx.init(params), idx, x_tr, y_tr)
    return params, curve, task.evaluate(params, x_tr, y_tr), task.evaluate(params, x_val, y_val)

  params, curve, (tr_loss, _), (va_loss, va_acc) = run(
      task.params, task.batch_indices(steps, seed), task.x_train, task.y_train,
      task.x_val, task.y_val)
  return TrainResult(
      train_loss=float(tr_loss),
      val_loss=float(va_loss),
      val_accuracy=float(va_acc) if task.classification else None,
      curve=np.asarray(curve),
      params=params,
  )
