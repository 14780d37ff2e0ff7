"""The learning-rate range test (Smith 2015), as fastai's ``lr_find`` and Lightning's tuner."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _numerics as numerics
from adam_jax import aliases
from adam_jax.tuning import _runner
from adam_jax.tuning._memory import check_fits
from adam_jax.tuning._problem import Problem

MIN_FALL = 0.1  # a suggestion needs the smoothed loss to fall by this fraction of its start


class LRFindResult(NamedTuple):
  """What :func:`lr_find` returns."""

  lrs: np.ndarray  # shape=(n,), float64: the learning rate of each step run
  losses: np.ndarray  # shape=(n,), float64: smoothed, bias-corrected mini-batch losses
  raw_losses: np.ndarray  # shape=(n,), float64: the mini-batch losses themselves
  suggestion: float | None  # where the smoothed loss falls fastest and deepest in log(lr):
  #   use it; None when the loss did not fall enough to say (``reason`` tells why)
  valley: float | None  # the learning rate half-way down the longest valley of the smoothed
  #   loss; None with ``suggestion``
  diverged: bool  # whether the run stopped early because the loss blew up
  reason: str | None = None  # why there is no suggestion, and what to try (else None)

  def plot(self, path: str | os.PathLike[str] | None = None, *, title: str = "") -> Any:
    """The loss against the learning rate (log axis), with both rules marked.

    The y axis holds the curve up to 3 times its first value (past that the run is
    diverging) and starts at 0 at the lowest (never below: a loss is not negative).
    Returns a matplotlib ``Figure`` (shown as an image in Jupyter); saves it to ``path``
    as a PNG when given.
    """
    from adam_jax import _plotting

    fig = _plotting.figure()
    ax = fig.add_subplot()
    ax.plot(self.lrs, self.raw_losses, color="C0", alpha=0.3, lw=0.7, label="mini-batch loss")
    ax.plot(self.lrs, self.losses, color="C0", lw=1.5, label="smoothed loss")
    if self.suggestion is not None:
      for lr, name, color, style in ((self.suggestion, "suggestion (steepest)", "C1", "--"),
                                     (self.valley, "valley", "C2", ":")):
        at = int(np.argmin(np.abs(np.log(self.lrs) - math.log(lr))))
        ax.axvline(lr, color=color, ls=style, lw=1.2)
        ax.plot([lr], [self.losses[at]], "o", color=color, label=f"{name} {lr:.2g}")
    else:
      import textwrap

      ax.text(0.02, 0.03, textwrap.fill(f"No suggestion: {self.reason}", 70),
              transform=ax.transAxes, fontsize=8, va="bottom",
              bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "C3"})
    ax.set_xscale("log")
    finite = self.losses[np.isfinite(self.losses)]
    top = min(float(finite.max()), 3 * float(finite[0])) if len(finite) else None
    limits = _plotting.loss_limits(self.losses, self.raw_losses, top=top)
    if limits is not None:
      ax.set_ylim(*limits)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title or "LR range test")
    ax.legend(fontsize=8)
    return _plotting.save(fig, path)


def lr_find(
    problem: Problem,
    *,
    optimizer: str | Callable[..., optax.GradientTransformation] = "adam",
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    num_steps: int = 200,
    beta: float = 0.98,
    diverge_factor: float = 4.0,
    seed: int = 0,
    max_memory: int | str | None = None,
) -> LRFindResult:
  r"""Runs the learning-rate range test on the user's problem.

  The learning rate grows exponentially from ``start_lr`` to ``end_lr`` over
  ``num_steps`` steps, :math:`\eta_i = \eta_0 (\eta_1/\eta_0)^{i/(n-1)}`, while
  the model trains (in train mode, BatchNorm statistics and dropout streams carried
  as in :func:`grid_search`). The mini-batch loss :math:`\ell_i` is smoothed with a
  bias-corrected moving average

  .. math::

    a_i = \beta a_{i-1} + (1 - \beta)\,\ell_i, \qquad s_i = a_i / (1 - \beta^{i+1})

  and the run stops as soon as :math:`s_i > \text{diverge\_factor}\cdot\min_{j\le i} s_j`
  (or the loss is not finite). The user's model or params are not modified: a copy
  trains.

  Two rules are read off the smoothed curve before divergence:

  * ``suggestion``, the *steepest* point: where the slope of the smoothed loss in
    :math:`\log\eta`, taken over a window of :math:`\pm w` points
    (:math:`w = \max(2, \lfloor n/20 \rfloor)`, about a third of a decade at the
    defaults), :math:`(s_{i+w} - s_{i-w}) / \log(\eta_{i+w}/\eta_{i-w})`, is most
    negative, among the points past the first tenth (where the average is still
    settling) whose loss has already fallen a fifth of the way from the start
    (the median of the first tenth) to the minimum. A point-to-point slope is
    fooled by mini-batch noise where the loss is still flat (BatchNorm and dropout
    make it large there); a real descent is both sustained and deep.
  * ``valley``: the longest run of points over which the loss keeps falling (its
    longest decreasing subsequence); the value lies half-way down it. It suits
    curves that fall from the start; when the loss stays flat for decades of small
    learning rates (the digits MLP), noise in the flat part lengthens the valley and
    the value comes out too small, so it is reported but not suggested.

  Both need a descent to read: when the smoothed loss, past the first tenth, never falls
  below its start (the median of the first tenth) by :data:`MIN_FALL` (10%) of the
  start's magnitude, the
  curve is flat noise over the range, ``suggestion`` and ``valley`` are None and
  ``reason`` says so and what to try (a larger ``end_lr``, a wider range, more steps).

  Args:
    problem: the :class:`Problem` (a factory is built with its default keywords).
    optimizer: a name in :func:`adam_jax.optimizers`, or a factory taking the learning
      rate (a schedule) first, e.g. ``lambda lr: adam_jax.adamw(lr, weight_decay=1e-2)``.
    start_lr: the first learning rate (> 0).
    end_lr: the last learning rate (> start_lr).
    num_steps: the most steps to run (>= 10).
    beta: smoothing factor of the moving average, in [0, 1).
    diverge_factor: stop when the smoothed loss exceeds this multiple of its best (> 1).
    seed: seeds the mini-batch order (and a factory's initial params).
    max_memory: as in :func:`grid_search`: a step that needs more is refused before
      it runs (:class:`MemoryBudgetError`, with the figures).

  Returns:
    An :class:`LRFindResult`; its ``suggestion`` is None (with a ``reason``) when the loss
    did not fall meaningfully over the range.

  Examples:
    >>> from adam_jax import tasks, tuning
    >>> result = tuning.lr_find(tasks.digits_mlp(hidden=16), num_steps=60)
    >>> bool(1e-6 < result.suggestion < 1)
    True

  References:
    Smith, `Cyclical Learning Rates for Training Neural Networks
    <https://arxiv.org/abs/1506.01186>`_, WACV 2017.
  """
  if not isinstance(problem, Problem):
    raise ValueError(f"problem must be an adam_jax.tuning.Problem, got {type(problem).__name__}")
  numerics.check_range("start_lr", start_lr, 0.0, None, low_inclusive=False)
  if not end_lr > start_lr:
    raise ValueError(f"end_lr must be greater than start_lr ({start_lr}), got {end_lr!r}")
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 10:
    raise ValueError(f"num_steps must be an integer >= 10, got {num_steps!r}")
  numerics.check_betas(beta=beta)
  numerics.check_range("diverge_factor", diverge_factor, 1.0, None, low_inclusive=False)
  factory = aliases.get_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
  log_ratio = math.log(end_lr / start_lr) / (num_steps - 1)

  def lr_at(count):
    return start_lr * jnp.exp(count.astype(jnp.float32) * log_ratio)

  tx = factory(lr_at)
  fns = problem.bind().fns
  idx = None if problem.num_train is None else problem.batch_indices(num_steps, seed)

  one_step = _runner.member_step(fns, lambda hp: tx, problem.batch_fn, None)

  def step(carry, t, idx, data):  # one member: its seed and batch rows at position 0
    rows = None if idx is None else idx[:, None]
    return one_step(carry, {}, 0, t, rows, jnp.asarray([seed], jnp.int32), data)

  data = None if problem.train_data is None else jax.device_put(problem.train_data)
  batches = None if problem.stream is None else problem.stream.batches(0)

  def init(seed):
    params, state = fns.init(seed)
    return params, tx.init(params), state

  seed32 = np.int32(seed)
  idx = None if idx is None else jax.device_put(idx)
  carry_shape = jax.eval_shape(init, seed32)
  compiled = _runner.compile_all({
      "init": lambda: jax.jit(init).lower(seed32),
      "step": lambda: jax.jit(step, donate_argnums=0).lower(
          carry_shape, np.int32(0), idx, data if batches is None else problem.stream.shapes()),
  }, None)
  check_fits(compiled.values(), max_memory, "the range test's training step")
  carry = compiled["init"](seed32)
  raw: list[float] = []
  smooth: list[float] = []
  avg, best, stop = 0.0, math.inf, False
  check = 10  # steps between looks at the losses (the steps run asynchronously)
  for lo in range(0, num_steps, check):
    losses = []
    for t in range(lo, min(lo + check, num_steps)):
      batch = data if batches is None else _next_batch(problem.stream, batches, t)
      carry, loss = compiled["step"](carry, np.int32(t), idx, batch)
      losses.append(loss)
    for loss in jax.device_get(losses):
      i = len(raw)
      raw.append(float(loss))
      avg = beta * avg + (1 - beta) * float(np.float32(loss))
      s = avg / (1 - beta ** (i + 1))
      smooth.append(s)
      best = min(best, s)
      if not math.isfinite(s) or s > diverge_factor * best:
        stop = True
        break
    if stop:
      break
  count = len(raw)
  lrs = start_lr * np.exp(np.arange(count) * log_ratio)
  raw_a = np.asarray(raw, np.float64)
  smooth_a = np.asarray(smooth, np.float64)
  usable = count - 1 if stop else count  # the last point of a diverged run is not used
  steep, valley = _suggest(lrs[:usable], smooth_a[:usable])
  reason = _no_fall(lrs[:usable], smooth_a[:usable], stop)
  if reason is not None:
    steep = valley = None
  return LRFindResult(lrs, smooth_a, raw_a, steep, valley, stop, reason)


def _no_fall(lrs: np.ndarray, losses: np.ndarray, diverged: bool) -> str | None:
  """Why the curve shows no descent to read a learning rate from, or None."""
  skip = max(1, len(losses) // 10)  # the first tenth: the average is still settling
  start = float(np.median(losses[:skip]))
  lowest = float(np.min(losses[skip:] if len(losses) > skip else losses))
  fall = (start - lowest) / abs(start) if start else 0.0
  if fall >= MIN_FALL:
    return None
  try_ = (f"it blew up at lr {lrs[-1]:.3g} before falling: try a smaller start_lr or more "
          "steps (num_steps)" if diverged else
          f"it is flat up to lr {lrs[-1]:.3g}: try a larger end_lr (a wider range) or more "
          "steps (num_steps)")
  return (f"the smoothed loss fell by only {100 * max(fall, 0.0):.1f}% over the range "
          f"({start:.4g} at the start, {lowest:.4g} at its lowest; a suggestion needs "
          f"{100 * MIN_FALL:.0f}%): {try_}")


def _next_batch(stream: Any, batches: Any, step: int) -> Any:
  try:
    batch = jax.tree.map(np.asarray, next(batches))
  except StopIteration:
    raise ValueError(f"train_data ran out of batches at step {step}: the range test needs "
                     "num_steps of them") from None
  if jax.tree.map(lambda a: (a.shape, a.dtype), batch) != stream.spec:
    raise ValueError(f"train_data's batch at step {step} differs in shape or dtype from the "
                     "first batch: every batch must be alike")
  return batch


def _suggest(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
  """(steepest, valley) learning rates of a smoothed loss curve."""
  n = len(losses)
  if n < 3:
    raise ValueError(
        f"the loss diverged after {n} steps of the range test; lower start_lr"
    )
  skip = max(1, n // 10)
  w = max(2, n // 20)
  idx = np.arange(n)
  lo, hi = np.maximum(idx - w, 0), np.minimum(idx + w, n - 1)
  log_lr = np.log(lrs)
  slope = (losses[hi] - losses[lo]) / (log_lr[hi] - log_lr[lo])
  start, lowest = float(np.median(losses[:skip])), float(np.min(losses))
  deep = losses <= start - 0.2 * (start - lowest)
  for candidates in (idx[skip:-1][deep[skip:-1]], idx[skip:-1], idx):
    if len(candidates):
      break
  steepest = float(lrs[candidates[int(np.argmin(slope[candidates]))]])
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
