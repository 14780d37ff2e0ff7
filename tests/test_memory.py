"""Searches sized by XLA's memory analysis, and metrics computed in mini-batches."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import adam_jax
from adam_jax import tasks, tuning
from tests.helpers import batchnorm_mlp, cross_entropy

_runner = importlib.import_module("adam_jax.tuning._runner")
_memory = importlib.import_module("adam_jax.tuning._memory")

ONE_DEVICE = jax.devices()[:1]


def Net(rngs: nnx.Rngs, hidden: int = 128):  # noqa: N802 - a model factory, as a class is
  return batchnorm_mlp(rngs, hidden)


loss_fn = cross_entropy


@pytest.fixture(scope="module")
def problem():
  d = tasks.load_digits()
  # 301 validation examples: not a multiple of the evaluation batch
  return tuning.Problem(Net, loss_fn, (d.x[:600], d.y[:600]), (d.x[600:901], d.y[600:901]),
                        batch_size=32, eval_batch_size=64)


SPACE = {"learning_rate": [1e-3, 3e-3, 1e-2, 3e-2]}


def _needed_alone(problem):
  """What one member of a SPACE search needs: a search of one of its configurations."""
  with pytest.raises(tuning.MemoryBudgetError) as err:
    tuning.grid_search(problem, {"learning_rate": SPACE["learning_rate"][:1]}, steps=20,
                       progress=False, devices=ONE_DEVICE, max_memory=1)
  return err.value.needed


@pytest.mark.slow
@pytest.mark.usefixtures("compile_once")
def test_members_that_do_not_fit_together_train_in_several_programs(problem, monkeypatch):
  whole = tuning.grid_search(problem, SPACE, steps=20, seeds=2, progress=False,
                             devices=ONE_DEVICE, max_memory="8GB")
  sizes = []
  train_members = _runner._train_members
  monkeypatch.setattr(_runner, "_train_members",
                      lambda g, hp, pos, *a: sizes.append(len(pos)) or train_members(g, hp, pos,
                                                                                   *a))
  budget = int(2.5 * _needed_alone(problem))
  parts = tuning.grid_search(problem, SPACE, steps=20, seeds=2, progress=False,
                             devices=ONE_DEVICE, max_memory=budget)
  assert len(sizes) > 1 and sum(sizes) == 8 and max(sizes) < 8  # 4 configs x 2 seeds
  for a, b in zip(whole.rows, parts.rows):
    assert a.config == b.config
    for k in a.metrics:
      np.testing.assert_allclose(b.metrics[k], a.metrics[k], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(b.curve, a.curve, rtol=2e-4, atol=2e-5)
  assert parts.best.config == whole.best.config


@pytest.mark.slow
def test_a_configuration_too_large_alone_is_refused_before_training(problem, monkeypatch):
  monkeypatch.setattr(_runner, "_train_members",
                      lambda *a: pytest.fail("trained although nothing fits"))
  with pytest.raises(tuning.MemoryBudgetError, match=r"needs .* but max_memory allows 1 KiB"
                     ) as err:
    tuning.grid_search(problem, SPACE, steps=20, progress=False, devices=ONE_DEVICE,
                       max_memory="1KiB")
  assert err.value.needed > err.value.budget == 1024
  for call in (lambda: tuning.train(problem, adam_jax.adam(1e-3), 10, max_memory="1KiB"),
               lambda: tuning.lr_find(problem, num_steps=10, max_memory="1KiB")):
    with pytest.raises(tuning.MemoryBudgetError, match="max_memory allows 1 KiB"):
      call()


def test_metrics_are_the_users_own_batched_evaluation(problem):
  result = tuning.grid_search(problem, {"learning_rate": [3e-3]}, steps=30, progress=False,
                              devices=ONE_DEVICE)
  model = result.best.model

  @nnx.jit
  def batch_metrics(model, batch):
    loss, aux = loss_fn(model, batch)
    return loss, aux["accuracy"]

  def own(data):  # a user's loop: batches of 64, the last one partial, weighted by size
    x, y = data
    total, n = np.zeros(2), 0
    for lo in range(0, len(x), 64):
      batch = (x[lo:lo + 64], y[lo:lo + 64])
      total += len(batch[0]) * np.asarray(batch_metrics(model, batch), np.float64)
      n += len(batch[0])
    return total / n

  val_loss, val_acc = own(problem.val_data)
  train_loss, _ = own(problem.train_data)
  np.testing.assert_allclose(result.best.metrics["val_loss"], val_loss, rtol=1e-5)
  np.testing.assert_allclose(result.best.metrics["val_accuracy"], val_acc, rtol=1e-5)
  np.testing.assert_allclose(result.best.metrics["train_loss"], train_loss, rtol=1e-5)


def test_batched_mean_weights_the_last_partial_batch():
  data = np.arange(10, dtype=np.float32)
  out = jax.jit(lambda d: _memory_free_mean(d, 4))(data)  # batches 4, 4, 2
  np.testing.assert_allclose(float(out), data.mean(), rtol=1e-6)
  # a per-batch statistic that is not a mean is still averaged with the batch sizes
  maxes = jax.jit(lambda d: tuning_problem().batched_mean(
      lambda b: {"m": jnp.max(b)}, d, 4)["m"])(data)
  np.testing.assert_allclose(float(maxes), (4 * 3 + 4 * 7 + 2 * 9) / 10, rtol=1e-6)


def tuning_problem():
  return importlib.import_module("adam_jax.tuning._problem")


def _memory_free_mean(d, size):
  return tuning_problem().batched_mean(lambda b: {"m": jnp.mean(b)}, d, size)["m"]


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20),
                                            ("1.5 GiB", int(1.5 * 2**30)), (2048, 2048)])
def test_max_memory_strings(text, expected):
  assert _memory.parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["4 parsecs", "", "-1GB", 0, True, [1]])
def test_bad_max_memory_is_refused(bad):
  with pytest.raises(ValueError, match="max_memory"):
    _memory.parse_bytes(bad)


def test_bad_eval_batch_size_is_refused():
  with pytest.raises(ValueError, match="eval_batch_size"):
    tuning.Problem({"w": np.zeros(1)}, lambda p, b: 0.0, np.zeros((4, 1)), eval_batch_size=0)


def test_members_per_program_from_two_figures():
  # need(k) = 100 + 50 k: 10 members need 600; one member 150; a budget of 400 holds 6
  assert _memory.members_per_program(600, 10, 150, 400) == 6
  assert _memory.members_per_program(600, 10, 150, 600) == 10
  assert _memory.members_per_program(600, 10, 150, 140) == 0
