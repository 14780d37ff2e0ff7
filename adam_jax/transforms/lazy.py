"""Lazy Adam (TensorFlow Addons' ``LazyAdam``): untouched embedding rows stay untouched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _numerics as numerics
from adam_jax._tree import key_name
from adam_jax.transforms._common import adam_leaf, moment_transform

Array = jax.Array


def embedding_mask(tree: Any) -> Any:
  """The default ``mask_fn``: leaves whose key path mentions ``embed`` (Flax's ``Embed``).

  Args:
    tree: the gradient (or params) tree.

  Returns:
    A pytree like ``tree`` of Python bools.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> adam_jax.embedding_mask({"Embed_0": {"embedding": jnp.zeros((5, 2))},
    ...                          "Dense_0": {"kernel": jnp.zeros((2, 3))}})
    {'Dense_0': {'kernel': False}, 'Embed_0': {'embedding': True}}
  """

  def is_embedding(path, leaf):
    del leaf
    return any("embed" in key_name(k).lower() for k in path)

  return jax.tree_util.tree_map_with_path(is_embedding, tree)


def _full_mask(mask_fn: Any, updates: Any) -> Any:
  """A tree of one bool per leaf of ``updates`` (a prefix mask is broadcast over subtrees)."""
  mask = mask_fn(updates) if callable(mask_fn) else mask_fn
  full = jax.tree.map(
      lambda m, sub: jax.tree.map(lambda _: m, sub), mask, updates,
      is_leaf=lambda x: isinstance(x, bool),
  )
  leaves = jax.tree.leaves(full)
  if not all(isinstance(m, bool) for m in leaves):
    raise ValueError(
        "lazy Adam's mask_fn must give a Python bool per leaf (True for embedding "
        f"tables), got {set(type(m).__name__ for m in leaves)}."
    )
  return full


def scale_by_lazy_adam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
    mask_fn: Callable[[Any], Any] | Any | None = None,
) -> optax.GradientTransformation:
  r"""Adam that leaves the rows of embedding tables with a zero gradient untouched.

  For a leaf selected by ``mask_fn``, row :math:`r` (index along axis 0) is
  *active* at step :math:`t` when its gradient :math:`g_{t,r}` has a non-zero entry.
  Active rows take Adam's step (:func:`adam_jax.scale_by_adam`, with the global
  step :math:`t` in the bias corrections, as TensorFlow Addons); inactive rows keep
  :math:`m`, :math:`v` and give a zero update:

  .. math::

    (m_{t,r}, v_{t,r}, u_{t,r}) =
    \begin{cases}
      \text{Adam's step on row } r & \text{if } g_{t,r} \ne 0 \\
      (m_{t-1,r},\ v_{t-1,r},\ 0) & \text{otherwise}
    \end{cases}

  Dense Adam would keep moving a row whose token is absent from the batch (its
  momentum still decays into it); for large vocabularies lazy Adam is the usual
  choice. Leaves not selected get plain Adam.

  .. warning::
    TensorFlow Addons adds ``epsilon`` to :math:`\sqrt{v_t}` *before* bias
    correction (the paper's :math:`\hat\epsilon`); here, as in the rest of this
    library (and torch), it is added after. The two differ by a factor
    :math:`\sqrt{1 - \beta_2^t}` on ``eps`` only.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment; default the param's dtype.
    nu_dtype: dtype of the second moment; default the param's real dtype.
    mask_fn: which leaves are embedding tables: a callable of the gradient tree
      (as ``optax.masked``) or a pytree of bools; default :func:`embedding_mask`.

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByAdamState``
    (the same as :func:`adam_jax.scale_by_adam`'s).

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.scale_by_lazy_adam(mask_fn=lambda g: True)
    >>> table = jnp.zeros((3, 2))
    >>> state = tx.init(table)
    >>> u, state = tx.update(jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, -2.0]]), state)
    >>> u  # row 1 had no gradient: no update, no moment change
    Array([[ 1.,  0.],
           [ 0.,  0.],
           [ 0., -1.]], dtype=float32)

  References:
    TensorFlow Addons, ``tfa.optimizers.LazyAdam``.

    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(eps=eps, eps_root=eps_root)
  if mask_fn is None:
    mask_fn = embedding_mask

  def leaf(g, mu, nu, count, is_lazy):
    u, mu_new, nu_new, _ = adam_leaf(g, mu, nu, None, count, b1=b1, b2=b2, eps=eps,
                                     eps_root=eps_root, nesterov=False)
    if not is_lazy:
      return u, mu_new, nu_new
    # A row (index along axis 0) is active when any entry of its gradient is not 0.
    active = jnp.any(g != 0, axis=tuple(range(1, g.ndim)), keepdims=True)
    return (jnp.where(active, u, jnp.zeros_like(u)), jnp.where(active, mu_new, mu),
            jnp.where(active, nu_new, nu))

  return moment_transform(leaf, mu_dtype, nu_dtype,
                          leaf_options=lambda updates: _full_mask(mask_fn, updates),
                          who="adam_jax.scale_by_lazy_adam")


__all__ = ["embedding_mask", "scale_by_lazy_adam"]
