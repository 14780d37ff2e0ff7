"""Low-precision Adam: ``adam8bit`` / ``adamw8bit`` and bfloat16 moments with stochastic rounding.

The 8-bit aliases chain like every alias in :mod:`adam_jax.aliases`:

    [negate if maximize] -> [coupled L2] -> scale_by_adam8bit -> [decoupled decay] -> -lr

:func:`scale_by_adam_stochastic` is :func:`adam_jax.scale_by_adam` with bfloat16
moments written by stochastic rounding instead of round-to-nearest-even.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import numerics
from adam_jax.aliases import _chain
from adam_jax.quantization import scale_by_adam8bit
from adam_jax.transforms.adam import adam_leaf, zeros_like

Array = jax.Array

ScalarOrSchedule = numerics.ScalarOrSchedule


def adam8bit(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    eps_root: Any = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    block_size: int = 256,
    min_quantized_size: int = 4096,
    nesterov: bool = False,
    maximize: bool = False,
    mask: Any = None,
    native: bool | None = None,
) -> optax.GradientTransformation:
  r"""Adam (coupled L2, as ``torch.optim.Adam``) with 8-bit blockwise moments.

  .. math::

    g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
    \theta_t &= \theta_{t-1} - \eta_t \, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)

  with :math:`\hat m_t, \hat v_t` from :func:`adam_jax.scale_by_adam8bit`, which
  stores both moments as one byte per element plus a float32 scale per block:
  about 2 bytes of state per parameter instead of 8.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    weight_decay: coupled L2 coefficient :math:`\lambda` (torch's ``weight_decay``).
    block_size: elements per quantization block.
    min_quantized_size: leaves with fewer elements keep float32 moments.
    nesterov: use Nesterov momentum (NAdam).
    maximize: ascend the objective instead of descending.
    mask: which params get weight decay (pytree of bools or callable).
    native: run the step as one hand-written CPU kernel (see
      :func:`adam_jax.scale_by_adam8bit`); ``None``: whenever it is available.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, adam_jax
    >>> params = {"w": jnp.array([1.0, -1.0])}
    >>> tx = adam_jax.adam8bit(1e-1, min_quantized_size=0)
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([ 0.9, -0.9], dtype=float32)

  References:
    Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise
    Quantization <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.
  """
  core = scale_by_adam8bit(b1, b2, eps, eps_root, block_size=block_size,
                           min_quantized_size=min_quantized_size, nesterov=nesterov,
                           native=native)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=False,
                mask=mask, maximize=maximize)


def adamw8bit(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    eps_root: Any = 0.0,
    weight_decay: ScalarOrSchedule = 1e-4,
    block_size: int = 256,
    min_quantized_size: int = 4096,
    nesterov: bool = False,
    maximize: bool = False,
    mask: Any = None,
    native: bool | None = None,
) -> optax.GradientTransformation:
  r"""AdamW (decoupled weight decay, as ``torch.optim.AdamW``) with 8-bit moments.

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \left(\hat m_t / (\sqrt{\hat v_t +
    \epsilon_{root}} + \epsilon) + \lambda \theta_{t-1}\right)

  with :math:`\hat m_t, \hat v_t` from :func:`adam_jax.scale_by_adam8bit`.

  .. warning::
    The default ``weight_decay`` is optax's ``1e-4`` (as :func:`adam_jax.adamw`);
    ``torch.optim.AdamW`` and bitsandbytes' ``AdamW8bit`` default to ``1e-2``.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    weight_decay: decoupled decay coefficient :math:`\lambda`.
    block_size: elements per quantization block.
    min_quantized_size: leaves with fewer elements keep float32 moments.
    nesterov: use Nesterov momentum (NAdamW).
    maximize: ascend the objective instead of descending.
    mask: which params decay (pytree of bools or callable).
    native: run the step as one hand-written CPU kernel (see
      :func:`adam_jax.scale_by_adam8bit`); ``None``: whenever it is available.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adamw8bit(1e-3, weight_decay=1e-2)
    >>> state = tx.init({"w": jnp.zeros((64, 512)), "b": jnp.zeros(512)})
    >>> state[0].mu["w"].shape, state[0].mu_scale["w"].shape, state[0].mu["b"].dtype
    ((64, 2, 256), (64, 2), dtype('float32'))

  References:
    Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise
    Quantization <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.

    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  core = scale_by_adam8bit(b1, b2, eps, eps_root, block_size=block_size,
                           min_quantized_size=min_quantized_size, nesterov=nesterov,
                           native=native)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=True,
                mask=mask, maximize=maximize)




class ScaleByAdamStochasticState(NamedTuple):
  """State of :func:`scale_by_adam_stochastic`."""

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
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    *,
    seed: Any = 0,
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
    zeros = lambda p: zeros_like(p, jnp.bfloat16)  # sharded like p
    return ScaleByAdamStochasticState(
        count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params),
        nu=jax.tree.map(zeros, params),
        seed=jnp.asarray(seed).astype(jnp.uint32))

  def update_fn(updates, state, params=None):
    del params
    numerics.tree_check_same_structure(updates, state.mu)
    count = numerics.safe_increment(state.count)
    g_leaves, treedef = jax.tree.flatten(updates)
    mu_leaves = treedef.flatten_up_to(state.mu)
    nu_leaves = treedef.flatten_up_to(state.nu)
    step = _mix32(state.seed ^ _mix32(count.astype(jnp.uint32)))
    streams = [_mix32(step + jnp.uint32(k)) for k in range(2 * len(g_leaves))]
    u, mu, nu = [], [], []
    for i, (g, m, v) in enumerate(zip(g_leaves, mu_leaves, nu_leaves)):
      ui, mi, vi, _ = adam_leaf(g.astype(jnp.float32), m.astype(jnp.float32),
                                v.astype(jnp.float32), None, count, b1=b1, b2=b2, eps=eps,
                                eps_root=eps_root, nesterov=False)
      u.append(ui.astype(g.dtype))
      mu.append(_stochastic_round_bf16(mi, _noise16(mi.shape, streams[2 * i])))
      nu.append(_stochastic_round_bf16(vi, _noise16(vi.shape, streams[2 * i + 1])))
    return treedef.unflatten(u), ScaleByAdamStochasticState(
        count=count, mu=treedef.unflatten(mu), nu=treedef.unflatten(nu),
        seed=state.seed)

  return optax.GradientTransformation(init_fn, update_fn)


__all__ = ["ScaleByAdamStochasticState", "adam8bit", "adamw8bit", "scale_by_adam_stochastic"]
