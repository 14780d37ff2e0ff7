"""Population-based training: exploit copies exactly, explore stays in the space, replays."""

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
_pbt = importlib.import_module("adam_jax.tuning._pbt")
ONE_DEVICE = jax.devices()[:1]
SPACE = {"learning_rate": tuning.log_uniform(1e-3, 1e-1), "b1": tuning.uniform(0.8, 0.95)}


@pytest.fixture(scope="module")
def mlp():
  return tasks.digits_mlp(hidden=16)


@pytest.fixture(scope="module")
def run(mlp):
  return tuning.pbt(mlp, SPACE, population=6, steps=120, ready_every=30, seed=3,
                    devices=ONE_DEVICE)


def test_copy_members_copies_only_the_chosen_members_bit_for_bit():
  key = jax.random.split(jax.random.key(0), 4)
  params = {"w": jnp.arange(12.0).reshape(4, 3), "n": jnp.arange(4)}
  carry = (params, (jnp.arange(4.0) * 7,), {"rng": key, "mean": -jnp.arange(4.0)})
  source = np.array([0, 3, 2, 3], np.int32)  # member 1 copies member 3
  out = _runner.copy_members(carry, jnp.asarray(source))
  for got, was in zip(jax.tree.leaves(out[:2]), jax.tree.leaves(carry[:2])):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(was)[source])
  np.testing.assert_array_equal(out[2]["mean"], np.asarray(carry[2]["mean"])[source])
  # the PRNG streams stay each member's own
  np.testing.assert_array_equal(jax.random.key_data(out[2]["rng"]), jax.random.key_data(key))


@pytest.mark.slow
def test_copied_members_train_on_from_the_source_bit_for_bit(mlp):
  # explore off (factor 1, no resampling): a copy has the source's values and state, so
  # after the last ready point it trains exactly as its source
  result = tuning.pbt(mlp, SPACE, population=4, steps=60, ready_every=40, seed=1,
                      perturb=(1.0,), resample_probability=0.0, keep="last",
                      devices=ONE_DEVICE)
  (src,) = result.sources
  copier = int(np.flatnonzero(src != np.arange(4))[0])
  assert np.count_nonzero(src != np.arange(4)) == 1  # quantile 0.25 of 4: one copies
  a, b = result.members[copier], result.members[int(src[copier])]
  np.testing.assert_array_equal(a.curve[40:], b.curve[40:])
  assert a.metrics == b.metrics
  assert not np.array_equal(a.curve[:40], b.curve[:40])
  for key in SPACE:
    assert result.hyperparameters[key][1, copier] == result.hyperparameters[key][0, src[copier]]


def test_explore_stays_inside_the_space():
  dists = {"learning_rate": tuning.log_uniform(1e-3, 1e-2), "b2": tuning.choice([0.9, 0.99, 0.999])}
  hp = {"learning_rate": np.full(8, 9e-3, np.float32), "b2": np.full(8, 0.999, np.float32)}
  pop = _pbt._Population(dists, hp, list(range(10, 500, 10)), _pbt.Rules(0.5, (0.5, 2.0), 0.3,
                                                                         "min", 0))
  rng = np.random.default_rng(0)
  for step in range(10, 500, 10):
    source, hp = pop.ready(step, rng.standard_normal(8).astype(np.float32), hp)
    assert np.all(hp["learning_rate"] >= 1e-3 * (1 - 1e-6))
    assert np.all(hp["learning_rate"] <= 1e-2 * (1 + 1e-6))
    assert set(hp["b2"].tolist()) <= set(np.float32([0.9, 0.99, 0.999]).tolist())
    moved = source != np.arange(8)
    assert moved.sum() == 4 and not np.any(moved[source[moved]])  # the worst copy the best
  assert len(set(np.round(pop.hyperparameters["learning_rate"].ravel(), 7))) > 20


@pytest.mark.slow
def test_the_worst_members_copy_the_best(run):
  for col, step in enumerate(run.ready_steps):
    scores = np.array([m.evals["val_loss"][list(m.evals["step"]).index(step)]
                       for m in run.members])
    moved = np.flatnonzero(run.sources[col] != np.arange(6))
    order = np.argsort(scores)
    assert set(moved) == set(order[-1:])  # floor(0.25 * 6) = 1
    assert set(run.sources[col][moved]) <= set(order[:1])


@pytest.mark.slow
def test_the_best_schedule_replays_with_train(mlp, run):
  best = run.best
  assert best.metrics["val_loss"] == min(m.metrics["val_loss"] for m in run.members)
  at = best.best_step
  assert best.metrics["val_loss"] == pytest.approx(float(np.min(best.evals["val_loss"][
      list(best.evals["step"]).index(at)])), rel=1e-6)
  # every member shares the initial model and batches: even a copied lineage replays
  again = tuning.train(mlp, None, at, schedule=best.schedule, seed=3)
  assert again.metrics["val_loss"] == pytest.approx(best.metrics["val_loss"], rel=1e-5)
  own = float(jax.jit(mlp.loss_fn)(best.model, mlp.val_data)[0])
  assert own == pytest.approx(best.metrics["val_loss"], rel=1e-5)
  last = {k: v[-1] for k, v in best.schedule.values.items()}
  assert best.schedule.at(at - 1) == last and best.schedule.at(0) == {
      k: v[0] for k, v in best.schedule.values.items()}
  for m in run.members:
    starts = [s for s, _ in m.lineage]
    assert set(m.schedule.starts) <= set(starts) and starts[0] == m.schedule.starts[0] == 0
    assert m.lineage[-1][1] == m.index


@pytest.mark.slow
def test_a_population_of_one_is_a_plain_training(mlp):
  result = tuning.pbt(mlp, {"learning_rate": tuning.log_uniform(1e-3, 1e-1)}, population=1,
                      steps=50, ready_every=10, keep="last", devices=ONE_DEVICE)
  lr = result.members[0].config["learning_rate"]
  assert np.all(result.sources == 0)
  assert np.all(result.hyperparameters["learning_rate"] == np.float32(lr))
  plain = tuning.train(mlp, adam_jax.adam(np.float32(lr)), 50)
  assert result.best.metrics["val_loss"] == pytest.approx(plain.metrics["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_nnx_batchnorm_dropout_population(tmp_path):
  d = tasks.load_digits()
  # no bias before the BatchNorm: its gradient is rounding noise that Adam amplifies, and
  # the population compiles at another XLA level than train (see _runner.compiler_options)
  problem = tuning.Problem(lambda rngs: batchnorm_mlp(rngs, 32, bias=False), cross_entropy,
                           (d.x[:300], d.y[:300]), (d.x[1000:1250], d.y[1000:1250]),
                           batch_size=32)
  result = tuning.pbt(problem, SPACE, population=8, steps=120, ready_every=20, seed=0,
                      out_dir=tmp_path / "pbt", devices=ONE_DEVICE)
  best = result.best
  own = float(nnx.jit(cross_entropy)(best.model, problem.val_data)[0])
  assert best.metrics["val_loss"] == pytest.approx(own, rel=1e-5)
  assert (tmp_path / "pbt" / "population.csv").read_text().count("\n") == 8 * 6 + 1
  assert (tmp_path / "pbt" / "results.csv").read_text().count("\n") == 9
  result.plot(tmp_path / "pbt.png")
  assert (tmp_path / "pbt.png").stat().st_size > 10_000
  alone = [m for m in result.members if not m.copied]
  for m in alone[:1]:  # never copied: train replays it (dropout streams included)
    again = tuning.train(problem, None, m.best_step, schedule=m.schedule, seed=0)
    assert again.metrics["val_loss"] == pytest.approx(m.metrics["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_resumed_population_equals_an_uninterrupted_run(mlp, tmp_path, monkeypatch):
  kwargs = dict(population=4, steps=40, ready_every=10, checkpoint_every=10, seed=2,
                devices=ONE_DEVICE)
  full = tuning.pbt(mlp, SPACE, out_dir=tmp_path / "full", **kwargs)
  hook = _runner.run_chunk_hook

  def interrupt(*args):
    if args[2] > 25:
      raise KeyboardInterrupt
    return hook(*args)

  monkeypatch.setattr(_runner, "run_chunk_hook", interrupt)
  with pytest.raises(KeyboardInterrupt):
    tuning.pbt(mlp, SPACE, out_dir=tmp_path / "cut", **kwargs)
  monkeypatch.setattr(_runner, "run_chunk_hook", hook)
  with pytest.raises(ValueError, match="already holds an earlier search"):
    tuning.pbt(mlp, SPACE, out_dir=tmp_path / "cut", **kwargs)
  resumed = tuning.pbt(mlp, SPACE, out_dir=tmp_path / "cut", resume=True, **kwargs)
  np.testing.assert_array_equal(resumed.sources, full.sources)
  for key in SPACE:
    np.testing.assert_array_equal(resumed.hyperparameters[key], full.hyperparameters[key])
  for a, b in zip(resumed.members, full.members):
    np.testing.assert_array_equal(a.curve, b.curve)
    assert a.metrics == b.metrics
  with pytest.raises(ValueError, match="cannot resume"):
    tuning.pbt(mlp, SPACE, out_dir=tmp_path / "cut", resume=True, **{**kwargs, "seed": 5})


@pytest.mark.slow
def test_population_that_does_not_fit_is_refused(mlp):
  with pytest.raises(tuning.MemoryBudgetError, match="population of 4 members"):
    tuning.pbt(mlp, SPACE, population=4, steps=20, ready_every=10, max_memory="200KB",
               devices=ONE_DEVICE)


@pytest.mark.parametrize("kwargs, message", [
    (dict(population=0), "population must be an integer >= 1"),
    (dict(ready_every=40), "ready_every must be below steps"),
    (dict(quantile=0.7), r"quantile must be in \(0, 0.5\]"),
    (dict(perturb=[]), "perturb must be a list of positive factors"),
    (dict(perturb=[0.8, -1]), "perturb must be a list of positive factors"),
    (dict(resample_probability=2), r"resample_probability must be in \[0, 1\]"),
    (dict(metric="train_loss"), "must be a validation metric"),
    (dict(space={"learning_rate": 1e-2, "hidden": tuning.choice([8, 16])}),
     "'hidden' cannot vary"),
    (dict(space={"learning_rate": tuning.choice(["a", "b"])}), "varies numbers only"),
    (dict(space={"learning_rate": 1e-2}), "nothing to vary"),
    (dict(space={"lerning_rate": tuning.uniform(0, 1)}), "did you mean 'learning_rate'"),
    (dict(keep="first"), "keep must be 'last' or 'best'"),
])
def test_bad_arguments(mlp, kwargs, message):
  args = dict(space=SPACE, population=4, steps=40, ready_every=10) | kwargs
  with pytest.raises(ValueError, match=message):
    tuning.pbt(mlp, args.pop("space"), **args)


@pytest.mark.slow
def test_train_schedule_arguments(mlp, run):
  with pytest.raises(ValueError, match="pass tx or schedule, not both"):
    tuning.train(mlp, adam_jax.adam(1e-3), 10, schedule=run.best.schedule)
  with pytest.raises(ValueError, match="schedule must be an adam_jax.tuning.Schedule"):
    tuning.train(mlp, None, 10, schedule={"learning_rate": 1e-3})


@pytest.mark.slow
def test_a_population_spread_over_devices_equals_one_device(mlp, run):
  if len(jax.devices()) < 3:
    pytest.skip("needs several devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  spread = tuning.pbt(mlp, SPACE, population=6, steps=120, ready_every=30, seed=3,
                      devices=jax.devices()[:3], loop="scan")
  np.testing.assert_array_equal(spread.sources, run.sources)
  for a, b in zip(spread.members, run.members):
    np.testing.assert_allclose(a.curve, b.curve, rtol=1e-4)
    assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], rel=1e-4)
