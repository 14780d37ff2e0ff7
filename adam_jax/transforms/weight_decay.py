"""``add_weight_decay``: coupled L2 (before Adam) or decoupled (after Adam)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_jax import _numerics as numerics

Array = jax.Array


class AddWeightDecayState(NamedTuple):
  """State of :func:`add_weight_decay` when the decay is a schedule."""

  count: Array  # shape=(), dtype=int32; steps taken, saturating


def add_weight_decay(
    weight_decay: numerics.ScalarOrSchedule = 0.0,
    mask: optax.MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Adds ``weight_decay * param`` to the updates.

  .. math::

    u_t \leftarrow u_t + \lambda_t \theta_{t-1}

  Where it stands in a chain decides what it means:

  * **before** :func:`scale_by_adam` it is coupled L2 regularisation, the gradient
    of :math:`\tfrac{\lambda}{2}\|\theta\|^2` added to the loss's gradient, as
    ``torch.optim.Adam(weight_decay=λ)``;
  * **after** :func:`scale_by_adam` (and before the learning rate) it is
    decoupled weight decay, as ``torch.optim.AdamW`` and ``optax.adamw``: the
    decay is multiplied by the learning rate but not rescaled by Adam.

  Args:
    weight_decay: :math:`\lambda` (>= 0): a float, an array broadcastable to every
      param, or a schedule (a callable of the step count, starting at 0).
    mask: which params decay: a pytree of bools with the params' structure (or a
      prefix of it), or a callable taking the params and returning one.

  Returns:
    An ``optax.GradientTransformation``. Its state is ``optax.EmptyState`` for a
    constant decay and :class:`AddWeightDecayState` for a schedule.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.add_weight_decay(0.1, mask={"w": True, "b": False})
    >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    >>> u, _ = tx.update({"w": jnp.zeros(2), "b": jnp.zeros(2)}, tx.init(params), params)
    >>> u["w"], u["b"]
    (Array([0.1, 0.1], dtype=float32), Array([0., 0.], dtype=float32))

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  numerics.check_nonnegative(weight_decay=weight_decay)
  scheduled = callable(weight_decay)

  def init_fn(params):
    del params
    if scheduled:
      return AddWeightDecayState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "add_weight_decay needs the params: call update(grads, state, params)."
      )
    numerics.tree_check_same_structure(updates, params, what="params")
    if scheduled:
      wd = weight_decay(state.count)
      state = AddWeightDecayState(count=numerics.safe_increment(state.count))
    else:
      wd = weight_decay

    def decay(u, p):
      cd = numerics.compute_dtype(u.dtype, p.dtype)
      return (u.astype(cd) + numerics.hyper(wd, cd) * p.astype(cd)).astype(u.dtype)

    if mask is None:
      return jax.tree.map(decay, updates, params), state
    mask_tree = numerics.mask_tree(mask, params)
    decayed = jax.tree.map(decay, updates, params)
    # Broadcast a prefix mask over each subtree, then pick leaf by leaf.
    full_mask = jax.tree.map(
        lambda m, sub: jax.tree.map(lambda _: m, sub), mask_tree, updates,
        is_leaf=lambda x: isinstance(x, bool),
    )
    return jax.tree.map(lambda m, d, u: d if m else u, full_mask, decayed, updates), state

  return optax.GradientTransformation(init_fn, update_fn)
