"""adam_jax.checkpoint: types survive, and a resumed run is bitwise the uninterrupted one."""

import contextlib
import json
import signal
import subprocess
import sys
import time

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
  with pytest.raises(ValueError, match=r"missing \['0.nu_max.e', '0.nu_max.w'\]"):
    checkpoint.restore(path, like=adam_jax.amsgrad(1e-3).init(params))
  with pytest.raises(ValueError,
                     match=r"0.mu.e .* float32\[0, 2\], but `like` has bfloat16\[0, 2\]"):
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


# ------------------------------------------------------------ integrity, atomicity, leaves


def _leaf_files(path, name):
  """The files of leaf ``name`` in the newest save at ``path``, largest first."""
  save_dir = sorted(p for p in path.iterdir() if p.name.startswith("save_"))[-1]
  body = json.loads((save_dir / "adam_jax_manifest.json").read_text())["body"]
  key = next(e["key"] for e in body["leaves"] if e["name"] == name)
  return sorted((p for p in (save_dir / key).rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size, reverse=True)


def _state(value=0.0):
  params = {"w": jnp.full((64, 64), value, jnp.float32)
            + jnp.arange(64.0 * 64, dtype=jnp.float32).reshape(64, 64),
            "b": jnp.zeros(3, jnp.float32)}
  return params, adam_jax.adam(1e-3).init(params)


def test_a_flipped_byte_is_an_error_naming_the_leaf(tmp_path):
  state = _state()
  path = checkpoint.save(tmp_path / "s", state)
  file = _leaf_files(path, "0.w")[0]
  data = bytearray(file.read_bytes())
  data[len(data) // 2] ^= 0x10
  file.write_bytes(bytes(data))
  with pytest.raises(checkpoint.CheckpointCorruptError, match=r"leaf 0\.w is corrupt: .*digest"):
    checkpoint.restore(path, like=state)
  # Users who only know ValueError catch it too.
  with pytest.raises(ValueError):
    checkpoint.restore(path, like=jax.eval_shape(lambda: state))


def test_a_truncated_file_is_our_error(tmp_path):
  state = _state()
  path = checkpoint.save(tmp_path / "s", state)
  file = _leaf_files(path, "1.0.mu.w")[0]
  file.write_bytes(file.read_bytes()[:-7])
  with pytest.raises(checkpoint.CheckpointCorruptError, match=r"leaf 1\.0\.mu\.w is truncated"):
    checkpoint.restore(path, like=state)
  file.unlink()
  with pytest.raises(checkpoint.CheckpointCorruptError, match=r"leaf 1\.0\.mu\.w is unreadable"):
    checkpoint.restore(path, like=state)


def test_a_corrupt_manifest_is_an_error(tmp_path):
  state = _state()
  path = checkpoint.save(tmp_path / "s", state)
  manifest = next(path.glob("save_*/adam_jax_manifest.json"))
  manifest.write_text(manifest.read_text().replace('"shape": [\n     64', '"shape": [\n     65'))
  with pytest.raises(checkpoint.CheckpointCorruptError, match="does not match its digest"):
    checkpoint.restore(path, like=state)
  manifest.write_text("{")
  with pytest.raises(checkpoint.CheckpointCorruptError, match="unreadable"):
    checkpoint.restore(path, like=state)
  (path / "adam_jax_checkpoint.json").write_text('{"format": "adam_jax.checkpoinT"}')
  with pytest.raises(checkpoint.CheckpointCorruptError, match="checkpoint.json is damaged"):
    checkpoint.restore(path, like=state)
  with pytest.raises(checkpoint.CheckpointCorruptError, match="damaged"):
    checkpoint.save(path, state, overwrite=True)


def test_rotating_saves_fall_back_to_the_previous_one(tmp_path):
  path = tmp_path / "run"
  like = {"step": jnp.int32(0), "x": jnp.zeros(4)}
  for step in range(1, 4):
    checkpoint.save_rotating(path, {"step": jnp.int32(step), "x": jnp.full(4, float(step))})
  assert sorted(p.name for p in path.iterdir()) == [
      ".adam_jax.lock", "adam_jax_checkpoint.json", "save_00000002", "save_00000003"]
  assert int(checkpoint.restore_latest(path, like=like)["step"]) == 3
  # The newest save loses a file: one warning, and the previous save is restored.
  _leaf_files(path, "x")[0].unlink()
  with pytest.warns(checkpoint.CheckpointFallbackWarning) as record:
    restored = checkpoint.restore_latest(path, like=like)
  assert len(record) == 1 and "\n" not in str(record[0].message)
  assert "save_00000003" in str(record[0].message) and "leaf x" in str(record[0].message)
  assert int(restored["step"]) == 2 and np.array_equal(restored["x"], np.full(4, 2.0))
  # restore() reads only the newest save, and says what is wrong with it.
  with pytest.raises(checkpoint.CheckpointCorruptError, match="leaf x"):
    checkpoint.restore(path, like=like)
  # The next save replaces the bad one and keeps the good one.
  checkpoint.save_rotating(path, {"step": jnp.int32(4), "x": jnp.full(4, 4.0)})
  assert sorted(p.name for p in path.glob("save_*")) == ["save_00000003", "save_00000004"]
  assert int(checkpoint.restore_latest(path, like=like)["step"]) == 4
  # Every save corrupt: the newest one's error.
  for name in ("save_00000003", "save_00000004"):
    (path / name / "adam_jax_manifest.json").write_text("")
  with pytest.raises(checkpoint.CheckpointCorruptError, match="save_00000004"):
    checkpoint.restore_latest(path, like=like)
  # A mismatch with `like` is never hidden by a fallback.
  checkpoint.save_rotating(path, {"step": jnp.int32(5), "x": jnp.full(4, 5.0)})
  with pytest.raises(checkpoint.CheckpointMismatchError):
    checkpoint.restore_latest(path, like={"step": jnp.int32(0)})
  with pytest.raises(ValueError, match="keep"):
    checkpoint.save_rotating(path, like, keep=0)


def test_save_never_replaces_what_it_did_not_write(tmp_path):
  state = _state()
  users = tmp_path / "users"
  users.mkdir()
  (users / "notes.txt").write_text("mine")
  with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint written by adam_jax"):
    checkpoint.save(users, state, overwrite=True)
  assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]
  file = tmp_path / "file"
  file.write_text("mine")
  with pytest.raises(checkpoint.CheckpointError, match="it is a file"):
    checkpoint.save(file, state, overwrite=True)
  assert file.read_text() == "mine"
  with pytest.raises(checkpoint.CheckpointError, match="it is a file"):
    checkpoint.save_rotating(file, state)
  with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint"):
    checkpoint.restore(users, like=state)
  # An empty directory is a fine place for a new checkpoint.
  empty = tmp_path / "empty"
  empty.mkdir()
  _assert_bitwise(checkpoint.restore(checkpoint.save(empty, state), like=state), state)


def test_ambiguous_leaf_names_fail_at_save(tmp_path):
  tree = {"a.b": jnp.zeros(2), "a": {"b": jnp.ones(2)}}
  with pytest.raises(checkpoint.CheckpointError, match=r"both named 'a\.b'.*\['a'\]\['b'\]"):
    checkpoint.save(tmp_path / "s", tree)
  assert not (tmp_path / "s").exists()


def test_a_different_structure_lists_missing_and_extra_leaves(tmp_path):
  path = checkpoint.save(tmp_path / "s", {"a": jnp.zeros(2), "b": [jnp.ones(2), jnp.ones(1)]})
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"missing \['c\.x'\], not in `like` \['b\.0', 'b\.1'\]"):
    checkpoint.restore(path, like={"a": jnp.zeros(2), "c": {"x": jnp.zeros(2)}})
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"missing \['b\.2'\]"):
    checkpoint.restore(path, like={"a": jnp.zeros(2), "b": [jnp.ones(2), jnp.ones(1),
                                                            jnp.ones(1)]})


@pytest.mark.parametrize("in_mesh_context", [False, True])
def test_restore_into_eval_shape_on_an_explicit_mesh(in_mesh_context, tmp_path):
  mesh = jax.make_mesh((len(jax.devices()),), ("data",))
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  params = {"w": jax.device_put(jnp.arange(16.0 * 3).reshape(16, 3),
                                jax.sharding.NamedSharding(mesh, jax.P("data"))),
            "b": jnp.ones(3)}
  tx = adam_jax.adamw(1e-2)
  with jax.set_mesh(mesh):
    state = jax.jit(tx.update)(params, jax.jit(tx.init)(params), params)[1]
  path = checkpoint.save(tmp_path / "s", state)
  context = jax.set_mesh(mesh) if in_mesh_context else contextlib.nullcontext()
  with context:
    like = jax.eval_shape(tx.init, params)
    restored = checkpoint.restore(path, like=like)
  _assert_bitwise(restored, state)
  assert restored[0].mu["w"].sharding.spec == jax.P("data", None)
  assert restored[0].mu["w"].sharding.is_equivalent_to(state[0].mu["w"].sharding, 2)


def test_typed_keys_and_python_scalars_round_trip(tmp_path):
  mesh = jax.make_mesh((len(jax.devices()),), ("data",))
  tree = {"key": jax.random.key(3), "keys": jax.random.split(jax.random.key(1), 8),
          "rbg": jax.random.key(0, impl="rbg"),
          "sharded": jax.device_put(jax.random.split(jax.random.key(2), 16),
                                    jax.sharding.NamedSharding(mesh, jax.P("data"))),
          "f": 0.1, "i": 2**40, "b": True, "c": 1.5 - 2j, "np": np.arange(3, dtype=np.int16),
          "np_scalar": np.float32(2.5)}
  path = checkpoint.save(tmp_path / "s", tree)
  restored = checkpoint.restore(path, like=tree)
  assert jax.tree.structure(restored) == jax.tree.structure(tree)
  for k in ("f", "i", "b", "c"):
    assert type(restored[k]) is type(tree[k]) and restored[k] == tree[k]
  assert type(restored["np"]) is np.ndarray and np.array_equal(restored["np"], tree["np"])
  assert type(restored["np_scalar"]) is np.float32 and restored["np_scalar"] == 2.5
  for k in ("key", "keys", "rbg", "sharded"):
    assert restored[k].dtype == tree[k].dtype
    assert np.array_equal(jax.random.key_data(restored[k]), jax.random.key_data(tree[k]))
  assert restored["sharded"].sharding.spec == jax.P("data")
  # Into an abstract target too.
  restored = checkpoint.restore(path, like=jax.eval_shape(lambda: {
      k: v for k, v in tree.items() if k.startswith(("key", "keys", "rbg", "sharded"))}) | {
          k: v for k, v in tree.items() if not k.startswith(("key", "keys", "rbg", "sharded"))})
  assert np.array_equal(jax.random.key_data(restored["keys"]), jax.random.key_data(tree["keys"]))
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"key<fry>\[\].*key<rbg>\[\]"):
    checkpoint.restore(path, like={**tree, "key": jax.random.key(0, impl="rbg")})


def test_an_nnx_model_with_dropout_round_trips(tmp_path):
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 2, rngs=rngs)
      self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.dropout(self.linear(x))

  model = Model(nnx.Rngs(0, dropout=1))
  model(jnp.ones((1, 3)))  # advances the dropout key's counter
  state = nnx.state(model)
  path = checkpoint.save(tmp_path / "m", state)
  fresh = Model(nnx.Rngs(5, dropout=6))
  nnx.update(fresh, checkpoint.restore(path, like=nnx.state(fresh)))
  x = jnp.arange(3.0).reshape(1, 3)
  assert np.array_equal(fresh(x), model(x))


def test_a_checkpoint_from_an_earlier_version_is_refused_clearly(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "old", {"w": jnp.ones(2)})
  with pytest.raises(checkpoint.CheckpointError, match="earlier version, without digests"):
    checkpoint.restore(tmp_path / "old", like={"w": jnp.ones(2)})


_SAVER = """
import sys
import numpy as np
from adam_jax import checkpoint
x = np.random.default_rng(0).standard_normal((4, 1 << 20)).astype(np.float32)
for i in range(1, 10**6):
  checkpoint.save(sys.argv[1], {"i": np.int32(i), "x": x + np.float32(i)}, overwrite=True)
  print(i, flush=True)
"""


def _interrupt_mid_save(path, sig):
  """Starts a process that saves over and over and sends it ``sig`` while it writes aside."""
  proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "1"  # one complete save exists
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".tmp-") for p in path.iterdir()):
      assert time.monotonic() < deadline and proc.poll() is None
      time.sleep(0.001)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  return proc.returncode


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_an_interrupted_save_keeps_the_previous_checkpoint(sig, tmp_path):
  path = tmp_path / "ckpt"
  assert _interrupt_mid_save(path, sig) != 0
  if sig == signal.SIGKILL:  # the kill came mid-save: its half-written save is still there
    assert any(p.name.startswith(".tmp-") for p in path.iterdir())
  else:  # Ctrl-C: the half-written save is removed
    assert not any(p.name.startswith(".tmp-") for p in path.iterdir())
  like = {"i": np.int32(0), "x": np.zeros((4, 1 << 20), np.float32)}
  restored = checkpoint.restore(path, like=like)
  i = int(restored["i"])
  x = np.random.default_rng(0).standard_normal((4, 1 << 20)).astype(np.float32)
  assert i >= 1 and np.array_equal(restored["x"], x + np.float32(i))
  # The next save clears what the interrupted one left and carries on.
  checkpoint.save(path, {"i": np.int32(0), "x": x}, overwrite=True)
  assert sorted(p.name for p in path.iterdir())[0] == "adam_jax_checkpoint.json"
  assert len(list(path.iterdir())) == 2
