"""Adam's relatives: RAdam, Adamax and AdaBelief, each as torch/optax define them."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _numerics as numerics
from adam_jax.transforms._common import abs_sq, moment_transform

Array = jax.Array


def _first_moment(g, mu, b1):
  """Returns ``(g, m_t)`` in the compute dtype: ``m_t = b1 m + (1 - b1) g``."""
  cd = numerics.compute_dtype(g.dtype, mu.dtype)
  g_c = g.astype(cd)
  b1_c = numerics.hyper(b1, cd)
  return g_c, b1_c * mu.astype(cd) + (1 - b1_c) * g_c


def _mu_hat(g_c, mu_c, b1, count, rd, nesterov: bool):
  r""":math:`\hat m_t`: ``m_t / (1 - b1^t)``, or with ``nesterov`` (NAdam's form, as optax)
  ``b1 m_t / (1 - b1^{t+1}) + (1 - b1) g_t / (1 - b1^t)``."""
  cd = g_c.dtype
  bc1 = numerics.bias_correction(b1, count, rd).astype(cd)
  if not nesterov:
    return mu_c / bc1
  b1_c = numerics.hyper(b1, cd)
  bc1_next = numerics.bias_correction(b1, numerics.safe_increment(count), rd).astype(cd)
  return b1_c * mu_c / bc1_next + (1 - b1_c) * g_c / bc1


def _radam_rho(b2: Any, t: Array) -> tuple[Any, Array]:
  r"""``(rho_inf, rho_t)`` of RAdam, accurate in float32 for a Python ``b2``.

  :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)` subtracts two
  numbers near :math:`2 / (1 - \beta_2)` (2000 for 0.999) to get one near 5, so
  the naive float32 formula loses four digits just where the rectification
  switches on. With :math:`L = -\ln \beta_2` and :math:`x = tL` it equals
  :math:`C + (2/L)\,(1 - x / (e^x - 1))` with the constant
  :math:`C = 2/(1 - \beta_2) - 2/L - 1` taken in double precision on the host
  and the bracket from its Taylor series for small :math:`x`: no cancellation.
  """
  if not isinstance(b2, (int, float)) or not 0 < b2 < 1:
    b2 = numerics.hyper(b2, t.dtype)
    rho_inf = 2 / (1 - b2) - 1
    return rho_inf, rho_inf - 2 * t * b2**t / (1 - b2**t)
  big_l = -math.log(b2)
  const = 2 / (1 - b2) - 2 / big_l - 1
  x = t * big_l
  x2 = x * x
  series = x / 2 - x2 / 12 + x2 * x2 / 720 - x2 * x2 * x2 / 30240 + x2**4 / 1209600
  small = x < 0.5
  safe_x = jnp.where(small, 1, x)
  direct = 1 - safe_x / jnp.expm1(safe_x)
  return 2 / (1 - b2) - 1, const + (2 / big_l) * jnp.where(small, series, direct)


def scale_by_radam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    threshold: ArrayLike = 5.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
  r"""Rectified Adam, with ``torch.optim.RAdam``'s update.

  .. math::

    \rho_\infty &= 2 / (1 - \beta_2) - 1, \qquad
    \rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t) \\
    r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
                     {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
    u_t &= \begin{cases}
      \hat m_t \, r_t \sqrt{1 - \beta_2^t} / (\sqrt{v_t + \epsilon_{root}} + \epsilon)
        & \rho_t > \text{threshold} \\
      \hat m_t & \text{otherwise}
    \end{cases}

  .. warning::
    As in torch, ``eps`` is added to :math:`\sqrt{v_t}` before bias correction
    (``optax.scale_by_radam`` adds it after), and the rectified branch is taken
    when :math:`\rho_t` is strictly above the threshold (5 in torch).

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the square root of the second moment.
    eps_root: added inside the square root.
    threshold: :math:`\rho_t` above which the adaptive step is used.
    mu_dtype: dtype of the first moment; default the param's dtype.
    nu_dtype: dtype of the second moment; default the param's (real) dtype.
    nesterov: use Nesterov momentum in :math:`\hat m_t` (NAdam's form, as
      ``optax.scale_by_radam(nesterov=True)``), in both branches.

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByAdamState``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.scale_by_radam()
    >>> state = tx.init(jnp.zeros(2))
    >>> for t in range(1, 7):  # a constant gradient: m_hat_t = g
    ...   u, state = tx.update(jnp.array([1.0, -1.0]), state)
    ...   if t in (5, 6):
    ...     print(t, [round(x, 4) for x in u.tolist()])
    5 [1.0, -1.0]
    6 [0.0258, -0.0258]

    Up to step 5, :math:`\rho_t \le 5` and the update is :math:`\hat m_t` (SGD
    with momentum); at step 6 the rectified adaptive step switches on, and with a
    constant gradient it is :math:`r_6 \approx 0.026` times Adam's.

  References:
    Liu et al., `On the Variance of the Adaptive Learning Rate and Beyond
    <https://arxiv.org/abs/1908.03265>`_, ICLR 2020.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(eps=eps, eps_root=eps_root)

  def leaf(g, mu, nu, count):
    g_c, mu_c = _first_moment(g, mu, b1)
    rd = numerics.real_dtype(g_c.dtype)
    b2_r = numerics.hyper(b2, rd)
    nu_c = b2_r * nu.astype(rd) + (1 - b2_r) * abs_sq(g_c)
    bc2 = numerics.bias_correction(b2, count, rd)
    t = count.astype(rd)
    rho_inf, rho_t = _radam_rho(b2, t)
    rect_num = (rho_t - 4) * (rho_t - 2) * rho_inf
    rect_den = (rho_inf - 4) * (rho_inf - 2) * rho_t
    use_adaptive = rho_t > numerics.hyper(threshold, rd)
    # Both branches are computed; keep the unused one finite (no NaN gradients).
    safe_den = jnp.where(use_adaptive, rect_den, 1)
    rect = jnp.sqrt(jnp.where(use_adaptive, jnp.maximum(rect_num, 0) / safe_den, 1))
    denom = jnp.sqrt(nu_c + numerics.hyper(eps_root, rd)) + numerics.hyper(eps, rd)
    adaptive = rect * jnp.sqrt(bc2) / denom
    scale = jnp.where(use_adaptive, adaptive, jnp.ones_like(adaptive))
    update = _mu_hat(g_c, mu_c, b1, count, rd, nesterov) * scale.astype(g_c.dtype)
    return update.astype(g.dtype), mu_c.astype(mu.dtype), nu_c.astype(nu.dtype)

  return moment_transform(leaf, mu_dtype, nu_dtype, who="adam_jax.scale_by_radam")


def scale_by_adamax(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Adamax (the infinity-norm Adam), with ``torch.optim.Adamax``'s update.

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    u^{\infty}_t &= \max(\beta_2 u^{\infty}_{t-1}, |g_t| + \epsilon) \\
    u_t &= m_t / \left((1 - \beta_1^t)\, u^{\infty}_t\right)

  The infinity norm is stored in the state's ``nu`` field.

  .. warning::
    torch adds ``eps`` to :math:`|g_t|` inside the maximum (followed here);
    ``optax.scale_by_adamax`` adds it to the denominator instead. The two agree
    when ``eps = 0``.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the infinity norm, in [0, 1).
    eps: added to :math:`|g_t|` inside the maximum.
    mu_dtype: dtype of the first moment; default the param's dtype.
    nu_dtype: dtype of the infinity norm; default the param's (real) dtype.

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByAdamState`` (as
    optax's Adamax).

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.scale_by_adamax()
    >>> state = tx.init(jnp.zeros(3))
    >>> u, state = tx.update(jnp.array([1.0, -2.0, 0.5]), state)
    >>> [round(x, 4) for x in u.tolist()]  # m_1 / (0.1 (|g| + eps)) = sign(g)
    [1.0, -1.0, 1.0]
    >>> [round(x, 4) for x in state.nu.tolist()]  # the infinity norm, |g| + eps
    [1.0, 2.0, 0.5]

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, section 7.1, 2014.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(eps=eps)

  def leaf(g, mu, nu, count):
    g_c, mu_c = _first_moment(g, mu, b1)
    rd = numerics.real_dtype(g_c.dtype)
    u_inf = jnp.maximum(
        numerics.hyper(b2, rd) * nu.astype(rd), jnp.abs(g_c) + numerics.hyper(eps, rd)
    )
    bc1 = numerics.bias_correction(b1, count, rd)
    update = mu_c / (bc1 * u_inf).astype(g_c.dtype)
    return update.astype(g.dtype), mu_c.astype(mu.dtype), u_inf.astype(nu.dtype)

  return moment_transform(leaf, mu_dtype, nu_dtype, who="adam_jax.scale_by_adamax")


def scale_by_belief(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-16,
    eps_root: ArrayLike = 1e-16,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
  r"""AdaBelief: Adam with the variance of the gradient around its prediction.

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    s_t &= \beta_2 s_{t-1} + (1 - \beta_2) |g_t - m_t|^2 + \epsilon_{root} \\
    u_t &= \hat m_t / (\sqrt{\hat s_t} + \epsilon)

  with :math:`\hat m_t, \hat s_t` bias-corrected as in Adam. This is the paper's
  algorithm (its in-state :math:`\epsilon` is ``eps_root`` here) and optax's
  ``scale_by_belief``.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the belief (second) moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added to :math:`s_t` at every step (stored in the state).
    mu_dtype: dtype of the first moment; default the param's dtype.
    nu_dtype: dtype of :math:`s_t`; default the param's (real) dtype.
    nesterov: use Nesterov momentum in :math:`\hat m_t` (NAdam's form, as
      ``optax.scale_by_belief(nesterov=True)``).

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByBeliefState``
    (optax's class for the same fields).

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.scale_by_belief()
    >>> state = tx.init(jnp.zeros(3))
    >>> u, state = tx.update(jnp.array([1.0, -2.0, 0.5]), state)
    >>> [round(x, 4) for x in u.tolist()]  # g / sqrt(0.81 g^2): Adam's first step is sign(g)
    [1.1111, -1.1111, 1.1111]

  References:
    Zhuang et al., `AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients <https://arxiv.org/abs/2010.07468>`_, NeurIPS 2020.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(eps=eps, eps_root=eps_root)

  def leaf(g, mu, nu, count):
    g_c, mu_c = _first_moment(g, mu, b1)
    rd = numerics.real_dtype(g_c.dtype)
    b2_r = numerics.hyper(b2, rd)
    s = b2_r * nu.astype(rd) + (1 - b2_r) * abs_sq(g_c - mu_c)
    s = s + numerics.hyper(eps_root, rd)
    bc2 = numerics.bias_correction(b2, count, rd)
    denom = jnp.sqrt(s / bc2) + numerics.hyper(eps, rd)
    update = _mu_hat(g_c, mu_c, b1, count, rd, nesterov) / denom.astype(g_c.dtype)
    return update.astype(g.dtype), mu_c.astype(mu.dtype), s.astype(nu.dtype)

  return moment_transform(leaf, mu_dtype, nu_dtype, who="adam_jax.scale_by_belief",
                          state_class=optax.ScaleByBeliefState)
