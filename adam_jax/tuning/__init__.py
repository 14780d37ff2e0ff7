"""Tuning one's own model: the LR range test and vectorized grid searches.

A :class:`Problem` holds the user's model (Flax NNX or functional), loss and data;
:func:`lr_find` and :func:`grid_search` train it, many configurations at once.
"""

from adam_jax.tuning.grid_search import (
    SCHEDULES,
    Row,
    SearchResult,
    grid_search,
    schedule_fn,
)
from adam_jax.tuning.lr_find import LRFindResult, lr_find
from adam_jax.tuning.optuna_search import optuna_search
from adam_jax.tuning.problem import Problem
from adam_jax.tuning.random_search import (
    Choice,
    LogUniform,
    Uniform,
    choice,
    log_uniform,
    random_search,
    sample_configs,
    uniform,
)
from adam_jax.tuning.successive_halving import rungs, successive_halving

__all__ = [
    "SCHEDULES",
    "Choice",
    "LRFindResult",
    "LogUniform",
    "Problem",
    "Row",
    "SearchResult",
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
    "uniform",
]
