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

from adam_jax import _numerics as numerics
from adam_jax._tree import path_name

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
  return path_name(path) or "."


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
  """The second moment of one Adam-like state: ``v_hat = v / bc2``."""

  count: Array  # shape=(), int32
  paths: list  # leaf path strings, one per array in v
  treedef: Any  # tree structure of the moment
  v: list  # arrays like params, as stored (AMSGrad: the running maximum)
  bc2: Array  # shape=(), float32; bias correction (1 where already applied)

  def v_hat(self) -> list:
    """The bias-corrected second moments, float32."""
    return [jnp.real(v).astype(jnp.float32) / self.bc2 for v in self.v]

  def dominated(self, eps: Any) -> list:
    """Per leaf, a boolean array: ``sqrt(v_hat) < eps``, as ``v < eps**2 * bc2``."""
    thresh = jnp.square(jnp.asarray(eps, jnp.float32)) * self.bc2
    return [jnp.real(v).astype(jnp.float32) < thresh for v in self.v]


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
    out.append(_Moment(count=count, paths=paths, treedef=jax.tree.structure(moment),
                       v=[jnp.asarray(v) for _, v in flat], bc2=bc2))
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

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014. The bias-corrected :math:`\hat v_t` and the
    denominator :math:`\sqrt{\hat v_t} + \epsilon` are its Algorithm 1; the
    fraction itself is a diagnostic of this library, not from a paper.
  """
  eps = _eps(eps)
  moments = _moments(opt_state, b2)
  counts, sizes, per = [], [], {}
  for m, names in zip(moments, _merge_paths(moments)):
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

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014: its Algorithm 1's step
    :math:`\eta \hat m_t / (\sqrt{\hat v_t} + \epsilon)`, of which this is the
    factor on :math:`\hat m_t`.
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
    for name, v in zip(names, m.v_hat()):
      eff = lr / (jnp.sqrt(v) + numerics.hyper(eps, jnp.float32))
      if v.size == 0:
        out[name] = jnp.full(qs.shape, jnp.nan, jnp.float32)
      else:
        out[name] = jnp.percentile(eff.ravel(), qs).astype(jnp.float32)
  return out


# ----------------------------------------------------------------------------- monitor


_LEAF_COLUMNS = ("update_rms", "param_rms", "update_to_param_ratio", "eps_dominated_fraction")


@jax.tree_util.register_pytree_node_class
class LeafStats:
  """Per-leaf statistics of :func:`monitor`: one row per parameter leaf.

  Stored as one array rather than one per leaf, so that a step adds a handful of
  kernels whatever the number of leaves; the leaves' names travel with it as
  static data.

  Attributes:
    values: shape=(..., leaves, 4), dtype=float32; columns ``update_rms``,
      ``param_rms``, ``update_to_param_ratio`` and ``eps_dominated_fraction`` (NaN
      unless one Adam-like state mirrors the params), rows in
      ``jax.tree.leaves(params)`` order (leading axes when vmapped).
    names: the leaves' paths (``"layers/0/kernel"``), one per row.
  """

  columns = _LEAF_COLUMNS

  def __init__(self, values: Array, names: tuple[str, ...]):
    self.values = values
    self.names = tuple(names)

  def tree_flatten(self):
    return (self.values,), self.names

  @classmethod
  def tree_unflatten(cls, names, children):
    return cls(children[0], names)

  def column(self, name: str) -> Array:
    """One statistic for every leaf, shape ``(..., leaves)``."""
    if name not in _LEAF_COLUMNS:
      raise ValueError(f"unknown statistic {name!r}; choose one of: {', '.join(_LEAF_COLUMNS)}")
    return self.values[..., _LEAF_COLUMNS.index(name)]

  def as_dict(self) -> dict[str, Array]:
    """``{"<statistic>/<leaf path>": value}`` for every leaf and statistic."""
    return {
        f"{col}/{name}": self.values[..., i, j]
        for j, col in enumerate(_LEAF_COLUMNS)
        for i, name in enumerate(self.names)
    }

  def __repr__(self):
    return f"LeafStats(names={self.names!r}, values={self.values!r})"


class MonitorStats(NamedTuple):
  """Statistics of the last step, kept by :func:`monitor`.

  Packed into three arrays (each output array of a step is a kernel); read them
  through the properties ``count``, ``nonfinite_grads``, ``update_rms``,
  ``param_rms``, ``update_to_param_ratio`` and ``eps_dominated_fraction`` (over
  all leaves) and ``per_leaf`` (a :class:`LeafStats`).
  """

  counters: Array  # shape=(2,), dtype=int32; updates seen, non-finite grad elements seen
  totals: Array  # shape=(4,), dtype=float32; over all leaves, columns as LeafStats
  per_leaf: LeafStats  # values shape=(leaves, 4), dtype=float32

  @property
  def count(self) -> Array:
    """Updates seen (saturating int32)."""
    return self.counters[..., 0]

  @property
  def nonfinite_grads(self) -> Array:
    """Non-finite gradient elements seen, over all steps (saturating int32)."""
    return self.counters[..., 1]

  @property
  def update_rms(self) -> Array:
    """RMS of the last update over all leaves."""
    return self.totals[..., 0]

  @property
  def param_rms(self) -> Array:
    """RMS of the params (before the last update) over all leaves."""
    return self.totals[..., 1]

  @property
  def update_to_param_ratio(self) -> Array:
    """``||update|| / ||params||`` over all leaves."""
    return self.totals[..., 2]

  @property
  def eps_dominated_fraction(self) -> Array:
    """:func:`eps_dominated_fraction` after the last update (NaN without Adam state)."""
    return self.totals[..., 3]


class MonitorState(NamedTuple):
  """State of :func:`monitor`."""

  inner_state: optax.OptState  # the wrapped transformation's state
  stats: MonitorStats  # statistics of the last step (zeros before the first)


def _abs_sq(x: Array) -> Array:
  """``|x|^2`` element-wise, real, in at least float32."""
  x = jnp.asarray(x)
  x = x.astype(numerics.compute_dtype(x.dtype))
  return jnp.real(x) ** 2 + jnp.imag(x) ** 2 if jnp.iscomplexobj(x) else x * x


def _sum_sq(x: Array) -> Array:
  """``sum |x|^2`` in float32 (0 for an empty array)."""
  return jnp.sum(_abs_sq(x)).astype(jnp.float32)


def _rms(sum_sq: Array, size: int) -> Array:
  return jnp.sqrt(sum_sq / max(size, 1))


def _ratio(num: Array, den: Array) -> Array:
  """``num / den``; 0 where both are 0, inf where only ``den`` is."""
  safe = jnp.where(den > 0, den, 1)
  return jnp.where(den > 0, num / safe, jnp.where(num > 0, jnp.inf, 0)).astype(jnp.float32)


# Counts of 0/1 summed in float32 are exact below this many elements.
_EXACT_F32_COUNT = 2**24


def _leaf_sums(rows: list[list[Array]]) -> tuple[Array, Array]:
  """Per-leaf sums of ``rows[i] = [|u|^2, |p|^2, count_1, ...]``.

  Returns ``(sums, counts)``: ``sums`` of shape ``(leaves, len(rows[i]))`` in
  float32, and the counts columns again in int32, exact. Leaves below ``2**24``
  elements whose arrays share one shape are flattened into one ``(rows, elements)``
  buffer reduced slice by slice (each leaf is then two kernels, whatever the
  number of statistics). Larger leaves get one reduction per statistic.
  """
  small = [
      i for i, r in enumerate(rows)
      if r[0].size < _EXACT_F32_COUNT and all(a.shape == r[0].shape for a in r)
  ]
  sums: list[Array | None] = [None] * len(rows)
  if small:
    dtype = max((rows[i][0].dtype for i in small), key=lambda d: jnp.dtype(d).itemsize)
    big = jnp.concatenate(
        [jnp.stack([a.astype(dtype).ravel() for a in rows[i]]) for i in small], axis=1
    )
    offset = 0
    for i in small:
      n = rows[i][0].size
      sums[i] = jnp.sum(big[:, offset:offset + n], axis=1).astype(jnp.float32)
      offset += n
  if len(small) == len(rows):
    sums = jnp.stack(sums)
    return sums, sums[:, 2:].astype(jnp.int32)
  counts = []
  for i, r in enumerate(rows):
    if sums[i] is None:
      c = jnp.stack([jnp.sum(a, dtype=jnp.int32) for a in r[2:]])
      sq = jnp.stack([jnp.sum(a).astype(jnp.float32) for a in r[:2]])
      sums[i] = jnp.concatenate([sq, c.astype(jnp.float32)])
      counts.append(c)
    else:
      counts.append(sums[i][2:].astype(jnp.int32))
  return jnp.stack(sums), jnp.stack(counts)


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

  per leaf :math:`\ell` (``stats.per_leaf``, a :class:`LeafStats`) and over all
  leaves (``stats.update_rms`` …; the global ratio is :math:`\|u\| / \|p\|`), with
  :math:`p` the params passed to ``update`` (before the step); the ratio is
  ``inf`` for an all-zero leaf that moves. Also :func:`eps_dominated_fraction` of
  the new state (NaN when ``tx`` has no Adam-like state) and the cumulative count
  of non-finite gradient elements (saturating at ``2**31 - 1``). An
  update-to-param ratio around ``1e-3`` per step is the usual healthy range; much
  larger means the learning rate is too high for that layer.

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
    >>> state.stats.per_leaf.as_dict()["update_to_param_ratio/w"]
    Array(0.1, dtype=float32)

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014: the bias-corrected :math:`\hat v_t`
    and :math:`\epsilon` behind ``eps_dominated_fraction``. The update-to-param
    ratio is a common training heuristic, not a published method.
  """
  numerics.check_nonnegative(eps=eps)
  numerics.check_betas(b2=b2)

  def init_fn(params):
    inner = tx.init(params)
    names = tuple(_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    nan = jnp.full((), jnp.nan, jnp.float32)
    stats = MonitorStats(
        counters=jnp.zeros((2,), jnp.int32),
        totals=jnp.zeros((4,), jnp.float32).at[3].set(nan),
        per_leaf=LeafStats(
            jnp.zeros((len(names), 4), jnp.float32).at[:, 3].set(nan), names
        ),
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

    u_leaves, treedef = jax.tree.flatten(new_updates)
    u_leaves = [jnp.asarray(u) for u in u_leaves]
    p_leaves = [jnp.asarray(p) for p in treedef.flatten_up_to(params)]
    g_leaves = [jnp.asarray(g) for g in treedef.flatten_up_to(grads)]
    names = state.stats.per_leaf.names
    if len(names) != len(u_leaves):
      raise ValueError(
          f"monitor was initialised for {len(names)} parameter leaves but the updates "
          f"have {len(u_leaves)}"
      )
    moments = _moments(inner, b2) if _find(inner, _is_adam_like) else []
    # One Adam state shaped like the updates (the usual case): its eps counts join
    # the per-leaf sums. Otherwise the global fraction is counted on its own.
    fused_eps = (
        len(moments) == 1
        and moments[0].treedef == treedef
        and all(v.shape == u.shape for v, u in zip(moments[0].v, u_leaves))
    )
    dominated = moments[0].dominated(eps) if fused_eps else [None] * len(u_leaves)
    rows = [
        [_abs_sq(u), _abs_sq(p), ~jnp.isfinite(g)] + ([] if d is None else [d])
        for u, p, g, d in zip(u_leaves, p_leaves, g_leaves, dominated)
    ]
    n_leaves, n_cols = len(rows), 4 if fused_eps else 3
    if n_leaves:
      sums, counts = _leaf_sums(rows)
    else:
      sums, counts = jnp.zeros((0, n_cols), jnp.float32), jnp.zeros((0, n_cols - 2), jnp.int32)

    sizes = np.array([max(u.size, 1) for u in u_leaves], np.float32).reshape(-1, 1)
    total = max(sum(u.size for u in u_leaves), 1)
    started = moments[0].count > 0 if moments else False
    nan = jnp.full((), jnp.nan, jnp.float32)

    rms = jnp.sqrt(sums[:, :2] / sizes)
    leaf_eps = (
        jnp.where(started, sums[:, 3:4] / sizes, nan) if fused_eps
        else jnp.full((n_leaves, 1), jnp.nan, jnp.float32)
    )
    per_leaf = jnp.concatenate([rms, _ratio(rms[:, 0], rms[:, 1])[:, None], leaf_eps], axis=1)

    col = jnp.sum(sums, axis=0)
    glob = jnp.sqrt(col[:2] / total)
    if fused_eps:
      eps_frac = jnp.where(started, col[3] / total, nan)
    elif moments:
      eps_frac = eps_dominated_fraction(inner, eps, b2=b2)
    else:
      eps_frac = nan
    totals = jnp.stack([glob[0], glob[1], _ratio(glob[0], glob[1]), eps_frac.astype(jnp.float32)])

    # Both counters saturate at 2**31 - 1.
    step = jnp.stack([jnp.ones((), jnp.int32), jnp.sum(counts[:, 0], dtype=jnp.int32)])
    old = state.stats.counters
    counters = jnp.where(step > _INT32_MAX - old, _INT32_MAX, old + step).astype(jnp.int32)

    stats = MonitorStats(
        counters=counters,
        totals=totals.astype(jnp.float32),
        per_leaf=LeafStats(per_leaf.astype(jnp.float32), names),
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
    ``update_rms/<path>``, ``param_rms/<path>``, ``update_to_param_ratio/<path>``
    and ``eps_dominated_fraction/<path>`` (the last only when one Adam-like state
    mirrors the params), all computed in the step with the monitor's eps;
  * otherwise, from an Adam-like state (with ``eps`` and ``b2``):
    ``eps_dominated_fraction`` and ``eps_dominated_fraction/<path>``, and with
    ``params``, ``param_rms`` and ``param_rms/<path>``;
  * with ``learning_rate``: ``effective_lr_p5/<path>``, ``effective_lr_p50/<path>``
    and ``effective_lr_p95/<path>`` (see :func:`effective_learning_rate`).

  Args:
    opt_state: the state of one optimizer (for a vmapped state, take one slice).
    params: the current params (used without a monitor state).
    eps: the optimizer's eps (default ``1e-8``), for the eps dominance and the
      effective learning rate read from the Adam-like state.
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
        update_rms=st.update_rms,
        param_rms=st.param_rms,
        update_to_param_ratio=st.update_to_param_ratio,
        eps_dominated_fraction=st.eps_dominated_fraction,
        nonfinite_grads=st.nonfinite_grads,
    )
    per_leaf = st.per_leaf.as_dict()
    if not np.any(np.isfinite(np.asarray(st.per_leaf.column("eps_dominated_fraction")))):
      per_leaf = {k: v for k, v in per_leaf.items() if not k.startswith("eps_dominated")}
    out.update(per_leaf)
  elif params is not None:
    leaves = jax.tree.leaves(params)
    sq = [_sum_sq(p) for p in leaves]
    total = max(sum(jnp.size(p) for p in leaves), 1)
    out["param_rms"] = _rms(sum(sq), total) if sq else jnp.zeros((), jnp.float32)
    out.update(
        _leaf_dict("param_rms", jax.tree.map(lambda p: _rms(_sum_sq(p), jnp.size(p)), params))
    )
  if _find(opt_state, _is_adam_like):
    if not mons:
      out["eps_dominated_fraction"] = eps_dominated_fraction(opt_state, eps, b2=b2)
      per = eps_dominated_fraction(opt_state, eps, b2=b2, per_leaf=True)
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

  Examples:
    >>> import os, tempfile, adam_jax
    >>> history = {"step": [1, 2, 3], "update_to_param_ratio": [1e-2, 3e-3, 1e-3],
    ...            "eps_dominated_fraction": [0.0, 0.1, 0.2]}
    >>> path = adam_jax.diagnostics.plot_history(history, tempfile.mkdtemp(), title="run")
    >>> os.path.basename(path), os.path.getsize(path) > 0
    ('diagnostics.png', True)
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
    "LeafStats",
    "MonitorState",
    "MonitorStats",
    "advise_eps",
    "effective_learning_rate",
    "eps_dominated_fraction",
    "monitor",
    "plot_history",
    "summarize",
]
