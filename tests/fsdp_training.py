"""FSDP training with ``adamw``, checkpointed halfway, on a mesh over every device.

Shared by ``tests/test_multiprocess.py``: the test runs :func:`train` in its own
process (8 CPU devices) and, through ``python -m tests.fsdp_training``, in two
processes of 4 CPU devices each joined by ``jax.distributed`` on 127.0.0.1.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax
from adam_jax import checkpoint

STEPS, STOP = 8, 4
P = jax.sharding.PartitionSpec


def _data() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  params = {"w1": 0.3 * rng.standard_normal((16, 32)), "b1": np.zeros((1, 32)),
            "w2": 0.3 * rng.standard_normal((32, 4))}
  x = rng.standard_normal((64, 16))
  y = np.sin(x[:, :4])
  cast = lambda a: a.astype(np.float32)
  return jax.tree.map(cast, params), cast(x), cast(y)


def train(ckpt_dir: str) -> dict[str, np.ndarray]:
  """Trains STEPS steps, saving and restoring at STOP; returns global values on every host."""
  from jax.experimental import multihost_utils

  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  specs = {"w1": P("data", None), "b1": P(), "w2": P("data", None)}  # FSDP: rows split
  params_np, x_np, y_np = _data()

  def put(a, spec):
    sharding = jax.sharding.NamedSharding(mesh, spec)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

  tx = adam_jax.adamw(1e-2, weight_decay=0.1)

  @jax.jit
  def step(params, state, x, y):
    def loss_fn(p):
      full = {k: jax.sharding.reshard(v, P()) for k, v in p.items()}  # all-gather the weights
      h = jnp.tanh(x @ full["w1"] + full["b1"])
      return jnp.mean((h @ full["w2"] - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  with jax.set_mesh(mesh):
    params = {k: put(v, specs[k]) for k, v in params_np.items()}
    x, y = put(x_np, P("data", None)), put(y_np, P("data", None))
    state = jax.jit(tx.init)(params)
    mu = state[0].mu["w1"]
    assert mu.sharding.spec == P("data", None), mu.sharding
    assert len(mu.addressable_shards) == jax.local_device_count()
    losses = []
    for _ in range(STOP):
      params, state, loss = step(params, state, x, y)
      losses.append(loss)
    extras = {"step": np.asarray(STOP, np.int32), "lr": 1e-2, "curve": np.asarray(losses)}
    checkpoint.save(ckpt_dir, (params, state, extras))
    like = jax.eval_shape(lambda p: (p, tx.init(p)), params)  # shardings on an abstract mesh
    like_extras = {"step": np.zeros((), np.int32), "lr": 0.0, "curve": np.zeros(STOP, np.float32)}
    r_params, r_state, r_extras = checkpoint.restore(ckpt_dir, like=(*like, like_extras))
    assert int(r_extras["step"]) == STOP and r_extras["lr"] == 1e-2
    assert np.array_equal(r_extras["curve"], extras["curve"])
    assert r_state[0].mu["w1"].sharding.spec == P("data", None)
    compiled = step._cache_size()
    for _ in range(STOP, STEPS):
      params, state, loss = step(params, state, x, y)
      r_params, r_state, _ = step(r_params, r_state, x, y)
      losses.append(loss)
    assert step._cache_size() == compiled  # the restored state needs no new compilation
  out = multihost_utils.process_allgather(
      {"params": params, "resumed": r_params, "mu": state[0].mu, "resumed_mu": r_state[0].mu,
       "losses": jnp.stack(losses)}, tiled=True)
  return jax.tree.map(np.asarray, out)


def join(coordinator: str, process_id: str) -> None:
  """Joins this process to the 2-process run on ``coordinator`` (gloo CPU collectives)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  jax.config.update("jax_numpy_rank_promotion", "raise")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=2,
                             process_id=int(process_id))
  assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()


def main() -> None:
  coordinator, process_id, ckpt_dir, out = sys.argv[1:5]
  join(coordinator, process_id)
  result = train(ckpt_dir)
  if jax.process_index() == 0:
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(result)[0]}
    np.savez(out, **flat)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
