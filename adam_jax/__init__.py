"""adam_jax: the Adam family as composable optax transformations.

The public surface: every name in ``__all__``, and the submodules ``schedules``,
``diagnostics``, ``checkpoint``, ``quantization``, ``tuning`` and ``tasks``.

Importing the package imports nothing heavy: each name's module (and with it
JAX) is imported on first access (:pep:`562`). ``import adam_jax`` is instant, and
the ``adam-jax`` command can hold Ctrl-C while JAX loads (an interrupt half-way
through ``import jax`` leaves it half-initialized) and then exit with one line.
``__init__.pyi`` spells out the same names for type checkers and editors.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The module that defines each public name.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "adam_jax.aliases": (
        "adabelief", "adam", "adam8bit", "adam_mini", "adamax", "adamaxw", "adamw",
        "adamw8bit", "adopt", "amsgrad", "cautious_adamw", "dadapt_adamw",
        "get_optimizer", "lazy_adam", "mechanic_adamw", "nadam", "nadamw", "optimizers",
        "prodigy", "radam", "schedule_free_adamw"),
    "adam_jax.quantization": ("QuantizedArray",),
    "adam_jax.transforms._common": ("ScaleByAdamState",),
    "adam_jax.transforms.adam": ("ScaleByAmsgradState", "scale_by_adam"),
    "adam_jax.transforms.adam8bit": ("ScaleByAdam8bitState", "scale_by_adam8bit"),
    "adam_jax.transforms.adam_mini": (
        "adam_mini_block_shapes", "adam_mini_partition", "scale_by_adam_mini"),
    "adam_jax.transforms.adam_stochastic": (
        "ScaleByAdamStochasticState", "scale_by_adam_stochastic"),
    "adam_jax.transforms.adopt": ("scale_by_adopt",),
    "adam_jax.transforms.cautious": ("cautious",),
    "adam_jax.transforms.dadapt": (
        "ScaleByDAdaptAdamState", "ScaleByProdigyState", "scale_by_dadapt_adam",
        "scale_by_prodigy"),
    "adam_jax.transforms.lazy": ("embedding_mask", "scale_by_lazy_adam"),
    "adam_jax.transforms.learning_rate": ("scale_by_learning_rate",),
    "adam_jax.transforms.mechanic": ("MechanicState", "mechanize"),
    "adam_jax.transforms.plateau": ("ReduceOnPlateauState", "reduce_on_plateau"),
    "adam_jax.transforms.schedule_free": (
        "ScheduleFreeAdamWState", "scale_by_schedule_free_adam", "schedule_free_eval_params"),
    "adam_jax.transforms.variants": ("scale_by_adamax", "scale_by_belief", "scale_by_radam"),
    "adam_jax.transforms.weight_decay": ("AddWeightDecayState", "add_weight_decay"),
}
_PUBLIC_SUBMODULES = ("checkpoint", "diagnostics", "quantization", "schedules")
# Reachable as attributes too, but documented on their own pages.
_OTHER_SUBMODULES = ("aliases", "cli", "native", "tasks", "transforms", "tuning")

_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_WHERE, *_PUBLIC_SUBMODULES])


def __getattr__(name: str) -> Any:
  if name in _WHERE:
    value = getattr(importlib.import_module(_WHERE[name]), name)
  elif name in _PUBLIC_SUBMODULES or name in _OTHER_SUBMODULES:
    value = importlib.import_module(f"{__name__}.{name}")
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__, *_OTHER_SUBMODULES})
