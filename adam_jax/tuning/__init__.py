"""Choosing Adam's hyperparameters: the LR range test and vectorized grid search."""

from adam_jax.tuning.grid_search import (
    AXES,
    COLUMNS,
    SCHEDULES,
    GridSearchResult,
    SweepRow,
    grid_search,
    make_optimizer,
    schedule_fn,
)
from adam_jax.tuning.lr_find import LRFindResult, lr_find

__all__ = [
    "AXES",
    "COLUMNS",
    "SCHEDULES",
    "GridSearchResult",
    "LRFindResult",
    "SweepRow",
    "grid_search",
    "lr_find",
    "make_optimizer",
    "schedule_fn",
]
