"""Blockwise 8-bit codec and ``scale_by_adam8bit`` / ``adam8bit`` / ``adamw8bit``."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import adam_jax
from adam_jax import quantization
from tests import helpers

needs_native = pytest.mark.needs_native  # the test runs the CPU kernel
NATIVE = [False, pytest.param(True, marks=needs_native)]  # both paths of the 8-bit step


@pytest.fixture(autouse=True)
def _skip_without_kernel(request):
  """Skips a test that needs the CPU kernel where it cannot be built.

  Decided when the test runs, not at import: building the kernel takes seconds and
  must not slow the collection of every other test.
  """
  if request.node.get_closest_marker("needs_native") and not adam_jax.native.available("adam8bit"):
    pytest.skip(f"CPU kernel: {adam_jax.native.status('adam8bit')}")

_quantize = jax.jit(quantization.quantize, static_argnames=("signed", "block_size", "nonzero"))
_dequantize = jax.jit(quantization.dequantize, static_argnames=("signed", "shape", "dtype"))

# ------------------------------------------------------------------ the dynamic map


def _paper_value(code: int, signed: bool) -> float:
  """A code's value read bit by bit as in Dettmers (2015): [sign] 0..0 1 f..f."""
  nbits = 7 if signed else 8
  negative = signed and code >= 128
  bits = format(code & (2**nbits - 1), f"0{nbits}b")
  if "1" not in bits:
    return 0.0
  e = bits.index("1")  # leading zeros: the decimal exponent
  frac_bits = bits[e + 1:]
  k = (int(frac_bits, 2) if frac_bits else 0) + 1  # k = 1 .. 2**len(frac_bits)
  value = 10.0**-e * (0.1 + 0.9 * k / 2 ** len(frac_bits))
  return -value if negative else value


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_matches_the_bit_layout(signed):
  table = quantization.dynamic_map(signed)
  want = np.array([_paper_value(c, signed) for c in range(256)], np.float32)
  np.testing.assert_array_equal(table, want)
  assert table.dtype == np.float32 and table.shape == (256,)
  nonzero = np.abs(table[table != 0])
  assert table[0] == 0 and nonzero.max() == 1.0
  assert nonzero.min() == np.float32(1e-6 if signed else 1e-7)
  assert len(np.unique(table)) == (255 if signed else 256)  # signed: +0 and -0


def _blocks64(x, block_size):
  """A 1-D array in near-equal blocks of at most ``block_size``, zero-padded."""
  flat = np.asarray(x, np.float64).ravel()
  num_blocks = -(-flat.size // block_size)
  block = -(-flat.size // num_blocks)
  return np.pad(flat, (0, num_blocks * block - flat.size)).reshape(num_blocks, block)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("block_size", [256, 64])
def test_codes_are_nearest_and_error_is_bounded_per_block(signed, block_size):
  rng = np.random.default_rng(1)
  n = 40 * block_size + 7
  # Magnitudes over 12 decades, and blocks of very different scales.
  x = rng.standard_normal(n) * np.exp(rng.uniform(-28, 0, n))
  x *= np.repeat(10.0 ** rng.uniform(-20, 20, n // block_size + 1), block_size)[:n]
  x = (x if signed else np.abs(x)).astype(np.float32)
  q = _quantize(x, signed=signed, block_size=block_size)
  block = -(-n // (n // block_size + 1))  # 41 near-equal blocks, none above block_size
  assert q.codes.dtype == jnp.uint8 and q.codes.shape == (n // block_size + 1, block)
  assert block <= block_size
  assert q.scale.dtype == jnp.float32

  table = quantization.dynamic_map(signed).astype(np.float64)
  blocks = _blocks64(x, block_size)
  absmax = np.abs(blocks).max(axis=1)
  np.testing.assert_array_equal(np.asarray(q.scale), absmax.astype(np.float32))
  y = blocks / absmax[:, None]
  dist = np.abs(y[..., None] - table)
  got = np.take_along_axis(dist, np.asarray(q.codes, np.int64)[..., None], -1)[..., 0]
  np.testing.assert_allclose(got, dist.min(-1), rtol=0, atol=2e-7)  # nearest, to f32 rounding

  # Error bound: half the gap between the two map values around y, times the block max.
  mags = np.unique(np.abs(table))
  hi = np.searchsorted(mags, np.abs(y)).clip(1, len(mags) - 1)
  half_gap = (mags[hi] - mags[hi - 1]) / 2
  back = np.asarray(_dequantize(q, signed=signed, shape=(n,)), np.float64)
  err = np.abs(_blocks64(back, block_size) - blocks)
  assert np.all(err <= (half_gap + 3e-7) * absmax[:, None])
  # Near each block's maximum the relative error is below 1/128 (signed) or 1/256.
  top = np.abs(y) > 0.5
  assert np.all(err[top] / np.abs(blocks[top]) <= (0.9 / 64 if signed else 0.9 / 128))


@pytest.mark.parametrize("signed", [True, False])
def test_codes_are_nearest_at_decade_edges_and_midpoints(signed):
  # Every map value, the midpoints between neighbours and points 1% of the gap
  # to either side, the decade thresholds 10**-e, each with its float32 neighbours,
  # in blocks whose maximum is 1 (so each element is its own y).
  table = quantization.dynamic_map(signed).astype(np.float64)
  mags = np.unique(np.abs(table))
  gaps = np.diff(mags)
  points = np.r_[mags, mags[:-1] + 0.5 * gaps, mags[:-1] + 0.49 * gaps, mags[:-1] + 0.51 * gaps,
                 10.0 ** -np.arange(9)]
  points = points.astype(np.float32)
  y = np.unique(np.r_[points, np.nextafter(points, 0), np.nextafter(points, 2)])
  y = y[(y >= 0) & (y <= 1)]
  x = np.r_[y, np.zeros((-len(y)) % 255, np.float32)].reshape(-1, 255)
  x = np.c_[np.ones(len(x), np.float32), x]  # the block maximum
  if signed:
    x = np.r_[x, -x]
  q = _quantize(x, signed=signed, block_size=256)
  np.testing.assert_array_equal(np.asarray(q.scale), 1.0)
  codes = np.asarray(q.codes, np.int64).reshape(x.shape)
  dist = np.abs(x.astype(np.float64)[..., None] - table)
  chosen = np.take_along_axis(dist, codes[..., None], -1)[..., 0]
  # The nearest value; a different code only where both are equally near to
  # float32 rounding of the arithmetic (a few ulp of y).
  excess = chosen - dist.min(-1)
  assert np.all(excess <= 4e-7 * np.abs(x)), np.max(excess / np.maximum(np.abs(x), 1e-30))
  if signed:  # the sign bit (subnormals read as zero on CPU)
    normal = np.abs(x) >= np.finfo(np.float32).tiny
    assert np.all(codes[normal & (x < 0)] >= 128) and np.all(codes[x > 0] < 128)


@pytest.mark.parametrize("signed", [True, False])
def test_zeros_all_zero_huge_and_tiny_blocks(signed):
  f32max = np.finfo(np.float32).max
  s = 1.0 if signed else -1.0
  blocks = np.stack([
      np.zeros(256),                                    # all zero
      np.r_[np.zeros(128), np.linspace(-1, 1, 128) * s],  # exact zeros mixed in
      np.r_[[f32max, -f32max * s, 3e38], np.full(253, 1e37)],  # near overflow
      np.r_[[np.inf, -np.inf * s], np.full(254, 1e37)],  # infinities clip to f32 max
      np.full(256, 1e-40),                              # subnormal
  ]).astype(np.float32)
  x = blocks if signed else np.abs(blocks)
  q = _quantize(x, signed=signed)
  back = np.asarray(_dequantize(q, signed=signed, shape=x.shape))
  assert np.all(np.isfinite(back)) and np.all(np.isfinite(np.asarray(q.scale)))
  np.testing.assert_array_equal(back[0], 0.0)
  assert np.all(back[x == 0] == 0)  # exact zeros stay zero
  assert back[2, 0] == f32max and back[3, 0] == f32max
  np.testing.assert_allclose(back[2:4, 3:], 1e37, rtol=0.02)
  assert np.all(np.abs(back[4]) <= 1e-39)


def test_nonzero_keeps_tiny_positive_values_positive():
  x = np.r_[1.0, 1e-9, 0.0, np.zeros(253)].astype(np.float32)
  plain = _quantize(x, signed=False)
  kept = _quantize(x, signed=False, nonzero=True)
  assert int(plain.codes[0, 1]) == 0
  assert int(kept.codes[0, 1]) == 1 and int(kept.codes[0, 2]) == 0


@pytest.mark.parametrize("shape", [(), (1,), (255,), (257,), (3, 5, 7)])
def test_dequantize_restores_shape_and_dtype(shape):
  x = np.arange(1, int(np.prod(shape)) + 1, dtype=np.float32).reshape(shape)
  q = _quantize(x, signed=True)
  back = _dequantize(q, signed=True, shape=shape, dtype=jnp.bfloat16)
  assert back.shape == shape and back.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(back, np.float32), x, rtol=0.1)


# ----------------------------------------------------------------- the transformation


def _big_params(seed=0):
  """A tree with one leaf above and one below the default min_quantized_size."""
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.standard_normal((96, 64)) * 0.1, jnp.float32),
          "b": jnp.asarray(rng.standard_normal(64) * 0.1, jnp.float32)}


@pytest.mark.parametrize("native", NATIVE)
def test_state_layout_quantized_and_small_leaves(native):
  tx = adam_jax.scale_by_adam8bit(block_size=48, min_quantized_size=100, native=native)
  params = {**_big_params(), "t": jnp.zeros((2, 3, 100)), "v": jnp.zeros(128)}
  state = tx.init(params)
  assert isinstance(state, adam_jax.ScaleByAdam8bitState)
  # Blocks run along the last axis, near-equal and at most block_size: 64 = 2 x 32,
  # 100 = 3 x 34 (2 zeros of padding per row).
  assert state.mu["w"].shape == (96, 2, 32) and state.mu["w"].dtype == jnp.uint8
  assert state.nu_scale["w"].shape == (96, 2) and state.nu_scale["w"].dtype == jnp.float32
  assert state.nu["t"].shape == (2, 3, 3, 34) and state.mu_scale["t"].shape == (2, 3, 3)
  assert state.mu["v"].shape == (3, 43) and state.nu_scale["v"].shape == (3,)
  assert state.mu["b"].dtype == jnp.float32 and state.mu["b"].shape == (64,)
  # A float32 leaf keeps unused zero scales of its layout: no array in the state is empty.
  assert state.mu_scale["b"].shape == (2,) and not np.any(np.asarray(state.mu_scale["b"]))
  assert all(x.size for x in jax.tree.leaves(state))
  # Every field has the params' tree structure (masking, nnx and tree utilities rely on it).
  for field in state[1:]:
    assert jax.tree.structure(field) == jax.tree.structure(params)
  # The padding stays zero and the step restores the param's shape.
  g = jax.tree.map(lambda p: jnp.ones_like(p), params)
  u, state = jax.jit(tx.update)(g, state)
  assert u["t"].shape == (2, 3, 100) and np.all(np.asarray(state.mu["t"])[..., -1, -2:] == 0)
  assert np.all(np.asarray(state.mu["t"])[..., :-1, :] != 0)


@pytest.mark.parametrize("make, make_ref", [
    (lambda: adam_jax.adam8bit(3e-2), lambda: adam_jax.adam(3e-2)),
    (lambda: adam_jax.adam8bit(3e-2, weight_decay=0.1, nesterov=True),  # coupled L2
     lambda: adam_jax.nadam(3e-2, weight_decay=0.1)),
    (lambda: adam_jax.adamw8bit(3e-2, weight_decay=0.1, maximize=True),  # decoupled
     lambda: adam_jax.adamw(3e-2, weight_decay=0.1, maximize=True)),
], ids=["adam", "nadam-l2", "adamw-maximize"])
def test_small_leaves_match_fp32_aliases_exactly(make, make_ref):
  params = helpers.make_params()  # every leaf below min_quantized_size: float32 moments
  got = helpers.run_jax(make(), params, 30)
  want = helpers.run_jax(make_ref(), params, 30)
  helpers.assert_traj_close(got, want, rtol=0, atol=0)


def _quadratic_run(tx, steps, params):
  """Noisy quadratic: gradients of 0.5 * |A p - t|^2 plus a deterministic wiggle."""
  w0 = params["w"]
  a = jnp.linspace(0.2, 2.0, w0.size, dtype=jnp.float32).reshape(w0.shape)

  @jax.jit
  def step(p, s, t):
    g = jax.tree.map(lambda x: a[: x.shape[0]].reshape(-1)[: x.size].reshape(x.shape) * x
                     + 0.05 * jnp.sin(t * 1.3 + x * 40.0), p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  out = []
  for t in range(steps):
    params, state = step(params, state, jnp.float32(t))
    out.append(params)
  return out, state


@pytest.mark.parametrize("native", NATIVE)
def test_200_step_trajectory_close_to_fp32_adam(native):
  params = _big_params()
  got, _ = _quadratic_run(adam_jax.adam8bit(1e-2, native=native), 200, params)
  want, _ = _quadratic_run(adam_jax.adam(1e-2), 200, params)
  for t in (0, 9, 99, 199):
    w_got, w_want = np.asarray(got[t]["w"]), np.asarray(want[t]["w"])
    w_start = np.asarray(params["w"])
    moved = np.linalg.norm(w_want - w_start)
    # The 8-bit trajectory stays within a few percent of how far fp32 Adam moved.
    assert np.linalg.norm(w_got - w_want) <= 0.03 * moved, t


@pytest.mark.parametrize("native", NATIVE)
def test_first_step_is_sign_descent_like_adam(native):
  params = _big_params()
  g = jax.tree.map(lambda p: p * 3.0, params)
  tx, ref = adam_jax.adam8bit(0.1, native=native), adam_jax.adam(0.1)
  u, _ = jax.jit(tx.update)(g, tx.init(params), params)
  u_ref, _ = jax.jit(ref.update)(g, ref.init(params), params)
  np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(u_ref["w"]), rtol=1e-6)


@pytest.mark.parametrize("native", NATIVE)
def test_zero_gradients_keep_zero_moments_and_give_zero_updates(native):
  params = _big_params()
  mask = np.ones((96, 64), np.float32)
  mask[:, ::3] = 0.0  # these entries never get a gradient
  tx = adam_jax.scale_by_adam8bit(min_quantized_size=0, native=native)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(5):
    g = jax.tree.map(lambda p, t=t: p * (1.0 + t), params)
    g["w"] = g["w"] * mask
    u, state = update(g, state, params)
  qm = adam_jax.QuantizedArray(state.mu["w"], state.mu_scale["w"])
  qv = adam_jax.QuantizedArray(state.nu["w"], state.nu_scale["w"])
  m = np.asarray(_dequantize(qm, signed=True, shape=(96, 64)))
  v = np.asarray(_dequantize(qv, signed=False, shape=(96, 64)))
  assert np.all(m[mask == 0] == 0) and np.all(v[mask == 0] == 0)
  assert np.all(np.asarray(u["w"])[mask == 0] == 0)
  assert np.all(v[mask == 1] > 0)
  zero_u, _ = update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(zero_u))


@pytest.mark.parametrize("native", NATIVE)
def test_huge_and_tiny_gradients_stay_finite(native):
  params = _big_params()
  tx = adam_jax.adam8bit(1e-3, native=native)
  state = tx.init(params)
  update = jax.jit(lambda g, s, p, c: tx.update(jax.tree.map(lambda x: x * c, g), s, p))
  for scale in (1e18, 1e-30, 1.0, 0.0, 1e-20):
    u, state = update(params, state, params, jnp.float32(scale))
    for leaf in jax.tree.leaves((u, state)):
      assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf])
@pytest.mark.parametrize("native", NATIVE)
def test_non_finite_gradient_stays_in_its_block(bad, native):
  # A NaN is kept (its block's scales become NaN, as a float32 moment would),
  # an infinity clips to the float32 range; other blocks are untouched.
  params = {"w": jnp.zeros(8192, jnp.float32)}
  tx = adam_jax.scale_by_adam8bit(native=native)
  g = np.ones(8192, np.float32)
  g[5] = bad
  _, state = jax.jit(tx.update)({"w": jnp.asarray(g)}, tx.init(params))
  mu_scale, nu_scale = np.asarray(state.mu_scale["w"]), np.asarray(state.nu_scale["w"])
  if np.isnan(bad):
    assert np.isnan(mu_scale[0]) and np.isnan(nu_scale[0])
  else:
    assert mu_scale[0] == nu_scale[0] == np.finfo(np.float32).max
  np.testing.assert_allclose(mu_scale[1:], 0.1, rtol=1e-6)
  np.testing.assert_allclose(nu_scale[1:], 1e-3, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("native", NATIVE)
def test_update_dtype_and_shape_follow_the_gradient(dtype, native):
  params = jax.tree.map(lambda p: p.astype(dtype), _big_params())
  tx = adam_jax.adamw8bit(1e-3, weight_decay=1e-2, native=native)
  state = tx.init(params)
  u, state = jax.jit(tx.update)(params, state, params)
  for p, x in zip(jax.tree.leaves(params), jax.tree.leaves(u)):
    assert x.dtype == p.dtype and x.shape == p.shape
    assert np.all(np.isfinite(np.asarray(x, np.float32))) and np.any(np.asarray(x) != 0)
  assert state[0].mu["w"].dtype == jnp.uint8


def _assert_close_trees(got, want):
  """Equal up to float32 rounding (the same arithmetic, compiled differently)."""
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == np.uint8:
      diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
      assert diff.max(initial=0) <= 1 and np.mean(diff) < 1e-3  # a tie may round either way
    else:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _step_reference(g, mu, nu, mu_scale, nu_scale, t, b1=0.9, b2=0.999, eps=1e-8):
  """One 8-bit step in float64 NumPy: decode, Adam, block maxima, nearest codes."""
  table_s, table_u = (quantization.dynamic_map(s).astype(np.float64) for s in (True, False))
  m = table_s[mu] * mu_scale[..., None]
  v = table_u[nu] * nu_scale[..., None]
  rows, cols = g.shape
  gb = np.zeros(mu.shape)
  gb.reshape(rows, -1)[:, :cols] = g
  m = b1 * m + (1 - b1) * gb
  v = b2 * v + (1 - b2) * gb * gb
  u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  m_scale, v_scale = np.abs(m).max(-1), v.max(-1)
  y_m = m / np.where(m_scale > 0, m_scale, 1.0)[..., None]
  y_v = v / np.where(v_scale > 0, v_scale, 1.0)[..., None]
  u = u.reshape(rows, -1)[:, :cols]
  return u, (y_m, table_s, m_scale), (y_v, table_u, v_scale)


@pytest.mark.parametrize("native", NATIVE)
def test_step_matches_float64_reference(native):
  # Rows of 301 elements: two blocks of 151 per row, one zero of padding.
  rng = np.random.default_rng(3)
  shape = (40, 301)
  params = {"w": jnp.zeros(shape, jnp.float32)}
  tx = adam_jax.scale_by_adam8bit(min_quantized_size=0, native=native)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(1, 4):
    g = rng.standard_normal(shape) * np.exp(rng.uniform(-8, 0, shape))
    g = g.astype(np.float32)
    before = [np.asarray(x) for x in (state.mu["w"], state.nu["w"], state.mu_scale["w"],
                                      state.nu_scale["w"])]
    u, state = step({"w": jnp.asarray(g)}, state)
    want_u, *moments = _step_reference(g.astype(np.float64), *before, t)
    np.testing.assert_allclose(np.asarray(u["w"]), want_u, rtol=2e-5, atol=1e-7)
    got = [(np.asarray(state.mu["w"]), np.asarray(state.mu_scale["w"])),
           (np.asarray(state.nu["w"]), np.asarray(state.nu_scale["w"]))]
    for (codes, scale), (y, table, want_scale) in zip(got, moments):
      np.testing.assert_allclose(scale, want_scale, rtol=2e-6)
      # Each code is the map value nearest to the new moment over its block's maximum
      # (up to float32 rounding of the moment).
      dist = np.abs(y[..., None] - table)
      chosen = np.take_along_axis(dist, codes.astype(np.int64)[..., None], -1)[..., 0]
      np.testing.assert_allclose(chosen, dist.min(-1), rtol=0, atol=1e-6)
    assert np.all(got[0][0][:, -1, -1] == 0) and np.all(got[1][0][:, -1, -1] == 0)  # padding
    positive = moments[1][0] > 0  # a positive second moment keeps a non-zero code
    assert positive.sum() == g.size and np.all(got[1][0][positive] > 0)


@pytest.mark.parametrize("native", NATIVE)
def test_step_has_no_leaf_sized_float32_temporaries(native):
  # Every stage decodes the codes it reads inside its own fused loop: a decoded
  # moment kept for a later stage would be 4 bytes per element of scratch memory.
  n = 512 * 512
  params = {"w": jnp.zeros((512, 512), jnp.float32)}
  tx = adam_jax.adam8bit(1e-3, native=native)
  compiled = jax.jit(tx.update).lower(params, tx.init(params), params).compile()
  analysis = compiled.memory_analysis()
  assert analysis is not None
  # Below one byte per parameter; the kernel writes the update itself (4 bytes per
  # parameter, then scaled by the learning rate) but nothing else.
  assert analysis.temp_size_in_bytes < (5 * n if native else n)


@pytest.mark.parametrize("native", NATIVE)
def test_step_leaves_the_gradient_intact(native):
  # A gradient still used after the step (or passed in from outside) must not change.
  rng = np.random.default_rng(4)
  n = 2 * 32768 + 300
  params = {"w": jnp.asarray(rng.standard_normal(n), jnp.float32)}
  g = {"w": jnp.asarray(rng.standard_normal(n), jnp.float32)}
  g_copy = np.asarray(g["w"]).copy()
  tx = adam_jax.scale_by_adam8bit(native=native)

  @jax.jit
  def step(g, s):
    u, s = tx.update(g, s)
    return u, s, g["w"] * 2.0

  u, _, g_twice = step(g, tx.init(params))
  np.testing.assert_array_equal(np.asarray(g["w"]), g_copy)
  np.testing.assert_array_equal(np.asarray(g_twice), 2.0 * g_copy)
  # First step from zero moments: m_hat = g and v_hat = g**2.
  g64 = g_copy.astype(np.float64)
  np.testing.assert_allclose(np.asarray(u["w"]), g64 / (np.abs(g64) + 1e-8), rtol=1e-5)


@pytest.mark.parametrize("native", NATIVE)
def test_jit_compiles_once_over_100_steps(native):
  tx = adam_jax.adam8bit(1e-3, native=native)
  traces = []

  @jax.jit
  def step(p, s, t):
    traces.append(1)
    g = jax.tree.map(lambda x: x * jnp.cos(t), p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  params = _big_params()
  state = tx.init(params)
  for t in range(100):
    params, state = step(params, state, jnp.float32(t))
  assert len(traces) == 1 and step._cache_size() == 1
  assert int(state[0].count) == 100


@pytest.mark.parametrize("native", NATIVE)
def test_inside_optax_chain_with_clipping_and_schedule(native):
  params = _big_params()
  tx = optax.chain(optax.clip_by_global_norm(1.0), adam_jax.scale_by_adam8bit(native=native),
                   optax.scale_by_schedule(optax.linear_schedule(-1e-2, -1e-3, 50)))
  ref = optax.chain(optax.clip_by_global_norm(1.0), adam_jax.scale_by_adam(),
                    optax.scale_by_schedule(optax.linear_schedule(-1e-2, -1e-3, 50)))
  got, _ = _quadratic_run(tx, 50, params)
  want, _ = _quadratic_run(ref, 50, params)
  moved = np.linalg.norm(np.asarray(want[-1]["w"] - params["w"]))
  assert np.linalg.norm(np.asarray(got[-1]["w"] - want[-1]["w"])) <= 0.03 * moved


@pytest.mark.parametrize("native", NATIVE)
def test_flax_nnx_optimizer_trains(native):
  model = nnx.Linear(80, 64, rngs=nnx.Rngs(0))  # kernel 5120 >= 4096: quantized
  opt = nnx.Optimizer(model, adam_jax.adamw8bit(1e-2, weight_decay=1e-4, native=native),
                      wrt=nnx.Param)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((32, 80)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((32, 64)), jnp.float32)

  @nnx.jit
  def train_step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    opt.update(model, grads)
    return loss

  losses = [float(train_step(model, opt)) for _ in range(40)]
  assert losses[-1] < 0.5 * losses[0]
  codes = [leaf for leaf in jax.tree.leaves(nnx.state(opt)) if leaf.dtype == jnp.uint8]
  assert len(codes) == 2  # mu and nu of the kernel


@pytest.mark.parametrize("native", NATIVE)
def test_vmap_over_learning_rates_and_betas(native):
  params = _big_params()
  g = jax.tree.map(lambda p: p * 2.0, params)

  def one(lr, b1):
    tx = adam_jax.adam8bit(lr, b1=b1, native=native)
    state = tx.init(params)
    for _ in range(2):
      u, state = tx.update(g, state, params)
    return u["w"]

  lrs = jnp.array([1e-3, 1e-2], jnp.float32)
  b1s = jnp.array([0.9, 0.5], jnp.float32)
  got = jax.jit(jax.vmap(one))(lrs, b1s)
  single = jax.jit(one)
  for i in range(2):
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(single(lrs[i], b1s[i])),
                               rtol=1e-5)
  assert not np.allclose(np.asarray(got[0]), np.asarray(got[1]))


def test_state_survives_flatten_and_device_sharding():
  params = _big_params()
  tx = adam_jax.adam8bit(1e-2)
  state = tx.init(params)
  step = jax.jit(tx.update)
  u, state = step(params, state, params)
  leaves, treedef = jax.tree.flatten(state)
  rebuilt = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])  # a checkpoint
  assert rebuilt[0].mu["w"].dtype == np.uint8

  mesh = jax.make_mesh((8,), ("data",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = jax.tree.map(  # codes (96, 1, 64) and scales (96, 1) split by rows
      lambda x: jax.device_put(x, spec) if x.ndim >= 2 else x, rebuilt)
  u1, s1 = step(params, sharded, params)
  u2, s2 = step(params, state, params)
  for x in (s1[0].mu["w"], s1[0].nu_scale["w"]):  # state stays sharded
    assert x.sharding.is_equivalent_to(spec, x.ndim)
  _assert_close_trees((u1, s1), (u2, s2))


@needs_native
def test_the_kernel_is_not_used_where_it_would_lose_the_sharding():
  """One device, params split over a mesh of it with explicit axes: the kernel's result
  has no sharding, so such leaves run the XLA program (one compiled step, sharding kept)."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("a", "b"),
                           axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", "b"))
  params = {"w": jax.device_put(jnp.ones((8, 64)), sharding)}
  tx = adam_jax.adam8bit(1e-2, min_quantized_size=0, native=True)
  with jax.set_mesh(mesh):
    state = tx.init(params)
    u, state = jax.jit(tx.update)(params, state, params)
  assert u["w"].sharding.is_equivalent_to(sharding, 2)
  assert state[0].mu["w"].dtype == jnp.uint8
  want, _ = adam_jax.adam8bit(1e-2, min_quantized_size=0, native=False).update(
      params, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(want["w"]), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_size=0), "block_size"),
    (dict(block_size=2.5), "block_size"),
    (dict(min_quantized_size=-1), "min_quantized_size"),
    (dict(b1=1.0), "b1"),
    (dict(eps=-1.0), "eps"),
])
def test_bad_hyperparameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    adam_jax.adam8bit(1e-3, **kwargs)


def test_mismatched_gradient_tree_raises():
  tx = adam_jax.scale_by_adam8bit()
  state = tx.init(_big_params())
  with pytest.raises(ValueError, match="structure"):
    tx.update({"w": jnp.zeros((96, 64))}, state)


# ------------------------------------------------------------------ the CPU kernel

@needs_native
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("shape, block_size", [
    ((64, 300), 256),  # blocks of 150: the kernel's 16-lane loop and its scalar tail
    ((40, 37), 8),  # blocks of 7 and 8: scalar only
    ((1024, 512), 256),  # eight chunks of blocks, shared among threads
])
def test_kernel_and_xla_program_agree_on_one_step(nesterov, shape, block_size):
  rng = np.random.default_rng(5)
  params = {"w": jnp.zeros(shape, jnp.float32)}
  txs = {nat: adam_jax.scale_by_adam8bit(min_quantized_size=0, nesterov=nesterov,
                                         block_size=block_size, native=nat)
         for nat in (False, True)}
  state = txs[False].init(params)
  for _ in range(3):  # a state with moments of every size
    g = {"w": jnp.asarray(rng.standard_normal(shape) * np.exp(rng.uniform(-9, 0, shape)),
                          jnp.float32)}
    _, state = jax.jit(txs[False].update)(g, state)
  g = {"w": jnp.asarray(rng.standard_normal(shape), jnp.float32)}
  (u0, s0), (u1, s1) = (jax.jit(txs[nat].update)(g, state) for nat in (False, True))
  np.testing.assert_allclose(np.asarray(u1["w"]), np.asarray(u0["w"]), rtol=1e-5, atol=1e-6)
  for field in ("mu_scale", "nu_scale"):
    np.testing.assert_allclose(np.asarray(getattr(s1, field)["w"]),
                               np.asarray(getattr(s0, field)["w"]), rtol=1e-6)
  _assert_close_trees((s1.mu, s1.nu), (s0.mu, s0.nu))  # codes: equal but at ties


@needs_native
def test_kernel_is_one_custom_call_per_quantized_leaf():
  params = {"w": jnp.zeros((128, 256)), "b": jnp.zeros(256), "e": jnp.zeros((64, 64))}

  def hlo(native):
    tx = adam_jax.adam8bit(1e-3, native=native)
    return jax.jit(tx.update).lower(params, tx.init(params), params).as_text()

  assert hlo(True).count(adam_jax.native.ADAM8BIT_TARGET) == 2  # "b" keeps float32 moments
  assert adam_jax.native.ADAM8BIT_TARGET not in hlo(False)
  # By default the tests' eight CPU devices get the XLA program (the kernel has no
  # sharding rule).
  assert jax.device_count() > 1 and adam_jax.native.ADAM8BIT_TARGET not in hlo(None)


def test_native_true_without_a_kernel_raises(monkeypatch):
  monkeypatch.setattr(adam_jax.native, "available", lambda kernel=None: False)
  tx = adam_jax.scale_by_adam8bit(native=True)
  params = {"w": jnp.zeros(8192)}
  with pytest.raises(RuntimeError, match="unavailable"):
    tx.update(params, tx.init(params))
  with pytest.raises(TypeError, match="native"):
    adam_jax.scale_by_adam8bit(native="yes")


def test_kernel_can_be_turned_off_from_the_environment(tmp_path):
  code = ("import adam_jax.native as n; print(n.available(), n.status())")
  env = {**os.environ, "ADAM_JAX_NATIVE": "0", "ADAM_JAX_CACHE": str(tmp_path)}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  assert out.strip() == "False disabled by ADAM_JAX_NATIVE=0"
  assert not list(tmp_path.iterdir())  # nothing built


@pytest.mark.slow
@needs_native
def test_kernel_builds_into_an_empty_cache_and_is_reused(tmp_path):
  code = ("import adam_jax.native as n; print(n.available('adam8bit'), n.status('adam8bit'))")
  env = {**os.environ, "ADAM_JAX_CACHE": str(tmp_path)}
  run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, timeout=300, check=True).stdout.strip()
  assert run() == "True available"
  built = list(tmp_path.glob("adam8bit_cpu-*.so"))
  assert len(built) == 1 and len(list(tmp_path.iterdir())) == 1  # no temporary left behind
  mtime = built[0].stat().st_mtime_ns
  assert run() == "True available" and built[0].stat().st_mtime_ns == mtime  # not rebuilt
