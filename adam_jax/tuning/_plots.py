"""The figure of a search's rows (:meth:`adam_jax.tuning.SearchResult.plot`)."""

from __future__ import annotations

import math
from typing import Any

from adam_jax import _plotting
from adam_jax.tuning._results import finite_or_nan


def search_figure(result: Any, x: str | None) -> Any:
  """The figure of :meth:`SearchResult.plot`."""
  rows, metric = result.rows, result.metric
  kinds = {k: len({repr(r.config[k]) for r in rows}) for k in rows[0].config}
  swept = [k for k, n in kinds.items() if n > 1]
  x = x or (max(swept, key=kinds.get) if swept else next(iter(rows[0].config)))
  last = max((r.rung for r in rows if r.rung is not None), default=None)
  final = [r for r in rows if r.rung == last]
  values = list(dict.fromkeys(r.config[x] for r in rows))
  numeric = all(_plotting.is_number(v) for v in values)
  if numeric:
    values.sort()
  pos = {repr(v): (v if numeric else i) for i, v in enumerate(values)}
  pick = min if result.mode == "min" else max

  def shown(row: Any) -> float:
    value = row.metrics[metric]
    return value if math.isfinite(value) else math.nan

  fig = _plotting.figure()
  ax = fig.add_subplot()
  if last is not None:
    for rung in sorted({r.rung for r in rows if r.rung != last}):
      early = [r for r in rows if r.rung == rung]
      ax.plot([pos[repr(r.config[x])] for r in early], [shown(r) for r in early], "o",
              ms=4, alpha=0.3, color=f"C{1 + rung % 8}",
              label=f"stopped after {early[0].steps} steps")
  xs, ys = [], []
  for v in values:
    scores = [finite_or_nan(r.metrics[metric], result.mode) for r in final
              if repr(r.config[x]) == repr(v)]
    if scores:
      best = pick(scores)
      xs.append(pos[repr(v)])
      ys.append(best if math.isfinite(best) else math.nan)
  line = metric if last is None else f"trained {final[0].steps} steps (last rung)"
  if not numeric:
    ax.bar(xs, ys, color="C0", alpha=0.6, label=line)
    ax.set_xticks(range(len(values)), [str(v) for v in values])
  else:  # a line where each value stands for several rows (a grid), else the points
    ax.plot(xs, ys, "o-" if len(final) > len(xs) or len(swept) < 2 else "o", color="C0",
            label=line)
  if result.best is not None:
    _plotting.mark_best(ax, pos[repr(result.best.config[x])], shown(result.best),
                        label="best: " + _plotting.config_label(result.best.config, swept))
  if numeric and _plotting.log_spaced(values):
    ax.set_xscale("log")
  finite = [v for v in ys + [shown(r) for r in rows] if math.isfinite(v)]
  if finite and min(finite) > 0 and max(finite) > 10 * min(finite):
    ax.set_yscale("log")
    _plotting.plain_ticks(ax.yaxis)
  others = [k for k in swept if k != x]
  ax.set_xlabel(x)  # a log axis shows itself: its ticks are powers of ten
  ax.set_ylabel(metric)
  ax.set_title(f"{metric} against {x}" + (f", {result.mode} over " + ", ".join(others)
                                          if others else ""), fontsize=10)
  ax.legend(fontsize=8)
  return fig


def pbt_figure(result: Any) -> Any:
  """The figure of :meth:`PBTResult.plot`: schedules, then the lineage."""
  import numpy as np

  keys = list(result.hyperparameters)
  starts = np.concatenate([[0], result.ready_steps]).astype(float)
  steps = len(result.members[0].curve)
  edges = np.concatenate([starts, [steps]])
  fig = _plotting.figure(6.4, 2.3 * (len(keys) + 1))
  axes = fig.subplots(len(keys) + 1, 1, sharex=True)
  best = result.best
  for ax, key in zip(axes, keys):
    values = result.hyperparameters[key]
    for m in range(values.shape[1]):
      ax.stairs(values[:, m], edges, baseline=None, color="0.6", lw=0.8, alpha=0.7,
                label="members" if m == 0 else None)
    if best is not None:
      sched = best.schedule
      ax.stairs(sched.values[key], list(sched.starts) + [steps if best.best_step < 0
                                                         else max(best.best_step, 1)],
                baseline=None, color="C3", lw=2, label=f"best (member {best.index}) as trained")
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() > 4 * finite.min():
      ax.set_yscale("log")
    ax.set_ylabel(key)
    ax.legend(fontsize=7, loc="best")
  ax = axes[-1]
  n = result.sources.shape[1]
  for col, step in enumerate(result.ready_steps):
    for m in range(n):
      src = int(result.sources[col, m])
      if src != m:
        ax.annotate("", (step, m), (step - 0.35 * (starts[1] - starts[0]), src),
                    arrowprops={"arrowstyle": "->", "color": "C0", "lw": 0.8})
  if best is not None:
    xs = [s for s, _ in best.lineage] + [steps if best.best_step < 0 else best.best_step]
    ys = [who for _, who in best.lineage]
    ax.stairs(ys, xs, baseline=None, color="C3", lw=2, label="best's ancestry")
    ax.legend(fontsize=7, loc="best")
  ax.set_ylim(-0.5, n - 0.5)
  ax.set_ylabel("member")
  ax.set_xlabel("step")
  ax.set_title("copies at ready points (arrow: source -> member)", fontsize=9)
  axes[0].set_title(f"population-based training: {len(result.members)} members, "
                    f"{result.metric} ({result.mode})", fontsize=10)
  return fig
