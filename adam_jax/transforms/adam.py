"""``scale_by_adam``: Adam's moments, bias correction, AMSGrad and NAdam."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _numerics as numerics
from adam_jax.transforms._common import (
  ScaleByAdamState,
  adam_leaf,
  check_float_leaves,
  init_moments,
  map_leaves,
)

Array = jax.Array


class ScaleByAmsgradState(NamedTuple):
  """State of :func:`scale_by_adam` with ``amsgrad=True``.

  optax's ``ScaleByAmsgradState`` has the same fields but another meaning for
  ``nu_max``: optax keeps the maximum of the *bias-corrected* second moment, this
  state the maximum of the raw one (torch, Reddi et al.). A class of its own keeps
  the two apart (a checkpoint of one restored into the other would be silently
  wrong by the factor :math:`1 - \\beta_2^t`, and :mod:`adam_jax.diagnostics` reads
  each by its convention).
  """

  count: Array  # shape=(), dtype=int32; steps taken, saturating
  mu: optax.Updates  # like params; dtype=mu_dtype
  nu: optax.Updates  # like params, real; dtype=nu_dtype
  nu_max: optax.Updates  # like params, real; dtype=nu_dtype; max over raw nu


def scale_by_adam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
    amsgrad: bool = False,
    nesterov: bool = False,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adam's bias-corrected moments.

  For gradient :math:`g_t` at step :math:`t = 1, 2, \dots`:

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2 \\
    \hat m_t &= m_t / (1 - \beta_1^t), \qquad \hat v_t = v_t / (1 - \beta_2^t) \\
    u_t &= \hat m_t / \left(\sqrt{\hat v_t + \epsilon_{root}} + \epsilon\right)

  With ``amsgrad=True``, :math:`\hat v_t` uses :math:`v^{max}_t = \max(v^{max}_{t-1},
  v_t)` in place of :math:`v_t`. With ``nesterov=True`` (NAdam as optax defines it),
  :math:`\hat m_t = \beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1) g_t / (1 -
  \beta_1^t)`.

  The arithmetic is carried out in at least float32 whatever the dtype of the
  gradients: float16 models keep ``eps`` (which underflows to zero in float16) and
  zero gradients give zero updates rather than NaN. Updates keep the gradient's
  dtype; the moments keep ``mu_dtype`` / ``nu_dtype``.

  .. warning::
    AMSGrad conventions differ. This transformation (like ``torch.optim.Adam`` and
    Reddi et al.) takes the running maximum of the *raw* second moment and then
    bias-corrects it. ``optax.scale_by_amsgrad`` takes the maximum of the
    *bias-corrected* second moment, which gives different steps early in training.

  .. warning::
    Float16 second moments underflow. ``nu_dtype`` defaults to the param's dtype,
    and :math:`(1 - \beta_2) g^2` is below float16's smallest subnormal
    (:math:`2^{-24} \approx 6 \cdot 10^{-8}`) for :math:`|g| < 7.7 \cdot 10^{-3}` at
    :math:`\beta_2 = 0.999`, so the stored :math:`v` rounds to 0 (or to that one
    subnormal). Each step's :math:`\hat v_t` then holds only the current
    gradient's term: steps come out too large (about 13 instead of 1 after 200
    steps of a constant :math:`g = 10^{-3}`), and a step whose gradient is 0
    while :math:`\hat m_t` is not has :math:`\hat v_t = 0` and an update of
    :math:`\hat m_t / \epsilon` (``inf`` in float16). For float16 params pass
    ``nu_dtype=jnp.float32`` (or ``jnp.bfloat16``, which has float32's exponent
    range).

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root (Kingma & Ba, torch).
    eps_root: added inside the square root; make it positive to differentiate
      through the update (meta-learning).
    mu_dtype: dtype of the first moment; default the param's dtype.
    nu_dtype: dtype of the second moment (and AMSGrad's maximum); default the
      param's (real) dtype.
    amsgrad: keep the running maximum of the second moment.
    nesterov: use Nesterov momentum (NAdam).
    bias_correction_mu: divide the first moment by :math:`1 - \beta_1^t`
      (``False``: use :math:`m_t` as it is, ``optax.scale_by_amsgrad``'s option).
    bias_correction_nu: divide the second moment by :math:`1 - \beta_2^t`. With
      ``amsgrad`` and ``False`` the step equals ``optax.amsgrad``'s with
      ``bias_correction_nu=False`` (both take the maximum of the raw moment then).

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByAdamState`` (optax's
    own class), or :class:`ScaleByAmsgradState` when ``amsgrad`` is set.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_jax
    >>> tx = optax.chain(adam_jax.scale_by_adam(), adam_jax.scale_by_learning_rate(0.1))
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([1.0, -2.0, 0.5])}, state, params)
    >>> updates["w"]  # the first step is -lr * sign(g)
    Array([-0.1,  0.1, -0.1], dtype=float32)

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.

    Reddi, Kale & Kumar, `On the Convergence of Adam and Beyond
    <https://openreview.net/forum?id=ryQu7f-RZ>`_, ICLR 2018.

    Dozat, `Incorporating Nesterov Momentum into Adam
    <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(eps=eps, eps_root=eps_root)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  nu_dtype = None if nu_dtype is None else jnp.dtype(nu_dtype)
  hyper = dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov)
  corrected = bias_correction_mu and bias_correction_nu
  if not corrected:  # only an uncorrected moment needs the flags in the step
    hyper.update(bias_correction_mu=bias_correction_mu, bias_correction_nu=bias_correction_nu)

  def init_fn(params):
    check_float_leaves(params, "adam_jax.scale_by_adam")
    mu, nu = init_moments(params, mu_dtype, nu_dtype)
    count = jnp.zeros([], jnp.int32)
    if amsgrad:
      return ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu)
    return ScaleByAdamState(count=count, mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    numerics.tree_check_same_structure(updates, state.mu)
    count = numerics.safe_increment(state.count)
    u, mu, nu, nu_max = map_leaves(
        lambda g, m, v, w: adam_leaf(g, m, v, w, count, **hyper), updates, state.mu, state.nu,
        state.nu_max if amsgrad else None, num_outputs=4)
    if amsgrad:
      return u, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)
    return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
