"""adam_jax.checkpoint: types survive, and a resumed run is bitwise the uninterrupted one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import checkpoint, schedules

STEPS, STOP = 10, 4

OPTIMIZERS = {
    "adam": lambda: adam_jax.adam(3e-2),
    "adam-l2-amsgrad": lambda: adam_jax.adam(3e-2, weight_decay=0.1, amsgrad=True),
    "adam-mixed-dtypes": lambda: adam_jax.adam(3e-2, mu_dtype=jnp.bfloat16,
                                               nu_dtype=jnp.float32),
    "adamw-schedules": lambda: adam_jax.adamw(schedules.warmup_cosine(3e-2, 3, STEPS),
                                              weight_decay=schedules.step_decay(0.1, 3)),
    "amsgrad": lambda: adam_jax.amsgrad(3e-2, b2=0.9),
    "nadam": lambda: adam_jax.nadam(schedules.exponential_lr(3e-2, 0.9)),
    "nadamw": lambda: adam_jax.nadamw(3e-2, weight_decay=0.1),
    "radam": lambda: adam_jax.radam(3e-2, b2=0.9),
    "adamax": lambda: adam_jax.adamax(3e-2, maximize=True),
    "adamaxw": lambda: adam_jax.adamaxw(3e-2, weight_decay=0.1),
    "adabelief": lambda: adam_jax.adabelief(schedules.cosine_annealing(3e-2, STEPS)),
    "adopt": lambda: adam_jax.adopt(3e-2, weight_decay=0.1),
    "adam_mini": lambda: adam_jax.adam_mini(3e-2),
    "cautious_adamw": lambda: adam_jax.cautious_adamw(schedules.step_decay(3e-2, 3)),
    "lazy_adam": lambda: adam_jax.lazy_adam(3e-2),
    "schedule_free_adamw": lambda: adam_jax.schedule_free_adamw(3e-2, warmup_steps=2),
    "adam8bit": lambda: adam_jax.adam8bit(3e-2, block_size=4, min_quantized_size=0),
    "adamw8bit-schedule": lambda: adam_jax.adamw8bit(
        schedules.warmup_cosine(3e-2, 3, STEPS, init_value=1e-3), weight_decay=0.1,
        block_size=4, min_quantized_size=4),
    "chain-clip-finite": lambda: optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.apply_if_finite(adam_jax.adamw(3e-2, weight_decay=0.1), 3)),
}


def _params():
  rng = np.random.default_rng(0)
  return {
      "w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
      "deep": [jnp.asarray(rng.standard_normal(()), jnp.float32), None,
               (jnp.asarray(rng.standard_normal(2), jnp.float32),)],
      "empty": jnp.zeros((0, 3), jnp.float32),
  }


def _grads(params, t):
  leaves, treedef = jax.tree.flatten(params)
  grads = [0.5 * p + 0.3 * jnp.sin(0.7 * t + jnp.arange(p.size, dtype=p.dtype).reshape(p.shape))
           for p in leaves]
  return treedef.unflatten(grads)


def _make_step(tx):
  @jax.jit
  def step(params, state, t):
    updates, state = tx.update(_grads(params, t), state, params)
    return optax.apply_updates(params, updates), state

  return step


def _run(step, carry, start, stop):
  for t in range(start, stop):
    carry = step(*carry, jnp.float32(t))
  return carry


def _assert_bitwise(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    g, w = np.asarray(g), np.asarray(w)
    assert g.dtype == w.dtype and g.shape == w.shape
    assert g.tobytes() == w.tobytes()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_is_bitwise_identical(name, tmp_path):
  tx = OPTIMIZERS[name]()
  params = _params()
  step = _make_step(tx)
  # Committed to a device, as restored arrays are: one compiled step serves both runs.
  carry = jax.device_put((params, tx.init(params)), jax.devices()[0])
  uninterrupted = _run(step, carry, 0, STEPS)

  stopped = _run(step, carry, 0, STOP)
  path = checkpoint.save(tmp_path / "ckpt", stopped)
  del stopped
  # A fresh process knows only how to build the state, not its values.
  like = jax.eval_shape(lambda p: (p, OPTIMIZERS[name]().init(p)), params)
  resumed = _run(step, checkpoint.restore(path, like=like), STOP, STEPS)

  _assert_bitwise(resumed, uninterrupted)
  assert step._cache_size() == 1
  # The run moved on after the checkpoint: the comparison is not vacuous.
  assert not np.array_equal(uninterrupted[0]["w"], _run(step, carry, 0, STOP)[0]["w"])


def test_restore_keeps_named_tuple_types(tmp_path):
  tx = optax.chain(optax.identity(),
                   adam_jax.adamw(schedules.warmup_cosine(1e-2, 2, 10), amsgrad=True))
  params = {"a": jnp.ones((3,), jnp.bfloat16), "c": jnp.ones((2,), jnp.complex64),
            "h": [jnp.ones(2, jnp.float16), None, ()], "e": jnp.zeros((0, 2))}
  update = jax.jit(tx.update)
  state = update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)[1]
  path = checkpoint.save(tmp_path / "s", state)
  restored = checkpoint.restore(path, like=state)
  _assert_bitwise(restored, state)
  assert type(restored[0]) is optax.EmptyState
  adam_state, decay_state, lr_state = restored[1]
  assert type(adam_state) is adam_jax.ScaleByAmsgradState
  assert type(decay_state) is optax.EmptyState
  assert type(lr_state) is optax.ScaleByScheduleState
  assert int(adam_state.count) == 1 and int(lr_state.count) == 1
  # The restored state drives the optimizer like the original.
  g = jax.tree.map(jnp.ones_like, params)
  _assert_bitwise(update(g, restored, params), update(g, state, params))


@pytest.mark.parametrize("tree", [optax.EmptyState(), (), {"e": jnp.zeros((0,))}],
                         ids=["EmptyState", "tuple", "only-empty-array"])
def test_trees_without_data(tree, tmp_path):
  restored = checkpoint.restore(checkpoint.save(tmp_path / "t", tree), like=tree)
  _assert_bitwise(restored, tree)


def test_restore_places_arrays_like_the_target(tmp_path):
  state = adam_jax.adam(1e-3).init({"w": jnp.ones(3)})
  path = checkpoint.save(tmp_path / "s", state)
  device = jax.devices()[-1]
  restored = checkpoint.restore(path, like=jax.device_put(state, device))
  assert restored[0].mu["w"].devices() == {device}


def test_missing_path_is_a_clear_error(tmp_path):
  like = adam_jax.adam(1e-3).init({"w": jnp.ones(3)})
  with pytest.raises(checkpoint.CheckpointNotFoundError, match="no checkpoint at .*nope"):
    checkpoint.restore(tmp_path / "nope", like=like)
  # Callers may catch it as either kind.
  with pytest.raises(FileNotFoundError):
    checkpoint.restore(tmp_path / "nope", like=like)
  with pytest.raises(ValueError, match="not a checkpoint"):
    checkpoint.restore(tmp_path, like=like)


def test_mismatched_target_is_a_clear_error(tmp_path):
  params = {"w": jnp.ones(3), "e": jnp.zeros((0, 2))}
  path = checkpoint.save(tmp_path / "s", adam_jax.adam(1e-3).init(params))
  with pytest.raises(ValueError, match=r"missing \['0.nu_max.w', '0.nu_max.e'\]"):
    checkpoint.restore(path, like=adam_jax.amsgrad(1e-3).init(params))
  with pytest.raises(ValueError, match=r"0.mu.w .* float32\[3\], but `like` has bfloat16\[3\]"):
    checkpoint.restore(path, like=adam_jax.adam(1e-3, mu_dtype=jnp.bfloat16).init(params))
  with pytest.raises(ValueError, match=r"0.mu.e .* float32\[0, 2\], .* float32\[0, 4\]"):
    checkpoint.restore(path, like=adam_jax.adam(1e-3).init({**params, "e": jnp.zeros((0, 4))}))


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
  params = {"w": jnp.ones(3)}
  first = adam_jax.scale_by_adam().init(params)
  second = first._replace(count=jnp.asarray(7, jnp.int32))
  path = checkpoint.save(tmp_path / "s", first)
  with pytest.raises(ValueError, match="already exists"):
    checkpoint.save(path, second)
  assert int(checkpoint.restore(path, like=first).count) == 0
  checkpoint.save(path, second, overwrite=True)
  assert int(checkpoint.restore(path, like=first).count) == 7


def test_sharded_state_round_trips(tmp_path):
  """A state sharded over the devices (a vmapped grid, say) comes back with its sharding."""
  devices = np.array(jax.devices())
  mesh = jax.sharding.Mesh(devices, ("grid",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("grid"))
  params = {"w": jax.device_put(jnp.arange(len(devices) * 3.0).reshape(-1, 3), sharding)}
  tx = adam_jax.adam(1e-2)
  state = jax.jit(tx.update)(params, tx.init(params), params)[1]
  state = jax.tree.map(lambda x: jax.device_put(x, sharding) if x.ndim else x, state)
  restored = checkpoint.restore(checkpoint.save(tmp_path / "s", state), like=state)
  _assert_bitwise(restored, state)
  assert restored[0].mu["w"].sharding == state[0].mu["w"].sharding
