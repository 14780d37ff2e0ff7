"""``adam8bit`` and ``adamw8bit``: Adam with blockwise 8-bit moments.

Chains like every alias in :mod:`adam_jax.aliases`:

    [negate if maximize] -> [coupled L2] -> scale_by_adam8bit -> [decoupled decay] -> -lr
"""

from __future__ import annotations

from typing import Any

import optax

from adam_jax import numerics
from adam_jax.aliases import _chain
from adam_jax.quantization import scale_by_adam8bit

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
                           min_quantized_size=min_quantized_size, nesterov=nesterov)
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

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adamw8bit(1e-3, weight_decay=1e-2)
    >>> state = tx.init({"w": jnp.zeros((128, 64)), "b": jnp.zeros(64)})
    >>> state[0].mu["w"].dtype, state[0].mu_scale["w"].shape, state[0].mu["b"].dtype
    (dtype('uint8'), (32,), dtype('float32'))

  References:
    Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise
    Quantization <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.

    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  core = scale_by_adam8bit(b1, b2, eps, eps_root, block_size=block_size,
                           min_quantized_size=min_quantized_size, nesterov=nesterov)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=True,
                mask=mask, maximize=maximize)


__all__ = ["adam8bit", "adamw8bit"]
