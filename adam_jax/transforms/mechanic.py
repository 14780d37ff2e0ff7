"""Mechanic (Cutkosky, Defazio & Mehta, 2023): learn the scale of any optimizer's updates."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_jax import _numerics as numerics
from adam_jax.transforms._common import (
  check_float_leaves,
  map_leaves,
  real_dot,
  scalar_dtype,
  zeros_like,
)

Array = jax.Array

_BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)


class MechanicState(NamedTuple):
  """State of :func:`mechanize`.

  ``optax.contrib.MechanicState`` has the same name but other fields (no
  ``delta``, which this state keeps; ``base_optimizer_state`` and ``x0`` where
  this one has ``inner_state`` and ``x_ref``), so it is a class of its own.
  """

  count: Array  # shape=(), dtype=int32; steps taken, saturating
  inner_state: optax.OptState  # the wrapped optimizer's state
  x_ref: optax.Params  # like params, dtype=param dtype; the reference point x_ref (initial params)
  delta: optax.Updates  # like params; dtype=param compute dtype (>= float32); Delta_t
  s: Array  # shape=(n,), dtype=widest real param dtype (>= float32); scales s_t, one per beta
  m: Array  # shape=(n,), dtype as s; running maximum m_t of |h|
  v: Array  # shape=(n,), dtype as s; second moment v_t of h
  r: Array  # shape=(n,), dtype as s; reward r_t


def mechanize(
    tx: optax.GradientTransformation,
    *,
    weight_decay: Any = 0.01,
    eps: Any = 1e-8,
    s_init: Any = 1e-8,
    betas: Any = _BETAS,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps any optimizer and learns the scale of its updates (Mechanic).

  With :math:`u_t` the update ``tx`` returns for the gradient :math:`g_t` at
  :math:`x_t`, :math:`x_{ref} = x_1` the initial params, :math:`\Delta_1 = 0`,
  :math:`s_1 = m_0 = v_0 = r_0 = 0` and, elementwise over the :math:`n` decay rates
  :math:`\beta` (the paper's Algorithm 1):

  .. math::

    \Delta_{t+1} &= \Delta_t + u_t \\
    h_t &= \left\langle \Delta_t,\ g_t + \lambda \|g_t\| \left(\textstyle\sum_i s_{t,i}\right)
           x_t / \|x_t\| \right\rangle \\
    m_t &= \max(\beta m_{t-1}, |h_t|) \\
    v_t &= \beta^2 v_{t-1} + h_t^2 \\
    r_t &= \max(0, \beta r_{t-1} - s_t h_t) \\
    W_t &= s_{init} m_t / n + r_t \\
    s_{t+1} &= W_t / (\sqrt{v_t} + \epsilon) \\
    x_{t+1} &= x_{ref} + \left(\textstyle\sum_i s_{t+1,i}\right) \Delta_{t+1}

  The update returned is :math:`x_{t+1} - x_t`. Use an inner optimizer whose
  learning rate is 1 (or a schedule with peak 1): Mechanic finds the scale
  :math:`\sum_i s_i`. The first two updates are zero (:math:`s_1 = 0`, and
  :math:`h_1 = 0` since :math:`\Delta_1 = 0`); the scale then grows from about
  :math:`s_{init}`.

  .. warning::
    Conventions. (1) :math:`\Delta_t` is kept in the state, one buffer more than
    ``optax.contrib.mechanize``, which recomputes it as :math:`(x_t - x_{ref}) /
    (\sum_i s_{t,i} + \epsilon)`: exact only up to :math:`\epsilon / \sum_i s`
    and only while nothing else moves the params. (2) The paper's box as we read
    it, where optax (written by the authors after the paper) differs: the scales
    start at :math:`s_1 = 0`, so :math:`s_{init}` enters only through the wealth
    (optax starts them at :math:`s_{init}`, which makes its first updates
    nonzero); :math:`m_t` takes :math:`|h_t|` (optax: :math:`|h_t| + \epsilon`);
    :math:`h_t` is not clipped (optax clips it to :math:`\pm m_{t-1}`, an
    addition after the paper); :math:`s_{init}` defaults to the paper's
    :math:`10^{-8}` (optax: :math:`10^{-6}`). The start :math:`s_1` is the detail
    we are least sure the box fixes; :math:`s_1 = 0` is what makes :math:`s_{init}`
    the scale the tuner starts from. (3) :math:`x_{ref}` is the params given to
    ``init`` (optax takes those of the first ``update``). (4) Where
    :math:`\|x_t\| = 0` the decay term is 0 (the box divides by it). ``tx``
    receives the raw gradient; Mechanic's decay only enters :math:`h_t`.

  Args:
    tx: the optimizer to tune (an optax ``GradientTransformation``; extra keyword
      arguments of ``update`` are passed on to it).
    weight_decay: :math:`\lambda` (>= 0), a decay inside :math:`h_t` only.
    eps: :math:`\epsilon` (>= 0), in the denominator of :math:`s_{t+1}`.
    s_init: :math:`s_{init}` (> 0), the scale the tuner starts from.
    betas: the :math:`n` decay rates, each in [0, 1] (a sequence or a 1-D array;
      default :math:`1 - 10^{-i}`, :math:`i = 1..6`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`MechanicState`;
    its ``update`` needs the params.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, adam_jax
    >>> tx = adam_jax.mechanize(adam_jax.adam(1.0))  # the inner learning rate is 1
    >>> params = jnp.array([3.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(300):  # minimise |x|^2
    ...   updates, state = tx.update(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(jnp.all(jnp.abs(params) < 0.3)), bool(state.s.sum() > 1e-3)
    (True, True)

  References:
    Cutkosky, Defazio & Mehta, `Mechanic: A Learning Rate Tuner
    <https://arxiv.org/abs/2306.00144>`_, NeurIPS 2023.
  """
  if not hasattr(tx, "init") or not hasattr(tx, "update"):
    raise ValueError(f"mechanize needs an optax GradientTransformation, got {tx!r}")
  numerics.check_nonnegative(weight_decay=weight_decay, eps=eps)
  numerics.check_range("s_init", s_init, 0.0, None, low_inclusive=False)
  for b in (betas if isinstance(betas, (tuple, list)) else [betas]):
    numerics.check_range("betas", b, 0.0, 1.0, high_inclusive=True)
  inner = optax.with_extra_args_support(tx)
  n = len(betas) if isinstance(betas, (tuple, list)) else int(jnp.shape(betas)[0])

  def init_fn(params):
    check_float_leaves(params, "adam_jax.mechanize")
    sd = scalar_dtype(params)
    zeros = jnp.zeros([n], sd)
    return MechanicState(
        count=jnp.zeros([], jnp.int32),
        inner_state=inner.init(params),
        x_ref=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
        delta=jax.tree.map(
            lambda p: zeros_like(p, numerics.compute_dtype(jnp.result_type(p))), params),
        s=zeros, m=zeros, v=zeros, r=zeros)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("mechanize needs the params: call update(grads, state, params).")
    numerics.tree_check_same_structure(updates, state.delta)
    numerics.tree_check_same_structure(updates, params, what="params")
    sd = state.s.dtype
    u, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    numerics.tree_check_same_structure(u, updates, what="gradient")

    def sums(g, delta, x):
      cd = delta.dtype
      g_c, x_c = g.astype(cd), x.astype(cd)
      return (real_dot(delta, g_c, sd), real_dot(delta, x_c, sd),
              real_dot(g_c, g_c, sd), real_dot(x_c, x_c, sd))

    parts = map_leaves(sums, updates, state.delta, params, num_outputs=4)
    zero = jnp.zeros([], sd)
    dg, dx, gg, xx = (sum(jax.tree.leaves(p), zero) for p in parts)
    s_sum = jnp.sum(state.s)
    x_norm = jnp.sqrt(xx)
    # lambda ||g|| (sum s) / ||x||, 0 where x = 0
    c = jnp.where(x_norm > 0,
                  numerics.hyper(weight_decay, sd) * jnp.sqrt(gg) * s_sum
                  / jnp.where(x_norm > 0, x_norm, 1), 0).astype(sd)
    h = dg + c * dx
    beta = jnp.asarray(betas).astype(sd)
    m = jnp.maximum(beta * state.m, jnp.abs(h))
    v = beta * beta * state.v + h * h
    r = jnp.maximum(0, beta * state.r - state.s * h).astype(sd)
    wealth = numerics.hyper(s_init, sd) * m / n + r
    s = (wealth / (jnp.sqrt(v) + numerics.hyper(eps, sd))).astype(sd)
    scale = jnp.sum(s)

    def step(ui, delta, x0, x):
      cd = delta.dtype
      new_delta = delta + ui.astype(cd)
      new_x = x0.astype(cd) + scale.astype(numerics.real_dtype(cd)).astype(cd) * new_delta
      return (new_x - x.astype(cd)).astype(ui.dtype), new_delta

    new_u, new_delta = map_leaves(step, u, state.delta, state.x_ref, params, num_outputs=2)
    return new_u, MechanicState(count=numerics.safe_increment(state.count),
                                inner_state=inner_state, x_ref=state.x_ref, delta=new_delta,
                                s=s, m=m, v=v, r=r)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["MechanicState", "mechanize"]
