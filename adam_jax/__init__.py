"""adam_jax: the Adam family as composable optax transformations."""

from adam_jax import schedules
from adam_jax.aliases import (
    adabelief,
    adam,
    adamax,
    adamaxw,
    adamw,
    amsgrad,
    nadam,
    nadamw,
    radam,
)
from adam_jax.transforms.adam import ScaleByAdamState, ScaleByAmsgradState, scale_by_adam
from adam_jax.transforms.learning_rate import scale_by_learning_rate
from adam_jax.transforms.variants import scale_by_adamax, scale_by_belief, scale_by_radam
from adam_jax.transforms.weight_decay import AddWeightDecayState, add_weight_decay

__version__ = "0.1.0"

__all__ = [
    "AddWeightDecayState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "adabelief",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "add_weight_decay",
    "amsgrad",
    "nadam",
    "nadamw",
    "radam",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_belief",
    "scale_by_learning_rate",
    "scale_by_radam",
    "schedules",
]
