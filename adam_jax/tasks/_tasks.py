"""The embedded tasks: Flax NNX models on scikit-learn's digits (or a user's arrays)."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from adam_jax.tasks import _data
from adam_jax.tasks._problems import MLP

#: The names :func:`get_task` takes (the ``--task`` of the command line).
TASKS = ("digits-mlp", "digits-autoencoder")
_VAL_FRACTION = 0.2


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """A model, its loss and a train/validation split, in functional form.

  ``params`` is the model's initial parameter tree (an ``nnx.State``); the model
  is applied with :meth:`apply`, so params can be vmapped and scanned freely.
  Arrays are NumPy arrays: pass them to jitted functions as arguments.
  """

  name: str  # "digits-mlp" or "digits-autoencoder"
  kind: str  # "classification" or "autoencoder"
  graphdef: Any  # nnx.GraphDef of the model
  params: Any  # nnx.State of the initial parameters
  x_train: np.ndarray  # shape=(n_train, features), dtype=float32
  y_train: np.ndarray  # shape=(n_train,), int32 labels; the features for the autoencoder
  x_val: np.ndarray  # shape=(n_val, features), dtype=float32
  y_val: np.ndarray  # shape=(n_val,), int32 labels; the features for the autoencoder
  layers: int  # hidden layers
  hidden: int  # units per hidden layer
  batch_size: int  # examples per mini-batch
  seed: int  # seeds the split and the initial parameters

  @property
  def classification(self) -> bool:
    return self.kind == "classification"

  def apply(self, params: Any, x: jax.Array) -> jax.Array:
    """The model's output (logits or reconstruction) for a batch ``x``."""
    return nnx.merge(self.graphdef, params)(x)

  def loss(self, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy (classification) or mean squared error (autoencoder)."""
    out = self.apply(params, x)
    if self.classification:
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    return jnp.mean((out - y) ** 2)

  def evaluate(self, params: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(loss, accuracy)`` on a whole split; accuracy is NaN for the autoencoder."""
    out = self.apply(params, x)
    if self.classification:
      loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
      acc = jnp.mean((jnp.argmax(out, axis=-1) == y).astype(jnp.float32))
      return loss, acc
    return jnp.mean((out - y) ** 2), jnp.full((), jnp.nan, jnp.float32)

  def batch_indices(self, steps: int, seed: int = 0) -> np.ndarray:
    """Mini-batch indices into the training split, shape ``(steps, batch_size)``.

    Each epoch is a fresh permutation drawn from ``seed``; the last incomplete
    batch of an epoch is dropped.
    """
    n = len(self.x_train)
    per_epoch = n // self.batch_size
    epochs = -(-steps // per_epoch)
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(n)[: per_epoch * self.batch_size] for _ in range(epochs)]
    return np.concatenate(idx).reshape(-1, self.batch_size)[:steps].astype(np.int32)


@functools.lru_cache(maxsize=32)
def _init(sizes: tuple[int, ...], seed: int) -> tuple[Any, Any]:
  """The model's graphdef and initial params, initialised in one compiled program."""
  build = lambda: MLP(list(sizes), rngs=nnx.Rngs(seed))
  graphdef, _ = nnx.split(nnx.eval_shape(build))
  return graphdef, jax.jit(lambda: nnx.split(build())[1])()


def get_task(
    name: str = "digits-mlp",
    *,
    layers: int = 1,
    hidden: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    data: str | os.PathLike[str] | None = None,
) -> Task:
  """Builds an embedded task.

  * ``digits-mlp``: an MLP classifier (``layers`` hidden layers of ``hidden``
    ReLU units), softmax cross-entropy.
  * ``digits-autoencoder``: a dense autoencoder (``layers`` hidden layers of
    ``hidden`` units on each side of a bottleneck of ``max(2, hidden // 4)``
    units), mean squared reconstruction error.

  Both use scikit-learn's bundled digits (no download), pixels in [0, 1], or the
  arrays of ``data`` (a ``.npz`` with ``x`` and, for the classifier, integer
  ``y``). 20% of the examples, chosen by ``seed``, form the validation split.

  Args:
    name: ``"digits-mlp"`` or ``"digits-autoencoder"``.
    layers: number of hidden layers (>= 1).
    hidden: units per hidden layer (>= 1).
    batch_size: examples per mini-batch, between 1 and the training split's size.
    seed: seeds the split and the initial parameters.
    data: optional path of a ``.npz`` file to use instead of the digits.

  Returns:
    A :class:`Task`.

  Raises:
    ValueError: unknown task, bad sizes, or a data file that cannot be used.

  Examples:
    >>> from adam_jax.tasks import get_task
    >>> task = get_task("digits-mlp", hidden=32)
    >>> task.x_train.shape, task.x_val.shape
    ((1438, 64), (359, 64))
  """
  if name not in TASKS:
    from adam_jax._names import did_you_mean

    raise ValueError(f"unknown task {name!r}{did_you_mean(name, TASKS)}; choose one of: "
                     f"{', '.join(TASKS)}")
  for what, value in (("layers", layers), ("hidden", hidden), ("batch_size", batch_size)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{what} must be a positive integer, got {value!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  classification = name == "digits-mlp"
  ds = _data.load_digits() if data is None else _data.load_npz(data, need_labels=classification)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(ds.x))
  n_val = max(1, int(round(_VAL_FRACTION * len(ds.x))))
  val, train = order[:n_val], order[n_val:]
  if batch_size > len(train):
    raise ValueError(f"batch_size must be at most the training split's size ({len(train)}), "
                     f"got {batch_size}")
  features = ds.x.shape[1]
  if classification:
    classes = int(ds.y.max()) + 1
    sizes = [features] + [hidden] * layers + [classes]
    y_train, y_val = ds.y[train], ds.y[val]
  else:
    code = max(2, hidden // 4)
    sizes = [features] + [hidden] * layers + [code] + [hidden] * layers + [features]
    y_train, y_val = ds.x[train], ds.x[val]
  graphdef, params = _init(tuple(sizes), int(seed))
  return Task(
      name=name,
      kind="classification" if classification else "autoencoder",
      graphdef=graphdef,
      params=params,
      x_train=ds.x[train],
      y_train=y_train,
      x_val=ds.x[val],
      y_val=y_val,
      layers=int(layers),
      hidden=int(hidden),
      batch_size=int(batch_size),
      seed=int(seed),
  )
