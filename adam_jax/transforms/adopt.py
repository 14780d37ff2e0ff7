"""ADOPT (Taniguchi et al., 2024): Adam that converges for any ``b2``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _numerics as numerics
from adam_jax.transforms._common import abs_sq, moment_transform

Array = jax.Array


def _clip(n: Array, bound: Array) -> Array:
  """Clips ``n`` to ``[-bound, bound]`` (complex: its magnitude to ``bound``)."""
  if jnp.iscomplexobj(n):
    mag = jnp.abs(n)
    return n * jnp.where(mag > bound, bound / jnp.where(mag > bound, mag, 1), 1).astype(n.dtype)
  return jnp.clip(n, -bound, bound)


def scale_by_adopt(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.9999,
    eps: ArrayLike = 1e-6,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[Array], Array] | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Rescales updates as ADOPT: normalise by the *previous* second moment, then average.

  The first call only sets :math:`v_0 = g_0^2` and returns zero updates. Then, for
  :math:`t = 1, 2, \dots` (the paper's Algorithm 2, clipped ADOPT):

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\,
           \mathrm{clip}\!\left(g_t / \max(\sqrt{v_{t-1}}, \epsilon),\ t^{1/4}\right) \\
    u_t &= m_t \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2

  Since :math:`v_{t-1}` does not contain :math:`g_t`, the step is not correlated
  with the current gradient: this is what removes Adam's non-convergence for small
  :math:`\beta_2` (Reddi et al.'s counterexample). There is no bias correction: the
  first moment averages normalised gradients, and :math:`v` starts at
  :math:`g_0^2`, not 0.

  .. warning::
    ``eps`` is a floor on :math:`\sqrt{v}` (``max``), not added to it, and its
    default is 1e-6 (the paper's code). ``use_clipping=False`` gives the paper's
    Algorithm 1 (the first version of the method).

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: floor on :math:`\sqrt{v_{t-1}}` (> 0).
    mu_dtype: dtype of the first moment; default the param's dtype.
    nesterov: return :math:`\beta_1 m_t + (1 - \beta_1) n_t` (the first moment
      updated once more with the same normalised gradient :math:`n_t`), as
      ``optax.contrib.scale_by_adopt(nesterov=True)``.
    use_clipping: clip the normalised gradient (the paper's final algorithm, on
      by default; optax's name).
    clip_value_fn: the clip bound as a function of the 0-based step :math:`t`;
      ``None`` for :math:`t^{1/4}` (the paper's, and optax's default). ``None``
      rather than a function as the default, because ``optax.inject_hyperparams``
      takes every function it is given for a schedule.
    nu_dtype: dtype of the second moment; default the param's real dtype.

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByAdamState``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.scale_by_adopt()
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.array([2.0, -1.0]), state)  # sets v_0 only
    >>> u
    Array([0., 0.], dtype=float32)
    >>> u, state = tx.update(jnp.array([2.0, -1.0]), state)  # (1 - b1) g / |g_0|
    >>> u
    Array([ 0.1, -0.1], dtype=float32)

  References:
    Taniguchi, Harada, Minegishi, Oshima, Jeong, Nagahara, Iiyama, Suzuki, Iwasawa
    & Matsuo, `ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate
    <https://arxiv.org/abs/2411.02853>`_, NeurIPS 2024.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_range("eps", eps, 0.0, None, low_inclusive=False)
  if clip_value_fn is not None and not callable(clip_value_fn):
    raise TypeError(f"clip_value_fn must be a function of the step or None, got {clip_value_fn!r}")

  def leaf(g, mu, nu, count):
    # The paper's t is the number of previous calls: the first call is its step 0,
    # which only sets v_0 = g_0^2.
    t = count - 1
    first = t == 0
    cd = numerics.compute_dtype(g.dtype, mu.dtype)
    rd = numerics.real_dtype(cd)
    g_c = g.astype(cd)
    b1_c, b2_r = numerics.hyper(b1, cd), numerics.hyper(b2, rd)
    nu_prev = nu.astype(rd)
    g_sq = abs_sq(g_c)
    # g_t / max(sqrt(v_{t-1}), eps), clipped to t^(1/4)
    normed = g_c / jnp.maximum(jnp.sqrt(nu_prev), numerics.hyper(eps, rd)).astype(cd)
    if use_clipping:
      if clip_value_fn is None:
        bound = t.astype(rd) ** 0.25
      else:
        bound = jnp.asarray(clip_value_fn(t)).astype(rd)
      normed = _clip(normed, bound)
    mu_c = b1_c * mu.astype(cd) + (1 - b1_c) * normed
    nu_c = b2_r * nu_prev + (1 - b2_r) * g_sq
    mu_c = jnp.where(first, mu.astype(cd), mu_c)
    nu_c = jnp.where(first, g_sq, nu_c)
    step = b1_c * mu_c + (1 - b1_c) * normed if nesterov else mu_c
    update = jnp.where(first, jnp.zeros_like(mu_c), step)
    return update.astype(g.dtype), mu_c.astype(mu.dtype), nu_c.astype(nu.dtype)

  return moment_transform(leaf, mu_dtype, nu_dtype, who="adam_jax.scale_by_adopt")


__all__ = ["scale_by_adopt"]
