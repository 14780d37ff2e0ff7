"""Tuning one's own model: the LR range test and vectorized searches.

A :class:`Problem` holds the user's model (Flax NNX or functional), loss and data (arrays,
a ``batch_fn`` or an iterable of batches); :func:`lr_find`, :func:`grid_search`,
:func:`random_search`, :func:`successive_halving`, :func:`optuna_search` and :func:`pbt`
(population-based training) train it, many
configurations at once in one engine (members vmapped, as many per compiled program as
``max_memory`` allows by XLA's own memory analysis, evaluated in mini-batches and, with
``eval_every``, during training); :func:`train` trains one, evaluated as it goes and
resumable.
:func:`open_storage` opens the storage of an Optuna study that workers on many
machines share.
"""

from adam_jax.tuning._grid import grid_search
from adam_jax.tuning._halving import rungs, successive_halving
from adam_jax.tuning._lr_find import LRFindResult, lr_find
from adam_jax.tuning._memory import MemoryBudgetError
from adam_jax.tuning._optuna import optuna_search
from adam_jax.tuning._pbt import Member, PBTResult, Schedule, pbt
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
from adam_jax.tuning._storage import FinishedTrial, StorageUnavailable, open_storage
from adam_jax.tuning._train import TrainInterrupted, TrainResult, train

__all__ = [
    "SCHEDULES",
    "Choice",
    "FinishedTrial",
    "LRFindResult",
    "LogUniform",
    "Member",
    "MemoryBudgetError",
    "PBTResult",
    "Problem",
    "Row",
    "Schedule",
    "SearchResult",
    "StorageUnavailable",
    "TrainInterrupted",
    "TrainResult",
    "Uniform",
    "choice",
    "grid_search",
    "log_uniform",
    "lr_find",
    "open_storage",
    "optuna_search",
    "pbt",
    "random_search",
    "rungs",
    "sample_configs",
    "schedule_fn",
    "successive_halving",
    "train",
    "uniform",
]
