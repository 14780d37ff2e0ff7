"""Reports of a run: ``summarize`` (named floats for a logger) and ``plot_history`` (a figure)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adam_jax import _numerics as numerics
from adam_jax.diagnostics._eps import effective_learning_rate, eps_dominated_fraction
from adam_jax.diagnostics._monitor import is_monitor_state, rms, sum_sq
from adam_jax.diagnostics._state import DEFAULT_B2, find, is_adam_like, path_str

Array = jax.Array


def _leaf_dict(prefix: str, tree: Any) -> dict[str, Any]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {f"{prefix}/{path_str(p)}": x for p, x in flat}


def summarize(
    opt_state: Any,
    params: Any = None,
    *,
    eps: Any = None,
    b2: Any = DEFAULT_B2,
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
  mons = find(opt_state, is_monitor_state)
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
    sq = [sum_sq(p) for p in leaves]
    total = max(sum(jnp.size(p) for p in leaves), 1)
    out["param_rms"] = rms(sum(sq), total) if sq else jnp.zeros((), jnp.float32)
    out.update(
        _leaf_dict("param_rms", jax.tree.map(lambda p: rms(sum_sq(p), jnp.size(p)), params))
    )
  if find(opt_state, is_adam_like):
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
