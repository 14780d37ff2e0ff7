"""Beyond the classics: schedule-free AdamW, ADOPT, Adam-mini, cautious AdamW, lazy Adam.

Each alias is a chain of the transformations in ``adam_jax.transforms``, like the
classic aliases: ``[negate if maximize] -> [coupled L2] -> scale_by_* -> [decoupled
decay] -> -learning_rate``. Schedule-free AdamW is the exception: its learning rate
weights the average, so it lives inside :func:`adam_jax.scale_by_schedule_free_adam`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from adam_jax import numerics
from adam_jax.aliases import _chain
from adam_jax.transforms.adam import scale_by_adam
from adam_jax.transforms.adam_mini import Partition, scale_by_adam_mini
from adam_jax.transforms.adopt import scale_by_adopt
from adam_jax.transforms.cautious import cautious
from adam_jax.transforms.lazy import scale_by_lazy_adam
from adam_jax.transforms.schedule_free import scale_by_schedule_free_adam

ScalarOrSchedule = numerics.ScalarOrSchedule


def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 2.5e-3,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    weight_decay: Any = 0.0,
    warmup_steps: Any = 0,
    mask: Any = None,
    *,
    nu_dtype: Any | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
  r"""Schedule-free AdamW: a constant learning rate, no decay schedule, averaged params.

  The paper's Algorithm 1 (:func:`adam_jax.scale_by_schedule_free_adam`), with
  :math:`y_t` the params the loop holds, :math:`g_t` the gradient there and
  :math:`z_1 = x_1 = y_1` the initial params:

  .. math::

    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    \gamma_t &= \gamma \sqrt{1 - \beta_2^t} \min(1, t / T_{warmup}) \\
    z_{t+1} &= z_t - \gamma_t g_t / (\sqrt{v_t} + \epsilon) - \gamma_t \lambda y_t \\
    c_{t+1} &= \gamma_t^2 / \textstyle\sum_{i=1}^t \gamma_i^2 \\
    x_{t+1} &= (1 - c_{t+1}) x_t + c_{t+1} z_{t+1} \\
    y_{t+1} &= (1 - \beta_1) z_{t+1} + \beta_1 x_{t+1}

  The updates move the params from :math:`y_t` to :math:`y_{t+1}`; with
  ``maximize`` the gradient is negated first. Train on the params the loop holds;
  evaluate :math:`x_t`, from :func:`adam_jax.schedule_free_eval_params`.

  Args:
    learning_rate: :math:`\gamma` (paper's default 2.5e-3; a constant is intended).
    b1: interpolation weight, in (0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{v_t}`.
    weight_decay: :math:`\lambda`, applied at the gradient point :math:`y_t`.
    warmup_steps: linear warm-up of :math:`\gamma_t` over this many steps.
    mask: which params decay (pytree of bools or callable).
    nu_dtype: dtype of the second moment.
    maximize: ascend the objective instead of descending.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs the params.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, adam_jax
    >>> tx = adam_jax.schedule_free_adamw(0.1, warmup_steps=5)
    >>> params = jnp.array([2.0, -3.0])
    >>> state = tx.init(params)
    >>> for _ in range(200):
    ...   updates, state = tx.update(jax.grad(lambda p: jnp.sum(p ** 2))(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(jnp.all(jnp.abs(adam_jax.schedule_free_eval_params(state, params)) < 0.05))
    True

  References:
    Defazio et al., `The Road Less Scheduled <https://arxiv.org/abs/2405.15682>`_,
    NeurIPS 2024.
  """
  core = scale_by_schedule_free_adam(learning_rate, b1, b2, eps, weight_decay=weight_decay,
                                     warmup_steps=warmup_steps, mask=mask, nu_dtype=nu_dtype)
  if maximize:
    return optax.chain(optax.scale(-1.0), core)
  return core


def adopt(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.9999,
    eps: Any = 1e-6,
    mu_dtype: Any | None = None,
    *,
    nu_dtype: Any | None = None,
    clipping: bool = True,
    weight_decay: ScalarOrSchedule = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""ADOPT: :math:`\theta_t = \theta_{t-1} - \eta_t m_t` with :func:`adam_jax.scale_by_adopt`'s
  :math:`m_t` (clipped, as the paper's final algorithm, by default).

  The first call only sets :math:`v_0 = g_0^2` (the ADOPT part of its update is 0);
  then, for :math:`t = 1, 2, \dots`:

  .. math::

    g_t &\leftarrow g_t + \lambda \theta_{t-1} \quad \text{(coupled, the default)} \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\,
           \mathrm{clip}\!\left(g_t / \max(\sqrt{v_{t-1}}, \epsilon),\ t^{1/4}\right) \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    \theta_t &= \theta_{t-1} - \eta_t m_t
    \quad \left(\text{decoupled: } \theta_t = \theta_{t-1} - \eta_t (m_t + \lambda
    \theta_{t-1})\right)

  ``clipping=False`` drops the clip (the paper's Algorithm 1). ``eps`` is a floor
  on :math:`\sqrt{v_{t-1}}`, not added to it.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1) (any value converges).
    eps: floor on :math:`\sqrt{v_{t-1}}` (> 0).
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the second moment.
    clipping: clip the normalised gradient to :math:`\pm t^{1/4}`.
    weight_decay: weight decay coefficient.
    decoupled_weight_decay: decoupled (AdamW-style) rather than coupled L2.
    maximize: ascend the objective instead of descending.
    mask: which params get weight decay.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adopt(1e-3, b2=0.5)
    >>> state = tx.init({"w": jnp.zeros(3)})

  References:
    Taniguchi et al., `ADOPT: Modified Adam Can Converge with Any β2 with the
    Optimal Rate <https://arxiv.org/abs/2411.02853>`_, NeurIPS 2024.
  """
  core = scale_by_adopt(b1, b2, eps, mu_dtype, nu_dtype=nu_dtype, clipping=clipping)
  return _chain(core, learning_rate, weight_decay=weight_decay,
                decoupled=decoupled_weight_decay, mask=mask, maximize=maximize)


def adam_mini(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nu_dtype: Any | None = None,
    partition: Partition | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
  r"""Adam-mini with decoupled weight decay (the paper's AdamW form).

  For each element :math:`i` of a block :math:`b` (see
  :func:`adam_jax.adam_mini_partition`):

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    v_{t,b} &= \beta_2 v_{t-1,b} + (1 - \beta_2)\, \mathrm{mean}_{j \in b}(g_{t,j}^2) \\
    \theta_{t,i} &= \theta_{t-1,i} - \eta_t \left(\frac{m_{t,i} / (1 - \beta_1^t)}
                 {\sqrt{v_{t,b} / (1 - \beta_2^t) + \epsilon_{root}} + \epsilon}
                 + \lambda \theta_{t-1,i}\right)

  See :func:`adam_jax.scale_by_adam_mini`.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the block second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment.
    weight_decay: decoupled decay coefficient (default as :func:`adam_jax.adamw`).
    mask: which params decay.
    nu_dtype: dtype of the block second moment.
    partition: ``partition(path, shape) -> axes``; default the module's rule.
    maximize: ascend the objective instead of descending.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adam_mini(1e-3)
    >>> state = tx.init({"kernel": jnp.zeros((64, 10)), "bias": jnp.zeros(10)})

  References:
    Zhang et al., `Adam-mini: Use Fewer Learning Rates To Gain More
    <https://arxiv.org/abs/2406.16793>`_, ICLR 2025.
  """
  core = scale_by_adam_mini(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype,
                            partition=partition)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=True,
                mask=mask, maximize=maximize)


def cautious_adamw(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nu_dtype: Any | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
  r"""C-AdamW: AdamW whose Adam step is masked by :func:`adam_jax.cautious`.

  .. math::

    u_t &= \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon), \qquad
    \phi_t = \mathbb{1}[u_t \odot g_t > 0] \\
    \theta_t &= \theta_{t-1} - \eta_t \left(\frac{d}{\mathrm{nnz}(\phi_t) + 1}\,
                u_t \odot \phi_t + \lambda \theta_{t-1}\right)

  The weight decay is not masked (the paper's C-AdamW).

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment.
    weight_decay: decoupled decay coefficient.
    mask: which params decay.
    nu_dtype: dtype of the second moment.
    maximize: ascend the objective instead of descending.

  Returns:
    An ``optax.GradientTransformation`` (its state is :func:`adam_jax.adamw`'s).

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.cautious_adamw(1e-3, weight_decay=1e-2)
    >>> state = tx.init({"w": jnp.zeros(3)})

  References:
    Liang et al., `Cautious Optimizers: Improving Training with One Line of Code
    <https://arxiv.org/abs/2411.16085>`_, 2024.
  """
  core = cautious(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype),
                  flip_sign=False)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=True,
                mask=mask, maximize=maximize)


def lazy_adam(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    *,
    nu_dtype: Any | None = None,
    mask_fn: Callable[[Any], Any] | Any | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
  r"""Lazy Adam, as TensorFlow Addons' ``LazyAdam``: see :func:`adam_jax.scale_by_lazy_adam`.

  Rows of the leaves selected by ``mask_fn`` (default: paths containing ``embed``)
  whose gradient is entirely zero keep their moments and params; other leaves get
  Adam. For row :math:`r` (index along axis 0) of a selected leaf:

  .. math::

    \theta_{t,r} = \begin{cases}
      \theta_{t-1,r} - \eta_t \, \hat m_{t,r} / (\sqrt{\hat v_{t,r} + \epsilon_{root}}
      + \epsilon) & \text{if } g_{t,r} \ne 0 \\
      \theta_{t-1,r} \quad (m_{t,r} = m_{t-1,r},\ v_{t,r} = v_{t-1,r}) & \text{otherwise}
    \end{cases}

  with Adam's moments and the global step :math:`t` in the bias corrections. There
  is no weight decay: it would move every row.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the second moment.
    mask_fn: callable of the gradient tree (or a pytree of bools) marking the
      embedding tables.
    maximize: ascend the objective instead of descending.

  Returns:
    An ``optax.GradientTransformation`` (its state is :func:`adam_jax.adam`'s).

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.lazy_adam(1e-3, mask_fn=lambda g: {"emb": True, "w": False})
    >>> state = tx.init({"emb": jnp.zeros((100, 8)), "w": jnp.zeros((8, 2))})

  References:
    TensorFlow Addons, ``tfa.optimizers.LazyAdam``.

    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.
  """
  core = scale_by_lazy_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, mask_fn=mask_fn)
  return _chain(core, learning_rate, weight_decay=0.0, decoupled=False, mask=None,
                maximize=maximize)


__all__ = ["adam_mini", "adopt", "cautious_adamw", "lazy_adam", "schedule_free_adamw"]
