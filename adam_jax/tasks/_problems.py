"""The embedded digits tasks as :class:`adam_jax.tuning.Problem` objects."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from adam_jax.tasks import _data
from adam_jax.tuning._problem import Problem

_VAL_FRACTION = 0.2


class MLP(nnx.Module):
  """Dense layers with ReLU between them: ``layers`` hidden layers of ``hidden`` units."""

  def __init__(self, sizes: list[int], *, rngs: nnx.Rngs):
    self.layers = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


def _split(data: str | os.PathLike[str] | None, seed: int, labels: bool
           ) -> tuple[_data.Dataset, np.ndarray, np.ndarray]:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  ds = _data.load_digits() if data is None else _data.load_npz(data, need_labels=labels)
  order = np.random.default_rng(seed).permutation(len(ds.x))
  n_val = max(1, int(round(_VAL_FRACTION * len(ds.x))))
  return ds, order[n_val:], order[:n_val]


def _check_sizes(**sizes: int) -> None:
  for what, value in sizes.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{what} must be a positive integer, got {value!r}")


def digits_mlp(*, layers: int = 1, hidden: int = 128, batch_size: int = 32, seed: int = 0,
               data: str | os.PathLike[str] | None = None) -> Problem:
  """The digits classifier: an NNX MLP, softmax cross-entropy, accuracy as a metric.

  ``model(rngs, layers=..., hidden=...)`` builds ``layers`` hidden ReLU layers of
  ``hidden`` units, so a search may vary both. Data: scikit-learn's bundled digits
  (pixels in [0, 1]) or a ``.npz`` with ``x`` and integer labels ``y``; 20% of the
  examples, chosen by ``seed``, form the validation split. Batches are ``(x, y)``.

  Args:
    layers: default hidden layers (>= 1).
    hidden: default units per hidden layer (>= 1).
    batch_size: examples per mini-batch.
    seed: seeds the train/validation split.
    data: optional ``.npz`` file to use instead of the digits.

  Returns:
    A :class:`adam_jax.tuning.Problem` with metrics ``train_loss``, ``val_loss`` and
    ``val_accuracy``.

  Examples:
    >>> from adam_jax import tasks
    >>> problem = tasks.digits_mlp(hidden=32)
    >>> problem.kind, problem.shape_keys, problem.num_train
    ('nnx', ('batch_size', 'layers', 'hidden'), 1438)
  """
  _check_sizes(layers=layers, hidden=hidden, batch_size=batch_size)
  ds, train, val = _split(data, seed, labels=True)
  features, classes = ds.x.shape[1], int(ds.y.max()) + 1

  def model(rngs: nnx.Rngs, layers: int = layers, hidden: int = hidden) -> MLP:
    _check_sizes(layers=layers, hidden=hidden)
    return MLP([features] + [hidden] * layers + [classes], rngs=rngs)

  def loss_fn(model, batch):
    x, y = batch
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
    return loss, {"accuracy": accuracy}

  return Problem(model, loss_fn, (ds.x[train], ds.y[train]), (ds.x[val], ds.y[val]),
                 batch_size=batch_size)


def digits_autoencoder(*, layers: int = 1, hidden: int = 128, batch_size: int = 32,
                       seed: int = 0, data: str | os.PathLike[str] | None = None) -> Problem:
  """The digits autoencoder: an NNX MLP through a bottleneck, mean squared error.

  ``layers`` hidden layers of ``hidden`` units on each side of a code of
  ``max(2, hidden // 4)`` units. Batches are ``(x, x)``.

  Args:
    layers: default hidden layers on each side (>= 1).
    hidden: default units per hidden layer (>= 1).
    batch_size: examples per mini-batch.
    seed: seeds the train/validation split.
    data: optional ``.npz`` file with ``x`` to use instead of the digits.

  Returns:
    A :class:`adam_jax.tuning.Problem` with metrics ``train_loss`` and ``val_loss``.

  Examples:
    >>> from adam_jax import tasks
    >>> tasks.digits_autoencoder(hidden=32).num_train
    1438
  """
  _check_sizes(layers=layers, hidden=hidden, batch_size=batch_size)
  ds, train, val = _split(data, seed, labels=False)
  features = ds.x.shape[1]

  def model(rngs: nnx.Rngs, layers: int = layers, hidden: int = hidden) -> MLP:
    _check_sizes(layers=layers, hidden=hidden)
    code = max(2, hidden // 4)
    return MLP([features] + [hidden] * layers + [code] + [hidden] * layers + [features],
               rngs=rngs)

  def loss_fn(model, batch):
    x, target = batch
    return jnp.mean((model(x) - target) ** 2)

  return Problem(model, loss_fn, (ds.x[train], ds.x[train]), (ds.x[val], ds.x[val]),
                 batch_size=batch_size)
