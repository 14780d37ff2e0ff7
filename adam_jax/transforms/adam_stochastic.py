"""``scale_by_adam_stochastic``: Adam with bfloat16 moments written by stochastic rounding."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from adam_jax import _numerics as numerics
from adam_jax.transforms._common import adam_leaf, check_float_leaves, map_leaves, zeros_like

Array = jax.Array


class ScaleByAdamStochasticState(NamedTuple):
  """State of :func:`scale_by_adam_stochastic`.

  optax's ``ScaleByAdamState`` fields (``count``, ``mu``, ``nu``), and one more,
  the noise ``seed``: a class of its own.
  """

  count: Array  # shape=(), dtype=int32; steps taken, saturating
  mu: optax.Updates  # like params; dtype bfloat16
  nu: optax.Updates  # like params; dtype bfloat16
  seed: Array  # shape=(), dtype=uint32; seeds the rounding noise


def _mix32(x: Array) -> Array:
  """MurmurHash3's 32-bit finalizer: every input bit flips each output bit w.p. ~1/2."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _noise16(shape: tuple[int, ...], stream: Array) -> Array:
  """16 pseudo-random bits per element, a counter-based hash of (index, stream).

  Elementwise integer arithmetic that XLA fuses into the update; a PRNG such as
  threefry costs more than the whole Adam step on CPU.
  """
  index = jax.lax.iota(jnp.uint32, max(1, int(np.prod(shape, dtype=np.int64))))
  index = index[: int(np.prod(shape, dtype=np.int64))].reshape(shape)
  return _mix32(index * jnp.uint32(0x9E3779B1) + stream) >> 16


def _stochastic_round_bf16(x: Array, noise: Array) -> Array:
  """Rounds float32 ``x`` to bfloat16 up or down with probability by distance.

  bfloat16 is the upper half of a float32: adding uniform 16-bit ``noise`` to the
  lower half and truncating rounds up with probability equal to the dropped
  fraction, so the rounding is unbiased in expectation.
  """
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  finite = jnp.isfinite(x)
  rounded = jnp.where(finite, (bits + noise) & jnp.uint32(0xFFFF0000), bits)
  return jax.lax.bitcast_convert_type(rounded, jnp.float32).astype(jnp.bfloat16)


def scale_by_adam_stochastic(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    *,
    seed: ArrayLike = 0,
) -> optax.GradientTransformation:
  r"""Adam's rescaling with bfloat16 moments written by stochastic rounding.

  The step is :func:`adam_jax.scale_by_adam`'s, in float32; only the write of
  :math:`m_t, v_t` to bfloat16 differs. Round-to-nearest (``scale_by_adam(...,
  mu_dtype=bfloat16, nu_dtype=bfloat16)``) loses every increment smaller than
  half a bfloat16 step: with ``b2 = 0.999`` the second moment moves by 0.1% per
  step, below bfloat16's 0.4% resolution, so it stalls. Stochastic rounding
  rounds up with probability equal to the dropped fraction and keeps the moments
  unbiased:

  .. math::

    \mathrm{sr}(x) = \lfloor x \rfloor_{bf16} + \delta\,\mathrm{ulp}(x), \qquad
    \delta \sim \mathrm{Bernoulli}\left(\frac{x - \lfloor x \rfloor_{bf16}}{\mathrm{ulp}(x)}\right)

  The noise is a hash of the element's index, the leaf, the moment, the step
  and ``seed``: runs are deterministic given ``seed``.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    seed: seeds the rounding noise (an integer; may be a traced value).

  Returns:
    An ``optax.GradientTransformation`` with state :class:`ScaleByAdamStochasticState`.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.scale_by_adam_stochastic(seed=1)
    >>> state = tx.init({"w": jnp.zeros(3)})
    >>> state.mu["w"].dtype, state.seed.dtype
    (dtype(bfloat16), dtype('uint32'))

  References:
    Gupta, Agrawal, Gopalakrishnan & Narayanan, `Deep Learning with Limited
    Numerical Precision <https://arxiv.org/abs/1502.02551>`_, ICML 2015.

    Zamirai, Zhang, Aberger & De Sa, `Revisiting BFloat16 Training
    <https://arxiv.org/abs/2010.06192>`_, 2020.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(eps=eps, eps_root=eps_root)

  def init_fn(params):
    check_float_leaves(params, "adam_jax.scale_by_adam_stochastic")
    zeros = lambda p: zeros_like(p, jnp.bfloat16)  # sharded like p
    return ScaleByAdamStochasticState(
        count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params),
        nu=jax.tree.map(zeros, params),
        seed=jnp.asarray(seed).astype(jnp.uint32))

  def update_fn(updates, state, params=None):
    del params
    numerics.tree_check_same_structure(updates, state.mu)
    count = numerics.safe_increment(state.count)
    step = _mix32(state.seed ^ _mix32(count.astype(jnp.uint32)))
    # Two noise streams per leaf, numbered in leaf order.
    index = jax.tree.unflatten(jax.tree.structure(updates),
                               range(len(jax.tree.leaves(updates))))

    def leaf(g, m, v, i):
      u, m_new, v_new, _ = adam_leaf(g.astype(jnp.float32), m.astype(jnp.float32),
                                     v.astype(jnp.float32), None, count, b1=b1, b2=b2,
                                     eps=eps, eps_root=eps_root, nesterov=False)
      mu_stream, nu_stream = (_mix32(step + jnp.uint32(2 * i + k)) for k in (0, 1))
      return (u.astype(g.dtype), _stochastic_round_bf16(m_new, _noise16(m_new.shape, mu_stream)),
              _stochastic_round_bf16(v_new, _noise16(v_new.shape, nu_stream)))

    u, mu, nu = map_leaves(leaf, updates, state.mu, state.nu, index, num_outputs=3)
    return u, ScaleByAdamStochasticState(count=count, mu=mu, nu=nu, seed=state.seed)

  return optax.GradientTransformation(init_fn, update_fn)


__all__ = ["ScaleByAdamStochasticState", "scale_by_adam_stochastic"]
