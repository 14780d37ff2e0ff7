r"""D-Adaptation (Defazio & Mishchenko, 2023) and Prodigy (Mishchenko & Defazio, 2023).

Adam whose learning rate is an estimate :math:`d_k` of the distance from the initial
params to a solution, grown from a tiny :math:`d_0` as the gradients reveal it. The
learning rate argument :math:`\gamma_k` stays (a constant 1 or a schedule with peak 1):
it is a multiplier on the estimate, and enters the estimate itself, so it lives inside
the transformation and the updates it returns are final (add them to the params).

Both keep their scalars (:math:`d_k` and the numerator :math:`r_k`) in the widest real
dtype of the params (at least float32) and their moments in at least float32: with
:math:`d_0 = 10^{-6}` a moment like :math:`d_k^2 g^2` is far below float16's range.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_jax import _numerics as numerics
from adam_jax.transforms._common import (
  abs_sq,
  check_float_leaves,
  map_leaves,
  real_dot,
  scalar_dtype,
  zeros_like,
)

Array = jax.Array


class ScaleByDAdaptAdamState(NamedTuple):
  """State of :func:`scale_by_dadapt_adam`.

  ``optax.contrib.DAdaptAdamWState`` holds the same quantities under other names
  (``exp_avg``, ``exp_avg_sq``, ``grad_sum``, ``estim_lr``, ``numerator_weighted``),
  so this is a class of its own; its fields are Adam's (``count``, ``mu``, ``nu``)
  and the paper's.
  """

  count: Array  # shape=(), dtype=int32; steps taken, saturating
  mu: optax.Updates  # like params; dtype=param compute dtype (>= float32); m_k
  nu: optax.Updates  # like params, real; dtype=real compute dtype (>= float32); v_k
  s: optax.Updates  # like params; dtype=param compute dtype (>= float32); s_k
  d: Array  # shape=(), dtype=widest real param dtype (>= float32); distance estimate d_k
  r: Array  # shape=(), dtype as d; weighted numerator r_k of the estimate


class ScaleByProdigyState(NamedTuple):
  """State of :func:`scale_by_prodigy`.

  ``optax.contrib.ProdigyState`` names its fields otherwise (``exp_avg``,
  ``exp_avg_sq``, ``grad_sum``, ``params0``, ``estim_lr``, ``numerator_weighted``)
  and keeps the initial params where this state keeps the distance travelled
  ``delta`` (at least float32), so this is a class of its own.
  """

  count: Array  # shape=(), dtype=int32; steps taken, saturating
  mu: optax.Updates  # like params; dtype=param compute dtype (>= float32); m_k
  nu: optax.Updates  # like params, real; dtype=real compute dtype (>= float32); v_k
  s: optax.Updates  # like params; dtype=param compute dtype (>= float32); s_k
  delta: optax.Updates  # like params; dtype=param compute dtype (>= float32); x_k - x_0
  d: Array  # shape=(), dtype=widest real param dtype (>= float32); distance estimate d_k
  r: Array  # shape=(), dtype as d; weighted numerator r_k of the estimate


def _l1(a: Array, dtype: Any) -> Array:
  return jnp.sum(jnp.abs(a).astype(dtype), dtype=dtype)


def _decay_flags(mask: Any, params: Any, updates: Any) -> Any:
  """A tree like ``updates`` of Python bools: which leaves get the decoupled decay."""
  if mask is None:
    return jax.tree.map(lambda _: True, updates)
  mask_t = numerics.mask_tree(mask, params)
  return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask_t, updates,
                      is_leaf=lambda x: isinstance(x, bool))


def _gamma(learning_rate: Any, b1: Any, b2: Any, count: Array, new_count: Array,
           bias_correction: bool, dtype: Any) -> Array:
  r""":math:`\gamma_k` (the schedule at the 0-based count), times Adam's bias correction."""
  gamma = numerics.hyper(numerics.resolve(learning_rate, count), dtype)
  gamma = jnp.asarray(gamma, dtype)
  if bias_correction:
    bc = (jnp.sqrt(numerics.bias_correction(b2, new_count, dtype))
          / numerics.bias_correction(b1, new_count, dtype))
    gamma = gamma * bc.astype(dtype)
  return gamma


def _zeros(params: Any, real: bool = False) -> Any:
  """Zeros like ``params`` in their compute dtype (at least float32), sharded like them."""

  def zeros(p):
    cd = numerics.compute_dtype(jnp.result_type(p))
    return zeros_like(p, numerics.real_dtype(cd) if real else cd)

  return jax.tree.map(zeros, params)


def _moments_init(params: Any):
  return _zeros(params), _zeros(params, real=True), _zeros(params)


def _estimate(d: Array, r: Array, s_l1: Array, d_coef: Any) -> Array:
  r""":math:`d_{k+1} = \max(d_k, c\, r_{k+1} / \|s_{k+1}\|_1)`; ``d_k`` while ``s`` is 0."""
  ok = s_l1 > 0
  d_hat = numerics.hyper(d_coef, d.dtype) * r / jnp.where(ok, s_l1, 1)
  return jnp.maximum(d, jnp.where(ok, d_hat, d)).astype(d.dtype)


def scale_by_dadapt_adam(
    learning_rate: numerics.ScalarOrSchedule = 1.0,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    d0: Any = 1e-6,
    *,
    weight_decay: Any = 0.0,
    mask: Any = None,
    bias_correction: bool = False,
) -> optax.GradientTransformation:
  r"""Adam with D-Adaptation: the step is Adam's, the learning rate :math:`d_k\gamma_k` is learnt.

  The paper's Adam algorithm, with :math:`s_0 = m_0 = v_0 = 0`, :math:`r_0 = 0`,
  :math:`g_k` the gradient at :math:`x_k` and :math:`\lambda_k = d_k \gamma_k`:

  .. math::

    m_{k+1} &= \beta_1 m_k + (1 - \beta_1) \lambda_k g_k \\
    v_{k+1} &= \beta_2 v_k + (1 - \beta_2) g_k^2 \\
    x_{k+1} &= x_k - m_{k+1} / (\sqrt{v_{k+1}} + \epsilon) - \lambda_k \mu\, x_k \\
    r_{k+1} &= \sqrt{\beta_2}\, r_k + (1 - \sqrt{\beta_2})\, \lambda_k
               \textstyle\sum_i g_{k,i} s_{k,i} / (\sqrt{v_{k,i}} + \epsilon) \\
    s_{k+1} &= \sqrt{\beta_2}\, s_k + (1 - \sqrt{\beta_2})\, \lambda_k g_k \\
    d_{k+1} &= \max\!\left(d_k,\ \frac{r_{k+1}}{(1 - \sqrt{\beta_2}) \|s_{k+1}\|_1}\right)

  with :math:`\mu` the decoupled weight decay (0 by default). The updates are final
  (they hold the learning rate): add them to the params.

  .. warning::
    Conventions. (1) The inner product in :math:`r_{k+1}` is weighted by
    :math:`1/(\sqrt{v_k} + \epsilon)`, the second moment *before* it sees
    :math:`g_k`, as the authors' released code (and ``optax.contrib.dadapt_adamw``)
    compute it; we follow the code where the box could be read with
    :math:`v_{k+1}`, because the paper's experiments ran it. (2) No bias correction
    by default, as the algorithm box and the released code's default;
    ``bias_correction=True`` multiplies :math:`\gamma_k` by
    :math:`\sqrt{1 - \beta_2^{k+1}} / (1 - \beta_1^{k+1})` (the code's
    ``use_bias_correction``), which ``optax.contrib.dadapt_adamw`` always does.
    (3) While :math:`s_{k+1} = 0` (only zero gradients so far) the estimate keeps
    :math:`d_k` instead of dividing by zero. The released code's ``growth_rate``
    (unbounded by default) is not offered.

  Args:
    learning_rate: :math:`\gamma_k` (>= 0): a multiplier on the estimate, a float,
      an array or a schedule of the 0-based step count; 1 is the intended value (or
      a schedule whose peak is 1).
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1); :math:`\sqrt{\beta_2}` also
      weights the estimate.
    eps: added to :math:`\sqrt{v}` (>= 0).
    d0: the initial (under-)estimate :math:`d_0` (> 0).
    weight_decay: decoupled decay :math:`\mu` (>= 0), scaled by :math:`d_k\gamma_k`.
    mask: which params decay: a pytree of bools or a callable of the params.
    bias_correction: multiply :math:`\gamma_k` by Adam's bias correction.

  Returns:
    An ``optax.GradientTransformation`` with state :class:`ScaleByDAdaptAdamState`;
    its ``update`` needs the params when ``weight_decay`` is not 0.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, adam_jax
    >>> tx = adam_jax.scale_by_dadapt_adam()
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(300):  # minimise |x|^2 with no learning rate to choose
    ...   updates, state = tx.update(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(state.d > 1.0), bool(jnp.all(jnp.abs(params) < 0.3))  # d grew from 1e-6
    (True, True)

  References:
    Defazio & Mishchenko, `Learning-Rate-Free Learning by D-Adaptation
    <https://arxiv.org/abs/2301.07733>`_, ICML 2023.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(learning_rate=learning_rate, eps=eps, weight_decay=weight_decay)
  numerics.check_range("d0", d0, 0.0, None, low_inclusive=False)
  decays = not (isinstance(weight_decay, (int, float)) and weight_decay == 0)

  def init_fn(params):
    check_float_leaves(params, "adam_jax.scale_by_dadapt_adam")
    mu, nu, s = _moments_init(params)
    sd = scalar_dtype(params)
    return ScaleByDAdaptAdamState(
        count=jnp.zeros([], jnp.int32), mu=mu, nu=nu, s=s,
        d=jnp.asarray(d0).astype(sd), r=jnp.zeros([], sd))

  def update_fn(updates, state, params=None):
    if decays and params is None:
      raise ValueError(
          "scale_by_dadapt_adam with weight_decay needs the params: call "
          "update(grads, state, params).")
    numerics.tree_check_same_structure(updates, state.mu)
    sd = state.d.dtype
    count = numerics.safe_increment(state.count)
    lam = (state.d * _gamma(learning_rate, b1, b2, state.count, count, bias_correction,
                            sd)).astype(sd)
    sb2 = jnp.sqrt(jnp.asarray(numerics.hyper(b2, sd), sd))
    flags = _decay_flags(mask, params, updates) if decays else None
    ps = params if decays else None

    def leaf(g, m, v, s, p, decay):
      cd = m.dtype
      rd = v.dtype
      g_c = g.astype(cd)
      lam_c = lam.astype(rd).astype(cd)
      b1_c, b2_r = numerics.hyper(b1, cd), numerics.hyper(b2, rd)
      sb2_r = sb2.astype(rd)
      eps_r = numerics.hyper(eps, rd)
      # <g_k, s_k> weighted by 1 / (sqrt(v_k) + eps)
      dot = real_dot(g_c, s / (jnp.sqrt(v) + eps_r).astype(cd), sd)
      m_new = b1_c * m + (1 - b1_c) * lam_c * g_c
      v_new = b2_r * v + (1 - b2_r) * abs_sq(g_c)
      s_new = sb2_r.astype(cd) * s + ((1 - sb2_r) * lam.astype(rd)).astype(cd) * g_c
      step = -m_new / (jnp.sqrt(v_new) + eps_r).astype(cd)
      if decay:
        step = step - (lam.astype(rd) * numerics.hyper(weight_decay, rd)).astype(cd) * (
            p.astype(cd))
      return step.astype(g.dtype), m_new, v_new, s_new, dot, _l1(s_new, sd)

    u, mu, nu, s, dots, l1s = map_leaves(leaf, updates, state.mu, state.nu, state.s, ps, flags,
                                         num_outputs=6)
    dot = sum(jax.tree.leaves(dots), jnp.zeros([], sd))
    s_l1 = sum(jax.tree.leaves(l1s), jnp.zeros([], sd))
    r = (sb2 * state.r + (1 - sb2) * lam * dot).astype(sd)
    d = _estimate(state.d, r, (1 - sb2) * s_l1, 1.0)
    return u, ScaleByDAdaptAdamState(count=count, mu=mu, nu=nu, s=s, d=d, r=r)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_prodigy(
    learning_rate: numerics.ScalarOrSchedule = 1.0,
    b1: Any = 0.9,
    b2: Any = 0.999,
    b3: Any | None = None,
    eps: Any = 1e-8,
    d0: Any = 1e-6,
    d_coef: Any = 1.0,
    *,
    weight_decay: Any = 0.0,
    mask: Any = None,
    bias_correction: bool = False,
    safeguard_warmup: bool = False,
) -> optax.GradientTransformation:
  r"""Prodigy: Adam whose learning rate :math:`d_k\gamma_k` is learnt from the distance travelled.

  The paper's "Prodigy (Adam version)", with :math:`m_0 = v_0 = s_0 = 0`,
  :math:`r_0 = 0`, :math:`x_0` the initial params, :math:`g_k` the gradient at
  :math:`x_k` and :math:`\beta_3 = \sqrt{\beta_2}` by default:

  .. math::

    m_{k+1} &= \beta_1 m_k + (1 - \beta_1)\, d_k g_k \\
    v_{k+1} &= \beta_2 v_k + (1 - \beta_2)\, d_k^2 g_k^2 \\
    r_{k+1} &= \beta_3 r_k + (1 - \beta_3)\, \gamma_k d_k^2 \langle g_k, x_0 - x_k \rangle \\
    s_{k+1} &= \beta_3 s_k + (1 - \beta_3)\, \gamma_k d_k^2 g_k \\
    d_{k+1} &= \max\!\left(d_k,\ c\, r_{k+1} / \|s_{k+1}\|_1\right) \\
    x_{k+1} &= x_k - \gamma_k d_k \left(\frac{m_{k+1}}{\sqrt{v_{k+1}} + d_k \epsilon}
               + \mu\, x_k\right)

  with :math:`c` = ``d_coef`` (1 in the paper) and :math:`\mu` the decoupled weight
  decay (0 by default). The updates are final (they hold the learning rate). The
  state keeps :math:`x_k - x_0` as the sum of the updates returned, in float32 (or
  the params' wider dtype): with bfloat16 params, whose first steps (about
  :math:`d_0`) round away, the estimate still grows and the params start to move.

  .. warning::
    Conventions. (1) The step uses :math:`d_k` in both places, as the algorithm
    box; the authors' released code and ``optax.contrib.prodigy`` put the *new*
    estimate :math:`d_{k+1}` into :math:`d\,\epsilon` (the two differ only where
    :math:`\epsilon` matters). (2) No bias correction by default, as the box and
    the released code's default; ``bias_correction=True`` multiplies
    :math:`\gamma_k` by :math:`\sqrt{1 - \beta_2^{k+1}} / (1 - \beta_1^{k+1})`,
    which ``optax.contrib.prodigy`` always does. (3) The released code scales
    :math:`r` and :math:`s` by :math:`1/d_0` and drops :math:`(1 - \beta_3)`;
    both cancel in the ratio, so the estimate is the same. (4)
    ``safeguard_warmup`` drops :math:`\gamma_k` from :math:`s_{k+1}` (the
    released code's option, for schedules with warm-up). (5) While
    :math:`s_{k+1} = 0` the estimate keeps :math:`d_k`. The code's
    ``growth_rate`` (unbounded by default) is not offered. (6) :math:`x_0 - x_k`
    is minus the sum of the updates returned (the released code and optax
    subtract the params, which bfloat16 params leave at 0 for the first
    steps): the same while the updates are applied as returned.

  Args:
    learning_rate: :math:`\gamma_k` (>= 0): a multiplier on the estimate, a float,
      an array or a schedule of the 0-based step count; 1 is the intended value
      (with a schedule, its peak).
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    b3: decay rate of the estimate's sums, in [0, 1); ``None`` for
      :math:`\sqrt{\beta_2}`.
    eps: added to :math:`\sqrt{v}`, times :math:`d_k` (>= 0).
    d0: the initial (under-)estimate :math:`d_0` (> 0).
    d_coef: :math:`c` (>= 0), multiplies every new estimate: above 1 for larger
      steps, below 1 for smaller.
    weight_decay: decoupled decay :math:`\mu` (>= 0), scaled by :math:`\gamma_k d_k`.
    mask: which params decay: a pytree of bools or a callable of the params.
    bias_correction: multiply :math:`\gamma_k` by Adam's bias correction.
    safeguard_warmup: leave :math:`\gamma_k` out of :math:`s_{k+1}`.

  Returns:
    An ``optax.GradientTransformation`` with state :class:`ScaleByProdigyState`;
    its ``update`` needs the params when ``weight_decay`` is not 0.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, adam_jax
    >>> tx = adam_jax.scale_by_prodigy()
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(200):  # minimise |x|^2 with no learning rate to choose
    ...   updates, state = tx.update(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(state.d > 0.1), bool(jnp.all(jnp.abs(params) < 0.3))  # d grew from 1e-6
    (True, True)

  References:
    Mishchenko & Defazio, `Prodigy: An Expeditiously Adaptive Parameter-Free
    Learner <https://arxiv.org/abs/2306.06101>`_, ICML 2024.
  """
  numerics.check_betas(b1=b1, b2=b2)
  if b3 is not None:
    numerics.check_betas(b3=b3)
  numerics.check_nonnegative(learning_rate=learning_rate, eps=eps, weight_decay=weight_decay,
                             d_coef=d_coef)
  numerics.check_range("d0", d0, 0.0, None, low_inclusive=False)
  decays = not (isinstance(weight_decay, (int, float)) and weight_decay == 0)

  def init_fn(params):
    check_float_leaves(params, "adam_jax.scale_by_prodigy")
    mu, nu, s = _moments_init(params)
    sd = scalar_dtype(params)
    return ScaleByProdigyState(
        count=jnp.zeros([], jnp.int32), mu=mu, nu=nu, s=s, delta=_zeros(params),
        d=jnp.asarray(d0).astype(sd), r=jnp.zeros([], sd))

  def update_fn(updates, state, params=None):
    if decays and params is None:
      raise ValueError(
          "scale_by_prodigy with weight_decay needs the params: call "
          "update(grads, state, params).")
    numerics.tree_check_same_structure(updates, state.mu)
    if decays:
      numerics.tree_check_same_structure(updates, params, what="params")
    sd = state.d.dtype
    count = numerics.safe_increment(state.count)
    gamma = _gamma(learning_rate, b1, b2, state.count, count, bias_correction, sd)
    d = state.d
    if b3 is None:
      beta3 = jnp.sqrt(jnp.asarray(numerics.hyper(b2, sd), sd))
    else:
      beta3 = jnp.asarray(numerics.hyper(b3, sd), sd)
    s_scale = (1 - beta3) * d * d * (1 if safeguard_warmup else gamma)  # on g_k in s_{k+1}
    flags = _decay_flags(mask, params, updates) if decays else None
    ps = params if decays else None

    def leaf(g, m, v, s, delta, x, decay):
      cd = m.dtype
      rd = v.dtype
      g_c = g.astype(cd)
      d_r = d.astype(rd)
      b1_c, b2_r = numerics.hyper(b1, cd), numerics.hyper(b2, rd)
      dot = -real_dot(g_c, delta, sd)  # <g_k, x_0 - x_k>, with x_k - x_0 = delta_k
      m_new = b1_c * m + (1 - b1_c) * d_r.astype(cd) * g_c
      v_new = b2_r * v + (1 - b2_r) * (d_r * d_r) * abs_sq(g_c)
      s_new = beta3.astype(rd).astype(cd) * s + s_scale.astype(rd).astype(cd) * g_c
      lr = (gamma * d).astype(rd)
      step = m_new / (jnp.sqrt(v_new) + d_r * numerics.hyper(eps, rd)).astype(cd)
      if decay:
        step = step + numerics.hyper(weight_decay, cd) * x.astype(cd)
      step = -lr.astype(cd) * step
      return step.astype(g.dtype), m_new, v_new, s_new, delta + step, dot, _l1(s_new, sd)

    u, mu, nu, s, delta, dots, l1s = map_leaves(
        leaf, updates, state.mu, state.nu, state.s, state.delta, ps, flags, num_outputs=7)
    dot = sum(jax.tree.leaves(dots), jnp.zeros([], sd))
    s_l1 = sum(jax.tree.leaves(l1s), jnp.zeros([], sd))
    r = (beta3 * state.r + (1 - beta3) * gamma * d * d * dot).astype(sd)
    new_d = _estimate(d, r, s_l1, d_coef)
    return u, ScaleByProdigyState(count=count, mu=mu, nu=nu, s=s, delta=delta, d=new_d, r=r)

  return optax.GradientTransformation(init_fn, update_fn)


__all__ = [
    "ScaleByDAdaptAdamState",
    "ScaleByProdigyState",
    "scale_by_dadapt_adam",
    "scale_by_prodigy",
]
