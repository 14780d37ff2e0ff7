"""What every figure of the package shares: a displayable Figure, axis scales, the best point.

matplotlib is imported on first use only (``import adam_jax`` stays light).
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

DPI = 110


@functools.cache
def _figure_class() -> type:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  class PlotFigure(Figure):
    """A matplotlib ``Figure`` on an Agg canvas that Jupyter shows as a PNG image.

    No pyplot: nothing stays open, and no display is needed. Jupyter shows a plain
    ``Figure`` as an image only once pyplot's inline backend has been loaded (by
    ``plt.plot`` and the like); this one shows itself through ``_repr_png_``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
      super().__init__(*args, **kwargs)
      FigureCanvasAgg(self)

    def _repr_png_(self) -> bytes:
      buf = io.BytesIO()
      self.savefig(buf, format="png", dpi=DPI)
      return buf.getvalue()

  return PlotFigure


def figure(width: float = 6.4, height: float = 4.2) -> Any:
  """A new figure (see ``PlotFigure`` above), laid out with ``constrained`` layout."""
  return _figure_class()(figsize=(width, height), layout="constrained")


def save(fig: Any, path: str | os.PathLike[str] | None) -> Any:
  """Writes ``fig`` to ``path`` as a PNG when a path is given; returns ``fig``."""
  if path is not None:
    fig.savefig(os.fspath(path), dpi=DPI)
  return fig


def is_number(value: Any) -> bool:
  import numpy as np

  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)))


def log_spaced(values: Sequence[Any]) -> bool:
  """Whether ``values`` read best on a log axis: positive numbers spread geometrically.

  Two distinct values: a ratio of at least 10. More: the steps between the sorted values
  are more even in log than in linear terms (1e-3, 3e-3, 1e-2 or 32, 64, 128 are; 1, 2, 3
  or 0.9, 0.95, 0.99 are not), and the largest is at least 3 times the smallest.

  Examples:
    >>> log_spaced([1e-3, 3e-3, 1e-2]), log_spaced([1, 2, 3]), log_spaced([0.9, 0.99])
    (True, False, False)
  """
  xs = sorted({float(v) for v in values if is_number(v) and math.isfinite(v)})
  if len(xs) < 2 or xs[0] <= 0 or xs[-1] < 3 * xs[0]:
    return False
  if len(xs) == 2:
    return xs[1] >= 10 * xs[0]

  def unevenness(steps: list[float]) -> float:
    return (max(steps) - min(steps)) / max(steps)

  linear = [b - a for a, b in zip(xs, xs[1:])]
  logs = [math.log(b / a) for a, b in zip(xs, xs[1:])]
  return unevenness(logs) < unevenness(linear)


def value_label(value: Any) -> str:
  """A value as the figures and the command line show it: numbers with ``:g``."""
  return value if isinstance(value, str) else f"{value:g}" if is_number(value) else str(value)


def config_label(config: Mapping[str, Any], keys: Sequence[str]) -> str:
  """``k=v, ...`` over ``keys`` (the varied ones), or "the only configuration"."""
  return ", ".join(f"{k}={value_label(config[k])}" for k in keys) or "the only configuration"


def mark_best(ax: Any, x: Any, y: Any, label: str | None = "best") -> None:
  """A red star at ``(x, y)``, drawn above everything else."""
  ax.plot([x], [y], marker="*", ms=15, color="C3", mec="black", mew=0.6, ls="none",
          zorder=5, label=label)


def loss_limits(*curves: Any, top: float | None = None) -> tuple[float, float] | None:
  """y limits that hold the finite values of ``curves`` (up to ``top``), never below 0
  when every value is non-negative (a loss): no impossible range."""
  import numpy as np

  finite = [np.asarray(c, np.float64) for c in curves]
  finite = np.concatenate([c[np.isfinite(c)] for c in finite]) if finite else np.zeros(0)
  if top is not None:
    finite = finite[finite <= top]
  if not len(finite):
    return None
  lo = float(finite.min())
  hi = float(finite.max()) if top is None else top
  pad = 0.05 * ((hi - lo) or abs(hi) or 1.0)
  bottom = lo - pad
  if lo >= 0:
    bottom = max(0.0, bottom)
  return bottom, hi + pad


def plain_ticks(axis: Any) -> None:
  """Plain numbers (0.2, 0.5, 1) instead of powers of ten on a log-scaled ``axis``."""
  from matplotlib.ticker import FuncFormatter, StrMethodFormatter

  def minor(x: float, pos: Any) -> str:  # 2, 3 and 5 of each decade, or the axis crowds
    del pos
    if not x > 0:
      return ""
    lead = x / 10 ** math.floor(math.log10(x))
    return f"{x:.2g}" if any(abs(lead - d) < 1e-6 for d in (2, 3, 5)) else ""

  axis.set_major_formatter(StrMethodFormatter("{x:.3g}"))
  axis.set_minor_formatter(FuncFormatter(minor))
