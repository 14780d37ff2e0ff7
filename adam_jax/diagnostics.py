"""Diagnostics: what eps, the learning rate and the moments do inside Adam.

Adam's step for one parameter is :math:`\\eta\\, \\hat m_t / (\\sqrt{\\hat v_t} + \\epsilon)`.
Where :math:`\\sqrt{\\hat v_t} \\ll \\epsilon`, eps and not the gradient history sets the
step and Adam behaves like SGD with momentum at learning rate :math:`\\eta / \\epsilon`;
where :math:`\\sqrt{\\hat v_t} \\gg \\epsilon` the step is adaptive. The functions here read
an optimizer state and say which regime each parameter is in:

* :func:`eps_dominated_fraction` and :func:`advise_eps`: how much of the model eps
  controls, and a value of eps that controls almost none of it.
* :func:`effective_learning_rate`: per-leaf percentiles of :math:`\\eta / (\\sqrt{\\hat
  v_t} + \\epsilon)`.
* :func:`monitor`: a wrapper transformation recording, inside the compiled step,
  update and parameter RMS, their ratio, eps dominance and non-finite gradients.
* :func:`summarize` and :func:`plot_history`: named Python floats for a logger, and
  a figure of a run.

The Adam-like state is found anywhere inside chained or wrapped states: any
``NamedTuple`` with fields ``count`` and ``nu`` (``ScaleByAdamState``,
``ScaleByAmsgradState``, and optax's states of the same names, ``ScaleByBeliefState``).
States do not record ``eps`` or ``b2``; pass the values the optimizer was built with
(the defaults are Adam's, ``1e-8`` and ``0.999``).

.. warning::
  The second moment is read as a running mean of squared gradients. For Adamax,
  whose ``nu`` holds the infinity norm, and RAdam before its rectification switches
  on, the eps statistics do not describe the step taken. ``eps_root`` is ignored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import numerics

Array = jax.Array

_DEFAULT_EPS = 1e-8
_DEFAULT_B2 = 0.999
_INT32_MAX = np.iinfo(np.int32).max


# ----------------------------------------------------------------------------- finding state


def _is_adam_like(node: Any) -> bool:
  fields = getattr(node, "_fields", None)
  return isinstance(node, tuple) and fields is not None and "count" in fields and "nu" in fields


def _is_monitor_state(node: Any) -> bool:
  return isinstance(node, MonitorState)


def _find(tree: Any, pred: Callable[[Any], bool]) -> list[tuple[Any, Any]]:
  """``(path, node)`` for every node of ``tree`` matching ``pred`` (outermost first)."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=pred)[0]
  return [(path, node) for path, node in flat if pred(node)]


def _path_str(path: Sequence[Any]) -> str:
  """``"layers/0/kernel"`` for a key path (a trailing ``.value`` of Flax NNX dropped)."""
  path = tuple(path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return jax.tree_util.keystr(path, simple=True, separator="/") or "."


def _scalar(x: Any) -> Array:
  """The array inside ``x`` (unwraps a Flax NNX variable)."""
  leaves = jax.tree.leaves(x)
  if len(leaves) != 1:
    raise ValueError(f"expected one array for the step count, got {len(leaves)}")
  count = jnp.asarray(leaves[0])
  if count.ndim:
    raise ValueError(
        f"the state's step count has shape {count.shape}, not a scalar: for a batched "
        "(vmapped) state, call this under jax.vmap or take one slice, "
        "jax.tree.map(lambda x: x[i], state)"
    )
  return count


class _Moment(NamedTuple):
  """Bias-corrected second moments of one Adam-like state."""

  count: Array  # shape=(), int32
  paths: list  # leaf path strings, one per array in v_hat
  v_hat: list  # arrays like params, float32, bias-corrected second moment


def _moments(opt_state: Any, b2: Any) -> list[_Moment]:
  """The bias-corrected second moments of every Adam-like state in ``opt_state``."""
  found = _find(opt_state, _is_adam_like)
  if not found:
    raise ValueError(
        "no Adam-like state (a NamedTuple with fields `count` and `nu`) was found in "
        f"opt_state of type {type(opt_state).__name__}; pass the state of an Adam-family "
        "optimizer"
    )
  numerics.check_betas(b2=b2)
  out = []
  for _, state in found:
    count = _scalar(state.count)
    if isinstance(state, optax.ScaleByAmsgradState):
      # optax keeps the maximum of the bias-corrected second moment.
      moment, bc2 = state.nu_max, jnp.ones((), jnp.float32)
    else:
      moment = state.nu_max if "nu_max" in state._fields else state.nu
      bc2 = numerics.bias_correction(b2, count, jnp.float32)
      bc2 = jnp.where(count > 0, bc2, 1).astype(jnp.float32)
    flat = jax.tree_util.tree_flatten_with_path(moment)[0]
    paths = [_path_str(p) for p, _ in flat]
    v_hat = [jnp.real(jnp.asarray(v)).astype(jnp.float32) / bc2 for _, v in flat]
    out.append(_Moment(count, paths, v_hat))
  return out


def _merge_paths(moments: list[_Moment]) -> list[list[str]]:
  """Leaf names; prefixed by the state's index when several states share a name."""
  names = [p for m in moments for p in m.paths]
  if len(names) == len(set(names)):
    return [m.paths for m in moments]
  return [[f"{i}:{p}" for p in m.paths] for i, m in enumerate(moments)]


def _eps(eps: Any) -> Any:
  eps = _DEFAULT_EPS if eps is None else eps
  numerics.check_nonnegative(eps=eps)
  return eps


# ----------------------------------------------------------------------------- eps


def eps_dominated_fraction(
    opt_state: Any, eps: Any = None, *, b2: Any = _DEFAULT_B2, per_leaf: bool = False
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
  """
  eps = _eps(eps)
  moments = _moments(opt_state, b2)
  thresh = jnp.square(jnp.asarray(eps, jnp.float32))
  counts, sizes, per = [], [], {}
  for m, names in zip(moments, _merge_paths(moments)):
    for name, v in zip(names, m.v_hat):
      n = jnp.sum(v < thresh, dtype=jnp.int32) if v.size else jnp.zeros((), jnp.int32)
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
    opt_state: Any, eps: Any = None, *, b2: Any = _DEFAULT_B2, tolerance: float = 0.01
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
  eps = float(_eps(eps))
  numerics.check_range("tolerance", tolerance, 0.0, 1.0, low_inclusive=False)
  moments = _moments(opt_state, b2)
  counts = [int(jax.device_get(m.count)) for m in moments]
  roots = [
      np.sqrt(np.asarray(jax.device_get(v), np.float64)).ravel()
      for m in moments
      for v in m.v_hat
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
        f"eps={_fmt(eps)} sets the step of {frac:.1%} of parameters: keep it{dead_txt}",
    )
  q = float(np.percentile(live, 100 * tolerance))
  # The power of ten at or below q / 10 (allowing for float32 rounding of q).
  suggested = 10.0 ** math.floor(math.log10(q / 10) + 1e-5)
  return EpsAdvice(
      frac,
      suggested,
      f"eps={_fmt(eps)} sets the step of {frac:.1%} of parameters (Adam acts like SGD "
      f"with momentum there); try eps={_fmt(suggested)}, a tenth of the "
      f"{100 * tolerance:g}th percentile of sqrt(v_hat){dead_txt}",
  )


# ----------------------------------------------------------------------------- learning rate


def effective_learning_rate(
    opt_state: Any,
    learning_rate: numerics.ScalarOrSchedule,
    *,
    eps: Any = None,
    b2: Any = _DEFAULT_B2,
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
  """
  eps = _eps(eps)
  for q in percentiles:
    numerics.check_range("percentiles", q, 0.0, 100.0, high_inclusive=True)
  if not callable(learning_rate):
    numerics.check_nonnegative(learning_rate=learning_rate)
  moments = _moments(opt_state, b2)
  qs = jnp.asarray(list(percentiles), jnp.float32)
  out = {}
  for m, names in zip(moments, _merge_paths(moments)):
    lr = numerics.resolve(learning_rate, m.count)
    lr = numerics.hyper(lr, jnp.float32)
    for name, v in zip(names, m.v_hat):
      eff = lr / (jnp.sqrt(v) + numerics.hyper(eps, jnp.float32))
      if v.size == 0:
        out[name] = jnp.full(qs.shape, jnp.nan, jnp.float32)
      else:
        out[name] = jnp.percentile(eff.ravel(), qs).astype(jnp.float32)
  return out


# ----------------------------------------------------------------------------- monitor


class MonitorStats(NamedTuple):
  """Statistics of the last step, kept by :func:`monitor`."""

  count: Array  # shape=(), dtype=int32; updates seen, saturating
  update_rms: Any  # like params, each leaf shape=(), dtype=float32; RMS of the update
  param_rms: Any  # like params, each leaf shape=(), dtype=float32; RMS of the params
  update_to_param_ratio: Any  # like params, each leaf shape=(), float32; update/param RMS
  global_update_rms: Array  # shape=(), dtype=float32; over all leaves
  global_param_rms: Array  # shape=(), dtype=float32; over all leaves
  global_update_to_param_ratio: Array  # shape=(), dtype=float32; update/param norm
  eps_dominated_fraction: Array  # shape=(), dtype=float32; NaN without Adam-like state
  nonfinite_grads: Array  # shape=(), dtype=int32; non-finite grad elements, cumulative


class MonitorState(NamedTuple):
  """State of :func:`monitor`."""

  inner_state: optax.OptState  # the wrapped transformation's state
  stats: MonitorStats  # statistics of the last step (zeros before the first)


def _sum_sq(x: Array) -> Array:
  """``sum |x|^2`` in float32 (0 for an empty array)."""
  x = jnp.asarray(x)
  if x.size == 0:
    return jnp.zeros((), jnp.float32)
  x = x.astype(numerics.compute_dtype(x.dtype))
  sq = jnp.real(x) ** 2 + jnp.imag(x) ** 2 if jnp.iscomplexobj(x) else x * x
  return jnp.sum(sq).astype(jnp.float32)


def _rms(sum_sq: Array, size: int) -> Array:
  return jnp.sqrt(sum_sq / max(size, 1))


def _ratio(num: Array, den: Array) -> Array:
  """``num / den``; 0 where both are 0, inf where only ``den`` is."""
  safe = jnp.where(den > 0, den, 1)
  return jnp.where(den > 0, num / safe, jnp.where(num > 0, jnp.inf, 0)).astype(jnp.float32)


def monitor(
    tx: optax.GradientTransformation, *, eps: Any = _DEFAULT_EPS, b2: Any = _DEFAULT_B2
) -> optax.GradientTransformation:
  r"""Wraps ``tx`` so that its state records what each step did.

  The updates are exactly ``tx``'s. After each ``update`` the state's ``stats``
  (a :class:`MonitorStats`) hold, computed inside the compiled step:

  .. math::

    \text{update\_rms}_\ell = \sqrt{\operatorname{mean} |u_\ell|^2}, \quad
    \text{param\_rms}_\ell = \sqrt{\operatorname{mean} |p_\ell|^2}, \quad
    \text{update\_to\_param\_ratio}_\ell = \text{update\_rms}_\ell / \text{param\_rms}_\ell

  per leaf :math:`\ell` and over all leaves (the global ratio is
  :math:`\|u\| / \|p\|`), with :math:`p` the params passed to ``update`` (before
  the step); the ratio is ``inf`` for an all-zero leaf that moves. Also
  :func:`eps_dominated_fraction` of the new state (NaN when ``tx`` has no
  Adam-like state) and the cumulative count of non-finite gradient elements
  (saturating at ``2**31 - 1``). An update-to-param ratio around ``1e-3`` per step
  is the usual healthy range; much larger means the learning rate is too high for
  that layer.

  Args:
    tx: the transformation to wrap (any optax ``GradientTransformation``).
    eps: the optimizer's eps, for the eps dominance.
    b2: the optimizer's second-moment decay, for the bias correction.

  Returns:
    An ``optax.GradientTransformation`` with state :class:`MonitorState`; its
    ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.diagnostics.monitor(adam_jax.adam(0.1))
    >>> params = {"w": jnp.array([1.0, -1.0])}
    >>> updates, state = tx.update({"w": jnp.array([1.0, -1.0])}, tx.init(params), params)
    >>> state.stats.update_to_param_ratio["w"]
    Array(0.1, dtype=float32)
  """
  numerics.check_nonnegative(eps=eps)
  numerics.check_betas(b2=b2)

  def init_fn(params):
    inner = tx.init(params)
    zero = jnp.zeros((), jnp.float32)
    per_leaf = jax.tree.map(lambda _: zero, params)
    stats = MonitorStats(
        count=jnp.zeros((), jnp.int32),
        update_rms=per_leaf,
        param_rms=per_leaf,
        update_to_param_ratio=per_leaf,
        global_update_rms=zero,
        global_param_rms=zero,
        global_update_to_param_ratio=zero,
        eps_dominated_fraction=jnp.full((), jnp.nan, jnp.float32),
        nonfinite_grads=jnp.zeros((), jnp.int32),
    )
    return MonitorState(inner_state=inner, stats=stats)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
          "monitor(tx).update needs params to compute param_rms: call "
          "tx.update(grads, state, params)"
      )
    grads = updates
    if extra_args:
      inner_tx = optax.with_extra_args_support(tx)
      new_updates, inner = inner_tx.update(grads, state.inner_state, params, **extra_args)
    else:
      new_updates, inner = tx.update(grads, state.inner_state, params)

    bad = [
        jnp.sum(~jnp.isfinite(g), dtype=jnp.int32)
        for g in jax.tree.leaves(grads)
        if jnp.asarray(g).size
    ]
    bad = sum(bad) if bad else jnp.zeros((), jnp.int32)
    old = state.stats.nonfinite_grads
    nonfinite = jnp.where(bad > _INT32_MAX - old, _INT32_MAX, old + bad).astype(jnp.int32)

    u_leaves, treedef = jax.tree.flatten(new_updates)
    p_leaves = treedef.flatten_up_to(params)
    sizes = [jnp.size(p) for p in p_leaves]
    u_sq = [_sum_sq(u) for u in u_leaves]
    p_sq = [_sum_sq(p) for p in p_leaves]
    u_rms = [_rms(s, n) for s, n in zip(u_sq, sizes)]
    p_rms = [_rms(s, n) for s, n in zip(p_sq, sizes)]
    total = max(sum(sizes), 1)
    g_u = _rms(sum(u_sq), total) if u_sq else jnp.zeros((), jnp.float32)
    g_p = _rms(sum(p_sq), total) if p_sq else jnp.zeros((), jnp.float32)

    if _find(inner, _is_adam_like):
      eps_frac = eps_dominated_fraction(inner, eps, b2=b2)
    else:
      eps_frac = jnp.full((), jnp.nan, jnp.float32)

    stats = MonitorStats(
        count=numerics.safe_increment(state.stats.count),
        update_rms=treedef.unflatten(u_rms),
        param_rms=treedef.unflatten(p_rms),
        update_to_param_ratio=treedef.unflatten(
            [_ratio(u, p) for u, p in zip(u_rms, p_rms)]
        ),
        global_update_rms=g_u,
        global_param_rms=g_p,
        global_update_to_param_ratio=_ratio(g_u, g_p),
        eps_dominated_fraction=eps_frac,
        nonfinite_grads=nonfinite,
    )
    return new_updates, MonitorState(inner_state=inner, stats=stats)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------- logging


def _leaf_dict(prefix: str, tree: Any) -> dict[str, Any]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {f"{prefix}/{_path_str(p)}": x for p, x in flat}


def summarize(
    opt_state: Any,
    params: Any = None,
    *,
    eps: Any = None,
    b2: Any = _DEFAULT_B2,
    learning_rate: numerics.ScalarOrSchedule | None = None,
) -> dict[str, float]:
  """A flat dict of named Python floats, ready for TensorBoard, W&B or a CSV row.

  Keys (``<path>`` is a leaf's path, like ``layers/0/kernel``):

  * from a :func:`monitor` state, if ``opt_state`` holds one: ``step``,
    ``update_rms``, ``param_rms``, ``update_to_param_ratio``,
    ``eps_dominated_fraction``, ``nonfinite_grads`` and, per leaf,
    ``update_rms/<path>``, ``param_rms/<path>``, ``update_to_param_ratio/<path>``;
  * from an Adam-like state: ``eps_dominated_fraction/<path>`` (and the global
    ``eps_dominated_fraction`` when there is no monitor state);
  * with ``params`` and no monitor state: ``param_rms`` and ``param_rms/<path>``;
  * with ``learning_rate``: ``effective_lr_p5/<path>``, ``effective_lr_p50/<path>``
    and ``effective_lr_p95/<path>`` (see :func:`effective_learning_rate`).

  Args:
    opt_state: the state of one optimizer (for a vmapped state, take one slice).
    params: the current params (used without a monitor state).
    eps: the optimizer's eps (default ``1e-8``), for the per-leaf eps dominance.
    b2: the optimizer's second-moment decay.
    learning_rate: the optimizer's learning rate or schedule, to add percentiles
      of the effective learning rate.

  Returns:
    ``dict[str, float]``.

  Raises:
    ValueError: if a statistic is not a scalar (a vmapped state), or the state
      holds neither a monitor nor an Adam-like state.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.diagnostics.monitor(adam_jax.adam(0.1))
    >>> params = {"w": jnp.array([1.0, -1.0])}
    >>> _, state = tx.update({"w": jnp.array([1.0, -1.0])}, tx.init(params), params)
    >>> round(adam_jax.diagnostics.summarize(state)["update_to_param_ratio/w"], 6)
    0.1
  """
  out: dict[str, Any] = {}
  mons = _find(opt_state, _is_monitor_state)
  if mons:
    st = mons[0][1].stats
    out.update(
        step=st.count,
        update_rms=st.global_update_rms,
        param_rms=st.global_param_rms,
        update_to_param_ratio=st.global_update_to_param_ratio,
        eps_dominated_fraction=st.eps_dominated_fraction,
        nonfinite_grads=st.nonfinite_grads,
    )
    out.update(_leaf_dict("update_rms", st.update_rms))
    out.update(_leaf_dict("param_rms", st.param_rms))
    out.update(_leaf_dict("update_to_param_ratio", st.update_to_param_ratio))
  elif params is not None:
    leaves = jax.tree.leaves(params)
    sq = [_sum_sq(p) for p in leaves]
    total = max(sum(jnp.size(p) for p in leaves), 1)
    out["param_rms"] = _rms(sum(sq), total) if sq else jnp.zeros((), jnp.float32)
    out.update(
        _leaf_dict("param_rms", jax.tree.map(lambda p: _rms(_sum_sq(p), jnp.size(p)), params))
    )
  if _find(opt_state, _is_adam_like):
    per = eps_dominated_fraction(opt_state, eps, b2=b2, per_leaf=True)
    if not mons:
      out["eps_dominated_fraction"] = eps_dominated_fraction(opt_state, eps, b2=b2)
    out.update({f"eps_dominated_fraction/{k}": v for k, v in per.items()})
    if learning_rate is not None:
      qs = (5, 50, 95)
      eff = effective_learning_rate(opt_state, learning_rate, eps=eps, b2=b2, percentiles=qs)
      for name, vals in eff.items():
        for i, q in enumerate(qs):
          out[f"effective_lr_p{q}/{name}"] = vals[i]
  elif not mons:
    raise ValueError(
        "opt_state holds neither a monitor(tx) state nor an Adam-like state: nothing to "
        "summarize"
    )
  host = jax.device_get(out)
  result = {}
  for key, value in host.items():
    arr = np.asarray(value)
    if arr.size != 1:
      raise ValueError(
          f"statistic {key!r} has shape {arr.shape}, not a scalar: summarize one "
          "optimizer's state (for a vmapped state, take jax.tree.map(lambda x: x[i], state))"
      )
    result[key] = float(arr.reshape(()))
  return result


def _columns(history: Any) -> dict[str, np.ndarray]:
  """``history`` (rows or columns) as a dict of 1-D float arrays."""
  if isinstance(history, Mapping):
    cols = {k: np.asarray(v, np.float64).reshape(-1) for k, v in history.items()}
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
      raise ValueError(f"history's columns differ in length: {sorted(lengths)}")
    return cols
  rows = list(history)
  if not all(isinstance(r, Mapping) for r in rows):
    raise ValueError("history must be a list of dicts (one per step) or a dict of sequences")
  keys = []
  for r in rows:
    keys.extend(k for k in r if k not in keys)
  return {k: np.array([float(r.get(k, np.nan)) for r in rows]) for k in keys}


def plot_history(history: Any, out_dir: str | os.PathLike, *, title: str = "") -> str:
  """Draws a run's update/param ratios and eps dominance over time.

  ``history`` is either a list with one dict per recorded step, as returned by
  :func:`summarize` (rows), or a dict from the same keys to sequences (columns,
  for instance stacked statistics). The x axis is the ``step`` entry when present,
  else the row index. Drawn: ``update_to_param_ratio/<path>`` for every leaf (log
  scale; the global ``update_to_param_ratio`` in black) and
  ``eps_dominated_fraction`` (with ``eps_dominated_fraction/<path>`` dashed).

  Args:
    history: rows or columns of :func:`summarize` dicts.
    out_dir: the folder to write ``diagnostics.png`` to (created if missing).
    title: a title for the figure.

  Returns:
    The path of the written PNG file.

  Raises:
    ValueError: if ``history`` is empty or has neither ratio nor eps entries.
  """
  from matplotlib.figure import Figure

  cols = _columns(history)
  n = max((len(v) for v in cols.values()), default=0)
  if n == 0:
    raise ValueError("history is empty: record at least one summarize(...) dict")
  ratio_keys = sorted(k for k in cols if k.startswith("update_to_param_ratio/"))
  eps_keys = sorted(k for k in cols if k.startswith("eps_dominated_fraction/"))
  has_ratio = bool(ratio_keys) or "update_to_param_ratio" in cols
  has_eps = bool(eps_keys) or "eps_dominated_fraction" in cols
  if not (has_ratio or has_eps):
    raise ValueError(
        "history has no update_to_param_ratio or eps_dominated_fraction entries: record "
        "summarize(opt_state) of a monitor(tx) or Adam state"
    )
  x = cols.get("step", np.arange(1, n + 1, dtype=np.float64))

  fig = Figure(figsize=(11, 4.2), layout="constrained")
  ax_r, ax_e = fig.subplots(1, 2)
  for key in ratio_keys:
    ax_r.plot(x, cols[key], lw=1.2, label=key.split("/", 1)[1])
  if "update_to_param_ratio" in cols:
    ax_r.plot(x, cols["update_to_param_ratio"], color="black", lw=2, label="global")
  if has_ratio:
    ratio_vals = np.concatenate([cols[k] for k in ratio_keys] or [cols["update_to_param_ratio"]])
    if np.any(np.isfinite(ratio_vals) & (ratio_vals > 0)):
      ax_r.set_yscale("log")
    ax_r.legend(fontsize=7)
  ax_r.set(xlabel="step", ylabel="update RMS / param RMS", title="update-to-param ratio")
  for key in eps_keys:
    ax_e.plot(x, cols[key], lw=1, ls="--", label=key.split("/", 1)[1])
  if "eps_dominated_fraction" in cols:
    ax_e.plot(x, cols["eps_dominated_fraction"], color="black", lw=2, label="all")
  if has_eps:
    ax_e.legend(fontsize=7)
  ax_e.set(xlabel="step", ylabel="fraction with sqrt(v_hat) < eps", title="eps dominance",
           ylim=(-0.02, 1.02))
  if title:
    fig.suptitle(title)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(os.fspath(out_dir), "diagnostics.png")
  fig.savefig(path, dpi=110)
  return path


__all__ = [
    "EpsAdvice",
    "MonitorState",
    "MonitorStats",
    "advise_eps",
    "effective_learning_rate",
    "eps_dominated_fraction",
    "monitor",
    "plot_history",
    "summarize",
]
