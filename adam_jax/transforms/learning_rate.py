"""``scale_by_learning_rate``: the last link of every alias."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adam_jax import _numerics as numerics


def scale_by_learning_rate(
    learning_rate: numerics.ScalarOrSchedule,
    *,
    flip_sign: bool = True,
) -> optax.GradientTransformation:
  r"""Multiplies updates by :math:`-\eta_t` (or :math:`+\eta_t` with ``flip_sign=False``).

  .. math::

    u_t \leftarrow -\eta_t \, u_t, \qquad \eta_t = \text{schedule}(t - 1)
    \text{ for a schedule, else } \eta

  The last link of every alias: the updates, added to the params, descend.

  Args:
    learning_rate: :math:`\eta` (>= 0): a float, an array (possibly traced, for
      vmapping over learning rates), or a schedule, a callable of the step count.
      A schedule is evaluated at count 0 for the first update, as torch's first
      ``optimizer.step()`` uses the initial learning rate.
    flip_sign: negate, so the updates descend when added to the params.

  Returns:
    An ``optax.GradientTransformation``; its state is ``optax.EmptyState`` for a
    constant and ``optax.ScaleByScheduleState`` for a schedule.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.scale_by_learning_rate(0.5)
    >>> tx.update(jnp.ones(2), tx.init(None))[0]
    Array([-0.5, -0.5], dtype=float32)
  """
  numerics.check_nonnegative(learning_rate=learning_rate)
  sign = -1 if flip_sign else 1

  def scale(lr):
    def leaf(u):
      cd = numerics.compute_dtype(u.dtype)
      return (u.astype(cd) * (sign * numerics.hyper(lr, cd))).astype(u.dtype)

    return leaf

  if callable(learning_rate):

    def init_fn(params):
      del params
      return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
      del params
      lr = learning_rate(state.count)
      new_state = optax.ScaleByScheduleState(count=numerics.safe_increment(state.count))
      return jax.tree.map(scale(lr), updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(scale(learning_rate), updates), state

  return optax.GradientTransformation(init_fn, update_fn)
