"""The figures of ``adam-jax sweep``: ``heatmap.png`` (validation loss over the searched values)
and ``curves.png`` (training curves). Every varied key is named; the best configuration is a
red star; log-spaced values get a log axis; colours are validation loss on a log scale, said
on the colour bar."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from adam_jax import _plotting

_TITLE_SIZE = 9


def _finite(value: float) -> float:
  return value if math.isfinite(value) else math.nan


def _colour_norm(losses: Sequence[float]) -> Any:
  """A log colour scale over the finite losses (linear if one is not positive)."""
  from matplotlib.colors import LogNorm, Normalize

  finite = [v for v in losses if math.isfinite(v)]
  if not finite:
    return Normalize()
  lo, hi = min(finite), max(finite)
  if lo > 0 and hi > 2 * lo:
    return LogNorm(lo, hi)
  return Normalize(lo, hi if hi > lo else lo + abs(lo) * 0.01 + 1e-12)


def _colour_bar(fig: Any, mappable: Any, ax: Any) -> None:
  from matplotlib.colors import LogNorm

  log = isinstance(mappable.norm, LogNorm)
  bar = fig.colorbar(mappable, ax=ax,
                     label="validation loss" + (" (log colour scale)" if log else ""))
  if log:  # plain numbers at 1, 2, 5 of each decade, not powers of ten
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    bar.ax.yaxis.set_major_formatter(StrMethodFormatter("{x:.3g}"))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())


def grid_heatmap(path: str, rows: Sequence[Any], space: dict[str, list[Any]],
                 keys: Sequence[str], best: Any) -> None:
  """The grid's validation loss over its two most varied keys (the best over the others)
  as coloured cells with their values; one varied key: a line."""
  import numpy as np

  swept = sorted(keys, key=lambda k: -len(space[k]))
  fig = _plotting.figure()
  ax = fig.add_subplot()
  if len(swept) < 2:
    _one_key(ax, [r.config for r in rows], [r.metrics["val_loss"] for r in rows], space,
             swept, best and best.config)
    ax.set_title("validation loss of each configuration", fontsize=_TITLE_SIZE)
    fig.savefig(path, dpi=_plotting.DPI)
    return
  ya, xa = swept[0], swept[1]
  table = np.full((len(space[ya]), len(space[xa])), np.inf)
  for r in rows:
    i, j = space[ya].index(r.config[ya]), space[xa].index(r.config[xa])
    loss = r.metrics["val_loss"]
    table[i, j] = min(table[i, j], loss if math.isfinite(loss) else np.inf)
  shown = np.where(np.isfinite(table), table, np.nan)
  norm = _colour_norm(shown.ravel().tolist())
  im = ax.imshow(shown, aspect="auto", cmap="viridis_r", origin="lower", norm=norm)
  _colour_bar(fig, im, ax)
  ax.set_xticks(range(len(space[xa])), [_plotting.value_label(v) for v in space[xa]])
  ax.set_yticks(range(len(space[ya])), [_plotting.value_label(v) for v in space[ya]])
  for i in range(table.shape[0]):
    for j in range(table.shape[1]):
      value = shown[i, j]
      light = math.isfinite(value) and norm(value) < 0.5  # viridis_r: low loss is yellow
      ax.text(j, i, "diverged" if not math.isfinite(value) else f"{value:.3g}", ha="center",
              va="center", fontsize=7, color="black" if light else "white")
  if best is not None:
    i, j = space[ya].index(best.config[ya]), space[xa].index(best.config[xa])
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="C3", lw=2.5))
    ax.plot([], [], "s", mfc="none", mec="C3", mew=2,
            label="best: " + _plotting.config_label(best.config, swept))
    fig.legend(loc="outside lower left", fontsize=7, frameon=False, ncols=2)
  ax.set_xlabel(xa)
  ax.set_ylabel(ya)
  title = "validation loss of each configuration"
  if len(swept) > 2:
    title = "validation loss, the best over " + ", ".join(swept[2:])
  ax.set_title(title, fontsize=_TITLE_SIZE)
  fig.savefig(path, dpi=_plotting.DPI)


def samples(path: str, configs: Sequence[dict[str, Any]], losses: Sequence[float],
            space: dict[str, Any], keys: Sequence[str], *, log_keys: Sequence[str] = (),
            steps: Sequence[int | None] | None = None, best: int | None = None) -> None:
  """Sampled configurations: validation loss as the colour over the two most varied keys
  (or against the one). ``steps``: how long each trained (successive halving): those of
  the last rung in full colour, the others faded, marked by rung. ``best``: an index."""
  keys = sorted(keys, key=lambda k: -len({repr(c[k]) for c in configs}))
  last = max((s for s in (steps or ()) if s is not None), default=None)
  diverged = sum(1 for v in losses if not math.isfinite(v))
  fig = _plotting.figure()
  ax = fig.add_subplot()
  if len(keys) < 2:
    _one_key(ax, configs, losses, space, keys, None if best is None else configs[best],
             steps=steps, log_keys=log_keys)
  else:
    xk, yk = keys[0], keys[1]
    x, xl = _axis([c[xk] for c in configs])
    y, yl = _axis([c[yk] for c in configs])
    norm = _colour_norm(losses)
    levels = sorted({s for s in steps if s is not None}) if steps is not None else [None]
    for n, s in enumerate(levels):  # the last rung last, on top
      idx = [i for i in range(len(configs)) if (steps is None or steps[i] == s)
             and math.isfinite(losses[i])]
      early = s != last
      points = ax.scatter(x[idx], y[idx], c=[losses[i] for i in idx], cmap="viridis_r",
                          norm=norm, s=16 if early else 34, alpha=0.35 if early else 1.0,
                          marker="vs^D"[n % 4] if early else "o", edgecolors="0.3",
                          linewidths=0.3, label=None if s is None else (
                              f"stopped after {s} steps (faded)" if early
                              else f"trained {s} steps (last rung)"))
    _colour_bar(fig, points, ax)
    if best is not None:
      _plotting.mark_best(ax, x[best], y[best],
                          label="best: " + _plotting.config_label(configs[best], keys))
    _scale(ax.set_xscale, ax.set_xticks, x, xl, xk in log_keys)
    _scale(ax.set_yscale, ax.set_yticks, y, yl, yk in log_keys)
    ax.set_xlabel(xk)
    ax.set_ylabel(yk)
    fig.legend(loc="outside lower left", fontsize=7, frameon=False, ncols=2)
  title = f"validation loss of {len(configs)} configurations"
  if len(keys) > 2:
    title += " (also varied: " + ", ".join(keys[2:]) + ")"
  if diverged:
    title += f"; {diverged} diverged, not shown"
  ax.set_title(title, fontsize=_TITLE_SIZE)
  fig.savefig(path, dpi=_plotting.DPI)


def _axis(values: Sequence[Any]) -> tuple[Any, list[str] | None]:
  """Positions for ``values``: the numbers themselves, or indices of category labels."""
  import numpy as np

  if all(_plotting.is_number(v) for v in values):
    return np.asarray(values, np.float64), None
  labels = list(dict.fromkeys(str(v) for v in values))
  return np.asarray([labels.index(str(v)) for v in values], np.float64), labels


def _scale(set_scale: Any, set_ticks: Any, values: Any, labels: list[str] | None,
           log: bool) -> None:
  if labels is not None:
    set_ticks(range(len(labels)), labels)
  elif log or _plotting.log_spaced(values.tolist()):
    set_scale("log")


def _one_key(ax: Any, configs: Sequence[dict[str, Any]], losses: Sequence[float],
             space: dict[str, Any], keys: Sequence[str], best: dict[str, Any] | None, *,
             steps: Sequence[int | None] | None = None, log_keys: Sequence[str] = ()) -> None:
  """Validation loss against the one varied key (the best per value)."""
  key = keys[0] if keys else next(iter(space))
  last = max((s for s in (steps or ()) if s is not None), default=None)
  x, labels = _axis([c[key] for c in configs])
  if steps is not None:
    for s in sorted({s for s in steps if s != last}):
      early = [i for i in range(len(configs)) if steps[i] == s]
      ax.plot(x[early], [_finite(losses[i]) for i in early], "o", ms=4, color="0.6",
              alpha=0.45, label=f"stopped after {s} steps")
  final = [i for i in range(len(configs)) if steps is None or steps[i] == last]
  best_of: dict[float, float] = {}
  for i in final:
    if math.isfinite(losses[i]):
      best_of[x[i]] = min(best_of.get(x[i], math.inf), losses[i])
  xs = sorted(best_of)
  ax.plot(xs, [best_of[v] for v in xs], "o-" if labels is None else "o", color="C0",
          label="validation loss" if steps is None else f"trained {last} steps (last rung)")
  if best is not None:
    bx = x[[c[key] for c in configs].index(best[key])] if labels is None else \
        labels.index(str(best[key]))
    _plotting.mark_best(ax, bx, best_of.get(bx, math.nan),
                        label="best: " + _plotting.config_label(best, [key]))
  _scale(ax.set_xscale, ax.set_xticks, x, labels, key in log_keys)
  values = [v for v in best_of.values()]
  if values and min(values) > 0 and max(values) > 5 * min(values):
    ax.set_yscale("log")
    _plotting.plain_ticks(ax.yaxis)
  ax.set_xlabel(key)
  ax.set_ylabel("validation loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
  ax.legend(fontsize=7)


def curves(path: str, rows: Sequence[Any], best: Any, keys: Sequence[str]) -> None:
  """The smoothed training loss of every row; the best one highlighted and named by every
  varied key. With evaluations during training (``--eval-every``), the validation loss
  beside it, each curve's best evaluation marked."""
  from adam_jax.cli import _common as common

  evaluated = any(r.evals is not None for r in rows)
  fig = _plotting.figure(width=11.0 if evaluated else 6.4)
  ax = fig.add_subplot(1, 2 if evaluated else 1, 1)
  others = 0
  for r in rows:
    if r.curve is None or r is best:
      continue
    ax.plot(common.smooth(r.curve, 0.95), lw=0.8, alpha=0.5, color="0.5",
            label=None if others else "the other configurations")
    others += 1
  if best is not None and best.curve is not None:
    ax.plot(common.smooth(best.curve, 0.95), lw=1.8, color="C3",
            label="best: " + _plotting.config_label(best.config, keys))
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  ax.set_yscale("log")
  _plotting.plain_ticks(ax.yaxis)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (smoothed; log scale)")
  title = f"training curves of {len(rows)} configurations"
  if keys:
    title += " (varied: " + ", ".join(keys) + ")"
  ax.set_title(title, fontsize=_TITLE_SIZE)
  if evaluated:
    _validation_curves(fig.add_subplot(1, 2, 2), rows, best)
  fig.savefig(path, dpi=_plotting.DPI)


def _validation_curves(ax: Any, rows: Sequence[Any], best: Any) -> None:
  """The validation loss at each evaluation of every row (mean over seeds), minima marked."""
  import numpy as np

  for r in rows:
    if r.evals is None:
      continue
    steps, loss = r.evals["step"], r.evals["val_loss"]
    top = r is best
    ax.plot(steps, loss, lw=1.8 if top else 0.8, color="C3" if top else "0.5",
            alpha=1.0 if top else 0.5, zorder=3 if top else 2)
    if np.isfinite(loss).any():
      k = int(np.nanargmin(loss))
      ax.plot(steps[k], loss[k], "o", ms=5 if top else 3, color="C3" if top else "0.4",
              zorder=4 if top else 2)
  ax.set_yscale("log")
  _plotting.plain_ticks(ax.yaxis)
  ax.set_xlabel("step")
  ax.set_ylabel("validation loss (mean over seeds; log scale)")
  ax.set_title("validation during training; dots: each curve's lowest", fontsize=_TITLE_SIZE)
