"""What a search returns: its rows, the best one, and the numbers kept per member."""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from adam_jax import _files


class Row(NamedTuple):
  """One configuration of a search."""

  config: dict[str, Any]  # one value per key of the space
  metrics: dict[str, float]  # mean over seeds; with several seeds also "<name>_std"
  seed_metrics: list[dict[str, float]]  # the metrics of each seed's trained model
  curve: np.ndarray | None  # shape=(steps,), float32: mini-batch losses, mean over seeds
  model: Any = None  # .best only: the trained model (nnx.Module, eval mode) or params
  models: list[Any] | None = None  # .best only: one trained model per seed
  diagnostics: dict[str, np.ndarray] | None = None  # with diagnostics: monitor columns
  rung: int | None = None  # successive halving: the last rung the configuration trained in
  steps: int | None = None  # successive halving: the steps it trained
  diverged: bool = False  # a seed's loss, metric or parameter is NaN or infinite: never best
  evals: dict[str, np.ndarray] | None = None  # with eval_every: "step" and each validation
  #   metric at those steps, shape=(evaluations,), mean over seeds
  best_step: list[int] | None = None  # with eval_every: each seed's best evaluated step
  #   (-1: never a finite metric); with keep="best" its model and metrics are that step's
  stopped_step: list[int] | None = None  # with patience: the step each seed stopped at


class SearchResult(NamedTuple):
  """What :func:`grid_search` returns."""

  rows: list[Row]  # every configuration, in grid order
  best: Row | None  # the best row by ``metric`` and ``mode``, with its trained model;
  #   None when every row diverged (a diverged row is never the best)
  metric: str  # the metric that chose ``best``
  mode: str  # "min" or "max"
  num_devices: int  # the most devices one group was spread over (Python-driven loops: 1)
  loops: dict[str, str]  # the loop form ("scan" or "python") used for each shape group

  def to_csv(self, path: str | os.PathLike[str]) -> str:
    """Writes one line per row (config, metrics, ``diverged``) to ``path``; returns the path.

    The file is replaced at once (a temporary file renamed): never half written.
    """
    path = os.fspath(path)
    keys = list(self.rows[0].config)
    names = list(self.rows[0].metrics)
    _files.write_atomic(path, _files.csv_text(
        [keys + names + ["diverged"]]
        + [[row.config[k] for k in keys] + [repr(row.metrics[m]) for m in names]
           + [row.diverged] for row in self.rows]))
    return path

  def plot(self, path: str | os.PathLike[str] | None = None, *, x: str | None = None) -> Any:
    """The metric against ``x`` (default: the varied key with most values), best marked.

    Each point is the best row for that value of ``x`` over the other varied keys (named
    in the title); the best row of the search is a star. A log axis where the values are
    log-spaced. Successive halving: the line holds the rows of the last rung; rows
    stopped at earlier rungs (fewer steps, not comparable) are faded dots.
    Returns a matplotlib ``Figure`` (shown as an image in Jupyter); saves it to ``path``
    as a PNG when given.
    """
    from adam_jax import _plotting
    from adam_jax.tuning import _plots

    return _plotting.save(_plots.search_figure(self, x), path)


def finite_or_nan(value: float, mode: str) -> float:
  return value if math.isfinite(value) else (math.inf if mode == "min" else -math.inf)


def rank(row: Row, metric: str, mode: str) -> float:
  """A row's ``metric`` for picking the best: the worst value when the row diverged."""
  return finite_or_nan(math.nan if row.diverged else row.metrics[metric], mode)


def monitor_record(opt_state: Any) -> Any:
  """What is kept of a :func:`adam_jax.diagnostics.monitor` state after each step."""
  return opt_state.stats


def monitor_columns(stats: Any, first_step: int = 1) -> dict[str, np.ndarray]:
  """Stacked monitor statistics (leading axis: steps) as columns for ``plot_history``.

  Columns: ``step``, ``update_to_param_ratio`` (over all leaves),
  ``eps_dominated_fraction`` and ``update_to_param_ratio/<leaf path>``.
  """
  overall = np.asarray(stats.update_to_param_ratio, np.float64).reshape(-1)
  cols = {"step": np.arange(first_step, first_step + len(overall), dtype=np.float64),
          "update_to_param_ratio": overall,
          "eps_dominated_fraction": np.asarray(stats.eps_dominated_fraction, np.float64)}
  leaves = {k: v for k, v in stats.per_leaf.as_dict().items()
            if k.startswith("update_to_param_ratio/")}
  cols.update({k: np.asarray(v, np.float64).reshape(-1) for k, v in leaves.items()})
  return cols


def evaluated(out: Any, members: list[int]) -> dict[str, Any]:
  """A row's ``evals``, ``best_step`` and ``stopped_step`` from its members (seeds)."""
  if out.evals is None:
    return {}
  steps, curves = out.evals
  evals = {"step": np.asarray(steps)}
  evals.update({k: np.asarray(v[members], np.float64).mean(axis=0) for k, v in curves.items()})
  return {"evals": evals, "best_step": [int(out.best_step[m]) for m in members],
          "stopped_step": [int(out.stopped[m]) for m in members]}


def summarize_members(per_seed: list[dict[str, float]]) -> dict[str, float]:
  names = list(per_seed[0])
  out = {k: float(np.mean([m[k] for m in per_seed])) for k in names}
  if len(per_seed) > 1:
    out.update({f"{k}_std": float(np.std([m[k] for m in per_seed])) for k in names})
  return out


def seed_list(seeds: Any) -> list[int]:
  if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
    if seeds < 1:
      raise ValueError(f"seeds must be a positive integer or a list of seeds, got {seeds!r}")
    return list(range(int(seeds)))
  try:
    out = [int(s) for s in seeds]
  except (TypeError, ValueError):
    raise ValueError(f"seeds must be a positive integer or a list of seeds, got {seeds!r}"
                     ) from None
  if not out or len(set(out)) != len(out) or min(out) < 0:
    raise ValueError(f"seeds must be distinct non-negative integers, got {seeds!r}")
  return out




class _SeedBest(NamedTuple):
  """A seed's best evaluated step so far (:class:`Continued`)."""

  score: float  # its metric there (NaN: never finite)
  step: int  # -1: no finite metric yet
  metrics: dict[str, float] | None  # keep="best": the kept model's metrics
  model: Any  # keep="best": the kept (params, state), on the host
  diverged: bool  # keep="best": the kept model's metric or a parameter is not finite


class Continued:
  """One configuration's evaluations over trainings that continue each other.

  Successive halving's rungs and an Optuna trial's chunks each train a configuration's
  members from the state the previous one ended at; the runner evaluates each stretch
  on its own. This joins them: the curve over every stretch, and each seed's best
  evaluated step (with ``keep="best"``, its metrics and model) over all of them.
  """

  def __init__(self, metric: str, mode: str, keep: str):
    self.metric, self.mode, self.keep = metric, mode, keep
    self.steps: list[np.ndarray] = []
    self.curves: list[dict[str, np.ndarray]] = []  # each shape=(seeds, evaluations)
    self.best: list[_SeedBest] = []
    self.stopped: list[int] = []

  def add(self, out: Any, members: list[int], diverged: np.ndarray) -> None:
    """Takes in a stretch: ``out`` a runner output, ``members`` the seeds' members in it.

    ``diverged``: per member of ``out``, whether its returned model diverged.
    """
    steps, curves = out.evals
    steps = [int(s) for s in steps]
    self.steps.append(np.asarray(steps, np.int32))
    self.curves.append({k: np.asarray(v[members]) for k, v in curves.items()})
    self.stopped = [int(out.stopped[m]) for m in members]
    if not self.best:
      self.best = [None] * len(members)
    for s, m in enumerate(members):
      step = int(out.best_step[m])
      score = float(curves[self.metric][m, steps.index(step)]) if step >= 0 else math.nan
      prev = self.best[s]
      if prev is not None and (step < 0 or (prev.step >= 0 and not (
          score < prev.score if self.mode == "min" else score > prev.score))):
        continue
      if self.keep == "best":
        self.best[s] = _SeedBest(score, step, {k: float(v[m]) for k, v in out.metrics.items()},
                                 tuple(_member(a, m) for a in (out.params, out.state)),
                                 bool(diverged[m]))
      else:
        self.best[s] = _SeedBest(score, step, None, None, False)

  def row_fields(self) -> dict[str, Any]:
    """The row's ``evals``, ``best_step`` and ``stopped_step``."""
    evals = {"step": np.concatenate(self.steps)}
    evals.update({k: np.concatenate([c[k] for c in self.curves], axis=1).astype(np.float64)
                  .mean(axis=0) for k in self.curves[0]})
    return {"evals": evals, "best_step": [b.step for b in self.best],
            "stopped_step": list(self.stopped)}

  def seed_metrics(self) -> list[dict[str, float]]:
    """keep="best": each seed's metrics at its kept step."""
    return [b.metrics for b in self.best]

  def models(self) -> list[Any]:
    """keep="best": each seed's kept ``(params, state)``, on the host."""
    return [b.model for b in self.best]

  def drop_models(self) -> None:
    """Lets go of the kept models (a configuration that is not the best)."""
    self.best = [b._replace(model=None) for b in self.best]

  def diverged(self) -> bool:
    """keep="best": whether a seed's kept model diverged."""
    return any(b.diverged for b in self.best)


def _member(tree: Any, m: int) -> Any:
  return jax.tree.map(lambda a: a[m], tree)
