"""Learning-rate schedules: optax's, re-exported, plus torch's familiar forms.

Step-count convention: a schedule is evaluated at the optimizer's count, which is
0 for the first update, just as ``torch.optim.lr_scheduler`` gives the initial
learning rate to the first ``optimizer.step()`` and advances once per
``scheduler.step()``. So ``schedule(k)`` is torch's learning rate after ``k``
calls to ``scheduler.step()``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax
from jax.typing import ArrayLike
from optax import (
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
)

from adam_jax import _numerics as numerics


def _float_count(schedule: optax.Schedule) -> optax.Schedule:
  """Evaluates ``schedule`` at a float32 count (valid under strict dtype promotion)."""
  return lambda count: schedule(jnp.asarray(count).astype(jnp.float32))


def step_decay(init_value: Any, step_size: int, gamma: Any = 0.1) -> optax.Schedule:
  r"""``torch.optim.lr_scheduler.StepLR``: multiply by ``gamma`` every ``step_size`` steps.

  .. math::

    \eta_k = \eta_0 \, \gamma^{\lfloor k / \text{step\_size} \rfloor}

  Args:
    init_value: :math:`\eta_0`, the initial learning rate (>= 0).
    step_size: number of steps between decays (> 0).
    gamma: multiplicative factor of each decay, in (0, 1].

  Returns:
    A schedule, a callable of the step count.

  Examples:
    >>> from adam_jax import schedules
    >>> s = schedules.step_decay(1.0, step_size=2, gamma=0.5)
    >>> [float(s(k)) for k in range(5)]
    [1.0, 1.0, 0.5, 0.5, 0.25]
  """
  numerics.check_nonnegative(init_value=init_value)
  if not isinstance(step_size, int) or step_size <= 0:
    raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
  numerics.check_range("gamma", gamma, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
  return optax.exponential_decay(
      init_value, transition_steps=step_size, decay_rate=gamma, staircase=True
  )


def exponential_lr(init_value: Any, gamma: Any) -> optax.Schedule:
  r"""``torch.optim.lr_scheduler.ExponentialLR``: :math:`\eta_k = \eta_0 \gamma^k`.

  The same as ``exponential_decay(init_value, transition_steps=1, decay_rate=gamma)``.

  Args:
    init_value: :math:`\eta_0` (>= 0).
    gamma: multiplicative factor per step, in (0, 1].

  Returns:
    A schedule, a callable of the step count.

  Examples:
    >>> from adam_jax import schedules
    >>> s = schedules.exponential_lr(1.0, gamma=0.5)
    >>> [float(s(k)) for k in range(4)]
    [1.0, 0.5, 0.25, 0.125]
  """
  numerics.check_nonnegative(init_value=init_value)
  numerics.check_range("gamma", gamma, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
  return optax.exponential_decay(init_value, transition_steps=1, decay_rate=gamma)


def cosine_annealing(init_value: Any, t_max: int, eta_min: Any = 0.0) -> optax.Schedule:
  r"""``torch.optim.lr_scheduler.CosineAnnealingLR`` over one half period.

  .. math::

    \eta_k = \eta_{min} + \tfrac{1}{2}(\eta_0 - \eta_{min})(1 + \cos(\pi k / T_{max}))

  for :math:`k \le T_{max}`, then :math:`\eta_{min}` (torch would start rising
  again; restart explicitly with :func:`sgdr_schedule` if that is wanted).

  Args:
    init_value: :math:`\eta_0` (> 0).
    t_max: :math:`T_{max}`, steps of the half period (> 0).
    eta_min: the final learning rate, in [0, init_value].

  Returns:
    A schedule, a callable of the step count.

  Examples:
    >>> from adam_jax import schedules
    >>> s = schedules.cosine_annealing(1.0, t_max=4)
    >>> [round(float(s(k)), 4) for k in range(6)]
    [1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]

  References:
    Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, ICLR 2017.
  """
  numerics.check_range("init_value", init_value, 0.0, None, low_inclusive=False)
  if not isinstance(t_max, int) or t_max <= 0:
    raise ValueError(f"t_max must be a positive integer, got {t_max!r}")
  numerics.check_range("eta_min", eta_min, 0.0, init_value, high_inclusive=True)
  return _float_count(
      optax.cosine_decay_schedule(init_value, decay_steps=t_max, alpha=eta_min / init_value)
  )


def warmup_cosine(
    peak_value: ArrayLike,
    warmup_steps: int,
    total_steps: int,
    init_value: ArrayLike = 0.0,
    end_value: ArrayLike = 0.0,
) -> optax.Schedule:
  r"""Linear warm-up from ``init_value`` to ``peak_value``, then cosine decay.

  With :math:`W` = ``warmup_steps`` and :math:`T` = ``total_steps``:

  .. math::

    \eta_k = \begin{cases}
      \eta_{init} + (\eta_{peak} - \eta_{init})\, k / W & k < W \\
      \eta_{end} + \tfrac{1}{2}(\eta_{peak} - \eta_{end})
        \left(1 + \cos\left(\pi \tfrac{k - W}{T - W}\right)\right) & W \le k \le T \\
      \eta_{end} & k > T
    \end{cases}

  The step count ``total_steps`` includes the warm-up, as in
  ``optax.warmup_cosine_decay_schedule`` (which this calls).

  Args:
    peak_value: learning rate at the end of the warm-up (>= 0).
    warmup_steps: length of the linear warm-up (>= 0).
    total_steps: warm-up plus decay (> warmup_steps).
    init_value: learning rate at step 0.
    end_value: learning rate after ``total_steps``.

  Returns:
    A schedule, a callable of the step count.

  Examples:
    >>> from adam_jax import schedules
    >>> s = schedules.warmup_cosine(1.0, warmup_steps=2, total_steps=6)
    >>> [round(float(s(k)), 4) for k in range(8)]
    [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]

  References:
    Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
    <https://arxiv.org/abs/1706.02677>`_, 2017 (warm-up); Loshchilov & Hutter,
    `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, ICLR 2017 (cosine decay).
  """
  numerics.check_nonnegative(peak_value=peak_value, init_value=init_value,
                             end_value=end_value)
  if total_steps <= warmup_steps:
    raise ValueError(
        f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})"
    )
  return _float_count(
      optax.warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, total_steps,
                                         end_value)
  )


__all__ = [
    "constant_schedule",
    "cosine_annealing",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "exponential_lr",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "step_decay",
    "warmup_constant_schedule",
    "warmup_cosine",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]
