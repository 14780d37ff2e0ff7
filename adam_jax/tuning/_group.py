"""One shape group of a search: what its members share, set up once for every strategy.

Every search (grid, random, successive halving, Optuna) trains its configurations in
groups of one shape (batch size and model keywords); within a group the optimizer values
are traced and the members (configurations x seeds) are ``jax.vmap``-ed by the runner.
A :class:`Group` holds the bound problem, the optimizer of a member and the batch order of
each seed; :func:`members` turns configurations into the members' traced values, and
:func:`train` hands both to :func:`adam_jax.tuning._runner.train_group`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax.tuning import _runner
from adam_jax.tuning._problem import Problem
from adam_jax.tuning._space import Space, traced_values, with_constants


class Group(NamedTuple):
  """A shape group of a search."""

  problem: Problem
  bound: Any  # the problem at this group's shape keys (its pure functions: bound.fns)
  make_tx: Callable[[dict[str, Any]], optax.GradientTransformation]  # one member's optimizer
  seeds: list[int]
  idx: np.ndarray | None  # shape=(seeds, steps, batch): each seed's batch rows (array data)


def group_of(problem: Problem, sp: Space, group_cfg: Mapping[str, Any],
             make_tx: Callable[[dict[str, Any]], optax.GradientTransformation],
             seeds: Sequence[int], steps: int, metric: str) -> Group:
  """The group of ``group_cfg`` (its shape and fixed keys), checked before it trains."""
  bound = problem.bind(**{k: group_cfg[k] for k in sp.shape if k in group_cfg})
  check_metric(bound, problem, metric)
  const = {k: v for k, v in group_cfg.items() if k not in sp.shape}
  idx = None
  if problem.num_train is not None:
    idx = np.stack([problem.batch_indices(steps, s, bound.batch_size) for s in seeds])
  return Group(problem, bound, make_tx if not const else with_constants(make_tx, const),
               list(seeds), idx)


def members(configs: Sequence[Mapping[str, Any]], traced: tuple[str, ...],
            n_seeds: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The members of ``configs`` x seeds: their traced values and seed positions.

  Configuration-major: member ``i * n_seeds + s`` is configuration ``i`` with seed ``s``.
  """
  hp = traced_values(list(configs), traced)
  return ({k: np.repeat(v, n_seeds) for k, v in hp.items()},
          np.tile(np.arange(n_seeds, dtype=np.int32), len(configs)))


def train(group: Group, hp: dict[str, np.ndarray], seed_pos: np.ndarray, steps: int,
          **engine: Any) -> _runner.GroupOutput:
  """Trains the members ``(hp, seed_pos)`` of ``group`` up to step ``steps``.

  ``engine``: the runner's other keywords (loop, devices, chunk, checkpoints, budget,
  evaluation, a start to continue from, ...).
  """
  p = group.problem
  return _runner.train_group(group.bound.fns, group.make_tx, hp, seed_pos, group.seeds, steps,
                             train_data=p.data_source, val_data=p.val_data,
                             batch_fn=p.batch_fn, idx=group.idx, **engine)


def check_metric(bound: Any, problem: Problem, metric: str) -> None:
  """Fails before training when ``metric`` is not among the problem's metrics."""
  params, state = jax.eval_shape(bound.fns.init, jnp.zeros((), jnp.int32))
  names = list(jax.eval_shape(bound.fns.metrics, params, state, problem.train_data,
                              problem.val_data))
  if metric not in names:
    first = [k for k in ("train_loss", "val_loss") if k in names]
    names = first + [k for k in names if k not in first]
    raise ValueError(f"metric {metric!r} is not among the metrics ({', '.join(names)}); "
                     "pass val_data or metric=...")
