"""eps analysis: how much of the model eps controls, and the learning rate Adam applies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adam_jax import _numerics as numerics
from adam_jax.diagnostics._state import (
  DEFAULT_B2,
  find_moments,
  merge_paths,
  resolve_eps,
)

Array = jax.Array


def eps_dominated_fraction(
    opt_state: Any, eps: Any = None, *, b2: Any = DEFAULT_B2, per_leaf: bool = False
) -> Array | dict[str, Array]:
  r"""The fraction of parameters whose step eps, not the gradient history, sets.

  .. math::

    \hat v_t = v_t / (1 - \beta_2^t), \qquad
    \text{fraction} = \frac{1}{N} \#\{\, i : \sqrt{\hat v_{t,i}} < \epsilon \,\}

  counted over all :math:`N` elements of every Adam-like state in ``opt_state``
  (for AMSGrad, over the running maximum). Elements whose gradient has always been
  zero count as dominated. Runs under ``jit`` and ``vmap``.

  Args:
    opt_state: an optimizer state holding one or more Adam-like states (a
      ``NamedTuple`` with fields ``count`` and ``nu``), at any depth.
    eps: the optimizer's eps (default ``1e-8``, Adam's).
    b2: the optimizer's second-moment decay, for the bias correction.
    per_leaf: return a dict of fractions keyed by leaf path instead.

  Returns:
    A float32 scalar (NaN before the first update), or a dict of them.

  Raises:
    ValueError: if no Adam-like state is found, or eps or b2 is out of range.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adam(1e-3)
    >>> params = {"w": jnp.ones(4)}
    >>> _, state = tx.update({"w": jnp.array([1e-12, 1e-12, 1.0, 1.0])}, tx.init(params))
    >>> adam_jax.diagnostics.eps_dominated_fraction(state, eps=1e-8)
    Array(0.5, dtype=float32)

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014. The bias-corrected :math:`\hat v_t` and the
    denominator :math:`\sqrt{\hat v_t} + \epsilon` are its Algorithm 1; the
    fraction itself is a diagnostic of this library, not from a paper.
  """
  eps = resolve_eps(eps)
  moments = find_moments(opt_state, b2)
  counts, sizes, per = [], [], {}
  for m, names in zip(moments, merge_paths(moments)):
    for name, v in zip(names, m.dominated(eps)):
      n = jnp.sum(v, dtype=jnp.int32) if v.size else jnp.zeros((), jnp.int32)
      frac = n.astype(jnp.float32) / max(v.size, 1)
      per[name] = jnp.where(m.count > 0, frac, jnp.nan).astype(jnp.float32)
      counts.append(jnp.where(m.count > 0, n.astype(jnp.float32), jnp.nan))
      sizes.append(v.size)
  if per_leaf:
    return per
  total = sum(counts) if counts else jnp.zeros((), jnp.float32)
  return (total / max(sum(sizes), 1)).astype(jnp.float32)


class EpsAdvice(NamedTuple):
  """What :func:`advise_eps` found."""

  dominated_fraction: float  # share of elements with sqrt(v_hat) > 0 below eps
  suggested_eps: float  # eps to use (the given one when it is fine)
  message: str  # one line for a log


def _fmt(x: float) -> str:
  return f"{x:.0e}" if x != 0 else "0"


def advise_eps(
    opt_state: Any, eps: Any = None, *, b2: Any = DEFAULT_B2, tolerance: float = 0.01
) -> EpsAdvice:
  r"""Says whether eps dominates Adam's step, and suggests a value.

  The rule: let :math:`q` be the ``100 * tolerance``-th percentile of
  :math:`\sqrt{\hat v_t}` over the elements whose gradient has not always been zero.
  If more than ``tolerance`` of those elements have :math:`\sqrt{\hat v_t} <
  \epsilon`, suggest the power of ten at or below :math:`q / 10`; then at most
  ``tolerance`` of them are dominated, and eps still keeps the step bounded where
  :math:`\hat v_t` is smallest. Otherwise keep eps.

  Elements whose gradient has always been exactly zero (dead units, constant input
  pixels) are left out: no eps makes their step adaptive. Call this on a state
  after some training (a few hundred steps), once :math:`\hat v_t` has settled.

  Args:
    opt_state: an optimizer state holding an Adam-like state, at any depth.
    eps: the optimizer's eps (default ``1e-8``).
    b2: the optimizer's second-moment decay, for the bias correction.
    tolerance: the share of elements eps may dominate, in (0, 1).

  Returns:
    An :class:`EpsAdvice`.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adam(1e-3, eps=1e-3)
    >>> params = {"w": jnp.ones(100)}
    >>> _, state = tx.update({"w": jnp.full(100, 1e-5)}, tx.init(params))
    >>> advice = adam_jax.diagnostics.advise_eps(state, eps=1e-3)
    >>> advice.dominated_fraction, advice.suggested_eps
    (1.0, 1e-06)
  """
  eps = float(resolve_eps(eps))
  numerics.check_range("tolerance", tolerance, 0.0, 1.0, low_inclusive=False)
  moments = find_moments(opt_state, b2)
  counts = [int(jax.device_get(m.count)) for m in moments]
  roots = [
      np.sqrt(np.asarray(jax.device_get(v), np.float64)).ravel()
      for m in moments
      for v in m.v_hat()
  ]
  roots = np.concatenate(roots) if roots else np.zeros(0)
  if roots.ndim != 1 or min(counts) == 0 or not np.any(roots > 0):
    return EpsAdvice(
        math.nan, eps, "no gradient statistics yet: take some steps before asking about eps"
    )
  live = roots[roots > 0]
  dead = 1.0 - live.size / roots.size
  frac = float(np.mean(live < eps))
  dead_txt = f" ({dead:.1%} of elements have only seen zero gradients; left out)" if dead else ""
  if frac <= tolerance:
    return EpsAdvice(
        frac,
        eps,
        f"eps={_fmt(eps)} sets the step of {frac:.2%} of parameters: keep it{dead_txt}",
    )
  q = float(np.percentile(live, 100 * tolerance))
  # The power of ten at or below q / 10 (allowing for float32 rounding of q).
  suggested = 10.0 ** math.floor(math.log10(q / 10) + 1e-5)
  return EpsAdvice(
      frac,
      suggested,
      f"eps={_fmt(eps)} sets the step of {frac:.1%} of parameters (Adam acts like SGD "
      f"with momentum there); try eps={_fmt(suggested)}, a tenth of the "
      f"{100 * tolerance:g}% quantile of sqrt(v_hat){dead_txt}",
  )


# ----------------------------------------------------------------------------- learning rate


def effective_learning_rate(
    opt_state: Any,
    learning_rate: numerics.ScalarOrSchedule,
    *,
    eps: Any = None,
    b2: Any = DEFAULT_B2,
    percentiles: Sequence[float] = (5, 50, 95),
) -> dict[str, Array]:
  r"""Per-leaf percentiles of Adam's per-element learning rate.

  .. math::

    \eta^{\text{eff}}_{t,i} = \eta_t / \left(\sqrt{\hat v_{t,i}} + \epsilon\right)

  the factor Adam multiplies the (bias-corrected) momentum by. A schedule is
  evaluated at the state's count, the learning rate of the next step.

  Args:
    opt_state: an optimizer state holding an Adam-like state, at any depth.
    learning_rate: a float, an array or a schedule (a callable of the count).
    eps: the optimizer's eps (default ``1e-8``).
    b2: the optimizer's second-moment decay, for the bias correction.
    percentiles: which percentiles, in [0, 100].

  Returns:
    A dict from leaf path to a float32 array with one entry per percentile.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.adam(1e-3, eps=0.0)
    >>> params = {"w": jnp.ones(2)}
    >>> _, state = tx.update({"w": jnp.array([1.0, 4.0])}, tx.init(params))
    >>> adam_jax.diagnostics.effective_learning_rate(state, 1e-3, eps=0.0, percentiles=(0, 100))
    {'w': Array([0.00025, 0.001  ], dtype=float32)}

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014: its Algorithm 1's step
    :math:`\eta \hat m_t / (\sqrt{\hat v_t} + \epsilon)`, of which this is the
    factor on :math:`\hat m_t`.
  """
  eps = resolve_eps(eps)
  for q in percentiles:
    numerics.check_range("percentiles", q, 0.0, 100.0, high_inclusive=True)
  if not callable(learning_rate):
    numerics.check_nonnegative(learning_rate=learning_rate)
  moments = find_moments(opt_state, b2)
  qs = jnp.asarray(list(percentiles), jnp.float32)
  out = {}
  for m, names in zip(moments, merge_paths(moments)):
    lr = numerics.resolve(learning_rate, m.count)
    lr = numerics.hyper(lr, jnp.float32)
    for name, v in zip(names, m.v_hat()):
      eff = lr / (jnp.sqrt(v) + numerics.hyper(eps, jnp.float32))
      if v.size == 0:
        out[name] = jnp.full(qs.shape, jnp.nan, jnp.float32)
      else:
        out[name] = jnp.percentile(eff.ravel(), qs).astype(jnp.float32)
  return out

