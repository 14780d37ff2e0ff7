"""Sharded params on 8 (simulated) devices: the state mirrors them and the step keeps them."""

import collections
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_jax
from tests import helpers

SHAPES = {"w": (16, 8), "v": (8, 16), "b": (8,), "s": ()}
# FSDP: the big leaves split over one data axis; the bias and the scalar replicated.
FSDP = ((8,), ("data",), {"w": P("data", None), "v": P("data"), "b": P(), "s": P()})
# Tensor parallel on a 2-D mesh: both axes split the matrices, the bias split over "model".
TP = ((4, 2), ("data", "model"),
      {"w": P("data", "model"), "v": P("model", "data"), "b": P("model"), "s": P()})
# Every alias whose step is elementwise on param-shaped moments (the others reduce within
# a leaf and communicate; the 8-bit state has a test of its own below).
CORE = tuple(a for a in helpers.ALIASES
             if a not in helpers.REDUCES_OVER_ELEMENTS | helpers.BLOCKED_STATE)
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def _values(seed):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _place(tree, mesh, specs):
  return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}


def _mesh(layout, axis_type):
  shape, names, specs = layout
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names)), specs


def _context(mesh, axis_type):
  """Explicit meshes are used the way JAX asks: inside ``jax.set_mesh``."""
  if axis_type == AxisType.Explicit:
    return jax.set_mesh(mesh)
  return contextlib.nullcontext()


def assert_state_mirrors(state, params):
  """Every state leaf stored under a param's name has that param's shape and sharding."""
  matched = collections.Counter()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    key = path[-1]
    if isinstance(key, jax.tree_util.DictKey) and key.key in params:
      p = params[key.key]
      assert leaf.shape == p.shape, path
      assert leaf.sharding.is_equivalent_to(p.sharding, p.ndim), (
          f"{jax.tree_util.keystr(path)}: {leaf.sharding} is not {p.sharding}")
      matched[key.key] += 1
    else:  # step counts and the like: one value, the same everywhere
      assert leaf.sharding.is_fully_replicated, path
  assert set(matched) == set(params)
  assert min(matched.values()) >= 2, matched  # at least mu and nu


def assert_same_shardings(got, want):
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (
        f"{jax.tree_util.keystr(path)}: {a.sharding} became {b.sharding}")


def _run(tx, params, grads):
  """``jax.jit(tx.init)`` and three jitted steps; returns states, final params and HLO."""
  state0 = jax.jit(tx.init)(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step).lower(params, state0, grads[0]).compile()
  state = state0
  for g in grads:  # a compiled step rejects inputs whose sharding changed
    params, state = compiled(params, state, g)
  return state0, params, state, compiled.as_text()


def _single_device_run(tx, values, grad_values):
  """The same three steps on one device, as one compiled program."""

  def run(params, grads):
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(g, state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  one = jax.devices()[0]
  return jax.jit(run)(jax.device_put(values, one), jax.device_put(grad_values, one))


COMBOS = [(FSDP, AxisType.Auto), (TP, AxisType.Explicit), (FSDP, AxisType.Explicit),
          (TP, AxisType.Auto)]
# Every alias on one of the four meshes (in turn), and adamw on all four.
CASES = ([(name, *COMBOS[i % 4]) for i, name in enumerate(CORE)]
         + [("adamw", *combo) for combo in COMBOS if combo != COMBOS[CORE.index("adamw") % 4]])


@pytest.mark.parametrize(
    "name,layout,axis_type", CASES,
    ids=[f"{n}-{'fsdp' if lay is FSDP else 'tp'}-{t.name.lower()}" for n, lay, t in CASES])
def test_state_and_step_follow_param_shardings(name, layout, axis_type):
  tx = helpers.make_alias(name, 1e-2)
  mesh, specs = _mesh(layout, axis_type)
  values, grad_values = _values(0), [_values(i) for i in (1, 2, 3)]
  with _context(mesh, axis_type):
    params = _place(values, mesh, specs)
    grads = [_place(g, mesh, specs) for g in grad_values]
    state0, new_params, state, hlo = _run(tx, params, grads)
  assert_state_mirrors(state0, params)
  assert_state_mirrors(state, params)
  assert_same_shardings(new_params, params)
  assert_same_shardings(state, state0)
  # Elementwise optimizer on co-sharded params, grads and moments: no communication.
  assert not [c for c in COLLECTIVES if c in hlo]

  want = _single_device_run(tx, values, grad_values)
  for got, w in zip(jax.tree.leaves((new_params, state)), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=1e-6, atol=1e-7)


def test_init_handles_every_kind_of_leaf():
  """Sharded, unplaced, NumPy, Python and empty leaves and None: dtypes as ever, shardings kept."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  sharded = jax.device_put(np.ones((16, 2), np.float32), NamedSharding(mesh, P("data")))
  params = {"sharded": sharded, "none": None, "float": 1.5, "numpy": np.ones(3),
            "complex": jnp.ones(2, jnp.complex64),
            "half": jnp.ones((8,), jnp.bfloat16), "empty": jnp.ones((0, 3))}
  want_mu = {"sharded": jnp.float32, "float": jnp.float32, "numpy": jnp.float32,
             "complex": jnp.complex64, "half": jnp.bfloat16,
             "empty": jnp.float32}
  want_nu = {**want_mu, "complex": jnp.float32}
  tx = adam_jax.scale_by_adam(amsgrad=True)
  for state in (tx.init(params), jax.jit(tx.init)(params), jax.eval_shape(tx.init, params)):
    for field, want in (("mu", want_mu), ("nu", want_nu), ("nu_max", want_nu)):
      tree = getattr(state, field)
      assert tree["none"] is None
      for k, dtype in want.items():
        assert tree[k].shape == np.shape(params[k]), (field, k)
        assert tree[k].dtype == dtype, (field, k)
        assert not jax.typeof(tree[k]).weak_type, (field, k)
      if isinstance(tree["sharded"], jax.Array):
        assert tree["sharded"].sharding.is_equivalent_to(sharded.sharding, 2)
        assert np.all(np.asarray(tree["sharded"]) == 0)
  mu = adam_jax.scale_by_adam(mu_dtype=jnp.bfloat16).init(params).mu
  assert mu["sharded"].dtype == jnp.bfloat16 and mu["sharded"].sharding == sharded.sharding


def test_eval_shape_on_an_explicit_mesh_gives_the_state_sharding():
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  abstract = {"w": jax.ShapeDtypeStruct((16, 8), jnp.float32,
                                        sharding=NamedSharding(mesh, P("data", "model")))}
  with jax.set_mesh(mesh):
    state = jax.eval_shape(adam_jax.adamw(1e-3).init, abstract)
  assert state[0].mu["w"].sharding.spec == P("data", "model")
  assert state[0].nu["w"].sharding.spec == P("data", "model")


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_jit_init_outside_set_mesh_and_under_vmap(axis_type):
  """No mesh context (JAX's default mesh is explicit), and a vmapped grid of models."""
  mesh, specs = _mesh(FSDP, axis_type)
  params = _place(_values(0), mesh, specs)
  tx = adam_jax.adamw(1e-2)
  assert_state_mirrors(jax.jit(tx.init)(params), params)
  # A stack of 8 models, one per device: init vmapped over the stacked axis.
  stacked = {"w": jax.device_put(np.ones((8, 4, 2), np.float32), NamedSharding(mesh, P("data")))}
  assert_state_mirrors(jax.jit(jax.vmap(tx.init))(stacked), stacked)


def test_checkpoint_restores_into_an_abstract_sharded_target(tmp_path):
  """docs/devices.md's recipe: ``like`` from ``eval_shape`` and the compiled init's shardings."""
  mesh, specs = _mesh(FSDP, AxisType.Auto)
  params = _place(_values(0), mesh, specs)
  tx = adam_jax.adamw(1e-2)
  state = jax.jit(tx.update)(_place(_values(1), mesh, specs), jax.jit(tx.init)(params), params)[1]
  path = adam_jax.checkpoint.save(tmp_path / "opt", state)

  init = jax.jit(tx.init)
  like = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      init.eval_shape(params), init.lower(params).compile().output_shardings)
  restored = adam_jax.checkpoint.restore(path, like=like)
  assert_state_mirrors(restored, params)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_flax_nnx_fsdp_training_and_checkpoint_keep_the_state_sharded(tmp_path):
  """The FSDP example of docs/devices.md: kernels split by rows over "data", biases replicated."""
  from flax import nnx

  mesh = jax.make_mesh((8,), ("data",))
  fsdp = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("data", None))

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(16, 32, kernel_init=fsdp, rngs=rngs)
      self.out = nnx.Linear(32, 10, kernel_init=fsdp, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.relu(self.hidden(x)))

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  def assert_mirrors(model, optimizer):
    params = {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert params[("hidden", "kernel")].sharding.spec == P("data", None)
    mirrored = collections.Counter()
    for path, v in nnx.to_flat_state(nnx.state(optimizer.opt_state)):
      leaf, p = v.get_value(), params.get(path[-2:])
      if p is None:
        assert leaf.sharding.is_fully_replicated, path
      else:
        assert leaf.sharding.is_equivalent_to(p.sharding, p.ndim), (path, leaf.sharding)
        mirrored[path[-2:]] += 1
    assert set(mirrored) == set(params) and min(mirrored.values()) == 2

  rng = np.random.default_rng(0)
  batch = NamedSharding(mesh, P("data"))
  x = jax.device_put(rng.standard_normal((64, 16)).astype(np.float32), batch)
  y = jax.device_put(rng.integers(0, 10, 64).astype(np.int32), batch)
  with jax.set_mesh(mesh):
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, adam_jax.adamw(1e-2), wrt=nnx.Param)
    assert_mirrors(model, optimizer)
    losses = [float(train_step(model, optimizer, x, y)) for _ in range(5)]
  assert losses[-1] < losses[0]
  assert_mirrors(model, optimizer)

  path = adam_jax.checkpoint.save(tmp_path / "opt", nnx.state(optimizer))
  with jax.set_mesh(mesh):
    fresh = nnx.Optimizer(MLP(nnx.Rngs(1)), adam_jax.adamw(1e-2), wrt=nnx.Param)
  nnx.update(fresh, adam_jax.checkpoint.restore(path, like=nnx.state(fresh)))
  assert_mirrors(model, fresh)
  for a, b in zip(jax.tree.leaves(nnx.state(fresh)), jax.tree.leaves(nnx.state(optimizer))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(fresh.step[...]) == 5


def test_grid_search_puts_one_configuration_on_each_device(monkeypatch):
  """Rows equal to a 1-device run are checked in test_tuning; here: where the work runs."""
  from adam_jax import tasks, tuning

  fetched = []
  device_get = jax.device_get

  def spy(tree):
    fetched.extend(x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array))
    return device_get(tree)

  monkeypatch.setattr(jax, "device_get", spy)
  space = {"learning_rate": [1e-3, 3e-3, 1e-2, 3e-2], "b1": [0.9, 0.5]}
  result = tuning.grid_search(tasks.digits_mlp(hidden=8), space, steps=3, progress=False)
  assert result.num_devices == 8 and len(result.rows) == 8
  per_config = [x for x in fetched if x.ndim >= 1 and x.shape[0] == 8]
  assert per_config
  for x in per_config:  # every per-configuration output: one row on each of the 8 devices
    assert len(x.sharding.device_set) == 8
    assert sorted(s.data.shape[0] for s in x.addressable_shards) == [1] * 8


@pytest.mark.parametrize("make", [lambda: adam_jax.schedule_free_adamw(1e-3),
                                  lambda: adam_jax.adam_mini(1e-3)])
def test_param_shaped_state_of_modern_variants_follows_param_sharding(make):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  params = {"w": jax.device_put(jnp.ones((16, 4)), sharding)}
  state = jax.jit(make().init)(params)
  shaped = [x for x in jax.tree.leaves(state) if getattr(x, "shape", None) == (16, 4)]
  assert shaped, "expected param-shaped state leaves"
  for x in shaped:
    assert x.sharding.is_equivalent_to(sharding, 2)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_8bit_state_follows_fsdp_param_sharding_without_gathers(axis_type):
  """Blocks run along the last axis, so codes and scales split by rows like the params."""
  mesh, specs = _mesh(FSDP, axis_type)

  def make():
    return adam_jax.adamw8bit(1e-2, weight_decay=1e-2, block_size=4, min_quantized_size=0)

  values, grad_values = _values(0), [_values(i) for i in (1, 2, 3)]
  with _context(mesh, axis_type):
    params = _place(values, mesh, specs)
    grads = [_place(g, mesh, specs) for g in grad_values]
    state0, new_params, state, hlo = _run(make(), params, grads)
  assert state0[0].mu["w"].shape == (16, 2, 4) and state0[0].nu_scale["v"].shape == (8, 4)
  for st in (state0, state):
    q = st[0]
    for i, field in enumerate((q.mu, q.nu, q.mu_scale, q.nu_scale)):
      for k, x in field.items():
        assert x.dtype == (jnp.uint8 if i < 2 else jnp.float32)
        want = NamedSharding(mesh, P(*specs[k][:1]))  # the param's leading-axis split
        assert x.sharding.is_equivalent_to(want, x.ndim), (k, x.sharding)
    assert len(q.mu["w"].sharding.device_set) == 8
    assert sorted(s.data.shape[0] for s in q.mu["w"].addressable_shards) == [2] * 8
  assert_same_shardings(new_params, params)
  assert_same_shardings(state, state0)
  assert not [c for c in COLLECTIVES if c in hlo]

  want = _single_device_run(make(), values, grad_values)
  for got, w in zip(jax.tree.leaves((new_params, state)), jax.tree.leaves(want)):
    got, w = np.asarray(got), np.asarray(w)
    if got.dtype == np.uint8:  # compiled differently: a tie may round either way
      diff = np.abs(got.astype(np.int32) - w.astype(np.int32))
      assert diff.max(initial=0) <= 1 and np.mean(diff) < 0.02
    else:
      np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------ 8-bit state under every layout

# A kernel, an embedding table (split along its features, as Gemma's) and a bias that
# stays in float32 (64 elements < min_quantized_size): each layout splits them as the
# fp32 state is split in the tests above.
SHAPES_8BIT = {"w": (16, 64), "e": (40, 16), "b": (64,)}
LAYOUTS_8BIT = {
    "fsdp-rows": ((8,), ("data",), {"w": P("data", None), "e": P("data", None), "b": P()}),
    "fsdp-last-axis": ((8,), ("data",), {"w": P(None, "data"), "e": P(None, "data"),
                                         "b": P("data")}),
    "tensor-parallel": ((4, 2), ("data", "model"), {"w": P(None, "model"),
                                                    "e": P(None, "model"), "b": P("model")}),
    "2d": ((4, 2), ("data", "model"), {"w": P("data", "model"), "e": P(None, "model"),
                                       "b": P("model")}),
}


def _make_8bit(block_size=64):
  return adam_jax.adamw8bit(1e-2, weight_decay=1e-2, block_size=block_size,
                            min_quantized_size=256)


def _values_8bit(seed):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES_8BIT.items()}


@pytest.mark.parametrize("init", ["eager", "jit"])
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit],
                         ids=["auto", "explicit"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS_8BIT))
def test_8bit_state_follows_every_layout_of_the_params(layout, axis_type, init):
  """Codes and scales split like their param, the last axis included (the blocks then
  divide each shard), whenever ``init`` can see the param's sharding: placed arrays, and
  any array on an explicit mesh. Under ``jax.jit`` on an automatic mesh the compiler
  alone knows it: the step still matches one device's, with communication allowed."""
  shape, names, specs = LAYOUTS_8BIT[layout]
  mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))
  values, grad_values = _values_8bit(0), [_values_8bit(i) for i in (1, 2, 3)]
  tx = _make_8bit()
  with _context(mesh, axis_type):
    params = _place(values, mesh, specs)
    grads = [_place(g, mesh, specs) for g in grad_values]
    state0 = tx.init(params) if init == "eager" else jax.jit(tx.init)(params)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    compiled = step.lower(params, state0, grads[0]).compile()
    new_params, state = params, state0
    for g in grads:
      new_params, state = compiled(new_params, state, g)
  assert all(x.size for x in jax.tree.leaves(state0))  # nothing for orbax to refuse
  known = init == "eager" or axis_type == AxisType.Explicit
  for st in (state0, state):
    q = st[0]
    assert q.mu["w"].dtype == jnp.uint8 and q.mu["e"].dtype == jnp.uint8
    assert q.mu["b"].dtype == jnp.float32
    for k, spec in specs.items():
      p = params[k]
      if q.mu[k].dtype == jnp.uint8:
        n_shards = p.shape[-1] // p.sharding.shard_shape(p.shape)[-1]
        if known:
          assert q.mu[k].shape[-2] % n_shards == 0, (k, q.mu[k].shape)
          block_spec = P(*(tuple(spec) + (None,) * (p.ndim - len(spec))), None)
          for x, want in ((q.mu[k], block_spec), (q.nu[k], block_spec),
                          (q.mu_scale[k], spec), (q.nu_scale[k], spec)):
            assert x.sharding.is_equivalent_to(NamedSharding(mesh, want), x.ndim), (k, x.sharding)
      else:
        assert q.mu[k].sharding.is_equivalent_to(p.sharding, p.ndim)
  assert_same_shardings(new_params, params)
  if known:
    assert not [c for c in COLLECTIVES if c in compiled.as_text()]

  # Each leaf against one device with the same blocks (the leaves do not interact).
  for k in values:
    block = SHAPES_8BIT[k][-1] // state[0].mu_scale[k].shape[-1]  # no padding here
    want_p, want_s = _single_device_run(_make_8bit(block), {k: values[k]},
                                        [{k: g[k]} for g in grad_values])
    np.testing.assert_allclose(np.asarray(new_params[k]), np.asarray(want_p[k]),
                               rtol=1e-5, atol=1e-6)
    for field in ("mu", "nu", "mu_scale", "nu_scale"):
      got, w = np.asarray(getattr(state[0], field)[k]), np.asarray(getattr(want_s[0], field)[k])
      if got.dtype == np.uint8:  # compiled differently: a tie may round either way
        diff = np.abs(got.astype(np.int32) - w.astype(np.int32))
        assert diff.max(initial=0) <= 1 and np.mean(diff) < 0.02
      else:
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit],
                         ids=["auto", "explicit"])
@pytest.mark.parametrize("layout", ["fsdp-rows", "tensor-parallel", "2d"])
def test_8bit_in_nnx_optimizer_with_sharded_variables_and_plain_orbax(layout, axis_type,
                                                                      tmp_path):
  """The issue's cases: nnx.Optimizer copies each param's annotation onto its state
  (small leaves included), an embedding split along its features, an explicit mesh, and
  the lm1b example's own save, orbax's StandardCheckpointer."""
  from flax import nnx

  ocp = pytest.importorskip("orbax.checkpoint")
  shape, names, specs = LAYOUTS_8BIT[layout]
  mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))

  class Model(nnx.Module):
    def __init__(self):
      rng = np.random.default_rng(0)
      self.kernel = nnx.Param(jnp.asarray(rng.standard_normal((16, 64)), jnp.float32),
                              out_sharding=tuple(specs["w"]))
      self.embedding = nnx.Param(jnp.asarray(rng.standard_normal((40, 16)), jnp.float32),
                                 out_sharding=tuple(specs["e"]))
      self.bias = nnx.Param(jnp.zeros(64), out_sharding=tuple(specs["b"]))

  @nnx.jit
  def train_step(model, optimizer):
    grads = jax.tree.map(lambda p: jnp.sin(p), nnx.state(model, nnx.Param))
    optimizer.update(model, grads)

  with jax.set_mesh(mesh):
    model = Model()
    optimizer = nnx.Optimizer(model, _make_8bit(), wrt=nnx.Param)
    for _ in range(3):
      train_step(model, optimizer)
  state = nnx.state(optimizer)
  leaves = jax.tree.leaves(state)
  assert all(x.size for x in leaves)
  codes = optimizer.opt_state[0].mu["kernel"].get_value()
  assert codes.dtype == jnp.uint8 and codes.sharding.is_equivalent_to(
      NamedSharding(mesh, specs["w"]), 2)

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "opt", state)
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = checkpointer.restore(tmp_path / "opt", abstract)
  checkpointer.close()
  for a, b in zip(jax.tree.leaves(restored), leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
