"""random_search and successive_halving against configurations trained alone."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import tuning

_runner = importlib.import_module("adam_jax.tuning._runner")
_halving = importlib.import_module("adam_jax.tuning._halving")

STEPS = 10


def small_problem():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((96, 3)).astype(np.float32)
  y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.1).astype(np.float32)

  def init(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (3, 4)) * 0.5, "b1": jnp.zeros((1, 4)),
            "w2": jax.random.normal(k2, (4, 1)) * 0.5}

  def loss_fn(params, batch):
    xb, yb = batch
    pred = jnp.tanh(xb @ params["w1"] + params["b1"]) @ params["w2"]
    return jnp.mean((pred - yb) ** 2)

  problem = tuning.Problem(init, loss_fn, (x, y), (x[:32], y[:32]), batch_size=16)
  return problem, init, loss_fn


_ALONE = {}


def train_alone(problem, init, loss_fn, config, steps, seed=0):
  """One configuration trained by a plain optax loop: its params and validation loss."""
  key = (id(problem), tuple(config.items()), steps, seed)
  if key not in _ALONE:
    _ALONE[key] = _fit_alone(problem, init, loss_fn, config, steps, seed)
  return _ALONE[key]


def _fit_alone(problem, init, loss_fn, config, steps, seed):
  hp = {k: v for k, v in config.items() if k != "batch_size"}
  tx = adam_jax.adam(**hp)
  params = init(jax.random.key(seed))
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  x, y = problem.train_data
  bs = config.get("batch_size", problem.batch_size)
  for i in problem.batch_indices(steps, seed, batch_size=bs):
    params, state = step(params, state, (x[i], y[i]))
  return params, float(loss_fn(params, problem.val_data))


@pytest.mark.slow
def test_random_search_rows_equal_each_sampled_config_trained_alone():
  problem, init, loss_fn = small_problem()
  space = {"learning_rate": tuning.log_uniform(1e-3, 1e-1), "b1": tuning.uniform(0.5, 0.95),
           "batch_size": tuning.choice([8, 16]), "b2": 0.99}
  result = tuning.random_search(problem, space, num_configs=5, seed=3, steps=STEPS,
                                progress=False)
  configs = tuning.sample_configs(space, 5, seed=3)
  assert [r.config for r in result.rows] == configs
  assert len({c["learning_rate"] for c in configs}) == 5
  assert all(1e-3 <= c["learning_rate"] <= 1e-1 and 0.5 <= c["b1"] <= 0.95
             and c["batch_size"] in (8, 16) and c["b2"] == 0.99 for c in configs)
  for row in result.rows:
    _, want = train_alone(problem, init, loss_fn, row.config, STEPS)
    assert row.metrics["val_loss"] == pytest.approx(want, rel=2e-5)
  best = result.best
  assert best.metrics["val_loss"] == min(r.metrics["val_loss"] for r in result.rows)
  assert best.metrics["val_loss"] == pytest.approx(
      float(loss_fn(best.model, problem.val_data)), rel=1e-5)


@pytest.mark.slow
def test_random_search_writes_rows_and_resumes(tmp_path):
  problem, _, _ = small_problem()
  space = {"learning_rate": tuning.log_uniform(1e-3, 1e-1)}
  first = tuning.random_search(problem, space, num_configs=3, steps=STEPS, out_dir=tmp_path,
                               progress=False)
  trained = []
  again = tuning.random_search(problem, space, num_configs=3, steps=STEPS, out_dir=tmp_path,
                               resume=True, progress=False, on_row=trained.append)
  assert trained == []  # every row was read back
  assert [r.config for r in again.rows] == [r.config for r in first.rows]
  for a, b in zip(first.rows, again.rows):
    assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], rel=1e-6)
  with pytest.raises(ValueError, match="cannot resume.*seed"):
    tuning.random_search(problem, space, num_configs=3, seed=1, steps=STEPS, out_dir=tmp_path,
                         resume=True, progress=False)


@pytest.mark.parametrize("kind", ["grid", "random"])
def test_an_earlier_search_in_out_dir_is_refused_not_deleted(tmp_path, kind):
  problem, _, _ = small_problem()

  def run(**kwargs):
    if kind == "grid":
      return tuning.grid_search(problem, {"learning_rate": [1e-2, 1e-1]}, steps=3,
                                out_dir=tmp_path, progress=False, **kwargs)
    return tuning.random_search(problem, {"learning_rate": tuning.log_uniform(1e-3, 1e-1)},
                                num_configs=2, steps=3, out_dir=tmp_path, progress=False,
                                **kwargs)

  run()
  csv_path = tmp_path / "results.csv"
  written = csv_path.read_text()
  assert len(written.splitlines()) == 3
  with pytest.raises(ValueError, match=r"already holds an earlier search \(.*results\.csv\); "
                     r"pass resume=True to continue that search, or pass another out_dir"):
    run()
  assert csv_path.read_text() == written
  (tmp_path / "search.json").unlink()  # nothing to resume from: still kept
  with pytest.raises(ValueError, match=r"results\.csv\); it has no search\.json"):
    run(resume=True)
  assert csv_path.read_text() == written
  csv_path.unlink()  # an interrupted first group: its checkpoints are kept too
  (tmp_path / "checkpoints" / "group").mkdir(parents=True)
  with pytest.raises(ValueError, match=r"earlier search \(.*checkpoints\)"):
    run(checkpoint_every=1)
  assert (tmp_path / "checkpoints" / "group").is_dir()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: tuning.log_uniform(0.0, 1.0), "log_uniform needs 0 < lo"),
        (lambda: tuning.uniform(1.0, 0.5), "uniform needs lo < hi"),
        (lambda: tuning.uniform(0.0, float("inf")), "finite numbers"),
        (lambda: tuning.choice([]), "at least one value"),
        (lambda: tuning.choice([1, 1]), "repeated values"),
        (lambda: tuning.choice("adam"), "a list of values"),
        (lambda: tuning.sample_configs({"learning_rate": object()}, 2),
         "space key 'learning_rate' must be a distribution"),
        (lambda: tuning.sample_configs({"b1": [0.9, 0.8]}, 3), "fewer than num_configs=3"),
        (lambda: tuning.sample_configs({"b1": [0.9]}, 0), "num_configs must be a positive"),
        (lambda: tuning.sample_configs({"b1": [0.9]}, 1, seed=-1), "seed must be"),
    ],
)
def test_distributions_reject_bad_input(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@pytest.mark.slow
@pytest.mark.parametrize("pad", [False, True])
def test_successive_halving_keeps_trajectories_and_the_best(monkeypatch, pad):
  problem, init, loss_fn = small_problem()
  calls, compiled = [], []
  train_group = _runner.train_group
  monkeypatch.setattr(_runner, "train_group",
                      lambda *a, **k: calls.append((k["first_step"], a[5])) or train_group(*a, **k))
  # Survivors padded to the first rung's size (or not): the choice made from timings.
  monkeypatch.setattr(_halving, "_pad_is_cheaper", lambda *a: pad)
  compile_ = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, "compile",
                      lambda self, *a, **k: compiled.append(self.as_text()) or compile_(
                          self, *a, **k))
  space = {"learning_rate": [1e-3, 1e-2, 3e-2, 1e-1], "batch_size": [8, 16]}
  result = tuning.successive_halving(problem, space, min_steps=3, max_steps=12, eta=2,
                                     progress=False)
  assert tuning.rungs(3, 12, 2) == [3, 6, 12]
  chunks = [text for text in compiled if "jit_scan_chunk" in text]
  assert len(set(chunks)) == len(chunks)  # no chunk of steps compiled twice
  if pad:  # each batch size: init, a chunk of 3 steps and the evaluation, for every rung
    assert len(compiled) == 2 * 3 and len(chunks) == 2
  else:  # the survivors' own chunks
    assert len(chunks) > 2
  # One program per rung and batch size: 2 groups of 4, then of 2 or fewer, ...
  assert [c for c in calls if c[0] == 0] == [(0, 3), (0, 3)]
  assert {c for c in calls if c[0] > 0} <= {(3, 6), (6, 12)}
  assert len([c for c in calls if c[0] == 3]) <= 2 and len([c for c in calls if c[0] == 6]) <= 2
  assert [r.config for r in result.rows] == [
      {"learning_rate": lr, "batch_size": bs} for lr in space["learning_rate"] for bs in (8, 16)]
  assert sorted(r.steps for r in result.rows) == [3] * 4 + [6] * 2 + [12] * 2
  assert all(r.steps == [3, 6, 12][r.rung] and len(r.curve) == r.steps for r in result.rows)
  for rung, steps in enumerate([3, 6]):  # the best half of each rung went on
    reached = [r for r in result.rows if r.rung >= rung]
    ranked = sorted(reached, key=lambda r, s=steps: train_alone(
        problem, init, loss_fn, r.config, s)[1])
    assert {_k(r) for r in ranked[:len(reached) // 2]} == {
        _k(r) for r in result.rows if r.rung > rung}
  for row in result.rows:  # every configuration, survivor or not, equals its own run
    _, want = train_alone(problem, init, loss_fn, row.config, row.steps)
    assert row.metrics["val_loss"] == pytest.approx(want, rel=2e-5)
  best = result.best
  assert best.steps == 12
  assert best.metrics["val_loss"] == min(r.metrics["val_loss"] for r in result.rows
                                         if r.steps == 12)
  params, want = train_alone(problem, init, loss_fn, best.config, 12)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
               best.model, params)
  assert best.metrics["val_loss"] == pytest.approx(
      float(loss_fn(best.model, problem.val_data)), rel=1e-5)


def test_padding_repeats_the_last_member_of_arrays_and_keys():
  rows = np.arange(6, dtype=np.float32).reshape(3, 2)
  np.testing.assert_array_equal(_runner._pad(rows, 5), rows[[0, 1, 2, 2, 2]])
  assert _runner._pad(rows, 3) is rows
  keys = jax.random.split(jax.random.key(0), 2)
  padded = _runner._pad(keys, 4)
  np.testing.assert_array_equal(jax.random.key_data(padded),
                                jax.random.key_data(keys[np.array([0, 1, 1, 1])]))


def test_halving_chunks_divide_every_rung():
  assert _halving._chunk([33, 99, 300]) == 3  # rung lengths 33, 66, 201
  assert _halving._chunk([100, 300, 900]) == 100
  assert _halving._chunk([7, 1000]) == 7  # a divisor of 1: as many chunks as steps, too many


def _k(row):
  return tuple(row.config.values())


@pytest.mark.slow
def test_successive_halving_samples_distributions():
  problem, _, _ = small_problem()
  space = {"learning_rate": tuning.log_uniform(1e-3, 1e-1)}
  result = tuning.successive_halving(problem, space, num_configs=4, min_steps=2, max_steps=4,
                                     eta=2, seed=1, progress=False)
  assert [r.config for r in result.rows] == tuning.sample_configs(space, 4, seed=1)
  assert sorted(r.steps for r in result.rows) == [2, 2, 4, 4]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_steps": 0}, "min_steps must be a positive integer"),
        ({"min_steps": 5, "max_steps": 4}, "min_steps \\(5\\) must be at most max_steps"),
        ({"eta": 1}, "eta must be an integer of at least 2"),
        ({"space": {"learning_rate": tuning.uniform(1e-3, 1e-2)}}, "num_configs is needed"),
        ({"mode": "low"}, "mode must be"),
        ({"space": {"lr": [1e-3]}}, "space key 'lr' is taken neither"),
    ],
)
def test_successive_halving_rejects_bad_input(kwargs, message):
  problem, _, _ = small_problem()
  kwargs = {"space": {"learning_rate": [1e-3, 1e-2]}, "min_steps": 2, "max_steps": 4, **kwargs}
  with pytest.raises(ValueError, match=message):
    tuning.successive_halving(problem, kwargs.pop("space"), progress=False, **kwargs)


def dropout_problem():
  """A small NNX regression with BatchNorm and Dropout: typed PRNG keys in its state."""
  from flax import nnx

  rng = np.random.default_rng(1)
  x = rng.standard_normal((96, 3)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1, self.bn = nnx.Linear(3, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
      self.drop, self.l2 = nnx.Dropout(0.2, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))[:, 0]

  def loss_fn(model, batch):
    return jnp.mean((model(batch[0]) - batch[1]) ** 2)

  return tuning.Problem(Net, loss_fn, (x, y), (x[:32], y[:32]), batch_size=16), loss_fn


def test_halving_continues_an_nnx_model_with_dropout_and_reports_its_own_loss():
  problem, loss_fn = dropout_problem()
  result = tuning.successive_halving(problem, {"learning_rate": [1e-3, 1e-2, 3e-2, 1e-1]},
                                     min_steps=3, max_steps=12, eta=2, progress=False)
  assert max(r.steps for r in result.rows) == 12  # continued over three rungs
  model = result.best.model
  assert result.best.metrics["val_loss"] == pytest.approx(
      float(loss_fn(model, problem.val_data)), rel=1e-5)
