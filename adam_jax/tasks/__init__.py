"""Embedded tasks for tuning and the command line: Flax models on scikit-learn's digits.

``digits_mlp`` and ``digits_autoencoder`` are ready-made :class:`adam_jax.tuning.Problem` objects;
``get_task``, ``fit`` and ``train`` are the functional forms the notebooks use.

No download: the data is scikit-learn's bundled digits (1797 8x8 images), or a
user's ``.npz`` file. Needs the ``cli`` extra (flax, scikit-learn).
"""

from adam_jax.tasks._data import Dataset, load_digits, load_npz
from adam_jax.tasks._problems import MLP, digits_autoencoder, digits_mlp
from adam_jax.tasks._tasks import TASKS, Task, get_task
from adam_jax.tasks._train import TrainResult, fit, train

__all__ = [
    "TASKS",
    "MLP",
    "Dataset",
    "Task",
    "TrainResult",
    "fit",
    "digits_autoencoder",
    "digits_mlp",
    "get_task",
    "load_digits",
    "load_npz",
    "train",
]
