"""Tuning one's own model: the LR range test and vectorized grid searches.

A :class:`Problem` holds the user's model (Flax NNX or functional), loss and data;
:func:`lr_find` and :func:`grid_search` train it, many configurations at once;
:func:`train` trains one, evaluated as it goes and resumable.
"""

from adam_jax.tuning._grid import grid_search
from adam_jax.tuning._halving import rungs, successive_halving
from adam_jax.tuning._lr_find import LRFindResult, lr_find
from adam_jax.tuning._memory import MemoryBudgetError
from adam_jax.tuning._optuna import optuna_search
from adam_jax.tuning._problem import Problem
from adam_jax.tuning._random import (
    Choice,
    LogUniform,
    Uniform,
    choice,
    log_uniform,
    random_search,
    sample_configs,
    uniform,
)
from adam_jax.tuning._results import Row, SearchResult
from adam_jax.tuning._space import SCHEDULES, schedule_fn
from adam_jax.tuning._train import TrainInterrupted, TrainResult, train

__all__ = [
    "SCHEDULES",
    "Choice",
    "LRFindResult",
    "LogUniform",
    "MemoryBudgetError",
    "Problem",
    "Row",
    "SearchResult",
    "TrainInterrupted",
    "TrainResult",
    "Uniform",
    "choice",
    "grid_search",
    "log_uniform",
    "lr_find",
    "optuna_search",
    "random_search",
    "rungs",
    "sample_configs",
    "schedule_fn",
    "successive_halving",
    "train",
    "uniform",
]
