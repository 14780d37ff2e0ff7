"""Embedded tasks: data, split, batches, the training helper, .npz loading."""

import jax
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax.tasks import get_task, load_npz, train


@pytest.fixture(scope="module")
def small_task():
  return get_task("digits-mlp", hidden=16, seed=0)


def test_digits_split_is_seeded_disjoint_and_complete(small_task):
  again = get_task("digits-mlp", hidden=16, seed=0)
  other = get_task("digits-mlp", hidden=16, seed=1)
  np.testing.assert_array_equal(small_task.x_val, again.x_val)
  assert not np.array_equal(small_task.x_val, other.x_val)
  assert len(small_task.x_train) + len(small_task.x_val) == 1797
  assert small_task.x_train.dtype == np.float32 and small_task.y_train.dtype == np.int32
  assert 0.0 <= small_task.x_train.min() and small_task.x_train.max() <= 1.0
  # The two splits together hold every image exactly once.
  rows = np.concatenate([small_task.x_train, small_task.x_val])
  from sklearn.datasets import load_digits
  want = np.asarray(load_digits().data, np.float32) / 16
  assert sorted(map(bytes, rows)) == sorted(map(bytes, want))


def test_initial_params_depend_on_seed_and_sizes():
  a = get_task("digits-mlp", layers=2, hidden=8, seed=3)
  b = get_task("digits-mlp", layers=2, hidden=8, seed=3)
  c = get_task("digits-mlp", layers=2, hidden=8, seed=4)
  la, lb, lc = (jax.tree.leaves(t.params) for t in (a, b, c))
  assert [x.shape for x in la] == [(8,), (64, 8), (8,), (8, 8), (10,), (8, 10)]
  assert all(np.array_equal(x, y) for x, y in zip(la, lb))
  assert not all(np.array_equal(x, y) for x, y in zip(la, lc))


def test_batch_indices_are_seeded_epoch_permutations(small_task):
  n, bs = len(small_task.x_train), small_task.batch_size
  idx = small_task.batch_indices(100, seed=5)
  assert idx.shape == (100, bs) and idx.dtype == np.int32
  per_epoch = n // bs
  first_epoch = idx[:per_epoch].ravel()
  assert len(np.unique(first_epoch)) == per_epoch * bs
  np.testing.assert_array_equal(idx, small_task.batch_indices(100, seed=5))
  assert not np.array_equal(idx, small_task.batch_indices(100, seed=6))


def test_train_matches_a_plain_step_loop(small_task):
  """The scanned, jitted run is the same computation as a Python loop of steps."""
  tx = optax.chain(optax.clip_by_global_norm(1.0), adam_jax.adam(1e-2))
  steps = 6
  result = train(small_task, tx, steps, seed=2)

  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(small_task.loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  params, state = small_task.params, tx.init(small_task.params)
  losses = []
  for batch in small_task.batch_indices(steps, seed=2):
    params, state, loss = step(params, state, small_task.x_train[batch], small_task.y_train[batch])
    losses.append(float(loss))
  np.testing.assert_allclose(result.curve, losses, rtol=1e-5)
  logits = small_task.apply(params, small_task.x_val)
  want_acc = float(np.mean(np.argmax(logits, -1) == small_task.y_val))
  assert result.val_accuracy == pytest.approx(want_acc)


def test_train_learns_digits(small_task):
  result = train(small_task, adam_jax.adam(1e-2), 300)
  assert result.curve.shape == (300,)
  assert result.val_accuracy > 0.85
  assert result.val_loss < 0.3 * result.curve[0]
  assert result.train_loss < result.curve[0]


def test_autoencoder_reconstructs_and_has_no_accuracy():
  task = get_task("digits-autoencoder", hidden=32)
  np.testing.assert_array_equal(task.y_train, task.x_train)
  result = train(task, adam_jax.adam(3e-3), 200)
  assert result.val_accuracy is None
  assert result.val_loss < 0.7 * result.curve[0]


def test_own_data_from_npz(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((60, 3, 2)).astype(np.float64)
  y = (x[:, 0, 0] > 0).astype(np.int64)
  path = tmp_path / "mine.npz"
  np.savez(path, x=x, y=y)
  task = get_task("digits-mlp", data=path, hidden=8, batch_size=8)
  assert task.x_train.shape == (48, 6) and task.x_val.shape == (12, 6)
  shapes = [leaf.shape for leaf in jax.tree.leaves(task.params)]
  assert shapes[1] == (6, 8) and shapes[-1] == (8, 2)  # 6 features in, two classes from y
  auto = get_task("digits-autoencoder", data=path, hidden=8, batch_size=8)
  assert auto.y_val.shape == (12, 6)


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda p: np.savez(p, y=np.zeros(5, int)), "no array named 'x'"),
        (lambda p: np.savez(p, x=np.zeros((10, 2))), "no array named 'y'"),
        (lambda p: np.savez(p, x=np.zeros((10, 2)), y=np.zeros(10)), "integer class labels"),
        (lambda p: np.savez(p, x=np.zeros((10, 2)), y=np.zeros(9, int)), "one label per example"),
        (lambda p: np.savez(p, x=np.array([{"a": 1}] * 10, dtype=object), y=np.zeros(10, int)),
         "Python objects"),
        (lambda p: p.write_text("not an archive"), "not a valid .npz"),
        (lambda p: np.save(p, np.zeros((10, 2))), "not an .npz archive"),
        (lambda p: np.savez(p, x=np.full((10, 2), np.nan), y=np.zeros(10, int)), "NaN"),
        (lambda p: np.savez(p, x=np.zeros((10, 0)), y=np.zeros(10, int)), "no features"),
        (lambda p: np.savez(p, x=np.zeros((10, 3, 0)), y=np.zeros(10, int)), "no features"),
        (lambda p: np.savez(p, x=np.zeros((10, 2)), y=np.full(10, 2**31, np.int64)),
         "class label 2147483648"),
        (lambda p: np.savez(p, x=np.zeros((10, 2)), y=np.full(10, 2**32 + 1, np.int64)),
         "class label 4294967297"),
        (lambda p: np.savez(p, x=np.zeros((10, 2)), y=np.full(10, 2**64 - 1, np.uint64)),
         "class label 18446744073709551615"),
    ],
)
def test_wrong_npz_files_get_a_clear_error(tmp_path, content, message):
  path = tmp_path / "bad.npz"
  content(path)
  if not path.exists():  # np.save appends .npy
    path = tmp_path / "bad.npz.npy"
  with pytest.raises(ValueError, match=message):
    load_npz(path, need_labels=True)


def test_bad_task_arguments():
  with pytest.raises(ValueError, match="unknown task 'mnist'"):
    get_task("mnist")
  with pytest.raises(ValueError, match="hidden must be a positive integer"):
    get_task("digits-mlp", hidden=0)
  with pytest.raises(ValueError, match="batch_size must be at most"):
    get_task("digits-mlp", batch_size=5000)
  with pytest.raises(ValueError, match="data file not found"):
    get_task("digits-mlp", data="/nonexistent/file.npz")
  with pytest.raises(ValueError, match="steps must be a positive integer"):
    train(get_task("digits-mlp", hidden=4), adam_jax.adam(1e-3), 0)


def test_digits_problems_hold_the_same_split_model_and_batches_as_the_tasks(small_task):
  from flax import nnx

  from adam_jax import tasks

  problem = tasks.digits_mlp(hidden=16, seed=0)
  assert problem.kind == "nnx" and problem.shape_keys == ("batch_size", "layers", "hidden")
  np.testing.assert_array_equal(problem.train_data[0], small_task.x_train)
  np.testing.assert_array_equal(problem.val_data[1], small_task.y_val)
  np.testing.assert_array_equal(problem.batch_indices(50, seed=3), small_task.batch_indices(50, 3))
  model = problem.model(rngs=nnx.Rngs(0))
  logits = model(small_task.x_val)
  np.testing.assert_allclose(logits, small_task.apply(small_task.params, small_task.x_val),
                             rtol=1e-6)
  loss, aux = problem.loss_fn(model, problem.val_data)
  want_loss, want_acc = small_task.evaluate(small_task.params, small_task.x_val,
                                            small_task.y_val)
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
  assert float(aux["accuracy"]) == pytest.approx(float(want_acc))
  wide = problem.model(rngs=nnx.Rngs(0), layers=2, hidden=8)
  assert [layer.kernel.shape for layer in wide.layers] == [(64, 8), (8, 8), (8, 10)]


def test_digits_autoencoder_problem_reconstructs():
  from flax import nnx

  from adam_jax import tasks, tuning

  problem = tasks.digits_autoencoder(hidden=16, batch_size=64)
  np.testing.assert_array_equal(problem.train_data[0], problem.train_data[1])
  result = tuning.grid_search(problem, {"learning_rate": [3e-3]}, steps=100, progress=False)
  metrics = result.best.metrics
  assert set(metrics) == {"train_loss", "val_loss"}  # no accuracy for a reconstruction
  first = float(problem.loss_fn(problem.model(rngs=nnx.Rngs(0)), problem.val_data))
  assert metrics["val_loss"] < 0.7 * first
  with pytest.raises(ValueError, match="hidden must be a positive integer"):
    tasks.digits_autoencoder(hidden=0)
  with pytest.raises(ValueError, match="seed must be a non-negative integer"):
    tasks.digits_mlp(seed=-1)
