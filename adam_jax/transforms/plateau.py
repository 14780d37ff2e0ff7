"""``reduce_on_plateau``: torch's ``ReduceLROnPlateau`` as a transformation that scales updates."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_jax import _numerics as numerics

Array = jax.Array


class ReduceOnPlateauState(NamedTuple):
  """State of :func:`reduce_on_plateau`.

  ``optax.contrib.ReduceLROnPlateauState`` keeps torch's counters under other
  names (``best_value``, ``plateau_count``, ``cooldown_count``, ``avg_value``) for
  another rule (relative and absolute tolerances, no ``mode``), so this is a class
  of its own.
  """

  count: Array  # shape=(), dtype=int32; values taken (torch's last_epoch + 1), saturating
  scale: Array  # shape=(), dtype=float32; the factor on the updates (lr / initial lr)
  best: Array  # shape=(), dtype=float32; best value so far (inf in mode min, -inf in max)
  num_bad: Array  # shape=(), dtype=int32; values in a row without improvement
  cooldown_counter: Array  # shape=(), dtype=int32; values left in the cool-down
  acc_count: Array  # shape=(), dtype=int32; values accumulated towards the next decision
  acc_sum: Array  # shape=(), dtype=float32; their sum


def reduce_on_plateau(
    factor: Any = 0.1,
    patience: Any = 10,
    threshold: Any = 1e-4,
    threshold_mode: str = "rel",
    cooldown: Any = 0,
    min_scale: Any = 0.0,
    eps: Any = 1e-8,
    *,
    mode: str = "min",
    accumulation_size: int = 1,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales the updates by a factor that drops when a monitored value stops improving.

  ``torch.optim.lr_scheduler.ReduceLROnPlateau``'s rule, step for step, on the scale
  :math:`\sigma` (torch's ``lr / initial lr``), with the value :math:`f_t` passed as
  ``update(updates, state, params, value=f_t)``; :math:`b_0 = +\infty` (mode min),
  :math:`\sigma_0 = 1`, :math:`n_0 = c_0 = 0`:

  .. math::

    \text{better}_t &= \begin{cases} f_t < b_{t-1}(1 - \tau) & \text{rel} \\
                                      f_t < b_{t-1} - \tau & \text{abs} \end{cases} \\
    b_t &= f_t \text{ if better}_t \text{ else } b_{t-1}, \qquad
    n_t = 0 \text{ if better}_t \text{ else } n_{t-1} + 1 \\
    \text{if } c_{t-1} > 0 &: \quad c_t = c_{t-1} - 1,\ n_t = 0 \\
    \text{if } n_t > p &: \quad \sigma_t = \max(\phi\, \sigma_{t-1}, \sigma_{min})
      \text{ (if that drops it by more than } \epsilon),\ c_t = C,\ n_t = 0 \\
    u_t &\leftarrow \sigma_t\, u_t

  with :math:`p` = ``patience``, :math:`C` = ``cooldown``, :math:`\phi` = ``factor``.
  Mode max mirrors it (:math:`f_t > b(1 + \tau)`, :math:`f_t > b + \tau`,
  :math:`b_0 = -\infty`). Chain it after any alias, whose learning rate is then
  the initial one: ``optax.chain(adam_jax.adamw(1e-3), reduce_on_plateau())``.

  .. warning::
    Each ``update`` that completes ``accumulation_size`` values is one torch
    ``scheduler.step(value)``: ``patience`` and ``cooldown`` count those, and the
    scale it sets already applies to that update. Pass a validation loss once per
    epoch (``accumulation_size=1``) for torch's usual use; for a per-batch loss,
    average ``accumulation_size`` batches per decision. Where the rule differs
    from ``optax.contrib.reduce_on_plateau``: torch reduces on the
    ``patience + 1``-th value without improvement (optax on the ``patience``-th),
    has one threshold in relative *or* absolute mode (optax: both at once), and
    skips reductions smaller than ``eps``. Here ``min_scale`` and ``eps`` are
    relative to the initial learning rate (torch's ``min_lr`` and ``eps`` are
    absolute: ``min_lr = min_scale * lr``).

  Args:
    factor: :math:`\phi` in (0, 1): the scale is multiplied by it at a plateau.
    patience: values without improvement tolerated before reducing (>= 0).
    threshold: :math:`\tau` (>= 0), the improvement that counts.
    threshold_mode: ``"rel"`` or ``"abs"``.
    cooldown: values to wait after a reduction before counting again (>= 0).
    min_scale: :math:`\sigma_{min}` (>= 0), the floor of the scale.
    eps: reductions of the scale smaller than this are skipped (>= 0).
    mode: ``"min"`` (a loss) or ``"max"`` (an accuracy).
    accumulation_size: values averaged into one decision (>= 1).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`ReduceOnPlateauState`; ``update`` needs ``value=``.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_jax
    >>> tx = adam_jax.reduce_on_plateau(factor=0.5, patience=1)
    >>> state = tx.init(jnp.zeros(2))
    >>> for loss in [1.0, 0.9, 0.95, 0.92, 0.91]:  # no improvement on 0.9 twice: halve
    ...   updates, state = tx.update(jnp.ones(2), state, value=loss)
    >>> float(state.scale), updates
    (0.5, Array([0.5, 0.5], dtype=float32))

  References:
    PyTorch, `torch.optim.lr_scheduler.ReduceLROnPlateau
    <https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ReduceLROnPlateau.html>`_.
  """
  numerics.check_range("factor", factor, 0.0, 1.0, low_inclusive=False)
  numerics.check_nonnegative(patience=patience, threshold=threshold, cooldown=cooldown,
                             min_scale=min_scale, eps=eps)
  if threshold_mode not in ("rel", "abs"):
    raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
  if mode not in ("min", "max"):
    raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
  if not isinstance(accumulation_size, int) or accumulation_size < 1:
    raise ValueError(f"accumulation_size must be an int >= 1, got {accumulation_size!r}")
  sign = 1.0 if mode == "min" else -1.0

  def init_fn(params):
    del params
    return ReduceOnPlateauState(
        count=jnp.zeros([], jnp.int32),
        scale=jnp.ones([], jnp.float32),
        best=jnp.asarray(sign * jnp.inf, jnp.float32),
        num_bad=jnp.zeros([], jnp.int32),
        cooldown_counter=jnp.zeros([], jnp.int32),
        acc_count=jnp.zeros([], jnp.int32),
        acc_sum=jnp.zeros([], jnp.float32),
    )

  def decide(state, current):
    f32 = jnp.float32
    tau = jnp.asarray(numerics.hyper(threshold, f32), f32)
    best = state.best
    if threshold_mode == "rel":
      better = current < best * (1 - tau) if mode == "min" else current > best * (1 + tau)
    else:
      better = current < best - tau if mode == "min" else current > best + tau
    best = jnp.where(better, current, best)
    num_bad = jnp.where(better, 0, numerics.safe_increment(state.num_bad))
    in_cooldown = state.cooldown_counter > 0
    cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
    num_bad = jnp.where(in_cooldown, 0, num_bad)
    reduce = num_bad > jnp.asarray(patience).astype(jnp.int32)
    new_scale = jnp.maximum(state.scale * jnp.asarray(numerics.hyper(factor, f32), f32),
                            jnp.asarray(numerics.hyper(min_scale, f32), f32))
    drops = state.scale - new_scale > jnp.asarray(numerics.hyper(eps, f32), f32)
    scale = jnp.where(reduce & drops, new_scale, state.scale).astype(f32)
    cooldown_counter = jnp.where(reduce, jnp.asarray(cooldown).astype(jnp.int32),
                                 cooldown_counter).astype(jnp.int32)
    num_bad = jnp.where(reduce, 0, num_bad).astype(jnp.int32)
    return state._replace(scale=scale, best=best.astype(f32), num_bad=num_bad,
                          cooldown_counter=cooldown_counter,
                          count=numerics.safe_increment(state.count))

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del params, extra_args
    if value is None:
      raise ValueError(
          "reduce_on_plateau needs the monitored value: call "
          "update(updates, state, params, value=loss).")
    value = jnp.asarray(value)
    if value.shape != ():
      raise ValueError(f"reduce_on_plateau needs a scalar value, got shape {value.shape}")
    acc_sum = state.acc_sum + value.astype(jnp.float32)
    acc_count = state.acc_count + 1
    full = acc_count >= accumulation_size
    mean = acc_sum / acc_count.astype(jnp.float32)
    decided = decide(state, mean)
    state = jax.tree.map(lambda a, b: jnp.where(full, a, b), decided, state)
    state = state._replace(acc_sum=jnp.where(full, 0.0, acc_sum).astype(jnp.float32),
                           acc_count=jnp.where(full, 0, acc_count).astype(jnp.int32))
    scale = state.scale

    def leaf(u):
      cd = numerics.compute_dtype(u.dtype)
      return (u.astype(cd) * scale.astype(numerics.real_dtype(cd)).astype(cd)).astype(u.dtype)

    return jax.tree.map(leaf, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["ReduceOnPlateauState", "reduce_on_plateau"]
