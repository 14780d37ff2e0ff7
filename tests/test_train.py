"""tuning.train: one configuration of a problem, evaluated as it goes, checkpointed, resumable."""

import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import adam_jax
from adam_jax import tasks, tuning
from tests.test_tuning import CNN, cnn_loss


@pytest.fixture(scope="module")
def mlp():
  return tasks.digits_mlp(hidden=16)


@pytest.mark.slow
def test_train_equals_the_users_own_nnx_loop_and_reports_the_returned_models_metrics():
  data = tasks.load_digits()
  x, y = data.x.reshape(-1, 8, 8), data.y
  problem = tuning.Problem(CNN, cnn_loss, (x[:320], y[:320]), (x[320:448], y[320:448]))
  result = tuning.train(problem, adam_jax.adam(1e-2), 12, seed=1, eval_every=4)

  model = CNN(nnx.Rngs(1))  # what a user writes: nnx.jit steps over the same batches
  opt = nnx.Optimizer(model, adam_jax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, batch):
    (loss, _), grads = nnx.value_and_grad(cnn_loss, has_aux=True)(model, batch)
    opt.update(model, grads)
    return loss

  xt, yt = problem.train_data
  curve = [float(step(model, opt, (xt[i], yt[i]))) for i in problem.batch_indices(12, 1)]
  model.eval()
  assert result.loop == "python"  # a convolution on CPU
  np.testing.assert_allclose(result.curve, curve, rtol=1e-5)
  assert isinstance(result.model, CNN) and result.model.bn.use_running_average
  for mine in (result.model, model):
    loss, aux = cnn_loss(mine, problem.val_data)
    assert result.metrics["val_loss"] == pytest.approx(float(loss), rel=1e-5)
    assert result.metrics["val_accuracy"] == pytest.approx(float(aux["accuracy"]), abs=1e-6)
  assert result.metrics["train_loss"] == pytest.approx(
      float(cnn_loss(result.model, problem.train_data)[0]), rel=1e-5)
  assert [h["step"] for h in result.history] == [4, 8, 12]
  assert result.history[-1]["val_loss"] == pytest.approx(result.metrics["val_loss"], rel=1e-6)
  assert result.history[0]["loss"] == pytest.approx(np.mean(curve[:4]), rel=1e-6)


@pytest.mark.slow
def test_train_equals_the_same_configuration_in_a_grid_search(mlp):
  result = tuning.train(mlp, adam_jax.adam(3e-2), 40, seed=2, eval_every=15)
  search = tuning.grid_search(mlp, {"learning_rate": [3e-2]}, steps=40, seeds=[2],
                              progress=False, devices=jax.devices()[:1])
  assert result.loop == "scan" and result.first_step == 0
  np.testing.assert_allclose(result.curve, search.rows[0].curve, rtol=1e-5)
  for name in ("train_loss", "val_loss", "val_accuracy"):
    assert result.metrics[name] == pytest.approx(search.rows[0].metrics[name], rel=1e-5)
  assert [h["step"] for h in result.history] == [15, 30, 40]


@pytest.mark.slow
@pytest.mark.usefixtures("compile_once")
def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_result(mlp, tmp_path):
  kwargs = dict(seed=0, eval_every=10, checkpoint_every=10)
  tx = adam_jax.adam(1e-2)
  full = tuning.train(mlp, tx, 40, checkpoint_dir=tmp_path / "full", **kwargs)

  def interrupt_at_30(ev):
    if ev["step"] == 30:
      raise KeyboardInterrupt

  with pytest.raises(tuning.TrainInterrupted) as info:
    tuning.train(mlp, tx, 40, checkpoint_dir=tmp_path / "cut", on_eval=interrupt_at_30,
                 **kwargs)
  assert info.value.step == 20  # the save of step 30 comes after its evaluation
  starts = []
  again = tuning.train(mlp, tx, 40, checkpoint_dir=tmp_path / "cut", resume=True,
                       on_start=starts.append, **kwargs)
  assert starts == [20] and again.first_step == 20
  np.testing.assert_array_equal(again.curve, full.curve)
  assert again.history == full.history
  assert again.metrics == full.metrics
  with pytest.raises(tuning.TrainInterrupted) as info:
    tuning.train(mlp, tx, 40, on_eval=interrupt_at_30, **kwargs)
  assert info.value.step == 0  # no checkpoint_dir: nothing saved


def _replay_plateau(means, factor, patience, threshold=1e-4):
  """torch's ReduceLROnPlateau (mode min, relative threshold, no cooldown) on ``means``."""
  best, bad, scale, scales = np.inf, 0, 1.0, []
  for m in means:
    if m < best * (1 - threshold):
      best, bad = m, 0
    else:
      bad += 1
    if bad > patience:
      scale, bad = scale * factor, 0
    scales.append(scale)
  return scales


@pytest.mark.slow
def test_the_loop_passes_the_loss_to_reduce_on_plateau(mlp):
  """value= is each step's mini-batch loss: one decision per interval, on its mean loss."""

  def plateau(learning_rate):
    return optax.chain(adam_jax.adam(learning_rate),
                       adam_jax.reduce_on_plateau(factor=0.5, patience=0,
                                                  accumulation_size=10))

  def scale(opt_state):
    return {"lr_scale": opt_state[1].scale}

  result = tuning.train(mlp, plateau(0.1), 200, eval_every=10, opt_metrics=scale)
  means = result.curve.reshape(20, 10).astype(np.float64).mean(axis=1)
  want = _replay_plateau(means.astype(np.float32), 0.5, 0)
  got = [h["lr_scale"] for h in result.history]
  assert min(got) < 1  # the rate was reduced at least once
  np.testing.assert_allclose(got, want)
  # The searches' loop passes it too: a user's chain with the plateau rule in a grid.
  search = tuning.grid_search(mlp, {"learning_rate": [0.1]}, optimizer=plateau, steps=200,
                              progress=False, devices=jax.devices()[:1])
  np.testing.assert_allclose(search.rows[0].curve, result.curve, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps must be a positive integer, got 0"),
        (dict(eval_every=0), "eval_every must be a positive integer, got 0"),
        (dict(checkpoint_every=-1), "checkpoint_every must be an integer >= 0"),
        (dict(seed=-1), "seed must be an integer in [0, 2**31)"),
        (dict(loop="while"), "loop must be one of auto, scan, python"),
        (dict(resume=True), "resume needs checkpoint_dir"),
    ],
)
def test_train_rejects_bad_input(mlp, kwargs, message):
  kwargs = {"steps": 5, **kwargs}
  with pytest.raises(ValueError, match=re.escape(message)):
    tuning.train(mlp, adam_jax.adam(1e-3), **kwargs)
  with pytest.raises(ValueError, match="problem must be an adam_jax.tuning.Problem"):
    tuning.train(object(), adam_jax.adam(1e-3), 5)
