"""Synchronous successive halving: many configurations trained briefly, the best continued."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from adam_jax.tuning import _group, _runner, _tensorboard
from adam_jax.tuning._diverged import diverged_members
from adam_jax.tuning._grid import check_run, evaluation_of, memory_budget
from adam_jax.tuning._problem import Problem
from adam_jax.tuning._random import Choice, LogUniform, Uniform, sample_configs, space_of
from adam_jax.tuning._results import (
  Continued,
  Row,
  SearchResult,
  finite_or_nan,
  rank,
  seed_list,
  summarize_members,
)
from adam_jax.tuning._space import (
  parse_space,
  resolve_optimizer,
  tx_builder,
)


def rungs(min_steps: int, max_steps: int, eta: int) -> list[int]:
  """The steps at which configurations are compared: ``min_steps * eta**k``, then ``max_steps``.

  The rung before the last has at most ``max_steps / eta`` steps, so that no rung is
  a short stretch just before ``max_steps``.

  Args:
    min_steps: the steps of the first rung.
    max_steps: the steps of the last rung.
    eta: the growth of the budget from one rung to the next.

  Returns:
    The increasing step counts, ending with ``max_steps``.

  Examples:
    >>> from adam_jax import tuning
    >>> tuning.rungs(10, 100, 3), tuning.rungs(10, 300, 3)
    ([10, 30, 100], [10, 30, 90, 300])
  """
  if min_steps >= max_steps:
    return [max_steps]
  out, steps = [min_steps], min_steps * eta
  while steps < max_steps and steps * eta <= max_steps:
    out.append(steps)
    steps *= eta
  return out + [max_steps]


def _positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def successive_halving(
    problem: Problem,
    space: Mapping[str, Any],
    *,
    num_configs: int | None = None,
    min_steps: int,
    max_steps: int,
    eta: int = 3,
    seed: int = 0,
    optimizer: str | Callable[..., optax.GradientTransformation] = "adam",
    seeds: int | Sequence[int] = 1,
    metric: str = "val_loss",
    mode: str = "min",
    devices: Sequence[jax.Device] | None = None,
    loop: str = "auto",
    progress: bool | None = None,
    on_row: Callable[[Row], None] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    max_memory: int | str | None = None,
    eval_every: int | None = None,
    keep: str = "last",
    patience: int | None = None,
) -> SearchResult:
  """Synchronous successive halving over a grid or sampled configurations.

  Every configuration trains ``min_steps`` steps in one vectorized program (as in
  :func:`grid_search`); the best ``1/eta`` of them by ``metric`` (computed on the
  validation data) continue from their current params and optimizer state to
  ``eta`` times as many steps, and so on (:func:`rungs`) up to ``max_steps``. A
  continued configuration keeps its trajectory: one that survives every rung has
  the params it would have trained alone for ``max_steps``, and schedules span
  ``max_steps``. No program is compiled twice: the survivors of a shape group either
  run on a program compiled at an earlier rung for more members (the last one
  repeated) or get programs of their own, whichever the times measured so far say is
  cheaper; so a rung compiles at most once per batch size.

  ``space`` is a grid (lists of values, every combination) or, when a value is a
  distribution (:func:`log_uniform`, :func:`uniform`, :func:`choice`), or
  ``num_configs`` is given, ``num_configs`` configurations drawn with ``seed``
  (:func:`sample_configs`).

  Args:
    problem: the :class:`Problem`.
    space: a grid or distributions (see above).
    num_configs: how many configurations to draw (default: the whole grid).
    min_steps: the steps of the first rung.
    max_steps: the steps of the last rung.
    eta: keep the best ``1/eta`` at each rung (an integer, at least 2).
    seed: the seed of the draw.
    optimizer: as in :func:`grid_search`.
    seeds: as in :func:`grid_search`; a configuration's metric is its mean over seeds.
    metric: the metric that ranks configurations at each rung and picks ``best``.
    mode: ``"min"`` or ``"max"``.
    devices: as in :func:`grid_search`.
    loop: as in :func:`grid_search`.
    progress: a progress bar per rung (default: when the output is a terminal).
    on_row: called with each :class:`Row` as its configuration stops.
    log_dir: as in :func:`grid_search`, each configuration's run written when it stops.
    max_memory: as in :func:`grid_search` (each rung's programs are sized on their own).
    eval_every: evaluate every member on ``val_data`` every this many steps (counted
      from step 0, and at the end of each rung): each row's ``evals`` holds its
      validation curve over every rung it trained (mean over seeds) and ``best_step``
      each seed's best evaluated step. Rungs are still ranked by ``metric`` at their
      end.
    keep: ``"last"`` or ``"best"`` (needs ``eval_every``): each row's metrics, and
      ``best``, are those of each seed's best evaluated model of any rung it trained
      (``Row.best_step``), and ``best`` is the best such model of the whole search,
      whichever rung it came from. A configuration that goes on to the next rung
      continues from its last step, not from its kept one.
    patience: stop a member after this many evaluations without a better ``metric``
      within a rung (the count starts again at each rung); a configuration one of
      whose seeds stopped is not continued to the next rung (its row ends at that
      rung, ``Row.stopped_step`` says where), and the next best takes its place.
      Needs ``eval_every``.

  Returns:
    A :class:`SearchResult`, one row per configuration in draw (grid) order with the
    metrics of the rung it reached (``Row.rung``, ``Row.steps``); ``best`` is the
    best of the last rung, with its trained model (None when every configuration of
    the last rung diverged: a diverged configuration ranks last at every rung); with
    ``keep="best"``, the best row of any rung, with its best evaluated model.

  Raises:
    ValueError: bad steps, ``eta``, distributions, or anything :func:`grid_search`
      rejects.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from adam_jax import tuning
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> problem = tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x))
    >>> result = tuning.successive_halving(
    ...     problem, {"learning_rate": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]},
    ...     min_steps=10, max_steps=40, eta=3, progress=False)
    >>> sorted(row.steps for row in result.rows)
    [10, 10, 10, 10, 40, 40]
    >>> result.best.config, result.best.steps
    ({'learning_rate': 0.1}, 40)
  """
  check_run(problem, mode, loop, False, None)
  min_steps = _positive_int("min_steps", min_steps)
  max_steps = _positive_int("max_steps", max_steps)
  if min_steps > max_steps:
    raise ValueError(f"min_steps ({min_steps}) must be at most max_steps ({max_steps})")
  if isinstance(eta, bool) or not isinstance(eta, (int, np.integer)) or eta < 2:
    raise ValueError(f"eta must be an integer of at least 2, got {eta!r}")
  seeds = seed_list(seeds)
  if not isinstance(space, Mapping):
    raise ValueError(f"space must map names to values or distributions, got "
                     f"{type(space).__name__}")
  budget = memory_budget(max_memory)
  evaluation = evaluation_of(problem, max_steps, eval_every, keep, patience, metric, mode)
  kept_best = evaluation is not None and evaluation.keep == "best"
  factory, opt_name = resolve_optimizer(optimizer)
  sampled = num_configs is not None or any(
      isinstance(v, (LogUniform, Uniform, Choice)) for v in space.values())
  if sampled:
    if num_configs is None:
      raise ValueError("num_configs is needed when space holds distributions")
    configs = sample_configs(space, num_configs, seed)
    sp = parse_space(problem, space_of(configs), factory, opt_name)
  else:
    sp = parse_space(problem, space, factory, opt_name)
    configs = [dict(zip(sp.values, c)) for c in itertools.product(*sp.values.values())]
  on_row = _tensorboard.row_logger(log_dir, on_row, _tensorboard.varied(sp.values))
  devices = list(jax.devices() if devices is None else devices)
  make_tx = tx_builder(factory, sp, max_steps)

  n_seeds = len(seeds)
  carries: dict[int, Any] = {}  # config index -> its members' (params, opt_state, state)
  curves: dict[int, list[np.ndarray]] = {i: [] for i in range(len(configs))}
  reached: dict[int, tuple[int, int, list[dict[str, float]], bool]] = {}  # rung, steps,
  #   per seed, diverged: at the end of the rung
  evals = {i: Continued(metric, mode, keep) for i in range(len(configs))
           } if evaluation is not None else None
  leader: list[Any] = []  # keep="best": the best configuration finished so far (its models)
  groups: dict[tuple[Any, ...], _group.Group] = {}
  programs: dict[tuple[Any, ...], dict[Any, Any]] = {}  # group -> its compiled programs
  sizes: dict[tuple[Any, ...], set[int]] = {}  # group -> the member counts compiled
  costs: dict[tuple[Any, ...], tuple[float, float]] = {}  # group -> s per program, member-step
  resolved: dict[tuple[Any, ...], str] = {}  # group -> the loop form of its first rung
  loops: dict[str, str] = {}
  spread = 1
  alive = list(range(len(configs)))
  start = 0
  plan = rungs(min_steps, max_steps, eta)
  chunk = _chunk(plan)
  for rung, stop in enumerate(plan):
    for group_key in dict.fromkeys(tuple(configs[i][k] for k in sp.group) for i in alive):
      group_cfg = dict(zip(sp.group, group_key))
      todo = [i for i in alive if tuple(configs[i][k] for k in sp.group) == group_key]
      if group_key not in groups:
        groups[group_key] = _group.group_of(problem, sp, group_cfg, make_tx, seeds, max_steps,
                                            metric)
      group = groups[group_key]
      member_hp, seed_pos = _group.members([configs[i] for i in todo], sp.traced, n_seeds)
      carry = None
      if rung:
        carry = _runner.concat_members(*[carries[i] for i in todo])
      label = ", ".join([f"rung {rung} (steps {start}..{stop})"]
                        + [f"{k}={v}" for k, v in group_cfg.items()])
      n, length = len(seed_pos), stop - start
      known = programs.setdefault(group_key, {})
      pad_to = n
      larger = [m for m in sizes.setdefault(group_key, set()) if m > n]
      if n not in sizes[group_key] and larger:
        if _pad_is_cheaper(min(larger) - n, length, *costs[group_key]):
          pad_to = min(larger)
      before = len(known)
      out = _group.train(group, member_hp, seed_pos, stop, loop=resolved.get(group_key, loop),
                         devices=devices, start=carry, first_step=start, pad_to=pad_to,
                         chunk=chunk, programs=known, budget=budget, evaluation=evaluation)
      sizes[group_key].add(pad_to)
      resolved[group_key] = out.loop  # no need to look at the step again
      new = len(known) - before  # at least one at a group's first rung: nothing was known
      per_program = out.compile_s / new if new else costs[group_key][0]
      costs[group_key] = (per_program, out.train_s / (pad_to * length))
      loops[label] = out.loop
      spread = max(spread, min(len(devices), len(seed_pos)) if len(seed_pos) > 1 else 1)
      last = (out.params, out.opt_state, out.state) if out.last is None else out.last
      at_end = out.metrics  # ranked by the metrics at the rung's end (the last step's)
      if kept_best:  # out.metrics are the kept steps': the last evaluation is at the end
        at_end = {k: v[:, -1] for k, v in out.evals[1].items()}
      diverged = diverged_members(at_end, last[0], out.trace[:, stop - 1])
      kept_diverged = (diverged_members(out.metrics, out.params, np.zeros(len(seed_pos)))
                       if kept_best else diverged)
      for j, i in enumerate(todo):
        members = slice(j * n_seeds, (j + 1) * n_seeds)
        carries[i] = jax.tree.map(lambda a, m=members: a[m], last)
        curves[i].append(np.asarray(out.trace[members, start:stop], np.float32).mean(axis=0))
        if evals is not None:
          evals[i].add(out, list(range(j * n_seeds, (j + 1) * n_seeds)), kept_diverged)
        per_seed = [{k: float(v[m]) for k, v in at_end.items()}
                    for m in range(j * n_seeds, (j + 1) * n_seeds)]
        if metric not in per_seed[0]:
          raise ValueError(f"metric {metric!r} is not among the metrics "
                           f"({', '.join(per_seed[0])}); pass val_data or metric=...")
        reached[i] = (rung, stop, per_seed, bool(diverged[members].any()))
    if rung + 1 < len(plan):
      survivors = max(1, len(alive) // eta)
      score = lambda i: finite_or_nan(math.nan if reached[i][3] else
                                      summarize_members(reached[i][2])[metric], mode)
      ranked = sorted(alive, key=score, reverse=(mode == "max"))
      going = set([i for i in ranked if evals is None or min(evals[i].stopped) >= stop]
                  [:survivors])  # a configuration stopped early (patience) goes no further
      if not going:  # every configuration of the rung stopped early: the search ends here
        break
      for i in [i for i in alive if i not in going]:
        carries.pop(i)
        row = _row(configs[i], reached[i], curves[i], None if evals is None else evals[i])
        if kept_best:
          _lead(leader, i, row, evals, metric, mode)
        if on_row is not None:
          on_row(row)
      alive = [i for i in alive if i in going]
    start = stop

  rows = [_row(configs[i], reached[i], curves[i], None if evals is None else evals[i])
          for i in range(len(configs))]
  if kept_best:  # the best evaluated model of any rung
    for i in alive:
      _lead(leader, i, rows[i], evals, metric, mode)
    top = leader[1]
  else:  # the best of the last rung, as it ended
    pick = min if mode == "min" else max
    top = pick(alive, key=lambda i: rank(rows[i], metric, mode))
  if not math.isfinite(rank(rows[top], metric, mode)):  # every candidate diverged
    for i in alive if on_row is not None else ():
      on_row(rows[i])
    return SearchResult(rows, None, metric, mode, spread, loops)
  bound = groups[tuple(configs[top][k] for k in sp.group)].bound
  if kept_best:
    trained = evals[top].models()
  else:
    params, _, state = carries[top]
    trained = [jax.tree.map(lambda a, m=m: a[m], (params, state)) for m in range(n_seeds)]
  models = [bound.fns.to_user(*jax.tree.map(jax.numpy.asarray, t)) for t in trained]
  scores = [finite_or_nan(m[metric], mode) for m in rows[top].seed_metrics]
  chosen = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
  rows[top] = rows[top]._replace(model=models[chosen], models=models)
  if on_row is not None:
    for i in alive:
      on_row(rows[i])
  return SearchResult(rows, rows[top], metric, mode, spread, loops)


def _chunk(plan: list[int], most: int = 256) -> int:
  """The steps per compiled chunk: a divisor of every rung's steps, unless too small.

  With one chunk length for every rung, survivors padded to an earlier rung's size run
  that rung's program unchanged. A divisor that would make more than ``most`` chunks
  gives way to the first rung's steps (a last rung that is not a multiple then compiles
  its remainder once).
  """
  lengths = [b - a for a, b in zip([0] + plan[:-1], plan)]
  step = math.gcd(*lengths)
  return step if plan[-1] <= most * step else lengths[0]


def _pad_is_cheaper(extra_members: int, steps: int, compile_s: float,
                    member_step_s: float) -> bool:
  """Whether survivors should run on a program compiled for more members.

  Padding trains ``extra_members`` copies for ``steps`` steps; programs of their own
  cost two compilations (the chunk of steps and the evaluation). Both estimated from
  the times measured at earlier rungs of the same shape group.

  Args:
    extra_members: the members added to reach the compiled size.
    steps: the steps of the rung.
    compile_s: the measured seconds to compile one program.
    member_step_s: the measured seconds of one member's step.

  Returns:
    True when padding is estimated cheaper.
  """
  return extra_members * steps * member_step_s < 2 * compile_s


def _lead(leader: list[Any], i: int, row: Row, evals: dict[int, Continued], metric: str,
          mode: str) -> None:
  """keep="best": makes finished configuration ``i`` the leader if its row ranks better.

  ``leader`` is empty or ``[score, index]``; only the leader's kept models are held on to.
  """
  score = rank(row, metric, mode)
  if not leader or (score < leader[0] if mode == "min" else score > leader[0]):
    if leader:
      evals[leader[1]].drop_models()
    leader[:] = [score, i]
  else:
    evals[i].drop_models()


def _row(config: dict[str, Any], reached: tuple[int, int, list[dict[str, float]], bool],
         curve: list[np.ndarray], evals: Continued | None = None) -> Row:
  """A configuration's row: the metrics of its rung's end, or of its kept steps."""
  rung, steps, per_seed, diverged = reached
  extra = {}
  if evals is not None:
    extra = evals.row_fields()
    if evals.keep == "best":
      per_seed, diverged = evals.seed_metrics(), evals.diverged()
  return Row(dict(config), summarize_members(per_seed), per_seed, np.concatenate(curve),
             rung=rung, steps=steps, diverged=diverged, **extra)

