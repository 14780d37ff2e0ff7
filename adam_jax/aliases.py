"""Every alias: the familiar optimizer names, each a chain of the transformations.

Every alias is

    [negate if maximize] -> [coupled L2] -> scale_by_* -> [decoupled decay] -> -learning_rate

(schedule-free AdamW is the exception: its learning rate weights the average, so it
lives inside :func:`adam_jax.scale_by_schedule_free_adam`). Positional parameters
follow optax's order, so a call that works with ``optax.X`` works unchanged with
``adam_jax.X``. Every numeric hyperparameter may be a traced JAX array (vmap over
learning rates, betas, eps, weight decay) or, for the learning rate and weight
decay, a schedule. The state's structure depends only on which arguments are
given, never on their values, so ``optax.inject_hyperparams(alias)`` has the same
inner state as ``alias``.

Each alias is registered where it is defined: :func:`optimizers` lists them and
:func:`get_optimizer` returns one by name, for the command line, the tuning tools,
the benchmarks and the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.typing import ArrayLike

from adam_jax import _numerics as numerics
from adam_jax.transforms.adam import scale_by_adam
from adam_jax.transforms.adam8bit import scale_by_adam8bit
from adam_jax.transforms.adam_mini import Partition, scale_by_adam_mini
from adam_jax.transforms.adopt import scale_by_adopt
from adam_jax.transforms.cautious import cautious
from adam_jax.transforms.dadapt import scale_by_dadapt_adam, scale_by_prodigy
from adam_jax.transforms.lazy import scale_by_lazy_adam
from adam_jax.transforms.learning_rate import scale_by_learning_rate
from adam_jax.transforms.mechanic import mechanize
from adam_jax.transforms.schedule_free import scale_by_schedule_free_adam
from adam_jax.transforms.variants import scale_by_adamax, scale_by_belief, scale_by_radam
from adam_jax.transforms.weight_decay import add_weight_decay

ScalarOrSchedule = optax.ScalarOrSchedule

_REGISTRY: dict[str, Callable[..., optax.GradientTransformation]] = {}


def _register(factory: Callable[..., optax.GradientTransformation]):
  """Adds an alias to the registry under its function name."""
  _REGISTRY[factory.__name__] = factory
  return factory


def optimizers() -> tuple[str, ...]:
  """The names of every optimizer alias, sorted.

  Returns:
    A tuple of names, each accepted by :func:`get_optimizer`.

  Examples:
    >>> import adam_jax
    >>> "adamw" in adam_jax.optimizers(), "adam8bit" in adam_jax.optimizers()
    (True, True)
  """
  return tuple(sorted(_REGISTRY))


def get_optimizer(name: str) -> Callable[..., optax.GradientTransformation]:
  """The alias called ``name`` (for example ``"adamw"``): a factory of transformations.

  Args:
    name: one of :func:`optimizers`.

  Returns:
    The alias itself: ``get_optimizer("adamw")(1e-3, weight_decay=1e-2)`` is
    ``adamw(1e-3, weight_decay=1e-2)``.

  Raises:
    ValueError: for an unknown ``name``, listing the accepted ones.

  Examples:
    >>> import adam_jax
    >>> adam_jax.get_optimizer("nadamw") is adam_jax.nadamw
    True
  """
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    from adam_jax._names import did_you_mean

    raise ValueError(
        f"unknown optimizer {name!r}{did_you_mean(name, optimizers())}; expected one of: "
        f"{', '.join(optimizers())}") from None


def _optax_names(alias: str, ours: dict[str, tuple[Any, Any]],
                 theirs: dict[str, tuple[str, Any]]) -> dict[str, Any]:
  """Our hyperparameters, with optax.contrib's names for them resolved.

  ``ours`` maps each of our names to ``(value, default)``; ``theirs`` maps each of
  optax's names to ``(our name or names, value)``, the value ``None`` when not given.
  A value given under both names is refused (which one would win is a guess).
  """
  values = {name: value for name, (value, _) in ours.items()}
  for name in ("b1", "b2"):
    if name in ours and isinstance(values[name], (tuple, list)):
      raise TypeError(
          f"{alias}: {name} must be a number, got {values[name]!r}; optax.contrib's pair of "
          "decay rates is accepted as betas=(b1, b2)")
  for their_name, (our_names, value) in theirs.items():
    if value is None:
      continue
    if isinstance(our_names, str):
      our_names, value = (our_names,), (value,)
    elif not isinstance(value, (tuple, list)) or len(value) != len(our_names):
      raise TypeError(f"{alias}: {their_name} must be a pair {our_names}, got {value!r}")
    for name, v in zip(our_names, value):
      given, default = ours[name]
      if not (given is default or (isinstance(given, (int, float)) and given == default)):
        raise TypeError(
            f"{alias}: got both {their_name} (optax.contrib's name) and {name}; give one")
      values[name] = v
  return values


def _chain(
    core: optax.GradientTransformation,
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule,
    decoupled: bool,
    mask: optax.MaskOrFn,
    maximize: bool,
) -> optax.GradientTransformation:
  numerics.check_nonnegative(learning_rate=learning_rate)
  links = []
  if maximize:
    links.append(optax.scale(-1.0))
  # Left out only when not given: never decided by the value, which may be traced
  # (optax.inject_hyperparams), so the state's structure depends on the arguments only.
  decay = None if weight_decay is None else add_weight_decay(weight_decay, mask)
  if decay is not None and not decoupled:
    links.append(decay)
  links.append(core)
  if decay is not None and decoupled:
    links.append(decay)
  links.append(scale_by_learning_rate(learning_rate))
  return optax.chain(*links)


@_register
def adam(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    amsgrad: bool = False,
    nesterov: bool = False,
    maximize: bool = False,
    mask: optax.MaskOrFn = None,
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
      ``None`` (default): no decay term (a ``0.0`` given keeps a zero one).
    amsgrad: use AMSGrad's running maximum (torch's convention).
    nesterov: use Nesterov momentum (NAdam).
    maximize: ascend the objective instead of descending (torch's ``maximize``).
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
                       amsgrad=amsgrad, nesterov=nesterov)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=False,
                mask=mask, maximize=maximize)


@_register
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: optax.MaskOrFn = None,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
    amsgrad: bool = False,
    nesterov: bool = False,
    maximize: bool = False,
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
                       amsgrad=amsgrad, nesterov=nesterov)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=True,
                mask=mask, maximize=maximize)


@_register
def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    maximize: bool = False,
    mask: optax.MaskOrFn = None,
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
    bias_correction_mu: divide the first moment by :math:`1 - \beta_1^t` (optax's option).
    bias_correction_nu: divide the maximum by :math:`1 - \beta_2^t` (optax's option;
      ``False`` gives ``optax.amsgrad(bias_correction_nu=False)``'s steps exactly).
    nu_dtype: dtype of the second moment and its maximum.
    weight_decay: coupled L2 coefficient.
      ``None`` (default): no decay term (a ``0.0`` given keeps a zero one).
    maximize: ascend the objective instead of descending.
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
  if bias_correction_mu and bias_correction_nu:
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype,
                weight_decay=weight_decay, amsgrad=True, maximize=maximize, mask=mask)
  core = scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, amsgrad=True,
                       bias_correction_mu=bias_correction_mu,
                       bias_correction_nu=bias_correction_nu)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=False,
                mask=mask, maximize=maximize)


@_register
def nadam(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    maximize: bool = False,
    mask: optax.MaskOrFn = None,
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
    nesterov: Nesterov momentum, on by default (``False`` is Adam; optax's option).
    nu_dtype: dtype of the second moment.
    weight_decay: coupled L2 coefficient.
      ``None`` (default): no decay term (a ``0.0`` given keeps a zero one).
    maximize: ascend the objective instead of descending.
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
              weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, mask=mask)


@_register
def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: optax.MaskOrFn = None,
    *,
    nesterov: bool = True,
    nu_dtype: jax.typing.DTypeLike | None = None,
    maximize: bool = False,
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
    nesterov: Nesterov momentum, on by default (``False`` is AdamW; optax's option).
    nu_dtype: dtype of the second moment.
    maximize: ascend the objective instead of descending.

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
               nu_dtype=nu_dtype, nesterov=nesterov, maximize=maximize)


@_register
def radam(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    threshold: ArrayLike = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    mask: optax.MaskOrFn = None,
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
    nesterov: Nesterov momentum in :math:`\hat m_t` (NAdam's form; optax's option).
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the second moment.
    weight_decay: weight decay coefficient.
      ``None`` (default): no decay term (a ``0.0`` given keeps a zero one).
    decoupled_weight_decay: decoupled (AdamW-style) rather than coupled L2,
      as torch's ``decoupled_weight_decay``.
    maximize: ascend the objective instead of descending.
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
                        nesterov=nesterov)
  return _chain(core, learning_rate, weight_decay=weight_decay,
                decoupled=decoupled_weight_decay, mask=mask, maximize=maximize)


@_register
def adamax(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    maximize: bool = False,
    mask: optax.MaskOrFn = None,
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
      ``None`` (default): no decay term (a ``0.0`` given keeps a zero one).
    maximize: ascend the objective instead of descending.
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
  core = scale_by_adamax(b1, b2, eps, mu_dtype, nu_dtype=nu_dtype)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=False,
                mask=mask, maximize=maximize)


@_register
def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: optax.MaskOrFn = None,
    *,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    maximize: bool = False,
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
  core = scale_by_adamax(b1, b2, eps, mu_dtype, nu_dtype=nu_dtype)
  return _chain(core, learning_rate, weight_decay=weight_decay, decoupled=True,
                mask=mask, maximize=maximize)


@_register
def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-16,
    eps_root: ArrayLike = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    mask: optax.MaskOrFn = None,
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
    nesterov: Nesterov momentum in :math:`\hat m_t` (NAdam's form; optax's option).
    mu_dtype: dtype of the first moment.
    nu_dtype: dtype of the belief moment.
    weight_decay: weight decay coefficient.
      ``None`` (default): no decay term (a ``0.0`` given keeps a zero one).
    decoupled_weight_decay: decoupled rather than coupled L2.
    maximize: ascend the objective instead of descending.
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
  core = scale_by_belief(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov)
  return _chain(core, learning_rate, weight_decay=weight_decay,
                decoupled=decoupled_weight_decay, mask=mask, maximize=maximize)


@_register
def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 2.5e-3,
    warmup_steps: ArrayLike | None = None,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    weight_decay: ArrayLike = 0.0,
    weight_lr_power: ArrayLike = 2.0,
    state_dtype: jax.typing.DTypeLike | None = None,
    *,
    mask: optax.MaskOrFn = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
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
  evaluate :math:`x_t`, from :func:`adam_jax.schedule_free_eval_params`. The
  arguments are ``optax.contrib.schedule_free_adamw``'s, in its order.

  .. warning::
    The average's weights :math:`\gamma_t^2` hold the bias correction
    :math:`\sqrt{1 - \beta_2^t}` (the paper's Algorithm 1);
    ``optax.contrib.schedule_free_adamw`` weights by the running maximum of the
    scheduled rate alone, which counts the first steps far more: the two methods
    differ, in float64 too (``docs/conventions.md``).

  Args:
    learning_rate: :math:`\gamma` (paper's default 2.5e-3; a constant is intended).
    warmup_steps: linear warm-up of :math:`\gamma_t` over this many steps;
      ``None`` (or 0) for none.
    b1: interpolation weight, in (0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{v_t}`.
    weight_decay: :math:`\lambda`, applied at the gradient point :math:`y_t`.
    weight_lr_power: the power :math:`p` of :math:`\gamma_t` in the average's
      weights, :math:`c_{t+1} = \gamma_t^p / \sum_i \gamma_i^p` (2: the paper's).
    state_dtype: dtype of :math:`z_t`; default the param's dtype.
    mask: which params decay (pytree of bools or callable).
    nu_dtype: dtype of the second moment.
    maximize: ascend the objective instead of descending.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs the params.

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
                                     warmup_steps=warmup_steps, weight_lr_power=weight_lr_power,
                                     state_dtype=state_dtype, mask=mask, nu_dtype=nu_dtype)
  if maximize:
    return optax.chain(optax.scale(-1.0), core)
  return core


@_register
def adopt(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.9999,
    eps: ArrayLike = 1e-6,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    mask: optax.MaskOrFn = None,
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

  ``use_clipping=False`` drops the clip (the paper's Algorithm 1). ``eps`` is a floor
  on :math:`\sqrt{v_{t-1}}`, not added to it.

  Args:
    learning_rate: :math:`\eta`: float, array or schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1) (any value converges).
    eps: floor on :math:`\sqrt{v_{t-1}}` (> 0).
    mu_dtype: dtype of the first moment.
    nesterov: step along the first moment updated once more (optax's option).
    use_clipping: clip the normalised gradient to :math:`\pm t^{1/4}` (optax's name).
    clip_value_fn: the clip bound as a function of :math:`t`; ``None`` for
      :math:`t^{1/4}` (see :func:`adam_jax.scale_by_adopt`).
    nu_dtype: dtype of the second moment.
    weight_decay: weight decay coefficient.
      ``None`` (default): no decay term (a ``0.0`` given keeps a zero one).
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
  core = scale_by_adopt(b1, b2, eps, mu_dtype, nesterov=nesterov, use_clipping=use_clipping,
                        clip_value_fn=clip_value_fn, nu_dtype=nu_dtype)
  return _chain(core, learning_rate, weight_decay=weight_decay,
                decoupled=decoupled_weight_decay, mask=mask, maximize=maximize)


@_register
def adam_mini(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: optax.MaskOrFn = None,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
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


@_register
def cautious_adamw(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: optax.MaskOrFn = None,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
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


@_register
def lazy_adam(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
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
  return _chain(core, learning_rate, weight_decay=None, decoupled=False, mask=None,
                maximize=maximize)


@_register
def adam8bit(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    eps_root: ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule | None = None,
    block_size: int | None = None,
    min_quantized_size: int | None = None,
    nesterov: bool = False,
    maximize: bool = False,
    mask: optax.MaskOrFn = None,
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
      ``None`` (default): no decay term (a ``0.0`` given keeps a zero one).
    block_size: the most elements per quantization block; ``None`` for 256. A
      Python int: it sizes the state (give ``optax.inject_hyperparams`` this name in
      ``static_args`` when you set it).
    min_quantized_size: leaves with fewer elements keep float32 moments; ``None``
      for 4096 (a Python int, as ``block_size``).
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


@_register
def adamw8bit(
    learning_rate: ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    eps_root: ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 1e-4,
    block_size: int | None = None,
    min_quantized_size: int | None = None,
    nesterov: bool = False,
    maximize: bool = False,
    mask: optax.MaskOrFn = None,
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
    block_size: the most elements per quantization block; ``None`` for 256. A
      Python int: it sizes the state (give ``optax.inject_hyperparams`` this name in
      ``static_args`` when you set it).
    min_quantized_size: leaves with fewer elements keep float32 moments; ``None``
      for 4096 (a Python int, as ``block_size``).
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


@_register
def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    b3: ArrayLike | None = None,
    eps: ArrayLike = 1e-8,
    d0: ArrayLike = 1e-6,
    d_coef: ArrayLike = 1.0,
    weight_decay: ArrayLike | None = None,
    mask: optax.MaskOrFn = None,
    *,
    betas: tuple[ArrayLike, ArrayLike] | None = None,
    beta3: ArrayLike | None = None,
    estim_lr0: ArrayLike | None = None,
    estim_lr_coef: ArrayLike | None = None,
    safeguard_warmup: bool = False,
    decoupled_weight_decay: bool = True,
    bias_correction: bool = False,
    maximize: bool = False,
) -> optax.GradientTransformation:
  r"""Prodigy: Adam with a learnt learning rate :math:`d_k \gamma_k` (no rate to tune).

  The paper's Adam version (:func:`adam_jax.scale_by_prodigy`), with :math:`x_0`
  the initial params and :math:`\beta_3 = \sqrt{\beta_2}` by default:

  .. math::

    m_{k+1} &= \beta_1 m_k + (1 - \beta_1)\, d_k g_k, \qquad
    v_{k+1} = \beta_2 v_k + (1 - \beta_2)\, d_k^2 g_k^2 \\
    r_{k+1} &= \beta_3 r_k + (1 - \beta_3)\, \gamma_k d_k^2 \langle g_k, x_0 - x_k \rangle,
    \qquad s_{k+1} = \beta_3 s_k + (1 - \beta_3)\, \gamma_k d_k^2 g_k \\
    d_{k+1} &= \max(d_k,\ c\, r_{k+1} / \|s_{k+1}\|_1) \\
    x_{k+1} &= x_k - \gamma_k d_k \left(m_{k+1} / (\sqrt{v_{k+1}} + d_k \epsilon)
               + \mu x_k\right)

  Keep ``learning_rate`` at 1 (or a schedule with peak 1, cosine decay as the
  authors advise); change ``d_coef`` to force larger or smaller steps. With
  ``decoupled_weight_decay=False`` the decay is coupled L2 (added to the gradient).
  The positional parameters are the paper's and the authors' code's (``b1``, ``b2``,
  ``b3``, ``d0``, ``d_coef``, one per rate, as every alias here); the names of
  ``optax.contrib.prodigy`` (``betas``, ``beta3``, ``estim_lr0``, ``estim_lr_coef``)
  are accepted as keywords.

  Args:
    learning_rate: :math:`\gamma_k`: float, array or schedule; 1 is intended.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    b3: decay rate of the estimate's sums; ``None`` for :math:`\sqrt{\beta_2}`.
    eps: added to :math:`\sqrt{v}`, times :math:`d_k`.
    d0: initial estimate :math:`d_0` (> 0).
    d_coef: :math:`c`, multiplies the estimate.
    weight_decay: :math:`\mu` (decoupled: scaled by :math:`\gamma_k d_k`).
    mask: which params decay (pytree of bools or callable).
    betas: ``(b1, b2)``, optax.contrib's name for the two.
    beta3: optax.contrib's name for ``b3``.
    estim_lr0: optax.contrib's name for ``d0``.
    estim_lr_coef: optax.contrib's name for ``d_coef``.
    safeguard_warmup: leave :math:`\gamma_k` out of :math:`s_{k+1}` (for warm-up).
    decoupled_weight_decay: AdamW-style decay (the authors' default) rather than L2.
    bias_correction: multiply :math:`\gamma_k` by Adam's bias correction (as optax).
    maximize: ascend the objective instead of descending.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs the params when
    there is a weight decay.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.prodigy(weight_decay=1e-2)
    >>> state = tx.init({"w": jnp.zeros(3)})
    >>> state[0].d  # the estimate starts at d0
    Array(1.e-06, dtype=float32)

  References:
    Mishchenko & Defazio, `Prodigy: An Expeditiously Adaptive Parameter-Free
    Learner <https://arxiv.org/abs/2306.06101>`_, ICML 2024.
  """
  hp = _optax_names(
      "prodigy",
      dict(b1=(b1, 0.9), b2=(b2, 0.999), b3=(b3, None), d0=(d0, 1e-6), d_coef=(d_coef, 1.0)),
      dict(betas=(("b1", "b2"), betas), beta3=("b3", beta3), estim_lr0=("d0", estim_lr0),
           estim_lr_coef=("d_coef", estim_lr_coef)))
  b1, b2, b3, d0, d_coef = (hp[k] for k in ("b1", "b2", "b3", "d0", "d_coef"))
  links = [optax.scale(-1.0)] if maximize else []
  # Left out only when not given, never because of its value (see _chain).
  if weight_decay is not None and not decoupled_weight_decay:
    numerics.check_nonnegative(weight_decay=weight_decay)
    links.append(add_weight_decay(weight_decay, mask))
  decoupled = weight_decay is not None and decoupled_weight_decay
  links.append(scale_by_prodigy(
      learning_rate, b1, b2, b3, eps, d0, d_coef,
      weight_decay=weight_decay if decoupled else 0.0, mask=mask,
      bias_correction=bias_correction, safeguard_warmup=safeguard_warmup))
  return optax.chain(*links)


@_register
def dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    d0: ArrayLike = 1e-6,
    weight_decay: ArrayLike = 0.0,
    mask: optax.MaskOrFn = None,
    *,
    betas: tuple[ArrayLike, ArrayLike] | None = None,
    estim_lr0: ArrayLike | None = None,
    bias_correction: bool = False,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""D-Adapt AdamW: Adam with a learnt learning rate :math:`d_k \gamma_k`, decoupled decay.

  The paper's Adam variant (:func:`adam_jax.scale_by_dadapt_adam`), with
  :math:`\lambda_k = d_k \gamma_k`:

  .. math::

    m_{k+1} &= \beta_1 m_k + (1 - \beta_1) \lambda_k g_k, \qquad
    v_{k+1} = \beta_2 v_k + (1 - \beta_2) g_k^2 \\
    x_{k+1} &= x_k - m_{k+1} / (\sqrt{v_{k+1}} + \epsilon) - \lambda_k \mu x_k \\
    r_{k+1} &= \sqrt{\beta_2}\, r_k + (1 - \sqrt{\beta_2}) \lambda_k
               \textstyle\sum_i g_{k,i} s_{k,i} / (\sqrt{v_{k,i}} + \epsilon) \\
    s_{k+1} &= \sqrt{\beta_2}\, s_k + (1 - \sqrt{\beta_2}) \lambda_k g_k, \qquad
    d_{k+1} = \max\!\left(d_k,\ \frac{r_{k+1}}{(1 - \sqrt{\beta_2}) \|s_{k+1}\|_1}\right)

  Keep ``learning_rate`` at 1 (or a schedule with peak 1). The positional
  parameters are the paper's (``b1``, ``b2``, ``d0``); ``optax.contrib.dadapt_adamw``'s
  names (``betas``, ``estim_lr0``) are accepted as keywords.

  Args:
    learning_rate: :math:`\gamma_k`: float, array or schedule; 1 is intended.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{v}`.
    d0: initial estimate :math:`d_0` (> 0).
    weight_decay: decoupled decay :math:`\mu`, scaled by :math:`d_k \gamma_k`.
    mask: which params decay (pytree of bools or callable).
    betas: ``(b1, b2)``, optax.contrib's name for the two.
    estim_lr0: optax.contrib's name for ``d0``.
    bias_correction: multiply :math:`\gamma_k` by Adam's bias correction (as optax).
    maximize: ascend the objective instead of descending.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs the params when
    ``weight_decay`` is not 0.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.dadapt_adamw(weight_decay=1e-2)
    >>> state = tx.init({"w": jnp.zeros(3)})

  References:
    Defazio & Mishchenko, `Learning-Rate-Free Learning by D-Adaptation
    <https://arxiv.org/abs/2301.07733>`_, ICML 2023.
  """
  hp = _optax_names("dadapt_adamw", dict(b1=(b1, 0.9), b2=(b2, 0.999), d0=(d0, 1e-6)),
                    dict(betas=(("b1", "b2"), betas), estim_lr0=("d0", estim_lr0)))
  core = scale_by_dadapt_adam(learning_rate, hp["b1"], hp["b2"], eps, hp["d0"],
                              weight_decay=weight_decay, mask=mask,
                              bias_correction=bias_correction)
  if maximize:
    return optax.chain(optax.scale(-1.0), core)
  return optax.with_extra_args_support(core)  # extra arguments of update, as every alias


@_register
def mechanic_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule | None = None,
    mask: optax.MaskOrFn = None,
    *,
    mechanic_weight_decay: ArrayLike = 0.01,
    s_init: ArrayLike = 1e-8,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW whose learning-rate scale Mechanic learns: ``mechanize(adamw(learning_rate))``.

  With :math:`u_t` AdamW's update at learning rate :math:`\eta_t` (1 by default) and
  the scale :math:`\sum_i s_{t+1,i}` from :func:`adam_jax.mechanize`:

  .. math::

    u_t &= -\eta_t \left(\hat m_t / (\sqrt{\hat v_t} + \epsilon) + \lambda x_t\right),
    \qquad \Delta_{t+1} = \Delta_t + u_t \\
    x_{t+1} &= x_{ref} + \left(\textstyle\sum_i s_{t+1,i}\right) \Delta_{t+1}

  Args:
    learning_rate: :math:`\eta_t` of the inner AdamW: 1 (or a schedule with peak 1).
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator of the inner AdamW.
    weight_decay: the inner AdamW's decoupled decay :math:`\lambda`.
    mask: which params the inner AdamW decays.
    mechanic_weight_decay: Mechanic's own :math:`\lambda` inside :math:`h_t`.
    s_init: Mechanic's initial scale.
    maximize: ascend the objective instead of descending.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs the params.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.mechanic_adamw()
    >>> state = tx.init({"w": jnp.zeros(3)})
    >>> state.s.shape  # one scale per decay rate
    (6,)

  References:
    Cutkosky, Defazio & Mehta, `Mechanic: A Learning Rate Tuner
    <https://arxiv.org/abs/2306.00144>`_, NeurIPS 2023.
  """
  inner = _chain(scale_by_adam(b1, b2, eps), learning_rate, weight_decay=weight_decay,
                 decoupled=True, mask=mask, maximize=False)
  tx = mechanize(inner, weight_decay=mechanic_weight_decay, s_init=s_init)
  if maximize:  # Mechanic's h_t needs the negated gradient too
    return optax.chain(optax.scale(-1.0), tx)
  return tx


__all__ = [
    "adabelief", "adam", "adam8bit", "adam_mini", "adamax", "adamaxw", "adamw", "adamw8bit",
    "adopt", "amsgrad", "cautious_adamw", "get_optimizer", "lazy_adam", "nadam", "nadamw",
    "optimizers", "radam", "schedule_free_adamw",
    "dadapt_adamw", "mechanic_adamw", "prodigy",
]
