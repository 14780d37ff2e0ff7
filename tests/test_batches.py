"""Training batches from the user's own pipeline: iterables, generators, prefetching."""

import importlib

import jax
import numpy as np
import pytest
from flax import nnx

import adam_jax
from adam_jax import tasks, tuning
from tests.helpers import batchnorm_mlp, cross_entropy

pytestmark = pytest.mark.slow  # each test trains

_runner = importlib.import_module("adam_jax.tuning._runner")
ONE_DEVICE = jax.devices()[:1]
STEPS = 20


def Net(rngs: nnx.Rngs, hidden: int = 32):  # noqa: N802 - a model factory, as a class is
  return batchnorm_mlp(rngs, hidden, bias=False)  # see batchnorm_mlp: compared across programs


loss_fn = cross_entropy


class Shards:
  """A user's re-iterable pipeline: batches of 16 read in a fixed order, as often as asked."""

  def __init__(self, x, y, batches):
    self.x, self.y, self.batches = x, y, batches

  def __iter__(self):
    for i in range(self.batches):
      lo = (16 * i) % (len(self.x) - 16)
      yield self.x[lo:lo + 16], self.y[lo:lo + 16]


class Replay:
  """Batches kept in a list, given again at every pass (a list itself would be arrays)."""

  def __init__(self, items):
    self.items = items

  def __iter__(self):
    return iter(self.items)


@pytest.fixture(scope="module")
def digits():
  d = tasks.load_digits()
  return (d.x[:400], d.y[:400]), (d.x[1000:1200], d.y[1000:1200])


def _users_loop(train, lr, steps):
  model = Net(nnx.Rngs(0))
  opt = nnx.Optimizer(model, adam_jax.adam(lr), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, batch):
    (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
    opt.update(model, grads)
    return loss

  curve = [float(step(model, opt, b)) for b in Shards(*train, steps)]
  model.eval()
  return model, np.array(curve)


@pytest.mark.parametrize("loop", ["scan", "python"])
def test_a_search_fed_by_an_iterable_equals_the_users_loop(digits, loop):
  train, val = digits
  problem = tuning.Problem(Net, loss_fn, Shards(*train, 1000), val)
  assert problem.batch_size == 16 and problem.num_train is None
  result = tuning.grid_search(problem, {"learning_rate": [1e-3, 1e-2]}, steps=STEPS,
                              progress=False, devices=ONE_DEVICE, loop=loop,
                              checkpoint_every=0)
  row = result.rows[1]
  model, curve = _users_loop(train, 1e-2, STEPS)
  np.testing.assert_allclose(row.curve, curve, rtol=1e-5)
  assert row.metrics["val_loss"] == pytest.approx(float(nnx.jit(loss_fn)(model, val)[0]),
                                                  rel=1e-5)
  assert "train_loss" not in row.metrics  # the pipeline has no whole training split


def test_tuning_train_and_lr_find_take_an_iterable(digits):
  train, val = digits
  problem = tuning.Problem(Net, loss_fn, Shards(*train, 1000), val)
  run = tuning.train(problem, adam_jax.adam(1e-2), STEPS, eval_every=10)
  _, curve = _users_loop(train, 1e-2, STEPS)
  np.testing.assert_allclose(run.curve, curve, rtol=1e-5)
  # the range test on a list of the same batches as the arrays' own order
  arrays = tuning.Problem(Net, loss_fn, train, val, batch_size=16)
  idx = arrays.batch_indices(30, 0)
  listed = tuning.Problem(Net, loss_fn, Replay([(train[0][i], train[1][i]) for i in idx]), val)
  a = tuning.lr_find(arrays, num_steps=30)
  b = tuning.lr_find(listed, num_steps=30)
  np.testing.assert_allclose(b.raw_losses, a.raw_losses, rtol=1e-5)


def test_a_one_shot_generator_trains_once_and_cannot_resume(digits, tmp_path):
  train, val = digits

  def generator():
    yield from Shards(*train, STEPS)

  problem = tuning.Problem(Net, loss_fn, generator(), val)
  assert problem.stream.one_shot
  with pytest.raises(ValueError, match="resume=True needs a re-iterable train_data"):
    tuning.grid_search(problem, {"learning_rate": [1e-2]}, steps=STEPS, progress=False,
                       out_dir=tmp_path / "r", resume=True)
  result = tuning.grid_search(problem, {"learning_rate": [1e-2]}, steps=STEPS, progress=False,
                              devices=ONE_DEVICE)
  _, curve = _users_loop(train, 1e-2, STEPS)
  np.testing.assert_allclose(result.rows[0].curve, curve, rtol=1e-5)
  with pytest.raises(ValueError, match="one-shot iterator .* has been read already"):
    tuning.grid_search(problem, {"learning_rate": [1e-2]}, steps=STEPS, progress=False,
                       devices=ONE_DEVICE)


@pytest.mark.usefixtures("compile_once")
def test_a_resumed_re_iterable_skips_the_batches_trained_on(digits, tmp_path, monkeypatch):
  train, val = digits
  kwargs = dict(steps=30, checkpoint_every=10, progress=False, devices=ONE_DEVICE)
  space = {"learning_rate": [1e-3, 1e-2]}
  full = tuning.grid_search(tuning.Problem(Net, loss_fn, Shards(*train, 1000), val), space,
                            out_dir=tmp_path / "full", **kwargs)
  run = _runner.run_chunk_hook

  def interrupt(*args):
    if args[2] >= 20:
      raise KeyboardInterrupt
    return run(*args)

  monkeypatch.setattr(_runner, "run_chunk_hook", interrupt)
  problem = tuning.Problem(Net, loss_fn, Shards(*train, 1000), val)
  with pytest.raises(KeyboardInterrupt):
    tuning.grid_search(problem, space, out_dir=tmp_path / "cut", **kwargs)
  monkeypatch.setattr(_runner, "run_chunk_hook", run)
  resumed = tuning.grid_search(problem, space, out_dir=tmp_path / "cut", resume=True,
                               **kwargs)
  for a, b in zip(resumed.rows, full.rows):
    np.testing.assert_array_equal(a.curve, b.curve)
    assert a.metrics == b.metrics


def test_bad_pipelines_are_refused_with_the_step(digits):
  train, val = digits

  class Changing(Shards):
    def __iter__(self):
      for i, (x, y) in enumerate(super().__iter__()):
        yield (x[:8], y[:8]) if i == 13 else (x, y)

  problem = tuning.Problem(Net, loss_fn, Changing(*train, 100), val)
  with pytest.raises(ValueError, match="batch at step 13 has shapes and dtypes"):
    tuning.grid_search(problem, {"learning_rate": [1e-2]}, steps=STEPS, progress=False,
                       devices=ONE_DEVICE)
  short = tuning.Problem(Net, loss_fn, Shards(*train, 15), val)
  with pytest.raises(ValueError, match="ran out of batches at step 15"):
    tuning.grid_search(short, {"learning_rate": [1e-2]}, steps=STEPS, progress=False,
                       devices=ONE_DEVICE)
  with pytest.raises(ValueError, match="empty iterable"):
    tuning.Problem(Net, loss_fn, iter([]), val)
  with pytest.raises(ValueError, match="batch_size cannot be searched"):
    tuning.grid_search(problem, {"learning_rate": [1e-2], "batch_size": [8, 16]}, steps=STEPS,
                       progress=False)
