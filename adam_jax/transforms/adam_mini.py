"""Adam-mini (Zhang et al., 2024): one second-moment value per parameter block.

The partition rule for Flax trees (:func:`adam_mini_partition`), by the leaf's key
path (lower-cased names) and shape:

=================================================  =====================================
leaf                                               one second-moment value per
=================================================  =====================================
scalar, 1-D (biases, norm scales), any ``bias``    leaf
path containing ``embed`` (``nnx.Embed``, linen)   token (row): mean over axes 1..n-1
3-D ``query`` / ``key`` kernel                     head: ``(features, heads, head_dim)``
  (``MultiHeadAttention``, ``DenseGeneral``)         averaged over axes 0 and 2
3-D ``value`` kernel                               output neuron ``(head, dim)``: axis 0
any other n-D kernel (Dense ``(in, out)``, conv    output neuron (last axis): mean over
``(h, w, in, out)``, attention ``out``)              axes 0..n-2
=================================================  =====================================

This follows the paper's rule for Transformers (query and key by heads; value,
attention output and MLP by output neurons; embeddings by tokens). Pass your own
``partition(path, shape) -> axes`` to change it; ``()`` gives that leaf Adam's
per-element second moment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _numerics as numerics
from adam_jax._tree import key_name
from adam_jax.transforms._common import (
  ScaleByAdamState,
  abs_sq,
  check_float_leaves,
  map_leaves,
  zeros_like,
)

Array = jax.Array
Partition = Callable[[tuple, tuple], Sequence[int]]


def adam_mini_partition(path: tuple, shape: tuple) -> tuple[int, ...]:
  """The default block rule: the axes averaged into one second-moment value.

  Args:
    path: the leaf's key path (as ``jax.tree_util.tree_flatten_with_path`` gives).
    shape: the leaf's shape.

  Returns:
    A tuple of axes; the second moment keeps the other axes (the blocks).

  Examples:
    >>> import adam_jax
    >>> from jax.tree_util import DictKey as K
    >>> adam_jax.adam_mini_partition((K("Dense_0"), K("kernel")), (64, 10))
    (0,)
    >>> adam_jax.adam_mini_partition((K("Embed_0"), K("embedding")), (1000, 32))
    (1,)
    >>> adam_jax.adam_mini_partition((K("attn"), K("query"), K("kernel")), (32, 4, 8))
    (0, 2)
  """
  # nnx.State paths end in the Variable's ``.value`` attribute: not a name.
  names = [
      key_name(k).lower() for k in path
      if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value")
  ]
  ndim = len(shape)
  if ndim <= 1 or (names and names[-1] == "bias"):
    return tuple(range(ndim))
  if any("embed" in n for n in names):
    return tuple(range(1, ndim))
  if ndim == 3 and ("query" in names or "key" in names):
    return (0, 2)
  if ndim == 3 and "value" in names:
    return (0,)
  return tuple(range(ndim - 1))


def _block_shape(path: tuple, shape: tuple, partition: Partition) -> tuple[int, ...]:
  axes = tuple(partition(path, tuple(shape)))
  ndim = len(shape)
  if any((not isinstance(a, int)) or a < 0 or a >= ndim for a in axes) or len(set(axes)) != len(
      axes
  ):
    raise ValueError(
        f"adam_mini partition returned axes {axes} for the leaf at "
        f"{jax.tree_util.keystr(path)} of shape {tuple(shape)}: give distinct axes in "
        f"[0, {ndim})."
    )
  return tuple(1 if i in axes else n for i, n in enumerate(shape))


def adam_mini_block_shapes(params: Any, partition: Partition | None = None) -> Any:
  """The shape of each leaf's second moment under ``partition``.

  Args:
    params: a pytree of arrays (or of ``jax.ShapeDtypeStruct``: nothing is allocated).
    partition: ``partition(path, shape) -> axes``; default :func:`adam_mini_partition`.

  Returns:
    A pytree like ``params`` whose leaves are shape tuples.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> adam_jax.adam_mini_block_shapes({"kernel": jnp.zeros((64, 10)), "bias": jnp.zeros(10)})
    {'bias': (1,), 'kernel': (1, 10)}
  """
  partition = partition or adam_mini_partition
  return jax.tree_util.tree_map_with_path(
      lambda path, p: _block_shape(path, jnp.shape(p), partition), params
  )


def scale_by_adam_mini(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
    partition: Partition | None = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adam-mini: Adam with one second moment per block.

  For each block :math:`b` of a leaf (see the module's partition rule):

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    v_{t,b} &= \beta_2 v_{t-1,b} + (1 - \beta_2)\, \mathrm{mean}_{i \in b}(g_{t,i}^2) \\
    u_{t,i} &= \frac{m_{t,i} / (1 - \beta_1^t)}
               {\sqrt{v_{t,b} / (1 - \beta_2^t) + \epsilon_{root}} + \epsilon},
               \quad i \in b

  The second moment of a leaf is stored with the leaf's rank, size 1 along the
  averaged axes (a Dense ``(in, out)`` kernel keeps ``(1, out)``), so the state
  is about half of Adam's.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the block second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment; default the param's dtype.
    nu_dtype: dtype of the second moment; default the param's real dtype.
    partition: ``partition(path, shape) -> axes`` choosing the averaged axes of each
      leaf; default :func:`adam_mini_partition`.

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByAdamState`` (optax's
    class, Adam's fields) whose ``nu`` leaves have the block shapes, not the params'.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.scale_by_adam_mini()
    >>> state = tx.init({"kernel": jnp.zeros((64, 10))})
    >>> state.nu["kernel"].shape
    (1, 10)

  References:
    Zhang, Chen, Li, Zhang, Ding, Kingma, Ye, Luo & Sun, `Adam-mini: Use Fewer
    Learning Rates To Gain More <https://arxiv.org/abs/2406.16793>`_, ICLR 2025.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(eps=eps, eps_root=eps_root)
  if partition is not None and not callable(partition):
    raise ValueError(f"partition must be a callable (path, shape) -> axes, got {partition!r}")
  partition = partition or adam_mini_partition
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  nu_dtype = None if nu_dtype is None else jnp.dtype(nu_dtype)

  def init_fn(params):
    check_float_leaves(params, "adam_jax.scale_by_adam_mini")

    def mu0(p):
      return zeros_like(p, mu_dtype or jnp.result_type(p))

    def nu0(path, p):
      dtype = nu_dtype or numerics.real_dtype(jnp.asarray(p).dtype)
      return jnp.zeros(_block_shape(path, jnp.shape(p), partition), dtype)

    return ScaleByAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(mu0, params),
        nu=jax.tree_util.tree_map_with_path(nu0, params),
    )

  def update_fn(updates, state, params=None):
    del params
    count = numerics.safe_increment(state.count)

    def leaf(g, mu, nu):
      cd = numerics.compute_dtype(g.dtype, mu.dtype)
      rd = numerics.real_dtype(cd)
      g_c = g.astype(cd)
      b1_c, b2_r = numerics.hyper(b1, cd), numerics.hyper(b2, rd)
      # The averaged axes are those the block shape collapsed to 1.
      axes = tuple(i for i, n in enumerate(nu.shape) if n == 1)
      g_sq = abs_sq(g_c)
      if g.size:
        block_sq = jnp.mean(g_sq, axis=axes, keepdims=True)
      else:
        block_sq = jnp.zeros(nu.shape, rd)
      mu_c = b1_c * mu.astype(cd) + (1 - b1_c) * g_c
      nu_c = b2_r * nu.astype(rd) + (1 - b2_r) * block_sq.reshape(nu.shape)
      bc1 = numerics.bias_correction(b1, count, rd)
      bc2 = numerics.bias_correction(b2, count, rd)
      denom = jnp.sqrt(nu_c / bc2 + numerics.hyper(eps_root, rd)) + numerics.hyper(eps, rd)
      update = (mu_c / bc1.astype(cd)) / denom.astype(cd)
      return update.astype(g.dtype), mu_c.astype(mu.dtype), nu_c.astype(nu.dtype)

    u, mu, nu = map_leaves(leaf, updates, state.mu, state.nu, num_outputs=3)
    return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


__all__ = ["adam_mini_block_shapes", "adam_mini_partition", "scale_by_adam_mini"]
