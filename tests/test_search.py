"""random_search and successive_halving against configurations trained alone."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import tuning

STEPS = 10


def _problem():
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


def _alone(problem, init, loss_fn, config, steps, seed=0):
  """One configuration trained by a plain optax loop: its params and validation loss."""
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


def test_random_search_rows_equal_each_sampled_config_trained_alone():
  problem, init, loss_fn = _problem()
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
    _, want = _alone(problem, init, loss_fn, row.config, STEPS)
    assert row.metrics["val_loss"] == pytest.approx(want, rel=2e-5)
  best = result.best
  assert best.metrics["val_loss"] == min(r.metrics["val_loss"] for r in result.rows)
  assert best.metrics["val_loss"] == pytest.approx(
      float(loss_fn(best.model, problem.val_data)), rel=1e-5)


def test_random_search_writes_rows_and_resumes(tmp_path):
  problem, _, _ = _problem()
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
