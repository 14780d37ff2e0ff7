"""The familiar optimizer names, each a chain of the transformations.

Every alias is

    [negate if maximize] -> [coupled L2] -> scale_by_* -> [decoupled decay] -> -learning_rate

Positional parameters follow optax's order, so a call that works with ``optax.X``
works unchanged with ``adam_jax.X``. Every numeric hyperparameter may be a traced
JAX array (vmap over learning rates, betas, eps, weight decay) or, for the
learning rate and weight decay, a schedule.
"""

from __future__ import annotations

from typing import Any

import optax

from adam_jax import numerics
from adam_jax.transforms.adam import scale_by_adam
from adam_jax.transforms.learning_rate import scale_by_learning_rate
from adam_jax.transforms.variants import scale_by_adamax, scale_by_belief, scale_by_radam
from adam_jax.transforms.weight_decay import add_weight_decay

ScalarOrSchedule = numerics.ScalarOrSchedule


def _is_zero(value: Any) -> bool:
  """True for a concrete scalar zero (a decay that can be left out of the chain)."""
  return isinstance(value, (int, float)) and value == 0


def _chain(
    core: optax.GradientTransformation,
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule,
    decoupled: bool,
    mask: Any,
    maximize: bool,
) -> optax.GradientTransformation:
  numerics.check_nonnegative(learning_rate=learning_rate, weight_decay=weight_decay)
  links = []
  if maximize:
    links.append(optax.scale(-1.0))
  decay = None if _is_zero(weight_decay) else add_weight_decay(weight_decay, mask)
  if decay is not None and not decoupled:
    links.append(decay)
  links.append(core)
  if decay is not None and decoupled:
    links.append(decay)
  links.append(scale_by_learning_rate(learning_rate))
  return optax.chain(*links)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    *,
    nu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    amsgrad: bool = False,
    nesterov: bool = False,
    maximize: bool = False,
    fused: bool | None = None,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""Adam, as ``torch.optim.Adam``: weight decay (if any) is coupled L2.

  .. math::

    g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
    \theta_t &= \theta_{t-1} - \eta_t \, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)

  with :math:`\hat m_t, \hat v_t` from :func:`adam_jax.scale_by_adam`.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment; default the param's dtype.
    nu_dtype: dtype of the second moment; default the param's dtype.
    weight_decay: coupled L2 coefficient :math:`\lambda` (torch's ``weight_decay``).
    amsgrad: use AMSGrad's running maximum (torch's convention).
    nesterov: use Nesterov momentum (NAdam).
    maximize: ascend the objective instead of descending (torch's ``maximize``).
    fused: use the multi-tensor engine (:mod:`adam_jax.fused`); off by default
      (measured slower so far), ``False``/``None`` is the per-leaf path. Same numbers.
    mask: which params get weight decay (pytree of bools or callable).

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, adam_jax
    >>> params = {"w": jnp.array([1.0, -1.0])}
    >>> tx = adam_jax.adam(1e-1)
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([ 0.9, -0.9], dtype=float32)

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.
  """
  core = scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype,
                       amsgrad=amsgrad, nesterov=nesterov, fused=fused)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=False,
                mask=mask, maximize=maximize)


def adamw(
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
    amsgrad: bool = False,
    nesterov: bool = False,
    maximize: bool = False,
    fused: bool | None = None,
) -> optax.GradientTransformation:
  r"""AdamW: Adam with decoupled weight decay, as ``torch.optim.AdamW`` and optax.

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \left(\hat m_t / (\sqrt{\hat v_t +
    \epsilon_{root}} + \epsilon) + \lambda \theta_{t-1}\right)

  .. warning::
    The default ``weight_decay`` is optax's ``1e-4``; ``torch.optim.AdamW``
    defaults to ``1e-2``. The decay is multiplied by the learning rate (torch and
    optax), unlike the paper's separate schedule multiplier.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment; default the param's dtype.
    weight_decay: decoupled decay coefficient :math:`\lambda`.
    mask: which params decay (pytree of bools or callable).
    nu_dtype: dtype of the second moment; default the param's dtype.
    amsgrad: use AMSGrad's running maximum (torch's convention).
    nesterov: use Nesterov momentum (NAdamW).
    maximize: ascend the objective instead of descending.
    fused: use the multi-tensor engine (:mod:`adam_jax.fused`); off by default
      (measured slower so far), ``False``/``None`` is the per-leaf path. Same numbers.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adamw(1e-3, weight_decay=1e-2)
    >>> state = tx.init({"w": jnp.zeros(3)})

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  core = scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype,
                       amsgrad=amsgrad, nesterov=nesterov, fused=fused)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=True,
                mask=mask, maximize=maximize)


def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    *,
    nu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    maximize: bool = False,
    fused: bool | None = None,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""AMSGrad, as ``torch.optim.Adam(amsgrad=True)``.

  .. math::

    v^{max}_t = \max(v^{max}_{t-1}, v_t), \qquad
    \theta_t = \theta_{t-1} - \eta_t \, \hat m_t / (\sqrt{v^{max}_t / (1 - \beta_2^t)} + \epsilon)

  .. warning::
    The maximum is taken over the raw second moment and then bias-corrected
    (torch, Reddi et al.); ``optax.amsgrad`` takes it over the bias-corrected one.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the second moment and its maximum.
    weight_decay: coupled L2 coefficient.
    maximize: ascend the objective instead of descending.
    fused: use the multi-tensor engine (:mod:`adam_jax.fused`); off by default
      (measured slower so far), ``False``/``None`` is the per-leaf path. Same numbers.
    mask: which params get weight decay.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.amsgrad(0.1, b2=0.5)
    >>> params = jnp.zeros(1)
    >>> state = tx.init(params)
    >>> for g in (1.0, 0.1):  # a large gradient, then a small one
    ...   updates, state = tx.update(jnp.array([g]), state, params)
    >>> state[0].nu.tolist(), state[0].nu_max.tolist()  # v_2 and max(v_1, v_2)
    ([0.2549999952316284], [0.5])
    >>> [round(u, 4) for u in updates.tolist()]  # adam_jax.adam's step would be -0.0903
    [-0.0645]

  References:
    Reddi, Kale & Kumar, `On the Convergence of Adam and Beyond
    <https://openreview.net/forum?id=ryQu7f-RZ>`_, ICLR 2018.
  """
  return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype,
              weight_decay=weight_decay, amsgrad=True, maximize=maximize, mask=mask,
              fused=fused)


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    *,
    nu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    maximize: bool = False,
    fused: bool | None = None,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""NAdam as optax defines it: Adam with Nesterov momentum.

  .. math::

    g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2 \\
    \hat m_t &= \beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1) g_t / (1 - \beta_1^t),
    \qquad \hat v_t = v_t / (1 - \beta_2^t) \\
    \theta_t &= \theta_{t-1} - \eta_t \, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)

  with the coupled L2 term :math:`\lambda` = ``weight_decay`` (0 by default).

  .. warning::
    ``torch.optim.NAdam`` also applies a momentum-decay schedule
    (``momentum_decay=4e-3``); this is optax's form, without it.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the second moment.
    weight_decay: coupled L2 coefficient.
    maximize: ascend the objective instead of descending.
    fused: use the multi-tensor engine (:mod:`adam_jax.fused`); off by default
      (measured slower so far), ``False``/``None`` is the per-leaf path. Same numbers.
    mask: which params get weight decay.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.nadam(0.1)
    >>> params = jnp.zeros(3)
    >>> updates, _ = tx.update(jnp.array([1.0, -2.0, 0.5]), tx.init(params), params)
    >>> [round(u, 4) for u in updates.tolist()]  # -lr (1 + b1 / (1 + b1)) sign(g) at t = 1
    [-0.1474, 0.1474, -0.1474]

  References:
    Dozat, `Incorporating Nesterov Momentum into Adam
    <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.
  """
  return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype,
              weight_decay=weight_decay, nesterov=True, maximize=maximize, mask=mask,
              fused=fused)


def nadamw(
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
    fused: bool | None = None,
) -> optax.GradientTransformation:
  r"""NAdamW: :func:`nadam` with decoupled weight decay, as ``optax.nadamw``.

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2 \\
    \hat m_t &= \beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1) g_t / (1 - \beta_1^t),
    \qquad \hat v_t = v_t / (1 - \beta_2^t) \\
    \theta_t &= \theta_{t-1} - \eta_t \left(\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}}
    + \epsilon) + \lambda \theta_{t-1}\right)

  The decay is multiplied by the learning rate, as in :func:`adamw`.

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
    fused: use the multi-tensor engine (:mod:`adam_jax.fused`); off by default
      (measured slower so far), ``False``/``None`` is the per-leaf path. Same numbers.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.nadamw(0.1, weight_decay=0.5)
    >>> params = jnp.array([1.0, -1.0])
    >>> updates, _ = tx.update(jnp.array([1.0, 1.0]), tx.init(params), params)
    >>> [round(u, 4) for u in updates.tolist()]  # -lr (1.4737 sign(g) + 0.5 params)
    [-0.1974, -0.0974]

  References:
    Dozat, `Incorporating Nesterov Momentum into Adam
    <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.

    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  return adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask,
               nu_dtype=nu_dtype, nesterov=True, maximize=maximize, fused=fused)


def radam(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    threshold: Any = 5.0,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    fused: bool | None = None,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""RAdam with ``torch.optim.RAdam``'s update (see :func:`adam_jax.scale_by_radam`).

  .. math::

    g_t &\leftarrow g_t + \lambda \theta_{t-1} \quad \text{(coupled, the default)} \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2, \qquad \hat m_t = m_t / (1 - \beta_1^t) \\
    \rho_\infty &= 2 / (1 - \beta_2) - 1, \qquad
    \rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t), \qquad
    r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
                     {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
    u_t &= \begin{cases}
      \hat m_t \, r_t \sqrt{1 - \beta_2^t} / (\sqrt{v_t + \epsilon_{root}} + \epsilon)
        & \rho_t > \text{threshold} \\
      \hat m_t & \text{otherwise}
    \end{cases} \\
    \theta_t &= \theta_{t-1} - \eta_t u_t
    \quad \left(\text{decoupled: } \theta_t = \theta_{t-1} - \eta_t (u_t + \lambda \theta_{t-1})
    \right)

  ``eps`` sits on :math:`\sqrt{v_t}` before the bias correction, as in torch. With
  :math:`\beta_2 = 0.999` the first five steps are SGD with momentum
  (:math:`\rho_t \le 5`).

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{v_t}` (torch's placement).
    eps_root: added inside the square root.
    threshold: :math:`\rho_t` above which the adaptive step is used (torch: 5).
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the second moment.
    weight_decay: weight decay coefficient.
    decoupled_weight_decay: decoupled (AdamW-style) rather than coupled L2,
      as torch's ``decoupled_weight_decay``.
    maximize: ascend the objective instead of descending.
    fused: use the multi-tensor engine (:mod:`adam_jax.fused`); off by default
      (measured slower so far), ``False``/``None`` is the per-leaf path. Same numbers.
    mask: which params get weight decay.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.radam(0.1)
    >>> params = jnp.zeros(3)
    >>> updates, _ = tx.update(jnp.array([1.0, -2.0, 0.5]), tx.init(params), params)
    >>> [round(u, 4) for u in updates.tolist()]  # rho_1 = 1 <= 5: -lr * m_hat = -lr * g
    [-0.1, 0.2, -0.05]

  References:
    Liu et al., `On the Variance of the Adaptive Learning Rate and Beyond
    <https://arxiv.org/abs/1908.03265>`_, ICLR 2020.
  """
  core = scale_by_radam(b1, b2, eps, eps_root, threshold, mu_dtype, nu_dtype=nu_dtype,
                        fused=fused)
  return _chain(core, learning_rate, weight_decay=weight_decay,
                decoupled=decoupled_weight_decay, mask=mask, maximize=maximize)


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    maximize: bool = False,
    fused: bool | None = None,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""Adamax with ``torch.optim.Adamax``'s update (see :func:`adam_jax.scale_by_adamax`).

  .. math::

    g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    u^{\infty}_t &= \max(\beta_2 u^{\infty}_{t-1}, |g_t| + \epsilon) \\
    \theta_t &= \theta_{t-1} - \eta_t \, m_t / \left((1 - \beta_1^t)\, u^{\infty}_t\right)

  .. warning::
    ``eps`` is added to :math:`|g_t|` inside the maximum, as torch;
    ``optax.adamax`` adds it to the denominator.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the infinity norm, in [0, 1).
    eps: added to :math:`|g_t|` inside the maximum (torch's placement).
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the infinity norm.
    weight_decay: coupled L2 coefficient (torch's ``weight_decay``).
    maximize: ascend the objective instead of descending.
    fused: use the multi-tensor engine (:mod:`adam_jax.fused`); off by default
      (measured slower so far), ``False``/``None`` is the per-leaf path. Same numbers.
    mask: which params get weight decay.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adamax(0.1)
    >>> params = jnp.zeros(3)
    >>> updates, _ = tx.update(jnp.array([1.0, -2.0, 0.5]), tx.init(params), params)
    >>> [round(u, 4) for u in updates.tolist()]  # m_1 / (0.1 (|g| + eps)): -lr sign(g)
    [-0.1, 0.1, -0.1]

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, section 7.1, 2014.
  """
  core = scale_by_adamax(b1, b2, eps, mu_dtype, nu_dtype=nu_dtype, fused=fused)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=False,
                mask=mask, maximize=maximize)


def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    maximize: bool = False,
    fused: bool | None = None,
) -> optax.GradientTransformation:
  r"""Adamax with decoupled weight decay, as ``optax.adamaxw`` (up to ``eps``).

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    u^{\infty}_t &= \max(\beta_2 u^{\infty}_{t-1}, |g_t| + \epsilon) \\
    \theta_t &= \theta_{t-1} - \eta_t \left(m_t / \left((1 - \beta_1^t)\,
    u^{\infty}_t\right) + \lambda \theta_{t-1}\right)

  .. warning::
    ``eps`` is added to :math:`|g_t|` inside the maximum, as ``torch.optim.Adamax``
    (and :func:`adamax`); ``optax.adamaxw`` adds it to the denominator. The two
    agree when ``eps = 0``.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the infinity norm, in [0, 1).
    eps: added to :math:`|g_t|` inside the maximum (torch's placement).
    weight_decay: decoupled decay coefficient.
    mask: which params decay.
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the infinity norm.
    maximize: ascend the objective instead of descending.
    fused: use the multi-tensor engine (:mod:`adam_jax.fused`); off by default
      (measured slower so far), ``False``/``None`` is the per-leaf path. Same numbers.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adamaxw(0.1, weight_decay=0.5)
    >>> params = jnp.array([1.0, -1.0])
    >>> updates, _ = tx.update(jnp.array([1.0, 1.0]), tx.init(params), params)
    >>> [round(u, 4) for u in updates.tolist()]  # -lr (sign(g) + 0.5 params)
    [-0.15, -0.05]

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, section 7.1, 2014.

    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  core = scale_by_adamax(b1, b2, eps, mu_dtype, nu_dtype=nu_dtype, fused=fused)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=True,
                mask=mask, maximize=maximize)


def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-16,
    eps_root: Any = 1e-16,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    fused: bool | None = None,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""AdaBelief, as the paper and ``optax.adabelief`` (see :func:`adam_jax.scale_by_belief`).

  .. math::

    g_t &\leftarrow g_t + \lambda \theta_{t-1} \quad \text{(coupled, the default)} \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    s_t &= \beta_2 s_{t-1} + (1 - \beta_2) |g_t - m_t|^2 + \epsilon_{root} \\
    \hat m_t &= m_t / (1 - \beta_1^t), \qquad \hat s_t = s_t / (1 - \beta_2^t) \\
    \theta_t &= \theta_{t-1} - \eta_t \, \hat m_t / (\sqrt{\hat s_t} + \epsilon)
    \quad \left(\text{decoupled: } - \eta_t \lambda \theta_{t-1} \text{ added}\right)

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the belief moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added to the belief moment at every step.
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the belief moment.
    weight_decay: weight decay coefficient.
    decoupled_weight_decay: decoupled rather than coupled L2.
    maximize: ascend the objective instead of descending.
    fused: use the multi-tensor engine (:mod:`adam_jax.fused`); off by default
      (measured slower so far), ``False``/``None`` is the per-leaf path. Same numbers.
    mask: which params get weight decay.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adabelief(0.1)
    >>> params = jnp.zeros(3)
    >>> updates, _ = tx.update(jnp.array([1.0, -2.0, 0.5]), tx.init(params), params)
    >>> [round(u, 4) for u in updates.tolist()]  # s_1 holds (g - m_1)^2 = 0.81 g^2
    [-0.1111, 0.1111, -0.1111]

  References:
    Zhuang et al., `AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients <https://arxiv.org/abs/2010.07468>`_, NeurIPS 2020.
  """
  core = scale_by_belief(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, fused=fused)
  return _chain(core, learning_rate, weight_decay=weight_decay,
                decoupled=decoupled_weight_decay, mask=mask, maximize=maximize)
