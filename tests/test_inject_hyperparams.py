"""optax.inject_hyperparams: the state's structure never depends on hyperparameter values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import checkpoint

# Integer arguments that size the state: static, as optax asks for such arguments.
STATIC = {"adam8bit": ("block_size", "min_quantized_size"),
          "adamw8bit": ("block_size", "min_quantized_size")}
# Small leaves are quantized too, so the 8-bit state is the quantized one.
KWARGS = {"adam8bit": {"block_size": 4, "min_quantized_size": 0},
          "adamw8bit": {"block_size": 4, "min_quantized_size": 0}}


def _params():
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.standard_normal((4, 8)), jnp.float32),
          "b": jnp.asarray(rng.standard_normal(8), jnp.float32)}


def _grads(params, t):
  return jax.tree.map(lambda p: 0.5 * p + jnp.sin(t + p), params)


def _injected(name, **kwargs):
  alias = adam_jax.get_optimizer(name)
  return optax.inject_hyperparams(alias, static_args=STATIC.get(name, ()))(
      learning_rate=1e-2, **KWARGS.get(name, {}), **kwargs)


def _plain(name, **kwargs):
  return adam_jax.get_optimizer(name)(1e-2, **KWARGS.get(name, {}), **kwargs)


def _has_weight_decay(name):
  import inspect

  return "weight_decay" in inspect.signature(adam_jax.get_optimizer(name)).parameters


def _abstract(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.mark.parametrize("name", adam_jax.optimizers())
def test_structure_depends_only_on_the_arguments_given(name):
  params = _params()
  plain = _plain(name).init(params)
  structure = jax.tree.structure(plain)
  injected = _injected(name)
  assert jax.tree.structure(injected.init(params).inner_state) == structure
  # Traced hyperparameters (init under jit) give the same structure.
  jitted = jax.jit(injected.init)(params).inner_state
  assert jax.tree.structure(jitted) == structure
  assert _abstract(jitted) == _abstract(plain)
  if _has_weight_decay(name):
    # A given decay: the same structure whatever its value, plain or injected.
    with_decay = [jax.tree.structure(_plain(name, weight_decay=wd).init(params))
                  for wd in (0.0, 0.1)]
    with_decay += [jax.tree.structure(_injected(name, weight_decay=wd).init(params).inner_state)
                   for wd in (0.0, 0.1)]
    with_decay.append(jax.tree.structure(
        jax.vmap(lambda wd: _plain(name, weight_decay=wd).init(params))(jnp.zeros(2))))
    assert len(set(with_decay)) == 1


@pytest.mark.parametrize("name", adam_jax.optimizers())
def test_a_plain_checkpoint_restores_into_the_injected_optimizer(name, tmp_path):
  params = _params()
  plain, injected = _plain(name), _injected(name)

  def run(tx, state, params, start, stop):
    step = jax.jit(tx.update)
    for t in range(start, stop):
      updates, state = step(_grads(params, jnp.float32(t)), state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  p_plain, s_plain = run(plain, plain.init(params), params, 0, 3)
  path = checkpoint.save(tmp_path / "plain", (p_plain, s_plain))
  fresh = injected.init(params)
  p_inj, inner = checkpoint.restore(path, like=(params, fresh.inner_state))
  s_inj = fresh._replace(inner_state=inner)
  p_plain, _ = run(plain, s_plain, p_plain, 3, 6)
  p_inj, _ = run(injected, s_inj, p_inj, 3, 6)
  for a, b in zip(jax.tree.leaves(p_plain), jax.tree.leaves(p_inj)):
    # Hyperparameters as float32 arrays instead of Python floats: float32 rounding.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", adam_jax.optimizers())
def test_every_alias_without_static_args(name):
  """optax.inject_hyperparams(alias)(learning_rate=...) as optax's own tests call it:
  under jit too, with arguments that size the state (the 8-bit block size) static."""
  params = _params()
  injected = optax.inject_hyperparams(adam_jax.get_optimizer(name))(learning_rate=1e-2)
  plain = adam_jax.get_optimizer(name)(1e-2)
  for state in (injected.init(params), jax.jit(injected.init)(params)):
    assert _abstract(state.inner_state) == _abstract(plain.init(params))
    updates, state = jax.jit(injected.update)(_grads(params, 1.0), state, params)
  want, _ = plain.update(_grads(params, 1.0), plain.init(params), params)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert not {"block_size", "min_quantized_size"} & set(state.hyperparams)


@pytest.mark.parametrize("name", ["adam8bit", "adamw8bit"])
def test_a_given_block_size_is_static_or_refused_with_the_fix(name):
  params = _params()
  alias = adam_jax.get_optimizer(name)
  # Outside jit inject_hyperparams hands over concrete arrays: they are read as ints.
  eager = optax.inject_hyperparams(alias)(learning_rate=1e-2, block_size=4,
                                          min_quantized_size=0)
  assert eager.init(params).inner_state[0].mu["w"].shape == (4, 2, 4)
  # Under jit they are traced: the state cannot be sized, and the message says what to do.
  with pytest.raises(ValueError, match=r"static_args=\('block_size', 'min_quantized_size'\)"):
    jax.jit(eager.init)(params)
  static = optax.inject_hyperparams(alias, static_args=STATIC[name])(
      learning_rate=1e-2, block_size=4, min_quantized_size=0)
  assert jax.jit(static.init)(params).inner_state[0].mu["w"].shape == (4, 2, 4)
