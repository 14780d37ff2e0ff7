"""Block layout and the 8-bit dynamic-map codec, shared by :mod:`adam_jax.quantization`
(the public codec) and :mod:`adam_jax.transforms.adam8bit` (the 8-bit Adam step)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_F32_MAX = float(np.finfo(np.float32).max)


def magnitude_bits(signed: bool) -> int:
  """Bits left for exponent, indicator and fraction: 7 signed, 8 unsigned."""
  return 7 if signed else 8


@functools.lru_cache(maxsize=2)
def map_table(signed: bool) -> np.ndarray:
  nbits = magnitude_bits(signed)
  mags = np.zeros(2**nbits, np.float64)
  for e in range(nbits):
    b = nbits - 1 - e
    k = np.arange(1, 2**b + 1, dtype=np.float64)
    mags[2**b + k.astype(np.int64) - 1] = 10.0**-e * (0.1 + 0.9 * k / 2**b)
  if signed:
    mags = np.concatenate([mags, -mags])
  return mags.astype(np.float32)


# Adding 2**23 to a float32 in [0, 2**23) rounds it to an integer held in the low
# mantissa bits, so a bitcast and a mask give the code: cheaper on CPU than
# floor plus XLA's saturating float-to-uint8 conversion. It relies on the
# additions staying in order, as XLA keeps them (no reassociation unless fast
# math is turned on).
_ROUNDER = 2.0**23


def encode_magnitude(y: Array, signed: bool, nonzero: bool) -> Array:
  r"""int32 code of the map value nearest to ``y`` in [0, 1] (larger: the top code).

  In decade ``e`` (``y`` in :math:`(10^{-e-1}, 10^{-e}]`) the fraction bits are
  ``b = nbits - 1 - e`` and, with :math:`z = 10^e y \in (0.1, 1]`, the nearest code is

  .. math::

    \mathrm{round}\left(2^b + \frac{(z - 0.1)\, 2^b}{0.9} - 1\right)
    = \mathrm{round}\left(2^b \frac{z + 0.8}{0.9} - 1\right),

  which is also right just below a decade's bottom (it rounds to ``2**b - 1``,
  the top of the decade below, the same value). The decade is found by three
  halvings of the range (``z <= 1e-4``, ``1e-2``, ``1e-1``, scaling ``z`` up by
  exact powers of ten each time), ``2**b`` is built from its exponent bits; each
  step is a compare and two masked operations, which XLA fuses into one
  vectorised loop (a table lookup would be a gather). The lowest decade has
  only the codes 0 and 1 (values 0 and :math:`10^{-e}`): ``round(10**e y)``.
  """
  nbits = magnitude_bits(signed)
  # Above 1 only by rounding, or infinite, or NaN: the top code.
  y = jnp.where(y <= 1.0, y, 1.0)
  z = y
  shift = jnp.zeros_like(y, jnp.int32)  # e << 23, e the decade (sharded like y)
  for threshold, power, e in ((1e-4, 1e4, 4), (1e-2, 1e2, 2), (1e-1, 1e1, 1)):
    below = z <= threshold
    z = jnp.where(below, z * power, z)
    shift = jnp.where(below, shift + (e << 23), shift)
  # 2**b as a float: exponent field 127 + nbits - 1 - e.
  pow2b = jax.lax.bitcast_convert_type(((127 + nbits - 1) << 23) - shift, jnp.float32)
  t = (z * (1 / 0.9) + (0.8 / 0.9)) * pow2b  # in [1, 2**nbits] above the lowest decade
  code = jax.lax.bitcast_convert_type(t + (_ROUNDER - 1), jnp.int32) & (2**nbits - 1)
  lowest = 10.0 ** -(nbits - 1)
  if nonzero:
    # A positive value never becomes 0: a zero second moment under a non-zero
    # first moment would divide by eps alone. This also settles the lowest
    # decade, where every positive value is then code 1.
    code = jnp.maximum(code, (y > 0).astype(jnp.int32))
  else:
    code = jnp.where(y <= lowest, (y >= 0.5 * lowest).astype(jnp.int32), code)
  return code


def row_blocks(n: int, block_size: int) -> tuple[int, int]:
  """``(num_blocks, block)`` for a last axis of ``n``: near-equal blocks <= block_size."""
  num_blocks = max(1, -(-n // block_size))
  return num_blocks, -(-max(n, 1) // num_blocks)


def sharded_row_blocks(n: int, block_size: int, shards: int) -> tuple[int, int]:
  """``(num_blocks, block)`` for a last axis of ``n`` split into ``shards`` equal shards.

  One shard: :func:`row_blocks` (the axis is zero-padded to ``num_blocks * block``).
  Several: blocks of the largest size that divides each shard and is at most
  ``block_size``, so that no block crosses a shard, ``num_blocks`` is a multiple of
  ``shards`` and there is no padding: the blocks shard like the axis, and a
  sharding copied from the param onto the blocks (Flax's ``nnx.Optimizer``) divides
  them. An axis that the shards do not divide evenly takes the one-shard layout.
  """
  if shards <= 1 or n % shards:
    return row_blocks(n, block_size)
  per_shard = n // shards
  block = max(d for d in range(1, min(block_size, per_shard) + 1) if per_shard % d == 0)
  return n // block, block


def _type_spec(x: Any) -> tuple | None:
  """``x``'s PartitionSpec (one entry per axis) when its type carries an explicit sharding."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or not mesh.axis_names or not any(
      t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return None
  spec = tuple(sharding.spec)
  return spec + (None,) * (jnp.ndim(x) - len(spec))


def _with_spec(x: Any, *spec: Any) -> jax.sharding.NamedSharding:
  """A sharding on ``x``'s (explicit) mesh with ``spec``; no mesh context needed."""
  return jax.sharding.NamedSharding(jax.typeof(x).sharding.mesh,
                                    jax.sharding.PartitionSpec(*spec))


def _axis_size(mesh: Any, entry: Any) -> int:
  names = entry if isinstance(entry, tuple) else (entry,)
  return int(np.prod([mesh.shape[a] for a in names if isinstance(a, str)], dtype=np.int64))


def last_axis_shards(x: Any) -> int:
  """Into how many shards ``x``'s last axis is split, where that is known (else 1).

  Known for a placed ``jax.Array`` (its sharding) and for a traced value whose type
  carries its sharding (explicit meshes); under ``jax.jit`` on an automatic mesh the
  compiler alone knows it, and the answer is 1.
  """
  shape = jnp.shape(x)
  if not shape or not shape[-1]:
    return 1
  if isinstance(x, jax.core.Tracer):
    spec = _type_spec(x)
    if spec is None or spec[-1] is None:
      return 1
    return _axis_size(jax.typeof(x).sharding.mesh, spec[-1])
  if isinstance(x, jax.Array):
    try:
      return max(1, shape[-1] // x.sharding.shard_shape(shape)[-1])
    except Exception:  # a sharding that cannot say (none of JAX's): one shard
      return 1
  return 1


def blocked(x: Array, num_blocks: int, block: int) -> Array:
  """``x`` as ``(*leading, num_blocks, block)``: blocks along the last axis, zero-padded.

  On an explicit mesh the blocks take the last axis' sharding (the layouts of
  :func:`sharded_row_blocks` need no padding there).
  """
  x = x.reshape(x.shape or (1,))
  pad = num_blocks * block - x.shape[-1]
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  shape = x.shape[:-1] + (num_blocks, block)
  spec = _type_spec(x)
  if spec is None:
    return x.reshape(shape)
  return jnp.reshape(x, shape, out_sharding=_with_spec(x, *spec, None))


def to_blocks(x: Array, block_size: int) -> Array:
  """``x`` as ``(*leading, num_blocks, block)`` in :func:`row_blocks`' layout."""
  return blocked(x, *row_blocks(x.shape[-1] if x.shape else 1, block_size))


def from_blocks(blocks: Array, shape: tuple[int, ...]) -> Array:
  """Inverse of :func:`blocked`: drop the padding, restore ``shape``."""
  n = shape[-1] if shape else 1
  rows_shape = blocks.shape[:-2] + (blocks.shape[-2] * blocks.shape[-1],)
  spec = _type_spec(blocks)
  if spec is None:
    rows = blocks.reshape(rows_shape)
  else:
    rows = jnp.reshape(blocks, rows_shape, out_sharding=_with_spec(blocks, *spec[:-1]))
  if rows_shape[-1] != n:
    rows = rows[..., :n]
  return rows.reshape(shape)



def quantize_blocks(blocks: Array, signed: bool, nonzero: bool) -> tuple[Array, Array]:
  """``(codes, absmax)`` of a float32 ``(..., block)`` array, one block per row."""
  # max(max, -min) never materialises |x| (unsigned: x >= 0, max alone).
  absmax = jnp.max(blocks, axis=-1)
  if signed:
    absmax = jnp.maximum(absmax, -jnp.min(blocks, axis=-1))
  return encode_blocks(blocks, absmax, signed, nonzero)


def block_factors(absmax: Array) -> tuple[Array, Array, Array]:
  """``(scale, pre, inv)`` per block: ``|x| * pre * inv`` is ``|x| / scale`` in [0, 1]."""
  # Infinities clip to the float32 range here and encode as the top code.
  scale = jnp.clip(absmax, 0.0, _F32_MAX)
  # 1 / scale is subnormal (flushed to zero on CPU) above 2**126: pre-scale
  # such blocks by 2**-64, exactly.
  pre = jnp.where(scale > 2.0**100, 2.0**-64, 1.0)
  safe = jnp.where(scale > 0, scale * pre, 1.0)
  inv = jnp.where(scale > 0, 1.0 / safe, 0.0)
  return scale, pre, inv


def encode_blocks(
    blocks: Array, absmax: Array, signed: bool, nonzero: bool
) -> tuple[Array, Array]:
  """``(codes, scale)`` of ``(..., block)`` values given each block's ``(...)`` absmax."""
  scale, pre, inv = block_factors(absmax)
  code = encode_magnitude(jnp.abs(blocks) * pre[..., None] * inv[..., None], signed, nonzero)
  if signed:
    code = jnp.where(blocks < 0, code + 128, code)
  return code.astype(jnp.uint8), scale


def decode(codes: Array, signed: bool, index_dtype: Any = jnp.int32) -> Array:
  """float32 map values of ``codes``, which index the table as ``index_dtype``.

  Every code is in range, so no clamping; see ``adam8bit_blocks`` in
  :mod:`adam_jax.transforms.adam8bit` for the index types.
  """
  table = jnp.asarray(map_table(bool(signed)))
  # The values take the codes' sharding (explicit sharding asks for it).
  return table.at[codes.astype(index_dtype)].get(
      mode="promise_in_bounds", out_sharding=jax.typeof(codes).sharding)


def dequantize_blocks(
    codes: Array, scale: Array, signed: bool, index_dtype: Any = jnp.int32
) -> Array:
  """float32 values of ``(..., block)`` codes times their ``(...)`` scales."""
  return decode(codes, signed, index_dtype) * scale[..., None]

