"""Cautious updates (Liang et al., 2024): drop the components that go against the gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adam_jax import _numerics as numerics

Array = jax.Array


def _cautious_leaf(u: Array, g: Array, flip_sign: bool) -> Array:
  cd = numerics.compute_dtype(u.dtype, g.dtype)
  u_c, g_c = u.astype(cd), g.astype(cd)
  agree = jnp.real(u_c * jnp.conj(g_c)) if jnp.iscomplexobj(u_c) else u_c * g_c
  # phi = 1[u * g > 0] (for descending updates, -u is the step: 1[u * g < 0])
  keep = agree < 0 if flip_sign else agree > 0
  rd = numerics.real_dtype(cd)
  # scale d / (nnz(phi) + 1), per leaf
  scale = jnp.asarray(u.size, rd) / (jnp.sum(keep, dtype=rd) + 1)
  out = jnp.where(keep, u_c * scale.astype(cd), jnp.zeros_like(u_c))
  return out.astype(u.dtype)


def cautious(
    tx: optax.GradientTransformation, *, flip_sign: bool = True
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps any optimizer so it only steps where its update agrees with the gradient.

  With :math:`u_t` the inner transformation's output for the gradient
  :math:`g_t`, per leaf of size :math:`d` (the paper's Algorithm, C-AdamW):

  .. math::

    \phi_t &= \mathbb{1}[u_t \odot g_t > 0] \\
    u_t &\leftarrow \frac{d}{\mathrm{nnz}(\phi_t) + 1}\, u_t \odot \phi_t

  The rescaling keeps the average step size when part of the update is dropped.
  The state is the inner transformation's state, unchanged: checkpoints of
  ``cautious(tx)`` and ``tx`` are interchangeable.

  Two ways to use it:

  * around a whole optimizer, ``cautious(adam_jax.adam(1e-3))``: its updates
    *descend* (they are ``-lr`` times the step), so agreement means
    :math:`u \odot g < 0` (``flip_sign=True``, the default). A decoupled weight
    decay inside the optimizer is then masked too.
  * around a ``scale_by_*`` transformation, ``cautious(scale_by_adam(),
    flip_sign=False)``, followed by weight decay and the learning rate: the
    paper's C-AdamW, where the decay is not masked (:func:`cautious_adamw`).

  .. warning::
    The mask and its :math:`d / (\mathrm{nnz} + 1)` rescaling are per leaf, as the
    released code does it per tensor; the paper's box writes them for the whole
    parameter vector. Components whose gradient is exactly 0 are dropped.

  Args:
    tx: the transformation whose updates are masked.
    flip_sign: ``tx``'s updates descend (an alias, ending with ``-lr``); set
      ``False`` for a ``scale_by_*`` transformation, whose output points along the
      gradient.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``tx``'s state (extra arguments
    of ``update`` are passed on to ``tx``).

  Examples:
    >>> import jax.numpy as jnp, optax, adam_jax
    >>> tx = adam_jax.cautious(optax.sgd(1.0, momentum=0.9))
    >>> state = tx.init(jnp.zeros(2))
    >>> _, state = tx.update(jnp.array([1.0, 1.0]), state)
    >>> u, state = tx.update(jnp.array([1.0, -0.5]), state)  # sgd's step: [-1.9, -0.4]
    >>> u  # the second component would go uphill; the first is scaled by 2 / (1 + 1)
    Array([-1.9,  0. ], dtype=float32)

  References:
    Liang, Chen, Liu & Liu, `Cautious Optimizers: Improving Training with One Line
    of Code <https://arxiv.org/abs/2411.16085>`_, 2024.
  """
  if not hasattr(tx, "init") or not hasattr(tx, "update"):
    raise ValueError(f"cautious needs an optax GradientTransformation, got {tx!r}")

  inner = optax.with_extra_args_support(tx)

  def update_fn(updates, state, params=None, **extra_args):
    u, state = inner.update(updates, state, params, **extra_args)
    numerics.tree_check_same_structure(u, updates, what="gradient")
    return jax.tree.map(lambda a, g: _cautious_leaf(a, g, flip_sign), u, updates), state

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


__all__ = ["cautious"]
