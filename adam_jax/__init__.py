"""adam_jax: the Adam family as composable optax transformations.

The public surface: every name below, and the submodules ``schedules``,
``diagnostics``, ``checkpoint``, ``quantization``, ``tuning`` and ``tasks``.
"""

from adam_jax import checkpoint, diagnostics, quantization, schedules
from adam_jax.aliases import (
    adabelief,
    adam,
    adam8bit,
    adam_mini,
    adamax,
    adamaxw,
    adamw,
    adamw8bit,
    adopt,
    amsgrad,
    cautious_adamw,
    dadapt_adamw,
    get_optimizer,
    lazy_adam,
    mechanic_adamw,
    nadam,
    nadamw,
    optimizers,
    prodigy,
    radam,
    schedule_free_adamw,
)
from adam_jax.quantization import QuantizedArray
from adam_jax.transforms._common import ScaleByAdamState
from adam_jax.transforms.adam import ScaleByAmsgradState, scale_by_adam
from adam_jax.transforms.adam8bit import ScaleByAdam8bitState, scale_by_adam8bit
from adam_jax.transforms.adam_mini import (
    adam_mini_block_shapes,
    adam_mini_partition,
    scale_by_adam_mini,
)
from adam_jax.transforms.adam_stochastic import (
    ScaleByAdamStochasticState,
    scale_by_adam_stochastic,
)
from adam_jax.transforms.adopt import scale_by_adopt
from adam_jax.transforms.cautious import cautious
from adam_jax.transforms.dadapt import (
    ScaleByDAdaptAdamState,
    ScaleByProdigyState,
    scale_by_dadapt_adam,
    scale_by_prodigy,
)
from adam_jax.transforms.lazy import embedding_mask, scale_by_lazy_adam
from adam_jax.transforms.learning_rate import scale_by_learning_rate
from adam_jax.transforms.mechanic import MechanicState, mechanize
from adam_jax.transforms.plateau import ReduceOnPlateauState, reduce_on_plateau
from adam_jax.transforms.schedule_free import (
    ScheduleFreeAdamWState,
    scale_by_schedule_free_adam,
    schedule_free_eval_params,
)
from adam_jax.transforms.variants import scale_by_adamax, scale_by_belief, scale_by_radam
from adam_jax.transforms.weight_decay import AddWeightDecayState, add_weight_decay

__version__ = "0.1.0"

__all__ = [
    "AddWeightDecayState",
    "QuantizedArray",
    "ScaleByAdam8bitState",
    "ScaleByAdamStochasticState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScheduleFreeAdamWState",
    "adabelief",
    "adam",
    "adam8bit",
    "adam_mini",
    "adam_mini_block_shapes",
    "adam_mini_partition",
    "adamax",
    "adamaxw",
    "adamw",
    "adamw8bit",
    "add_weight_decay",
    "adopt",
    "amsgrad",
    "cautious",
    "cautious_adamw",
    "checkpoint",
    "diagnostics",
    "embedding_mask",
    "get_optimizer",
    "lazy_adam",
    "nadam",
    "nadamw",
    "optimizers",
    "quantization",
    "radam",
    "scale_by_adam",
    "scale_by_adam8bit",
    "scale_by_adam_stochastic",
    "scale_by_adam_mini",
    "scale_by_adamax",
    "scale_by_adopt",
    "scale_by_belief",
    "scale_by_lazy_adam",
    "scale_by_learning_rate",
    "scale_by_radam",
    "scale_by_schedule_free_adam",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedules",
    "MechanicState",
    "ReduceOnPlateauState",
    "ScaleByDAdaptAdamState",
    "ScaleByProdigyState",
    "dadapt_adamw",
    "mechanic_adamw",
    "mechanize",
    "prodigy",
    "reduce_on_plateau",
    "scale_by_dadapt_adam",
    "scale_by_prodigy",
]
