"""Small searches (a linear regression, an NNX model with Dropout) on every device.

Shared by ``tests/test_multiprocess.py``: the test runs :func:`search` in its own
process (8 CPU devices) and, through ``python -m tests.multiprocess_search``, in two
processes of 4 CPU devices each joined by ``jax.distributed`` on 127.0.0.1, each with
its own ``out_dir`` (as on hosts that share no disk) and one folder both see for a search
with group checkpoints.
"""

from __future__ import annotations

import importlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from adam_jax import tuning
from tests import fsdp_training

_runner = importlib.import_module("adam_jax.tuning._runner")

STEPS = 12
GRID = {"learning_rate": [1e-3, 1e-2, 3e-2, 1e-1, 3e-1], "b1": [0.8, 0.9]}  # 10 x 2 seeds


def _problem() -> tuning.Problem:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 4)).astype(np.float32)
  y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32) + np.float32(0.1)

  def init(key):
    return {"w": 0.1 * jax.random.normal(key, (4, 1)), "b": jnp.zeros((1, 1))}

  def loss(params, batch):
    xb, yb = batch
    return jnp.mean((xb @ params["w"] + params["b"] - yb) ** 2)

  return tuning.Problem(init, loss, (x, y), (x[:32], y[:32]), batch_size=16)


def _dropout_problem() -> tuning.Problem:
  """A Flax NNX model with Dropout: its state holds typed PRNG keys."""
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      self.fc = nnx.Linear(4, 1, rngs=rngs)
      self.drop = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x):
      return self.fc(self.drop(x))

  x, y = _problem().train_data
  loss = lambda model, batch: jnp.mean((model(batch[0]) - batch[1]) ** 2)
  return tuning.Problem(Net, loss, (x, y), (x[:32], y[:32]), batch_size=16)


def _rows(result: tuning.SearchResult) -> dict:
  model = result.best.model
  if not isinstance(model, dict):  # an NNX module: its params
    from flax import nnx

    model = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  return {"rows": [{"config": r.config, "metrics": r.metrics,
                    "curve": [float(v) for v in r.curve]} for r in result.rows],
          "best": result.best.config,
          "best_model": {k: np.asarray(v).tolist() for k, v in model.items()}}


def search(out_dir: str) -> dict:
  """A grid, a random search, a grid of a model whose state holds PRNG keys, a successive
  halving (its survivors continued from their state, rung after rung) and a population-based
  training (its members copying each other across the processes' devices).

  The grid's steps run in a scan over members spread on every device, the random
  search's are called from Python (one device of each process).
  """
  problem = _problem()
  grid = tuning.grid_search(problem, GRID, steps=STEPS, seeds=2, out_dir=out_dir,
                            progress=False)
  rand = tuning.random_search(problem, {"learning_rate": tuning.log_uniform(1e-3, 1e-1),
                                        "b2": tuning.uniform(0.9, 0.999)},
                              num_configs=3, steps=STEPS, loop="python", progress=False)
  dropout = tuning.grid_search(_dropout_problem(), {"learning_rate": [1e-2, 1e-1]}, steps=4,
                               progress=False)
  halving = tuning.successive_halving(problem, GRID, min_steps=3, max_steps=STEPS, eta=2,
                                      progress=False)
  pbt = tuning.pbt(problem, {"learning_rate": tuning.log_uniform(1e-3, 3e-1)}, population=8,
                   steps=STEPS, ready_every=4, quantile=0.25)
  return {"grid": _rows(grid), "random": _rows(rand), "dropout": _rows(dropout),
          "halving": _rows(halving), "pbt": _population(pbt)}


def _population(result: tuning.PBTResult) -> dict:
  """A population's history and every member's metrics (JSON)."""
  return {"sources": result.sources.tolist(),
          "learning_rate": result.hyperparameters["learning_rate"].tolist(),
          "metrics": [m.metrics for m in result.members], "best": result.best.index}


def _interrupted_and_resumed(problem: tuning.Problem, shared_dir: str) -> dict:
  """The grid cut in its third chunk, then resumed from the checkpoint both processes wrote."""
  kwargs = dict(steps=STEPS, seeds=2, checkpoint_every=4, out_dir=shared_dir, progress=False)
  run, chunks = _runner.run_chunk_hook, []

  def cut_third(*args):
    chunks.append(args[2])
    if len(chunks) == 3:
      raise KeyboardInterrupt
    return run(*args)

  _runner.run_chunk_hook = cut_third
  try:
    tuning.grid_search(problem, GRID, **kwargs)
    raise AssertionError("the search was not interrupted")
  except KeyboardInterrupt:
    pass
  chunks.clear()
  _runner.run_chunk_hook = lambda *args: chunks.append(args[2]) or run(*args)
  try:
    resumed = tuning.grid_search(problem, GRID, resume=True, **kwargs)
  finally:
    _runner.run_chunk_hook = run
  return {"chunks": chunks, **_rows(resumed)}


def main() -> None:
  coordinator, process_id, out_dir, shared_dir, out = sys.argv[1:6]
  fsdp_training.join(coordinator, process_id)
  result = search(out_dir)
  problem = _problem()
  # Process 0's out_dir holds the search: both processes refuse to start over there.
  try:
    tuning.grid_search(problem, GRID, steps=STEPS, seeds=2, out_dir=out_dir, progress=False)
    result["refused"] = None
  except ValueError as err:
    result["refused"] = str(err)
  # Resumed: every row is read back by process 0, the best configuration trained again.
  trained = []
  resumed = tuning.grid_search(problem, GRID, steps=STEPS, seeds=2, out_dir=out_dir,
                               resume=True, progress=False, on_row=trained.append)
  result["resumed"] = _rows(resumed)
  result["resumed_trained"] = len(trained)
  result["checkpointed"] = _interrupted_and_resumed(problem, shared_dir)
  try:
    tuning.grid_search(problem, GRID, steps=STEPS, devices=jax.local_devices(), progress=False)
    result["local_devices"] = None
  except ValueError as err:
    result["local_devices"] = str(err)
  with open(out, "w") as f:
    json.dump(result, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
