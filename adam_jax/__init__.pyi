"""Static view of ``adam_jax``: the names the package loads on first use (see ``__init__.py``)."""

from adam_jax import checkpoint as checkpoint
from adam_jax import diagnostics as diagnostics
from adam_jax import quantization as quantization
from adam_jax import schedules as schedules
from adam_jax import tasks as tasks
from adam_jax import tuning as tuning
from adam_jax.aliases import adabelief as adabelief
from adam_jax.aliases import adam as adam
from adam_jax.aliases import adam8bit as adam8bit
from adam_jax.aliases import adam_mini as adam_mini
from adam_jax.aliases import adamax as adamax
from adam_jax.aliases import adamaxw as adamaxw
from adam_jax.aliases import adamw as adamw
from adam_jax.aliases import adamw8bit as adamw8bit
from adam_jax.aliases import adopt as adopt
from adam_jax.aliases import amsgrad as amsgrad
from adam_jax.aliases import cautious_adamw as cautious_adamw
from adam_jax.aliases import dadapt_adamw as dadapt_adamw
from adam_jax.aliases import get_optimizer as get_optimizer
from adam_jax.aliases import lazy_adam as lazy_adam
from adam_jax.aliases import mechanic_adamw as mechanic_adamw
from adam_jax.aliases import nadam as nadam
from adam_jax.aliases import nadamw as nadamw
from adam_jax.aliases import optimizers as optimizers
from adam_jax.aliases import prodigy as prodigy
from adam_jax.aliases import radam as radam
from adam_jax.aliases import schedule_free_adamw as schedule_free_adamw
from adam_jax.quantization import QuantizedArray as QuantizedArray
from adam_jax.transforms._common import ScaleByAdamState as ScaleByAdamState
from adam_jax.transforms.adam import ScaleByAmsgradState as ScaleByAmsgradState
from adam_jax.transforms.adam import scale_by_adam as scale_by_adam
from adam_jax.transforms.adam8bit import ScaleByAdam8bitState as ScaleByAdam8bitState
from adam_jax.transforms.adam8bit import scale_by_adam8bit as scale_by_adam8bit
from adam_jax.transforms.adam_mini import adam_mini_block_shapes as adam_mini_block_shapes
from adam_jax.transforms.adam_mini import adam_mini_partition as adam_mini_partition
from adam_jax.transforms.adam_mini import scale_by_adam_mini as scale_by_adam_mini
from adam_jax.transforms.adam_stochastic import (
    ScaleByAdamStochasticState as ScaleByAdamStochasticState,
)
from adam_jax.transforms.adam_stochastic import scale_by_adam_stochastic as scale_by_adam_stochastic
from adam_jax.transforms.adopt import scale_by_adopt as scale_by_adopt
from adam_jax.transforms.cautious import cautious as cautious
from adam_jax.transforms.dadapt import ScaleByDAdaptAdamState as ScaleByDAdaptAdamState
from adam_jax.transforms.dadapt import ScaleByProdigyState as ScaleByProdigyState
from adam_jax.transforms.dadapt import scale_by_dadapt_adam as scale_by_dadapt_adam
from adam_jax.transforms.dadapt import scale_by_prodigy as scale_by_prodigy
from adam_jax.transforms.lazy import embedding_mask as embedding_mask
from adam_jax.transforms.lazy import scale_by_lazy_adam as scale_by_lazy_adam
from adam_jax.transforms.learning_rate import scale_by_learning_rate as scale_by_learning_rate
from adam_jax.transforms.mechanic import MechanicState as MechanicState
from adam_jax.transforms.mechanic import mechanize as mechanize
from adam_jax.transforms.plateau import ReduceOnPlateauState as ReduceOnPlateauState
from adam_jax.transforms.plateau import reduce_on_plateau as reduce_on_plateau
from adam_jax.transforms.schedule_free import ScheduleFreeAdamWState as ScheduleFreeAdamWState
from adam_jax.transforms.schedule_free import (
    scale_by_schedule_free_adam as scale_by_schedule_free_adam,
)
from adam_jax.transforms.schedule_free import schedule_free_eval_params as schedule_free_eval_params
from adam_jax.transforms.variants import scale_by_adamax as scale_by_adamax
from adam_jax.transforms.variants import scale_by_belief as scale_by_belief
from adam_jax.transforms.variants import scale_by_radam as scale_by_radam
from adam_jax.transforms.weight_decay import AddWeightDecayState as AddWeightDecayState
from adam_jax.transforms.weight_decay import add_weight_decay as add_weight_decay

__version__: str
__all__: list[str]
