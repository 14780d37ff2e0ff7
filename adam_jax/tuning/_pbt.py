r"""Population-based training inside one compiled program.

A population of members trains side by side (``jax.vmap``-ed, hyperparameters traced, as in
every search). Every ``ready_every`` steps each member is evaluated on ``val_data``; the
members in the bottom ``quantile`` by ``metric`` copy the params, optimizer state and model
state of a member drawn from the top ``quantile`` (*exploit*) and perturb the copied
hyperparameters (*explore*): each is multiplied by a factor drawn from ``perturb`` or, with
probability ``resample_probability``, drawn anew from the space. The copy is one gather on
the devices, between two chunks of the same compiled program: no checkpoint files, no
process per member, no recompilation (the hyperparameters are traced arguments).

Reference: Jaderberg et al., `Population Based Training of Neural Networks
<https://arxiv.org/abs/1711.09846>`_, 2017 (truncation selection, perturbation by 0.8 or
1.2, resampling).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _files, _lock
from adam_jax.tuning import _group, _identity, _runner
from adam_jax.tuning._diverged import diverged_members
from adam_jax.tuning._grid import check_run, evaluation_of, memory_budget
from adam_jax.tuning._problem import Problem
from adam_jax.tuning._random import Choice, LogUniform, Uniform, sample_configs
from adam_jax.tuning._results import rank
from adam_jax.tuning._space import Space, parse_space, resolve_optimizer, tx_builder
from adam_jax.tuning._store import CHECKPOINTS, CSV, Store

HISTORY = "population.csv"  # in out_dir: every member's values and source at each ready point


class Schedule(NamedTuple):
  """Hyperparameters that change during training: ``values`` from each of ``starts`` on.

  Segment ``k`` covers steps ``starts[k] <= t < starts[k + 1]`` (the last one: to the end)
  and trains with ``{key: values[key][k]}``; the other keywords of ``optimizer`` are
  ``constants``. :func:`adam_jax.tuning.train` replays it (``schedule=``).
  """

  optimizer: str | Callable[..., optax.GradientTransformation]  # a name or a factory
  constants: dict[str, Any]  # the keywords that do not change
  starts: tuple[int, ...]  # the first step of each segment; starts[0] == 0
  values: dict[str, tuple[float, ...]]  # each changing keyword, one value per segment
  steps: int  # the length of the run it was found in (a constant ``schedule`` key uses it)

  def at(self, step: int) -> dict[str, float]:
    """The changing keywords' values at ``step``."""
    k = int(np.searchsorted(np.asarray(self.starts), step, side="right")) - 1
    return {key: v[max(k, 0)] for key, v in self.values.items()}

  def make_tx(self) -> Callable[[dict[str, Any]], optax.GradientTransformation]:
    """The optimizer of traced values ``{key: value}`` (the keys of ``values``)."""
    factory, _ = resolve_optimizer(self.optimizer)
    return tx_builder(factory, Space({}, tuple(self.values), dict(self.constants), (), ()),
                      self.steps)

  def table(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(starts, values)`` as arrays (int32, float32) for a compiled step to index."""
    return (np.asarray(self.starts, np.int32),
            {k: np.asarray(v, np.float32) for k, v in self.values.items()})


class Member(NamedTuple):
  """One member of a population."""

  index: int  # its place in the population
  config: dict[str, Any]  # its hyperparameters at step 0
  metrics: dict[str, float]  # the metrics of its returned model (``keep``)
  schedule: Schedule  # what its returned model was trained with, step by step, the
  #   segments trained by the members it copied included
  lineage: list[tuple[int, int]]  # the returned model's ancestry: (first step, member) of
  #   each stretch of training it holds (``[(0, index)]`` when it never copied)
  copied: list[tuple[int, int]]  # (ready step, member copied) each time it copied one
  evals: dict[str, np.ndarray]  # "step" (the ready points and the last step) and each
  #   validation metric there, this member's place in the population
  curve: np.ndarray  # shape=(steps,): the mini-batch loss of this place at every step
  best_step: int  # with keep="best": the step of its returned model (-1: none finite)
  diverged: bool  # its loss, a metric or a parameter is NaN or infinite: never best
  model: Any = None  # .best only: the trained model (nnx.Module, eval mode) or params


class PBTResult(NamedTuple):
  """What :func:`pbt` returns."""

  members: list[Member]  # the population, in order
  best: Member | None  # the best returned model by ``metric`` and ``mode``, with its model
  metric: str  # the validation metric ranked at the ready points and for ``best``
  mode: str  # "min" or "max"
  ready_steps: np.ndarray  # shape=(R,): the steps at which members copied others
  sources: np.ndarray  # shape=(R, population): the member each one copied there (itself:
  #   it did not copy)
  hyperparameters: dict[str, np.ndarray]  # each varied key, shape=(R + 1, population): the
  #   value each member trained with from step 0 and from each ready point on
  loop: str  # "scan" or "python"

  def to_csv(self, path: str | os.PathLike[str]) -> str:
    """One line per member and stretch: ``step``, ``member``, ``source`` and the values.

    ``source`` is the member copied at that step (the member itself: none); the file is
    replaced at once (never half written). Returns the path.
    """
    path = os.fspath(path)
    _files.write_atomic(path, _files.csv_text(history_lines(
        self.ready_steps, self.sources, self.hyperparameters)))
    return path

  def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
    """Each member's schedule of every varied key, the best member's ancestry bold, and
    the lineage (who copied whom at each ready point). Returns a matplotlib ``Figure``;
    saves it to ``path`` as a PNG when given."""
    from adam_jax import _plotting
    from adam_jax.tuning import _plots

    return _plotting.save(_plots.pbt_figure(self), path)


def history_lines(ready_steps: np.ndarray, sources: np.ndarray,
                  hyperparameters: dict[str, np.ndarray]) -> list[list[Any]]:
  """The lines of ``population.csv``: a header, then (step, member, source, values...)."""
  keys = list(hyperparameters)
  lines: list[list[Any]] = [["step", "member", "source"] + keys]
  starts = [0] + [int(s) for s in ready_steps]
  n = next(iter(hyperparameters.values())).shape[1]
  for k, step in enumerate(starts):
    for m in range(n):
      src = m if k == 0 else int(sources[k - 1, m])
      lines.append([step, m, src] + [repr(float(hyperparameters[key][k, m])) for key in keys])
  return lines


@_lock.scoped  # the lock of out_dir is given back when the run ends
def pbt(
    problem: Problem,
    space: Mapping[str, Any],
    *,
    population: int = 16,
    steps: int,
    ready_every: int,
    optimizer: str | Callable[..., optax.GradientTransformation] = "adam",
    quantile: float = 0.25,
    perturb: Sequence[float] = (0.8, 1.2),
    resample_probability: float = 0.25,
    metric: str = "val_loss",
    mode: str = "min",
    seed: int = 0,
    keep: str = "best",
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    max_memory: int | str | None = None,
    devices: Sequence[jax.Device] | None = None,
    loop: str = "auto",
    checkpoint_every: int = 0,
    on_ready: Callable[[int, np.ndarray, dict[str, np.ndarray]], None] | None = None,
) -> PBTResult:
  r"""Population-based training: hyperparameters chosen while the population trains.

  ``population`` configurations are drawn from ``space`` (as :func:`random_search` draws
  them, with ``seed``) and train together, vectorized. At each ready point (every
  ``ready_every`` steps before the last) every member is evaluated on ``val_data`` in
  mini-batches (as ``eval_every`` evaluates); with :math:`n` members and
  :math:`k = \max(1, \lfloor q n \rfloor)` (``q`` = ``quantile``), each of the :math:`k`
  worst members by ``metric`` (a non-finite value is the worst):

  * **exploit**: copies the params, the optimizer state and the model state (BatchNorm
    statistics) of a member drawn uniformly from the :math:`k` best. Its PRNG streams
    (an NNX model's dropout keys) stay its own, so a copy draws other dropout masks;
  * **explore**: each varied hyperparameter :math:`h` of the source becomes
    :math:`h \cdot f` with :math:`f` drawn uniformly from ``perturb``, clipped to the
    distribution's bounds (a :func:`choice` moves to a neighbouring value), or, with
    probability ``resample_probability``, a new draw from the space.

  The copied optimizer state holds the source's moments *and its step count*: Adam's
  bias correction :math:`1 - \beta^t` continues at the source's :math:`t` (the same as
  every member's, since all train the same steps), and the moments, averaged under the
  source's :math:`\beta_1, \beta_2`, go on under the new ones. A learning-rate schedule of
  the optimizer (``schedule`` fixed in ``space``) continues at the step count too.

  All members train from the same initial model and see the same mini-batches (the
  training seed is ``seed``, as a one-seed grid): they differ by their hyperparameters
  (and, after copies, by their history) only, so a member that never copied another is
  reproduced by :func:`train` with ``schedule=member.schedule`` and ``seed=seed``.

  Args:
    problem: the :class:`Problem` (it needs ``val_data``).
    space: the optimizer's keys to distributions (:func:`log_uniform`, :func:`uniform`,
      :func:`choice` of numbers, or a list: a choice) or single values (fixed). Model
      keywords and ``batch_size`` may be fixed (one value), not varied; ``schedule``
      likewise.
    population: the number of members (one: a plain training with the drawn values).
    steps: training steps of every member.
    ready_every: steps between ready points (fewer than ``steps``).
    optimizer: a name in :func:`adam_jax.optimizers` or a factory of transformations.
    quantile: the share of the population copied and copying, in ``(0, 0.5]``.
    perturb: the factors of explore (positive numbers).
    resample_probability: the probability of drawing a value anew instead of perturbing.
    metric: the validation metric ranked at the ready points (``val_...``).
    mode: ``"min"`` or ``"max"``.
    seed: the draw of the population and of every exploit/explore decision (each ready
      point's from ``(seed, step)``), and the training seed.
    keep: ``"best"``: each member's returned model is that of its best ready point (or the
      last step) by ``metric``; ``"last"``: the last step's.
    out_dir: if given, ``search.json`` (the run's identity), ``population.csv`` (rewritten
      at each ready point: every member's values and source) and, at the end,
      ``results.csv`` (a line per member) are written there; the run holds the folder's
      lock.
    resume: with ``out_dir`` and ``checkpoint_every``, continue from the newest checkpoint
      (the population's values, sources and the evaluations included); a run that finished
      keeps no checkpoint and trains again, to the same result.
    max_memory: as in :func:`grid_search`; the whole population trains in one program
      (its members copy each other): one that does not fit is refused before training.
    devices: spread the population over these devices (default: ``jax.devices()``).
    loop: as in :func:`grid_search`.
    checkpoint_every: with ``out_dir``, save the population every this many steps.
    on_ready: called at each ready point with ``(step, sources, hyperparameters)``
      (shape ``(population,)`` each).

  Returns:
    A :class:`PBTResult`: every member's schedule and lineage, the population's history,
    and ``best`` with its trained model and the schedule that produced it.

  Raises:
    ValueError: a bad argument, a varied key that is not a number of the optimizer, a
      problem without ``val_data``, or a resume of another run.
    adam_jax.tuning.MemoryBudgetError: the population does not fit ``max_memory``.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from adam_jax import tuning
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> problem = tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x),
    ...                          batch_size=16)
    >>> result = tuning.pbt(problem, {"learning_rate": tuning.log_uniform(1e-3, 1e-1)},
    ...                     population=4, steps=40, ready_every=10)
    >>> result.sources.shape, len(result.best.schedule.starts) >= 1
    ((3, 4), True)
  """
  check_run(problem, mode, loop, resume, out_dir)
  _check_numbers(dict(population=population, steps=steps, ready_every=ready_every, seed=seed,
                      checkpoint_every=checkpoint_every, quantile=quantile, perturb=perturb,
                      resample_probability=resample_probability))
  sp, dists, factory = _population_space(problem, space, optimizer)
  devices = list(jax.devices() if devices is None else devices)
  _runner.check_devices(devices)
  evaluation = evaluation_of(problem, steps, ready_every, keep, None, metric, mode)
  budget = memory_budget(max_memory)
  configs = sample_configs(space, population, seed)
  traced = sp.traced
  store = ckpt = None
  if out_dir is not None:
    keys = ["member"] + list(space)
    meta = {**_identity.search_identity(problem, optimizer, steps, [seed]),
            "search": "pbt", "population": int(population), "ready_every": int(ready_every),
            "quantile": float(quantile), "perturb": [float(f) for f in perturb],
            "resample_probability": float(resample_probability), "seed": int(seed),
            "keep": keep, "metric": metric, "mode": mode,
            "space": {"member": list(range(population)),
                      **{k: [c[k] for c in configs] for k in space}}}
    store = Store(os.fspath(out_dir), meta, keys, resume, meta["space"])
    if checkpoint_every:
      ckpt = os.path.join(os.fspath(out_dir), CHECKPOINTS, "population")
  hp0 = {k: np.asarray([c[k] for c in configs], np.float32) for k in traced}
  ready_steps = list(range(ready_every, steps, ready_every))
  history_path = None if store is None or not store.writes else os.path.join(
      os.fspath(out_dir), HISTORY)
  pop = _Population(dists, hp0, ready_steps, Rules(quantile, tuple(float(f) for f in perturb),
                                                    resample_probability, mode, seed),
                    history_path, on_ready)
  evaluation = evaluation._replace(exploit=pop)
  make_tx = tx_builder(factory, sp, steps)
  group_cfg = {k: sp.values[k][0] for k in sp.group}
  group = _group.group_of(problem, sp, group_cfg, make_tx, [seed], steps, metric)
  out = _group.train(group, hp0, np.zeros(population, np.int32), steps, loop=loop,
                     chunk=checkpoint_every or None, devices=devices, checkpoint_path=ckpt,
                     resume=resume, budget=budget, evaluation=evaluation)
  result = _result(out, group, pop, configs, sp, optimizer, steps, metric, mode, keep)
  if store is not None and store.writes:
    _write_results(os.fspath(out_dir), result, list(space))
    if ckpt is not None and os.path.isdir(os.path.dirname(ckpt)):
      shutil.rmtree(os.path.dirname(ckpt))
  return result


def _check_numbers(values: Mapping[str, Any]) -> None:
  """The counts, shares and factors of :func:`pbt`, each refused by name when bad."""
  for name in ("population", "steps", "ready_every", "seed", "checkpoint_every"):
    value, low = values[name], {"population": 1, "steps": 2, "ready_every": 1}.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
  steps, ready_every = values["steps"], values["ready_every"]
  if ready_every >= steps:
    raise ValueError(f"ready_every must be below steps ({steps}): no member would ever copy "
                     f"another, got {ready_every}")
  quantile, perturb = values["quantile"], values["perturb"]
  if not (isinstance(quantile, (int, float)) and 0 < quantile <= 0.5):
    raise ValueError(f"quantile must be in (0, 0.5] (the share copied and copying), "
                     f"got {quantile!r}")
  if (isinstance(perturb, (str, bytes)) or not isinstance(perturb, Sequence) or not perturb
      or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0
                 and math.isfinite(f) for f in perturb)):
    raise ValueError(f"perturb must be a list of positive factors, got {perturb!r}")
  p = values["resample_probability"]
  if not (isinstance(p, (int, float)) and 0 <= p <= 1):
    raise ValueError(f"resample_probability must be in [0, 1], got {p!r}")


def _population_space(problem: Problem, space: Mapping[str, Any], optimizer: Any
                      ) -> tuple[Space, dict[str, Any], Callable[..., Any]]:
  """The parsed space, the varied keys' distributions and the optimizer's factory."""
  if not isinstance(space, Mapping):
    raise ValueError(f"space must map names to distributions, got {type(space).__name__}")
  dists: dict[str, Any] = {}
  bounds: dict[str, list[Any]] = {}
  for key, value in space.items():
    if isinstance(value, (list, tuple)):
      value = Choice(value) if len(value) > 1 else value[0]
    if isinstance(value, (LogUniform, Uniform)):
      dists[key], bounds[key] = value, [value.lo, value.hi]
    elif isinstance(value, Choice):
      if not all(isinstance(v, (int, float, np.integer, np.floating))
                 and not isinstance(v, bool) for v in value.values):
        raise ValueError(f"space key {key!r}: population-based training varies numbers only "
                         f"(it perturbs them), got {list(value.values)}; fix it to one value")
      dists[key], bounds[key] = Choice(tuple(sorted(value.values))), list(value.values)
    else:
      bounds[key] = [value]
  factory, opt_name = resolve_optimizer(optimizer)
  sp = parse_space(problem, bounds, factory, opt_name)
  varied = [k for k in sp.shape if k in dists] + (["schedule"] if "schedule" in dists else [])
  if varied:
    raise ValueError(f"space key {varied[0]!r} cannot vary in population-based training (a "
                     "member copies another's model and optimizer state, which need the same "
                     "shapes and schedule); fix it to one value")
  if not dists:
    raise ValueError("space has nothing to vary: give a distribution for at least one "
                     "optimizer value (learning_rate, b1, b2, eps, weight_decay, ...)")
  return sp, dists, factory


class Rules(NamedTuple):
  """How a ready point exploits and explores (see :func:`pbt`)."""

  quantile: float  # the share of the population copied, and copying
  perturb: tuple[float, ...]  # the factors of explore
  resample_probability: float  # a value drawn anew instead of perturbed
  mode: str  # "min" or "max": which scores are the best
  seed: int  # each ready point's decisions are drawn from (seed, step)


class _Population:
  """The exploit and explore of :func:`pbt`, called by the runner at each ready point, and
  the population's history (kept in the runner's checkpoints)."""

  def __init__(self, dists: dict[str, Any], hp0: dict[str, np.ndarray], ready_steps: list[int],
               rules: Rules, history_path: str | None = None,
               on_ready: Callable[..., None] | None = None):
    self.dists, self.ready_steps = dists, ready_steps
    self.n = len(next(iter(hp0.values())))
    self.k = max(1, int(math.floor(rules.quantile * self.n))) if self.n > 1 else 0  # one: alone
    self.perturb, self.resample = rules.perturb, rules.resample_probability
    self.mode, self.seed = rules.mode, rules.seed
    self.history_path, self.on_ready = history_path, on_ready
    r = len(ready_steps)
    self.hyperparameters = {k: np.repeat(v[None], r + 1, axis=0) for k, v in hp0.items()}
    self.sources = np.tile(np.arange(self.n, dtype=np.int32), (r, 1))
    self.done = 0  # ready points passed
    self.padded: dict[str, np.ndarray] | None = None  # the runner's current values

  def ready(self, step: int, scores: np.ndarray, hp: dict[str, np.ndarray]
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which member each member copies at ``step`` and every member's values from there."""
    n, k = self.n, self.k
    rng = np.random.default_rng([self.seed, step])
    s = np.asarray(scores[:n], np.float64)
    s = np.where(np.isfinite(s), s if self.mode == "min" else -s, np.inf)
    order = np.argsort(s, kind="stable")
    top, bottom = order[:k], order[n - k:] if k else order[:0]
    source = np.arange(len(scores), dtype=np.int32)
    new = {key: np.array(v, np.float32) for key, v in hp.items()}
    for i in sorted(bottom):
      j = int(top[rng.integers(k)])
      source[i] = j
      for key in self.dists:
        new[key][i] = self._explore(key, float(hp[key][j]), rng)
    col = self.ready_steps.index(step)
    self.sources[col] = source[:n]
    for key in self.hyperparameters:
      self.hyperparameters[key][col + 1] = new[key][:n]
    self.done, self.padded = col + 1, new
    if self.history_path is not None:
      _files.write_atomic(self.history_path, _files.csv_text(history_lines(
          np.asarray(self.ready_steps[:self.done]), self.sources[:self.done],
          {key: v[:self.done + 1] for key, v in self.hyperparameters.items()})))
    if self.on_ready is not None:
      self.on_ready(step, source[:n].copy(), {key: v[:n].copy() for key, v in new.items()})
    return source, new

  def _explore(self, key: str, value: float, rng: np.random.Generator) -> float:
    dist = self.dists[key]
    if rng.random() < self.resample:
      return float(dist.sample(rng))
    if isinstance(dist, Choice):  # a neighbouring value
      values = np.asarray(dist.values, np.float64)
      i = int(np.argmin(np.abs(values - value))) + int(rng.choice([-1, 1]))
      return float(values[min(max(i, 0), len(values) - 1)])
    factor = self.perturb[int(rng.integers(len(self.perturb)))]
    return float(np.clip(value * factor, dist.lo, dist.hi))

  def saved(self, hp: dict[str, np.ndarray]) -> dict[str, Any]:
    """What a checkpoint keeps (``hp``: the runner's values before the first ready point)."""
    return {"hp": dict(hp if self.padded is None else self.padded),
            "hyperparameters": dict(self.hyperparameters), "sources": self.sources,
            "done": np.asarray(self.done, np.int32)}

  def load(self, saved: dict[str, Any]) -> dict[str, np.ndarray]:
    """Takes a checkpoint's state; returns the values the members train with there."""
    self.hyperparameters = {k: np.array(v) for k, v in saved["hyperparameters"].items()}
    self.sources, self.done = np.array(saved["sources"]), int(saved["done"])
    self.padded = {k: np.array(v) for k, v in saved["hp"].items()}
    return self.padded


def ancestry(pop_sources: np.ndarray, ready_steps: Sequence[int], member: int, step: int
             ) -> list[tuple[int, int]]:
  """``(first step, member)`` of each stretch of training in ``member``'s model at ``step``.

  At a ready point ``r`` a member that copied ``j`` holds ``j``'s training before ``r``.
  """
  starts = [0] + [r for r in ready_steps if r < step]
  out = [(starts[-1], member)]
  who = member
  for col in range(len(starts) - 2, -1, -1):  # the ready point starts[col + 1]
    who = int(pop_sources[col, who])
    out.append((starts[col], who))
  return out[::-1]


def _schedule_of(pop: _Population, lineage: list[tuple[int, int]], optimizer: Any, sp: Space,
                 steps: int) -> Schedule:
  """The values each stretch of ``lineage`` trained with; a stretch that changes nothing
  joins the one before."""
  starts: list[int] = []
  values: dict[str, list[float]] = {k: [] for k in pop.hyperparameters}
  for start, who in lineage:
    col = 0 if start == 0 else list(pop.ready_steps).index(start) + 1
    here = {k: float(v[col, who]) for k, v in pop.hyperparameters.items()}
    if starts and all(values[k][-1] == here[k] for k in here):
      continue
    starts.append(start)
    for k in here:
      values[k].append(here[k])
  return Schedule(optimizer, dict(sp.const), tuple(starts),
                  {k: tuple(v) for k, v in values.items()}, steps)


def _result(out: _runner.GroupOutput, group: _group.Group, pop: _Population,
            configs: list[dict[str, Any]], sp: Space, optimizer: Any, steps: int,
            metric: str, mode: str, keep: str) -> PBTResult:
  n = pop.n
  ready = np.asarray(pop.ready_steps, np.int32)
  losses = np.asarray(out.trace, np.float32)
  kept_best = keep == "best"
  diverged = diverged_members(out.metrics, out.params,
                              np.zeros(n) if kept_best else losses[:, -1])
  ev_steps, curves = out.evals
  members = []
  for m in range(n):
    at = int(out.best_step[m]) if kept_best and out.best_step[m] >= 0 else steps
    lineage = ancestry(pop.sources, pop.ready_steps, m, at)
    schedule = _schedule_of(pop, lineage, optimizer, sp, steps)
    copied = [(int(r), int(pop.sources[i, m])) for i, r in enumerate(ready)
              if pop.sources[i, m] != m]
    members.append(Member(
        m, dict(configs[m]), {k: float(v[m]) for k, v in out.metrics.items()}, schedule,
        lineage, copied, {"step": np.asarray(ev_steps), **{
            k: np.asarray(v[m], np.float64) for k, v in curves.items()}},
        losses[m], int(out.best_step[m]), bool(diverged[m])))
  scores = [rank(x, metric, mode) for x in members]  # a diverged member ranks last
  best = None
  if any(math.isfinite(s) for s in scores):
    b = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
    model = group.bound.fns.to_user(*jax.tree.map(lambda a: jnp.asarray(a[b]),
                                                  (out.params, out.state)))
    best = members[b] = members[b]._replace(model=model)
  return PBTResult(members, best, metric, mode, ready, pop.sources.copy(),
                   {k: v.copy() for k, v in pop.hyperparameters.items()}, out.loop)


def _write_results(out_dir: str, result: PBTResult, keys: list[str]) -> None:
  """results.csv: a line per member (its initial values, its metrics, diverged)."""
  names = list(result.members[0].metrics)
  _files.write_atomic(os.path.join(out_dir, CSV), _files.csv_text(
      [["member"] + keys + names + ["diverged"]]
      + [[m.index] + [m.config[k] for k in keys] + [repr(m.metrics[x]) for x in names]
         + [m.diverged] for m in result.members]))

