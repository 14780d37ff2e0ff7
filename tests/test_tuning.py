"""LR range test and vectorized grid search."""

import csv
import importlib

import jax
import numpy as np
import pytest

import adam_jax
from adam_jax.tasks import get_task, train
from adam_jax.tuning import SCHEDULES, grid_search, lr_find, schedule_fn

_lr_find_module = importlib.import_module("adam_jax.tuning.lr_find")
_grid_module = importlib.import_module("adam_jax.tuning.grid_search")

STEPS = 25
LRS = [3e-3, 1e-2, 3e-2]


@pytest.fixture(scope="module")
def task():
  return get_task("digits-mlp", hidden=16)


@pytest.fixture(scope="module")
def vectorized():
  return grid_search(lr=LRS, b1=[0.9, 0.5], hidden=[16], steps=STEPS)


def test_vectorized_grid_equals_separate_trainings(task, vectorized):
  assert [(r.config["lr"], r.config["b1"]) for r in vectorized.rows] == [
      (lr, b1) for lr in LRS for b1 in (0.9, 0.5)]
  for row in vectorized.rows[::5]:  # two of them: a compilation each
    want = train(task, adam_jax.adam(row.config["lr"], b1=row.config["b1"]), STEPS)
    np.testing.assert_allclose(row.curve, want.curve, rtol=2e-5)
    assert row.val_loss == pytest.approx(want.val_loss, rel=2e-5)
    assert row.val_accuracy == pytest.approx(want.val_accuracy)
  assert vectorized.best.val_loss == min(r.val_loss for r in vectorized.rows)


def test_sequential_gives_the_same_rows(vectorized):
  seq = grid_search(lr=LRS, b1=[0.9, 0.5], hidden=[16], steps=STEPS, sequential=True)
  assert seq.best.config == vectorized.best.config
  for a, b in zip(seq.rows, vectorized.rows):
    assert a.config == b.config
    np.testing.assert_allclose(a.curve, b.curve, rtol=2e-5)
    assert a.val_loss == pytest.approx(b.val_loss, rel=2e-5)


def test_configurations_are_spread_over_devices(vectorized):
  assert len(jax.devices()) == 8
  assert vectorized.num_devices == 8
  one = grid_search(lr=LRS, b1=[0.9, 0.5], hidden=[16], steps=STEPS, devices=jax.devices()[:1])
  assert one.num_devices == 1
  for a, b in zip(one.rows, vectorized.rows):  # 6 configurations padded to 8 devices
    np.testing.assert_allclose(a.curve, b.curve, rtol=2e-5)


def test_schedules_match_their_definitions():
  steps, lr = 90, 0.5
  k = np.arange(steps + 5)
  want = {
      "constant": np.full(k.shape, lr),
      "cosine": lr * 0.5 * (1 + np.cos(np.pi * np.minimum(k, steps) / steps)),
      "step": lr * 0.1 ** (k // 30),
      "exponential": lr * (0.01 ** (1 / (steps - 1))) ** k,
  }
  for i, name in enumerate(SCHEDULES):
    got = jax.vmap(schedule_fn(name, lr, steps))(jax.numpy.asarray(k, jax.numpy.int32))
    np.testing.assert_allclose(got, want[name], rtol=2e-5, atol=1e-9, err_msg=name)
    # The traced form (kind as an index, lr as an array) selects the same values.
    traced = jax.jit(lambda kind, lr, c: schedule_fn(kind, lr, steps)(c))
    np.testing.assert_allclose(traced(np.int32(i), np.float32(lr), np.int32(45)),
                               want[name][45], rtol=2e-5)


def test_vmapped_schedules_and_weight_decay_equal_separate_runs(task):
  result = grid_search(lr=[1e-2], schedule=["constant", "step"], weight_decay=[0.0, 0.1],
                       optimizer="adamw", hidden=[16], steps=STEPS)
  for row in result.rows[1:3]:  # (constant, 0.1) and (step, 0.0)
    lr = schedule_fn(row.config["schedule"], 1e-2, STEPS)
    tx = adam_jax.adamw(lr, weight_decay=row.config["weight_decay"])
    np.testing.assert_allclose(row.val_loss, train(task, tx, STEPS).val_loss, rtol=2e-5)
  losses = {(r.config["schedule"], r.config["weight_decay"]): r.val_loss for r in result.rows}
  assert len(set(losses.values())) == 4


def test_incremental_results_and_resume(tmp_path):
  kwargs = dict(lr=[1e-2, 3e-2], hidden=[8, 16], steps=10, out_dir=tmp_path)
  rows = []

  def interrupt_after_first_group(row):
    rows.append(row)
    if len(rows) == 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    grid_search(**kwargs, on_row=interrupt_after_first_group)
  with open(tmp_path / "results.csv") as f:
    written = list(csv.DictReader(f))
  assert [(float(r["lr"]), int(r["hidden"])) for r in written] == [(1e-2, 8), (3e-2, 8)]
  assert float(written[1]["val_loss"]) == rows[1].val_loss
  with open(tmp_path / "results.csv", "a") as f:
    f.write("0.1,0.9,0.99")  # a line cut off by the interrupt

  groups = []
  resumed = grid_search(**kwargs, resume=True, on_group=lambda shape, n: groups.append((shape, n)))
  assert groups == [({"layers": 1, "hidden": 16, "batch_size": 32}, 2)]
  assert [(r.config["lr"], r.config["hidden"]) for r in resumed.rows] == [
      (1e-2, 8), (1e-2, 16), (3e-2, 8), (3e-2, 16)]
  assert resumed.rows[2].val_loss == rows[1].val_loss
  np.testing.assert_array_equal(resumed.rows[2].curve, rows[1].curve)
  with open(tmp_path / "results.csv") as f:
    assert len(list(csv.DictReader(f))) == 4

  with pytest.raises(ValueError, match="cannot resume: .* steps=10, this one has steps=11"):
    grid_search(**{**kwargs, "steps": 11}, resume=True)


def _count_chunks(monkeypatch, interrupt_at=None):
  """Counts chunks run (and traces of the chunk program); raises KeyboardInterrupt at one."""
  calls = {"chunks": 0, "traces": 0}
  run_chunk, programs = _grid_module._run_chunk, _grid_module._chunk_programs

  def counted_run(*args):
    calls["chunks"] += 1
    if calls["chunks"] == interrupt_at:
      raise KeyboardInterrupt
    return run_chunk(*args)

  def counted_programs(*args):
    init, train, evaluate = programs(*args)

    def traced_train(*a):
      calls["traces"] += 1
      return train(*a)

    return init, traced_train, evaluate

  monkeypatch.setattr(_grid_module, "_run_chunk", counted_run)
  monkeypatch.setattr(_grid_module, "_chunk_programs", counted_programs)
  return calls


def test_interrupted_group_resumes_mid_training_bit_for_bit(tmp_path, monkeypatch):
  # 25 steps in chunks of at most 10: three chunks of 9, the last padded with 2 skipped steps.
  kwargs = dict(lr=[1e-2, 3e-2], b1=[0.9, 0.5], hidden=[8], steps=25, checkpoint_every=10,
                diagnostics=True)
  calls = _count_chunks(monkeypatch)
  full = grid_search(**kwargs, out_dir=tmp_path / "full")
  assert calls == {"chunks": 3, "traces": 1}  # one compilation for the three chunks
  assert not (tmp_path / "full" / "checkpoints").exists()  # removed once the rows were written

  out = tmp_path / "cut"
  calls = _count_chunks(monkeypatch, interrupt_at=3)
  with pytest.raises(KeyboardInterrupt):
    grid_search(**kwargs, out_dir=out)
  assert (out / "checkpoints" / "layers1-hidden8-batch32").is_dir()
  with open(out / "results.csv") as f:
    assert list(csv.DictReader(f)) == []
  calls = _count_chunks(monkeypatch)
  resumed = grid_search(**kwargs, out_dir=out, resume=True)
  assert calls == {"chunks": 1, "traces": 1}  # two of the three chunks came from the checkpoint
  assert not (out / "checkpoints").exists()
  for a, b in zip(resumed.rows, full.rows):
    assert a.config == b.config
    np.testing.assert_array_equal(a.curve, b.curve)
    assert (a.train_loss, a.val_loss, a.val_accuracy) == (b.train_loss, b.val_loss,
                                                          b.val_accuracy)
    assert a.diagnostics.keys() == b.diagnostics.keys()
    assert len(a.diagnostics["step"]) == 25
    for name in a.diagnostics:
      np.testing.assert_array_equal(a.diagnostics[name], b.diagnostics[name])
  for name in ("results.csv", "curves.jsonl"):
    assert (out / name).read_text() == (tmp_path / "full" / name).read_text()


def test_chunks_cover_the_run_and_a_stale_checkpoint_is_not_used(tmp_path, monkeypatch):
  assert [_grid_module._chunking(s, 250) for s in (1000, 1001, 100, 7)] == [
      (250, 4), (201, 5), (100, 1), (7, 1)]
  assert _grid_module._chunking(1000, 0) == (1000, 1)
  kwargs = dict(lr=[1e-2, 3e-2], hidden=[8], steps=20, checkpoint_every=10)
  whole = grid_search(**{**kwargs, "checkpoint_every": 0})
  calls = _count_chunks(monkeypatch, interrupt_at=2)
  with pytest.raises(KeyboardInterrupt):
    grid_search(**kwargs, out_dir=tmp_path)
  # Resumed with other learning rates, the checkpoint is not theirs: they train from step 0.
  calls = _count_chunks(monkeypatch)
  other = grid_search(**{**kwargs, "lr": [1e-2, 3e-3]}, out_dir=tmp_path, resume=True)
  assert calls["chunks"] == 2
  assert other.rows[0].val_loss == pytest.approx(whole.rows[0].val_loss, rel=1e-6)
  np.testing.assert_allclose(other.rows[0].curve, whole.rows[0].curve, rtol=1e-6)
  # Without resume the checkpoints of an earlier search are removed.
  _count_chunks(monkeypatch, interrupt_at=2)
  with pytest.raises(KeyboardInterrupt):
    grid_search(**kwargs, out_dir=tmp_path)
  calls = _count_chunks(monkeypatch)
  grid_search(**kwargs, out_dir=tmp_path)
  assert calls["chunks"] == 2 and not (tmp_path / "checkpoints").exists()


def test_a_single_configuration(task):
  result = grid_search(lr=[1e-2], hidden=[16], steps=STEPS, checkpoint_every=10)
  want = train(task, adam_jax.adam(1e-2), STEPS)
  np.testing.assert_allclose(result.best.curve, want.curve, rtol=2e-5)
  assert result.best.val_loss == pytest.approx(want.val_loss, rel=2e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=[-1e-3]), "lr must be in"),
        (dict(b1=[1.0]), "b1 must be in"),
        (dict(eps=[-1.0]), "eps must be in"),
        (dict(schedule=["linear"]), "schedule must be one of"),
        (dict(lr=[1e-3, 1e-3]), "lr has repeated values"),
        (dict(hidden=[0]), "hidden must be a positive integer"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(optimizer="sgd"), "optimizer must be one of"),
        (dict(resume=True), "resume needs out_dir"),
        (dict(checkpoint_every=-1), "checkpoint_every must be a nonnegative integer"),
        (dict(task="mnist"), "unknown task"),
    ],
)
def test_grid_search_rejects_bad_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    grid_search(**kwargs)


def test_lr_find_ramp_smoothing_and_params_untouched(task):
  before = [np.array(p) for p in jax.tree.leaves(task.params)]
  result = lr_find(task, start_lr=1e-5, end_lr=1e-1, num_steps=40, beta=0.9)
  assert not result.diverged and len(result.lrs) == 40
  np.testing.assert_allclose(result.lrs, np.geomspace(1e-5, 1e-1, 40), rtol=1e-12)
  avg, want = 0.0, []
  for i, loss in enumerate(result.raw_losses):
    avg = 0.9 * avg + 0.1 * loss
    want.append(avg / (1 - 0.9 ** (i + 1)))
  np.testing.assert_allclose(result.losses, want, rtol=1e-5)
  assert all(np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(task.params)))
  # The first loss is that of the task's initial params on the first batch.
  idx = task.batch_indices(1)[0]
  first = task.loss(task.params, task.x_train[idx], task.y_train[idx])
  assert result.raw_losses[0] == pytest.approx(float(first), rel=1e-5)


def test_lr_find_stops_on_divergence(task):
  result = lr_find(task, start_lr=1e-3, end_lr=1e4, num_steps=100)
  assert result.diverged and 10 < len(result.lrs) < 100
  last, best = result.losses[-1], np.min(result.losses[:-1])
  assert not np.isfinite(last) or last > 4 * best
  assert np.all(result.losses[:-1] <= 4 * np.minimum.accumulate(result.losses[:-1]))
  assert result.suggestion < result.lrs[-1]


def test_lr_find_suggestion_trains_well(task):
  result = lr_find(task)
  assert 1e-3 < result.suggestion < 1e-1
  lrs = [result.suggestion / 30, result.suggestion, result.suggestion * 30]
  low, good, high = (r.val_loss for r in grid_search(lr=lrs, hidden=[16], steps=150).rows)
  assert good < low and good < high


def test_suggestion_rules_on_a_known_curve():
  lrs = np.geomspace(1e-4, 1.0, 41)
  x = np.log10(lrs)
  losses = 2.0 - np.tanh(2 * (x + 2))  # falls fastest at lr = 1e-2
  losses[-5:] += np.linspace(0.5, 3.0, 5)  # then rises
  steepest, valley = _lr_find_module._suggest(lrs, losses)
  assert steepest == pytest.approx(1e-2)
  # Decreasing from the first point to the minimum at index 35: half-way is index 17.
  assert valley == pytest.approx(lrs[17])


def test_lr_find_rejects_bad_arguments(task):
  with pytest.raises(ValueError, match="end_lr must be greater"):
    lr_find(task, start_lr=1.0, end_lr=0.1)
  with pytest.raises(ValueError, match="num_steps must be an integer >= 10"):
    lr_find(task, num_steps=5)
  with pytest.raises(ValueError, match="beta must be in"):
    lr_find(task, beta=1.0)
