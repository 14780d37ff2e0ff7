"""``monitor``: a wrapper transformation that records, inside the step, what the step did."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _numerics as numerics
from adam_jax.diagnostics._eps import eps_dominated_fraction
from adam_jax.diagnostics._state import (
  DEFAULT_B2,
  DEFAULT_EPS,
  find,
  find_moments,
  is_adam_like,
  path_str,
)

Array = jax.Array

_INT32_MAX = np.iinfo(np.int32).max


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


def sum_sq(x: Array) -> Array:
  """``sum |x|^2`` in float32 (0 for an empty array)."""
  return jnp.sum(_abs_sq(x)).astype(jnp.float32)


def rms(sum_sq: Array, size: int) -> Array:
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
    tx: optax.GradientTransformation, *, eps: Any = DEFAULT_EPS, b2: Any = DEFAULT_B2
) -> optax.GradientTransformation:
  r"""Wraps ``tx`` so that its state records what each step did.

  The updates are exactly ``tx``'s. After each ``update`` the state's ``stats``
  (a :class:`MonitorStats`) hold, computed inside the compiled step:

  .. math::

    \text{update\rms}_\ell = \sqrt{\operatorname{mean} |u_\ell|^2}, \quad
    \text{param\rms}_\ell = \sqrt{\operatorname{mean} |p_\ell|^2}, \quad
    \text{update\_to\_param\_ratio}_\ell = \text{update\rms}_\ell / \text{param\rms}_\ell

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
    names = tuple(path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
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
    moments = find_moments(inner, b2) if find(inner, is_adam_like) else []
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




def is_monitor_state(node: Any) -> bool:
  return isinstance(node, MonitorState)
