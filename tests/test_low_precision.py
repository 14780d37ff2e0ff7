"""bfloat16 / float16 moments: round-to-nearest-even writes, stochastic rounding, state size."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax.transforms.adam_stochastic import _noise16, _stochastic_round_bf16
from tests import helpers


def _run_constant(tx, g, steps):
  """``steps`` updates with the same gradient, scanned; returns the final state."""
  params = jax.tree.map(jnp.zeros_like, g)

  def body(state, _):
    _, state = tx.update(g, state, params)
    return state, None

  return jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps)[0])(tx.init(params))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_moments_are_written_round_to_nearest_even(dtype):
  # With b1 = 0 the stored first moment is the gradient itself, rounded once.
  ulp = 2.0**-7 if dtype == jnp.bfloat16 else 2.0**-10  # spacing of the format at 1.0
  g = np.array([1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 4, 1 + 3 * ulp / 4, -(1 + ulp / 2)],
               np.float32)
  want = np.array([1.0, 1 + 2 * ulp, 1.0, 1 + ulp, -1.0], np.float32)  # ties go to even
  tx = adam_jax.scale_by_adam(b1=0.0, mu_dtype=dtype, nu_dtype=dtype)
  params = {"w": jnp.zeros(5)}
  _, state = tx.update({"w": jnp.asarray(g)}, tx.init(params), params)
  assert state.mu["w"].dtype == dtype and state.nu["w"].dtype == dtype
  np.testing.assert_array_equal(np.asarray(state.mu["w"], np.float32), want)
  # The second moment is computed in float32 and rounded the same way.
  nu32 = ((1 - np.float32(0.999)) * g.astype(np.float32) ** 2).astype(np.float32)
  np_dtype = ml_dtypes.bfloat16 if dtype == jnp.bfloat16 else np.float16
  np.testing.assert_array_equal(np.asarray(state.nu["w"]), nu32.astype(np_dtype))


def test_bf16_moment_trajectory_close_to_fp32():
  params = helpers.make_params()
  got = helpers.run_jax(adam_jax.adam(3e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
                        params, 200)
  want = helpers.run_jax(adam_jax.adam(3e-2), params, 200)
  for t in (9, 99, 199):
    for g, w, p0 in zip(got[t], want[t], helpers.leaves64(params)):
      moved = np.linalg.norm(w - p0)
      assert np.linalg.norm(g - w) <= 0.1 * moved + 1e-3, t


def test_round_to_nearest_bf16_second_moment_stalls_stochastic_does_not():
  """With b2 = 0.999 a step adds 0.1% to v, less than half a bfloat16 step (0.4%)."""
  g = {"w": jnp.array([1.0, 0.3, 1e-2, 3.0], jnp.float32)}
  ref = _run_constant(adam_jax.scale_by_adam(), g, 2000).nu["w"]
  rne = _run_constant(adam_jax.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
                      g, 2000).nu["w"]
  sr = _run_constant(adam_jax.scale_by_adam_stochastic(seed=0), g, 2000).nu["w"]
  rne_err = np.abs(np.asarray(rne, np.float32) / np.asarray(ref) - 1)
  sr_err = np.abs(np.asarray(sr, np.float32) / np.asarray(ref) - 1)
  assert np.all(rne_err > 0.3)  # stuck far below the true moment
  assert np.all(sr_err < 0.05)


def test_float16_second_moment_underflows_where_bfloat16_does_not():
  """float16 has 5 exponent bits: (1 - b2) g^2 < 6e-8 is lost (documented hazard)."""
  g = {"w": jnp.array([1e-3, 1e-4], jnp.float32)}
  f16 = _run_constant(adam_jax.scale_by_adam(nu_dtype=jnp.float16), g, 3).nu["w"]
  bf16 = _run_constant(adam_jax.scale_by_adam(nu_dtype=jnp.bfloat16), g, 3).nu["w"]
  assert np.all(np.asarray(f16) == 0)
  assert np.all(np.asarray(bf16, np.float32) > 0)


def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour():
  x = jnp.full((200_000,), 1 + 2.0**-9, jnp.float32)  # a quarter of the way to the next bf16
  r = np.asarray(_stochastic_round_bf16(x, _noise16(x.shape, jnp.uint32(7))), np.float32)
  assert set(np.unique(r)) == {1.0, 1 + 2.0**-7}
  np.testing.assert_allclose(r.mean(), 1 + 2.0**-9, rtol=2e-5)  # ~4 standard errors
  assert np.asarray(x.astype(jnp.bfloat16), np.float32).mean() == 1.0  # nearest: biased
  noise = np.asarray(_noise16((1 << 16,), jnp.uint32(3)))
  counts = np.bincount(noise >> 12, minlength=16)  # 16 bins of the 16-bit noise
  assert noise.max() < 1 << 16 and np.all(np.abs(counts / 4096 - 1) < 0.1)
  assert len(np.unique(noise)) > 0.6 * (1 << 16)  # a random draw hits ~63% of values
  # Representable values, zeros and non-finite values pass unchanged.
  special = jnp.array([0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, np.nan, 3.0e38], jnp.float32)
  out = np.asarray(_stochastic_round_bf16(special, _noise16((8,), jnp.uint32(1))), np.float32)
  np.testing.assert_array_equal(out[:6], np.asarray(special)[:6])
  assert np.isnan(out[6]) and np.isfinite(out[7])


def test_stochastic_moments_deterministic_given_seed_and_jit_once():
  params = helpers.make_params()
  traces = []

  @jax.jit
  def run(seed):  # the seed may be traced: one program for every seed
    traces.append(1)
    tx = optax.chain(adam_jax.scale_by_adam_stochastic(seed=seed),
                     adam_jax.scale_by_learning_rate(1e-2))

    def body(carry, t):
      p, s = carry
      g = jax.tree.map(lambda x: x + 0.3 * jnp.sin(t + x), p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(20.0))
    return p, s[0]

  (p0, s0), (p0b, _), (p1, _) = run(0), run(0), run(1)
  assert len(traces) == 1 and int(s0.count) == 20
  assert s0.mu["w"].dtype == jnp.bfloat16 and s0.seed.dtype == jnp.uint32
  for a, b, c in zip(jax.tree.leaves(p0), jax.tree.leaves(p0b), jax.tree.leaves(p1)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=2e-2)  # another seed: another, close, path
  assert not all(np.array_equal(a, c) for a, c in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))


def test_stochastic_rejects_bad_hyperparameters():
  with pytest.raises(ValueError, match="b2"):
    adam_jax.scale_by_adam_stochastic(b2=1.5)


def _bytes_per_param(tx, params):
  state = jax.eval_shape(tx.init, params)
  n_bytes = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(state))
  return n_bytes / sum(p.size for p in jax.tree.leaves(params))


def test_state_bytes_per_parameter():
  params = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32),
            "v": jax.ShapeDtypeStruct((1000, 999), jnp.float32),  # rows padded to whole blocks
            "b": jax.ShapeDtypeStruct((1024,), jnp.float32)}  # too small: float32 moments
  assert _bytes_per_param(adam_jax.adam(1e-3), params) == pytest.approx(8.0, abs=1e-4)
  bf16 = adam_jax.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
  assert _bytes_per_param(bf16, params) == pytest.approx(4.0, abs=1e-4)
  n = 1024 * 1024 + 1000 * 999 + 1024
  # Blocks along rows: w 4 x 256 per row; v 4 x 250 per row (1 padding element); b keeps
  # float32 moments and the (unused) scales of its 4 blocks.
  want = (2 * (1024 * (1024 + 4 * 4) + 1000 * (1000 + 4 * 4) + 4 * 4) + 8 * 1024 + 4) / n
  assert _bytes_per_param(adam_jax.adam8bit(1e-3), params) == pytest.approx(want, rel=1e-9)
  assert want <= 2.05
  # Blocks never cross a row: block_size 2048 gives one block per row here (and b one block).
  want = (2 * (1024 * (1024 + 4) + 1000 * (999 + 4) + 4) + 8 * 1024 + 4) / n
  assert _bytes_per_param(adam_jax.adam8bit(1e-3, block_size=2048), params) == pytest.approx(
      want, rel=1e-9)
  assert want <= 2.015
