"""Schedule-free AdamW (Defazio et al., 2024): no decay schedule, an averaged iterate.

The params a training loop holds are the *gradient point* :math:`y_t`. The state
keeps the base sequence :math:`z_t`; the averaged sequence :math:`x_t` (the one to
evaluate and to ship) is recovered from them by :func:`schedule_free_eval_params`,
so the state costs two buffers per param, as Adam's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _numerics as numerics
from adam_jax.transforms._common import abs_sq, check_float_leaves, map_leaves, zeros_like

Array = jax.Array


class ScheduleFreeAdamWState(NamedTuple):
  """State of :func:`scale_by_schedule_free_adam`.

  ``optax.contrib.ScheduleFreeState`` keeps the same sequence ``z`` and ``b1`` but
  another weight (``weight_sum`` of ``max_lr ** weight_lr_power``, ``max_lr``) and
  the base optimizer's own state, so this is a class of its own.
  """

  count: Array  # shape=(), dtype=int32; steps taken, saturating
  z: optax.Params  # like params, dtype=state_dtype (default: param dtype); base sequence z_t
  nu: optax.Updates  # like params, real; dtype=nu_dtype; second moment v_t
  lr_sq_sum: Array  # shape=(), dtype=widest real param dtype (>= float32); sum of gamma_i**p
  b1: Array  # shape=(), dtype=widest real param dtype (>= float32); for eval params


def _real_compute_dtype(params: Any) -> jnp.dtype:
  leaves = jax.tree.leaves(params)
  if not leaves:
    return jnp.dtype(jnp.float32)
  return numerics.real_dtype(numerics.compute_dtype(*[jnp.asarray(p).dtype for p in leaves]))


def _warmup_factor(warmup_steps: Any, t: Array) -> Array:
  """``min(1, t / warmup_steps)``, or 1 without warm-up (``None`` or 0)."""
  if warmup_steps is None:
    return jnp.ones([], t.dtype)
  if isinstance(warmup_steps, (int, float)):
    if warmup_steps <= 0:
      return jnp.ones([], t.dtype)
    return jnp.minimum(1.0, t / warmup_steps)
  w = numerics.hyper(warmup_steps, t.dtype)
  return jnp.where(w > 0, jnp.minimum(1.0, t / jnp.where(w > 0, w, 1.0)), 1.0).astype(t.dtype)


def scale_by_schedule_free_adam(
    learning_rate: numerics.ScalarOrSchedule = 2.5e-3,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    weight_decay: ArrayLike = 0.0,
    warmup_steps: ArrayLike | None = None,
    weight_lr_power: ArrayLike = 2.0,
    state_dtype: DTypeLike | None = None,
    mask: optax.MaskOrFn = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Schedule-free AdamW's step: the updates move the params from :math:`y_t` to :math:`y_{t+1}`.

  The paper's Algorithm 1, with :math:`z_1 = x_1 = y_1` the initial params and
  :math:`g_t` the gradient at :math:`y_t` (the params the loop holds):

  .. math::

    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    \gamma_t &= \gamma \sqrt{1 - \beta_2^t} \min(1, t / T_{warmup}) \\
    z_{t+1} &= z_t - \gamma_t g_t / (\sqrt{v_t} + \epsilon) - \gamma_t \lambda y_t \\
    c_{t+1} &= \gamma_t^p / \textstyle\sum_{i=1}^t \gamma_i^p \\
    x_{t+1} &= (1 - c_{t+1}) x_t + c_{t+1} z_{t+1} \\
    y_{t+1} &= (1 - \beta_1) z_{t+1} + \beta_1 x_{t+1}

  with :math:`p` = ``weight_lr_power`` (2, the paper's). The update returned is
  :math:`y_{t+1} - y_t = c_{t+1}(z_t - y_t) + (1 - \beta_1(1 - c_{t+1}))(z_{t+1} - z_t)`,
  computed without forming :math:`x`. Unlike the other
  ``scale_by_*`` transformations the learning rate is part of the step (it weights
  the average), so the updates are final: add them to the params, do not chain
  :func:`adam_jax.scale_by_learning_rate` after it.

  .. warning::
    Evaluate (and checkpoint for inference) :math:`x_t`, not the params the loop
    holds: get it with :func:`schedule_free_eval_params`. The average's weights
    are the paper's :math:`\gamma_t^p`, with :math:`\gamma_t` holding Adam's bias
    correction :math:`\sqrt{1 - \beta_2^t}`. The reference PyTorch code weights by
    the running maximum of :math:`\gamma_t^p` (the same for a non-decreasing
    :math:`\gamma_t`); ``optax.contrib.schedule_free_adamw`` by the running maximum
    of the *scheduled rate* to the power :math:`p`, without
    :math:`\sqrt{1 - \beta_2^t}`, so its first steps weigh far more in
    :math:`x_t` (its ``eps`` also sits on the bias-corrected :math:`\sqrt{\hat v_t}`):
    the two are different methods (``docs/conventions.md`` gives the numbers).

  Args:
    learning_rate: :math:`\gamma` (>= 0): a float, an array or a schedule of the
      0-based step count. A constant is the intended use.
    b1: interpolation weight :math:`\beta_1`, in (0, 1) (0 would leave no way to
      recover :math:`x` from the params).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{v_t}` (>= 0).
    weight_decay: :math:`\lambda` (>= 0), taken at :math:`y_t` as in the paper.
    warmup_steps: :math:`T_{warmup}` (>= 0); ``None`` or 0 for none.
    weight_lr_power: :math:`p` (>= 0), the power of :math:`\gamma_t` that weights
      the average (optax's name).
    state_dtype: dtype of :math:`z_t`; default the param's dtype (optax's name).
    mask: which params decay: a pytree of bools or a callable of the params.
    nu_dtype: dtype of the second moment; default the param's real dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`ScheduleFreeAdamWState`; its ``update`` needs the params.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_jax
    >>> tx = adam_jax.scale_by_schedule_free_adam(0.1)
    >>> params = {"w": jnp.array([1.0, -1.0])}
    >>> state = tx.init(params)
    >>> for _ in range(3):  # minimise |w|^2 / 2: the gradient is w
    ...   updates, state = tx.update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params["w"].round(4)  # y_4, where the gradient is taken
    Array([ 0.7694, -0.7694], dtype=float32)
    >>> adam_jax.schedule_free_eval_params(state, params)["w"].round(3)  # x_4, to evaluate
    Array([ 0.776, -0.776], dtype=float32)

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, `The Road Less
    Scheduled <https://arxiv.org/abs/2405.15682>`_, NeurIPS 2024.
  """
  numerics.check_range("b1", b1, 0.0, 1.0, low_inclusive=False)
  numerics.check_betas(b2=b2)
  numerics.check_nonnegative(learning_rate=learning_rate, eps=eps,
                             weight_decay=weight_decay, warmup_steps=warmup_steps,
                             weight_lr_power=weight_lr_power)
  nu_dtype = None if nu_dtype is None else jnp.dtype(nu_dtype)
  state_dtype = None if state_dtype is None else jnp.dtype(state_dtype)

  def init_fn(params):
    check_float_leaves(params, "adam_jax.scale_by_schedule_free_adam")
    z = jax.tree.map(lambda p: jnp.array(p, dtype=state_dtype, copy=True), params)
    nu = jax.tree.map(
        lambda p: zeros_like(p, nu_dtype or numerics.real_dtype(jnp.result_type(p))), params)
    rd = _real_compute_dtype(params)
    return ScheduleFreeAdamWState(
        count=jnp.zeros([], jnp.int32),
        z=z,
        nu=nu,
        lr_sq_sum=jnp.zeros([], rd),
        b1=jnp.asarray(b1).astype(rd),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(
          "scale_by_schedule_free_adam needs the params: call update(grads, state, params)."
      )
    numerics.tree_check_same_structure(updates, state.z)
    numerics.tree_check_same_structure(updates, params, what="params")
    count = numerics.safe_increment(state.count)
    sd = state.lr_sq_sum.dtype  # the scalars are computed in the widest param dtype
    t = count.astype(sd)
    lr = numerics.resolve(learning_rate, state.count)
    # gamma_t = gamma * sqrt(1 - b2^t) * min(1, t / T_warmup)
    gamma = (
        numerics.hyper(lr, sd)
        * jnp.sqrt(numerics.bias_correction(b2, count, sd))
        * _warmup_factor(warmup_steps, t)
    ).astype(sd)
    if isinstance(weight_lr_power, (int, float)) and weight_lr_power == 2:
      gamma_sq = gamma * gamma
    else:
      gamma_sq = (gamma ** numerics.hyper(weight_lr_power, sd)).astype(sd)
    lr_sq_sum = state.lr_sq_sum + gamma_sq
    # c_{t+1} = gamma_t^p / sum_i gamma_i^p (0 while every gamma so far is 0)
    c = jnp.where(lr_sq_sum > 0, gamma_sq / jnp.where(lr_sq_sum > 0, lr_sq_sum, 1.0), 0.0)

    if mask is None:
      decays = jax.tree.map(lambda _: True, updates)
    else:
      mask_t = numerics.mask_tree(mask, params)
      decays = jax.tree.map(
          lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask_t, updates,
          is_leaf=lambda x: isinstance(x, bool),
      )

    def leaf(g, z, v, y, decay):
      cd = numerics.compute_dtype(g.dtype, z.dtype, y.dtype)
      rd = numerics.real_dtype(cd)
      g_c, z_c, y_c = g.astype(cd), z.astype(cd), y.astype(cd)
      b1_c, b2_r = numerics.hyper(b1, rd), numerics.hyper(b2, rd)
      gamma_c, c_c = gamma.astype(rd), c.astype(rd)
      # v_t = b2 v_{t-1} + (1 - b2) g_t^2
      v_c = b2_r * v.astype(rd) + (1 - b2_r) * abs_sq(g_c)
      # z_{t+1} - z_t = -gamma_t (g_t / (sqrt(v_t) + eps) + lambda y_t)
      direction = g_c / (jnp.sqrt(v_c) + numerics.hyper(eps, rd)).astype(cd)
      if decay:
        direction = direction + numerics.hyper(weight_decay, cd) * y_c
      dz = -gamma_c.astype(cd) * direction
      # y_{t+1} - y_t = c (z_t - y_t) + (1 - b1 (1 - c)) (z_{t+1} - z_t)
      update = c_c.astype(cd) * (z_c - y_c) + (1 - b1_c * (1 - c_c)).astype(cd) * dz
      return update.astype(g.dtype), (z_c + dz).astype(z.dtype), v_c.astype(v.dtype)

    u, z, nu = map_leaves(leaf, updates, state.z, state.nu, params, decays, num_outputs=3)
    new_state = ScheduleFreeAdamWState(
        count=count, z=z, nu=nu, lr_sq_sum=lr_sq_sum, b1=state.b1
    )
    return u, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _find_state(state: Any) -> ScheduleFreeAdamWState:
  found = [
      s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, ScheduleFreeAdamWState))
      if isinstance(s, ScheduleFreeAdamWState)
  ]
  if len(found) != 1:
    raise ValueError(
        "schedule_free_eval_params needs the state of exactly one schedule-free "
        f"transformation (from schedule_free_adamw); found {len(found)}."
    )
  return found[0]


def schedule_free_eval_params(state: Any, params: Any) -> Any:
  r"""The averaged params :math:`x_t` to evaluate, from the state and the training params.

  .. math::

    x_t = \left(y_t - (1 - \beta_1) z_t\right) / \beta_1

  Args:
    state: the optimizer state of :func:`schedule_free_adamw` (or of any chain
      holding one :func:`scale_by_schedule_free_adam`).
    params: the params the training loop holds (:math:`y_t`).

  Returns:
    A pytree like ``params`` (same dtypes) holding :math:`x_t`. Before the first
    step it equals ``params``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> params = {"w": jnp.ones(2)}
    >>> state = adam_jax.schedule_free_adamw(1e-2).init(params)
    >>> adam_jax.schedule_free_eval_params(state, params)["w"]
    Array([1., 1.], dtype=float32)

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, `The Road Less
    Scheduled <https://arxiv.org/abs/2405.15682>`_, NeurIPS 2024 (its
    :math:`y = (1 - \beta_1) z + \beta_1 x`, solved for :math:`x`).
  """
  sf = _find_state(state)
  numerics.tree_check_same_structure(params, sf.z, what="schedule-free state")

  def leaf(y, z):
    cd = numerics.compute_dtype(jnp.asarray(y).dtype, z.dtype)
    b1 = sf.b1.astype(numerics.real_dtype(cd)).astype(cd)
    return ((y.astype(cd) - (1 - b1) * z.astype(cd)) / b1).astype(jnp.asarray(y).dtype)

  return jax.tree.map(leaf, params, sf.z)


__all__ = [
    "ScheduleFreeAdamWState",
    "scale_by_schedule_free_adam",
    "schedule_free_eval_params",
]
