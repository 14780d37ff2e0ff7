"""Random search: configurations sampled from distributions, trained like a grid."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from adam_jax.tuning._grid import search
from adam_jax.tuning._problem import Problem
from adam_jax.tuning._results import Row, SearchResult


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_bounds(name: str, lo: Any, hi: Any, positive: bool) -> None:
  for v in (lo, hi):
    if not _is_number(v) or not math.isfinite(v):
      raise ValueError(f"{name} bounds must be finite numbers, got lo={lo!r}, hi={hi!r}")
  if positive and lo <= 0:
    raise ValueError(f"{name} needs 0 < lo, got lo={lo!r}")
  if not lo < hi:
    raise ValueError(f"{name} needs lo < hi, got lo={lo!r}, hi={hi!r}")


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """Values whose logarithm is uniform between ``log(lo)`` and ``log(hi)``."""

  lo: float
  hi: float

  def __post_init__(self):
    _check_bounds("log_uniform", self.lo, self.hi, positive=True)

  def sample(self, rng: np.random.Generator) -> float:
    return float(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))


@dataclasses.dataclass(frozen=True)
class Uniform:
  """Values uniform between ``lo`` and ``hi``."""

  lo: float
  hi: float

  def __post_init__(self):
    _check_bounds("uniform", self.lo, self.hi, positive=False)

  def sample(self, rng: np.random.Generator) -> float:
    return float(rng.uniform(self.lo, self.hi))


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of ``values``, each equally likely."""

  values: tuple[Any, ...]

  def __post_init__(self):
    if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence):
      raise ValueError(f"choice needs a list of values, got {self.values!r}")
    object.__setattr__(self, "values", tuple(self.values))
    if not self.values:
      raise ValueError("choice needs at least one value")
    if len({repr(v) for v in self.values}) != len(self.values):
      raise ValueError(f"choice has repeated values: {list(self.values)}")

  def sample(self, rng: np.random.Generator) -> Any:
    return self.values[int(rng.integers(len(self.values)))]


Distribution = LogUniform | Uniform | Choice


def log_uniform(lo: float, hi: float) -> LogUniform:
  """A log-uniform distribution on ``[lo, hi]``, for scales like a learning rate.

  Args:
    lo: the lower bound, positive.
    hi: the upper bound, above ``lo``.

  Returns:
    A :class:`LogUniform`.

  Examples:
    >>> from adam_jax import tuning
    >>> tuning.log_uniform(1e-4, 1e-1)
    LogUniform(lo=0.0001, hi=0.1)
  """
  return LogUniform(lo, hi)


def uniform(lo: float, hi: float) -> Uniform:
  """A uniform distribution on ``[lo, hi]``.

  Args:
    lo: the lower bound.
    hi: the upper bound, above ``lo``.

  Returns:
    A :class:`Uniform`.

  Examples:
    >>> from adam_jax import tuning
    >>> tuning.uniform(0.8, 0.99)
    Uniform(lo=0.8, hi=0.99)
  """
  return Uniform(lo, hi)


def choice(values: Sequence[Any]) -> Choice:
  """One of ``values`` (numbers, strings, booleans), each equally likely.

  Args:
    values: the distinct values.

  Returns:
    A :class:`Choice`.

  Examples:
    >>> from adam_jax import tuning
    >>> tuning.choice([16, 32])
    Choice(values=(16, 32))
  """
  return Choice(values)


def sample_configs(space: Mapping[str, Any], num_configs: int, seed: int = 0
                   ) -> list[dict[str, Any]]:
  """``num_configs`` distinct configurations drawn from ``space`` with ``seed``.

  A value of ``space`` is a distribution (:func:`log_uniform`, :func:`uniform`,
  :func:`choice`), a list (a :func:`choice`) or one value (a constant). Draws that
  repeat an earlier configuration are drawn again (at most ``100 * num_configs`` draws).

  Args:
    space: names to distributions.
    num_configs: how many distinct configurations to draw.
    seed: the seed of ``numpy.random.default_rng``.

  Returns:
    The configurations, dicts in the order of ``space``'s keys.

  Examples:
    >>> from adam_jax import tuning
    >>> configs = tuning.sample_configs({"learning_rate": tuning.log_uniform(1e-4, 1e-1),
    ...                                  "b1": 0.9}, num_configs=3)
    >>> len(configs), all(1e-4 <= c["learning_rate"] <= 1e-1 for c in configs)
    (3, True)
  """
  if not isinstance(space, Mapping):
    raise ValueError(f"space must map names to distributions, got {type(space).__name__}")
  if isinstance(num_configs, bool) or not isinstance(num_configs, (int, np.integer)) \
      or num_configs < 1:
    raise ValueError(f"num_configs must be a positive integer, got {num_configs!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  dists = {}
  for key, value in space.items():
    if isinstance(value, (LogUniform, Uniform, Choice)):
      dists[key] = value
    elif isinstance(value, (list, tuple)):
      try:
        dists[key] = Choice(value)
      except ValueError as err:
        raise ValueError(f"space key {key!r}: {err}") from None
    elif isinstance(value, (str, int, float, bool, np.integer, np.floating)) or value is None:
      dists[key] = Choice([value])
    else:
      raise ValueError(f"space key {key!r} must be a distribution (log_uniform, uniform, "
                       f"choice), a list or one value, got {value!r}")
  rng = np.random.default_rng(int(seed))
  configs: dict[tuple[str, ...], dict[str, Any]] = {}
  for _ in range(100 * int(num_configs)):
    config = {k: d.sample(rng) for k, d in dists.items()}
    configs.setdefault(tuple(repr(v) for v in config.values()), config)
    if len(configs) == num_configs:
      return list(configs.values())
  raise ValueError(f"space has fewer than num_configs={num_configs} distinct configurations "
                   f"(found {len(configs)})")


def space_of(configs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
  """The values each key takes in ``configs``, in order of appearance."""
  out: dict[str, dict[str, Any]] = {}
  for config in configs:
    for k, v in config.items():
      out.setdefault(k, {}).setdefault(repr(v), v)
  return {k: list(v.values()) for k, v in out.items()}


def random_search(
    problem: Problem,
    space: Mapping[str, Any],
    *,
    num_configs: int,
    seed: int = 0,
    optimizer: str | Callable[..., optax.GradientTransformation] = "adam",
    steps: int,
    seeds: int | Sequence[int] = 1,
    metric: str = "val_loss",
    mode: str = "min",
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    devices: Sequence[jax.Device] | None = None,
    loop: str = "auto",
    checkpoint_every: int = 0,
    progress: bool | None = None,
    on_row: Callable[[Row], None] | None = None,
    diagnostics: bool = False,
    log_dir: str | os.PathLike[str] | None = None,
    max_memory: int | str | None = None,
    eval_every: int | None = None,
    keep: str = "last",
    patience: int | None = None,
) -> SearchResult:
  """Trains ``num_configs`` configurations sampled from ``space``, vectorized like a grid.

  ``space`` maps the keys :func:`grid_search` accepts to distributions
  (:func:`log_uniform`, :func:`uniform`, :func:`choice`), lists (sampled as a
  choice) or single values. The configurations are drawn with ``seed``
  (:func:`sample_configs`) and trained by :func:`grid_search`'s runner: numeric
  optimizer values are traced and trained in one ``jax.vmap``-ed program, shape
  keys (``batch_size``, model keywords) give a program per sampled combination.
  Rows, seeds, metrics, ``best.model``, ``out_dir``, ``resume`` and several processes
  work as there (a resume must use the same ``seed`` and ``num_configs``).

  Args:
    problem: the :class:`Problem`.
    space: the distributions (see above).
    num_configs: how many distinct configurations to draw.
    seed: the seed of the draw (not of training: see ``seeds``).
    optimizer: as in :func:`grid_search`.
    steps: as in :func:`grid_search`.
    seeds: as in :func:`grid_search`.
    metric: as in :func:`grid_search`.
    mode: as in :func:`grid_search`.
    out_dir: as in :func:`grid_search`.
    resume: as in :func:`grid_search`.
    devices: as in :func:`grid_search`.
    loop: as in :func:`grid_search`.
    checkpoint_every: as in :func:`grid_search`.
    progress: as in :func:`grid_search`.
    on_row: as in :func:`grid_search`.
    diagnostics: as in :func:`grid_search`.
    log_dir: as in :func:`grid_search`.
    max_memory: as in :func:`grid_search`.
    eval_every: as in :func:`grid_search`.
    keep: as in :func:`grid_search`.
    patience: as in :func:`grid_search`.

  Returns:
    A :class:`SearchResult` with one row per sampled configuration, in draw order.

  Raises:
    ValueError: a bad distribution, ``num_configs`` or ``seed``, or anything
      :func:`grid_search` rejects.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from adam_jax import tuning
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> problem = tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x))
    >>> result = tuning.random_search(
    ...     problem, {"learning_rate": tuning.log_uniform(1e-3, 1e-1)}, num_configs=4, steps=50)
    >>> lrs = [row.config["learning_rate"] for row in result.rows]
    >>> len(lrs), result.best.config["learning_rate"] == max(lrs)
    (4, True)
  """
  configs = sample_configs(space, num_configs, seed)
  return search(problem, space_of(configs), configs, optimizer=optimizer, steps=steps,
                seeds=seeds, metric=metric, mode=mode, out_dir=out_dir, resume=resume,
                devices=devices, loop=loop, checkpoint_every=checkpoint_every,
                progress=progress, on_row=on_row, diagnostics=diagnostics, log_dir=log_dir,
                max_memory=max_memory, eval_every=eval_every, keep=keep, patience=patience,
                meta={"search": "random", "seed": int(seed), "num_configs": int(num_configs)})
