"""The learning-rate range test (Smith 2015), as fastai's ``lr_find`` and Lightning's tuner."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _numerics as numerics
from adam_jax import aliases


class LRFindResult(NamedTuple):
  """What :func:`lr_find` returns."""

  lrs: np.ndarray  # shape=(n,), float64: the learning rate of each step run
  losses: np.ndarray  # shape=(n,), float64: smoothed, bias-corrected mini-batch losses
  raw_losses: np.ndarray  # shape=(n,), float64: the mini-batch losses themselves
  steepest: float  # the learning rate where the smoothed loss falls fastest in log(lr)
  valley: float  # the learning rate half-way down the longest valley of the smoothed loss
  suggestion: float  # the recommended learning rate (the steepest point's)
  diverged: bool  # whether the run stopped early because the loss blew up


def lr_find(
    task: Any,
    *,
    optimizer: Callable[[Any], optax.GradientTransformation] = aliases.adam,
    params: Any = None,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    num_steps: int = 200,
    beta: float = 0.98,
    diverge_factor: float = 4.0,
    seed: int = 0,
) -> LRFindResult:
  r"""Runs the learning-rate range test on a task.

  The learning rate grows exponentially from ``start_lr`` to ``end_lr`` over
  ``num_steps`` steps, :math:`\eta_i = \eta_0 (\eta_1/\eta_0)^{i/(n-1)}`, while
  the model trains. The mini-batch loss :math:`\ell_i` is smoothed with a
  bias-corrected moving average

  .. math::

    a_i = \beta a_{i-1} + (1 - \beta)\,\ell_i, \qquad s_i = a_i / (1 - \beta^{i+1})

  and the run stops as soon as :math:`s_i > \text{diverge\_factor}\cdot\min_{j\le i} s_j`
  (or the loss is not finite). The whole run is one compiled ``jax.lax.while_loop``.

  Two suggestions are read off the smoothed curve before divergence:

  * *steepest*: where :math:`ds/d\log\eta` is most negative (skipping the first
    tenth of the points, where the average is still settling). This is the
    ``suggestion``.
  * *valley*: the longest run of points over which the loss keeps falling (its
    longest decreasing subsequence); the value lies half-way down it. It suits
    curves that fall from the start; when the loss stays flat for decades of small
    learning rates (the digits MLP), noise in the flat part lengthens the valley and
    the value comes out too small, so it is reported but not suggested.

  Args:
    task: an :class:`adam_jax.tasks.Task`.
    optimizer: a factory taking the learning rate (a schedule) and returning an
      optax transformation, e.g. ``adam_jax.adam`` or
      ``lambda lr: adam_jax.adamw(lr, weight_decay=1e-2)``.
    params: params to start from (default: the task's initial params); they are
      not modified (JAX arrays are immutable; a new tree is trained).
    start_lr: the first learning rate (> 0).
    end_lr: the last learning rate (> start_lr).
    num_steps: the most steps to run (>= 10).
    beta: smoothing factor of the moving average, in [0, 1).
    diverge_factor: stop when the smoothed loss exceeds this multiple of its best (> 1).
    seed: seeds the mini-batch order.

  Returns:
    An :class:`LRFindResult`.

  Examples:
    >>> from adam_jax.tasks import get_task
    >>> from adam_jax.tuning import lr_find
    >>> result = lr_find(get_task(hidden=16), num_steps=60)
    >>> bool(1e-6 < result.suggestion < 1)
    True

  References:
    Smith, `Cyclical Learning Rates for Training Neural Networks
    <https://arxiv.org/abs/1506.01186>`_, WACV 2017.
  """
  numerics.check_range("start_lr", start_lr, 0.0, None, low_inclusive=False)
  if not end_lr > start_lr:
    raise ValueError(f"end_lr must be greater than start_lr ({start_lr}), got {end_lr!r}")
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 10:
    raise ValueError(f"num_steps must be an integer >= 10, got {num_steps!r}")
  numerics.check_betas(beta=beta)
  numerics.check_range("diverge_factor", diverge_factor, 1.0, None, low_inclusive=False)
  params = task.params if params is None else params
  log_ratio = math.log(end_lr / start_lr) / (num_steps - 1)

  def lr_at(count):
    return start_lr * jnp.exp(count.astype(jnp.float32) * log_ratio)

  tx = optimizer(lr_at)

  @jax.jit
  def run(params, idx, x, y):
    n = idx.shape[0]

    def cond(carry):
      i, stop = carry[0], carry[1]
      return (i < n) & ~stop

    def body(carry):
      i, _, params, opt_state, avg, best, raw, smooth = carry
      batch = idx[i]
      loss, grads = jax.value_and_grad(task.loss)(params, x[batch], y[batch])
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      avg = beta * avg + (1 - beta) * loss
      s = avg / (1 - beta ** (i + 1).astype(jnp.float32))
      best = jnp.minimum(best, s)
      stop = ~jnp.isfinite(s) | (s > diverge_factor * best)
      return (i + 1, stop, params, opt_state, avg, best, raw.at[i].set(loss),
              smooth.at[i].set(s))

    nan = jnp.full((n,), jnp.nan, jnp.float32)
    init = (jnp.zeros((), jnp.int32), jnp.zeros((), bool), params, tx.init(params),
            jnp.zeros((), jnp.float32), jnp.full((), jnp.inf, jnp.float32), nan, nan)
    i, stop, *_, raw, smooth = jax.lax.while_loop(cond, body, init)
    return i, stop, raw, smooth

  count, stop, raw, smooth = jax.device_get(
      run(params, task.batch_indices(num_steps, seed), task.x_train, task.y_train))
  count = int(count)
  lrs = start_lr * np.exp(np.arange(count) * log_ratio)
  raw = np.asarray(raw[:count], np.float64)
  smooth = np.asarray(smooth[:count], np.float64)
  usable = count - 1 if bool(stop) else count  # the last point of a diverged run is not used
  steep, valley = _suggest(lrs[:usable], smooth[:usable])
  return LRFindResult(lrs, smooth, raw, steep, valley, steep, bool(stop))


def _suggest(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
  """(steepest, valley) learning rates of a smoothed loss curve."""
  n = len(losses)
  if n < 3:
    raise ValueError(
        f"the loss diverged after {n} steps of the range test; lower start_lr"
    )
  skip = max(1, n // 10)
  slope = np.gradient(losses, np.log(lrs))
  steepest = float(lrs[skip + int(np.argmin(slope[skip:-1]))]) if n - 1 > skip else float(
      lrs[int(np.argmin(slope))])
  # Longest strictly decreasing subsequence: length[i] of the best one ending at i,
  # first[i] where that one starts.
  length = np.ones(n, np.int64)
  first = np.arange(n)
  for i in range(1, n):
    earlier = np.nonzero(losses[:i] > losses[i])[0]
    if len(earlier):
      j = earlier[np.argmax(length[earlier])]
      length[i] = length[j] + 1
      first[i] = first[j]
  end = int(np.argmax(length))
  start = int(first[end])
  return steepest, float(lrs[start + (end - start) // 2])
