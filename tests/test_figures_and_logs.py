"""What users see of a search besides its numbers: figures, TensorBoard runs, "did you mean"."""

import glob
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

import adam_jax
from adam_jax import tasks, tuning

LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def _problem():
  x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
  loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
  return tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x))


def _stars(ax):
  return [line for line in ax.get_lines() if line.get_marker() == "*"]


def test_search_figure_marks_the_best_on_a_log_axis_and_names_the_other_keys():
  result = tuning.grid_search(_problem(), {"learning_rate": LRS, "b1": [0.5, 0.9]}, steps=20,
                              progress=False)
  fig = result.plot()
  ax = fig.axes[0]
  assert ax.get_xscale() == "log"  # log-spaced learning rates
  (star,) = _stars(ax)
  assert star.get_xdata()[0] == result.best.config["learning_rate"]
  assert star.get_ydata()[0] == pytest.approx(result.best.metrics["val_loss"])
  assert "b1" in ax.get_title() and "b1=" in star.get_label()
  assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # Jupyter shows it, pyplot or not


def test_halving_figure_draws_the_last_rung_and_fades_the_others():
  result = tuning.successive_halving(_problem(), {"learning_rate": LRS + [3e-1]}, min_steps=10,
                                     max_steps=40, eta=3, progress=False)
  ax = result.plot().axes[0]
  faded = [line for line in ax.get_lines() if line.get_label().startswith("stopped after")]
  assert [line.get_label() for line in faded] == ["stopped after 10 steps"]
  assert faded[0].get_alpha() < 0.5 and len(faded[0].get_xdata()) == 4
  (last,) = [line for line in ax.get_lines() if "last rung" in line.get_label()]
  assert sorted(last.get_xdata()) == sorted(r.config["learning_rate"] for r in result.rows
                                            if r.steps == 40)


def test_lr_find_figure_shows_no_negative_loss():
  found = tuning.lr_find(tasks.digits_mlp(hidden=16), num_steps=60)
  ax = found.plot().axes[0]
  assert ax.get_ylim()[0] >= 0 and ax.get_xscale() == "log"


def _events(path):
  """``{tag: [(step, value), ...]}`` of the event files in ``path`` (their TFRecord framing)."""
  from tensorboardX.proto import event_pb2

  out = {}
  for name in glob.glob(os.path.join(path, "events.out.tfevents.*")):
    with open(name, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for value in event.summary.value:
        if value.HasField("simple_value"):
          out.setdefault(value.tag, []).append((event.step, value.simple_value))
        else:
          out.setdefault(value.tag, []).append((event.step, None))
  return out


def test_a_search_writes_one_tensorboard_run_per_configuration(tmp_path):
  pytest.importorskip("tensorboardX")
  result = tuning.grid_search(_problem(), {"learning_rate": LRS[:3], "b1": [0.9]}, steps=2500,
                              seeds=2, progress=False, log_dir=tmp_path)
  assert sorted(os.listdir(tmp_path)) == ["learning_rate=0.001", "learning_rate=0.003",
                                          "learning_rate=0.01"]
  row = result.rows[1]
  events = _events(tmp_path / "learning_rate=0.003")
  curve = events["train/loss"]
  assert len(curve) <= 1000 and curve[-1][0] == 2500
  bounds = [0] + [step for step, _ in curve]  # each point: the mean of its stretch of steps
  assert [v for _, v in curve] == pytest.approx(
      [float(np.mean(row.curve[a:b])) for a, b in zip(bounds, bounds[1:])], rel=1e-5)
  assert events["val_loss"] == [(2500, pytest.approx(row.metrics["val_loss"], rel=1e-6))]
  assert "val_loss_std" in events and "_hparams_/session_start_info" in events


def test_halving_and_train_write_their_runs(tmp_path):
  pytest.importorskip("tensorboardX")
  result = tuning.successive_halving(_problem(), {"learning_rate": LRS[:3]}, min_steps=10,
                                     max_steps=30, progress=False, log_dir=tmp_path / "h")
  for row in result.rows:
    name = f"learning_rate={row.config['learning_rate']:.4g}"
    assert _events(tmp_path / "h" / name)["val_loss"][-1][0] == row.steps
  out = tuning.train(tasks.digits_mlp(hidden=8), adam_jax.adam(1e-2), 40, eval_every=20,
                     log_dir=tmp_path / "t")
  events = _events(tmp_path / "t")
  assert [s for s, _ in events["val_loss"]] == [20, 40]
  assert events["val_loss"][-1][1] == pytest.approx(out.metrics["val_loss"], rel=1e-6)
  assert len(events["train/loss"]) == 40 and events["train_loss"][0][0] == 40


def test_log_dir_without_tensorboardx_is_refused_before_training(monkeypatch, tmp_path):
  monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)
  with pytest.raises(ValueError, match="pip install 'adam-jax\\[tensorboard\\]'"):
    tuning.grid_search(_problem(), {"learning_rate": [1e-3]}, steps=5, log_dir=tmp_path)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("call, closest", [
    (lambda: adam_jax.get_optimizer("adamm"), "'adam'"),
    (lambda: tasks.get_task("digits-mpl"), "'digits-mlp'"),
    (lambda: tuning.grid_search(_problem(), {"learning-rate": [1e-3]}, steps=2), "'learning_rate'"),
    (lambda: tuning.random_search(_problem(), {"lerning_rate": tuning.log_uniform(1e-3, 1e-1)},
                                  num_configs=2, steps=2), "'learning_rate'"),
])
def test_a_misspelt_name_gets_the_closest_one(call, closest):
  with pytest.raises(ValueError, match=f"did you mean {closest}\\?"):
    call()


def test_optuna_search_writes_a_run_per_trial(tmp_path):
  pytest.importorskip("tensorboardX")
  optuna = pytest.importorskip("optuna")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
  space_fn = lambda t: {"learning_rate": t.suggest_float("learning_rate", 1e-3, 1e-1, log=True)}
  result = tuning.optuna_search(study, _problem(), space_fn, n_trials=4, batch_size_trials=2,
                                steps=8, log_dir=tmp_path)
  names = sorted(f"learning_rate={r.config['learning_rate']:.4g}" for r in result.rows)
  assert sorted(os.listdir(tmp_path)) == names
  for row in result.rows:
    events = _events(tmp_path / f"learning_rate={row.config['learning_rate']:.4g}")
    assert events["val_loss"] == [(row.steps, pytest.approx(row.metrics["val_loss"], rel=1e-6))]
