"""``scale_by_adam8bit``: Adam with blockwise 8-bit moments (Dettmers et al. 2021).

Each step dequantizes both moments, runs :func:`adam_jax.scale_by_adam`'s float32
arithmetic, takes the update from the fresh moments and requantizes them with the
codec of :mod:`adam_jax.quantization`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from adam_jax import _blockwise as blockwise
from adam_jax import _numerics as numerics
from adam_jax import native as _native
from adam_jax.quantization import QuantizedArray
from adam_jax.transforms._common import adam_leaf, check_float_leaves, map_leaves, zeros_like

Array = jax.Array


class ScaleByAdam8bitState(NamedTuple):
  """State of :func:`scale_by_adam8bit`.

  optax's ``ScaleByAdamState`` fields, holding codes, and two more (the block
  scales): a class of its own. Every field has the params' tree structure. A leaf
  kept in float32 has the scales of its block layout too, zeros the step never
  reads (a few bytes per leaf): no array is empty, so a checkpointer has none to
  refuse and none takes a sharding copied from the param that it cannot hold.
  """

  count: Array  # shape=(), dtype=int32; steps taken, saturating
  mu: optax.Updates  # like params; uint8 (*leading, num_blocks, block) codes, or float32
  nu: optax.Updates  # like params; uint8 (*leading, num_blocks, block) codes, or float32
  mu_scale: optax.Updates  # like params; float32 (*leading, num_blocks) block maxima
  nu_scale: optax.Updates  # like params; float32 (*leading, num_blocks) block maxima


# One 8-bit step reads the codes three times: for the block maxima of the new
# moments, for their encoding, and for the update. Each reader decodes the codes
# itself, inside its own fused loop, instead of sharing one decoded float32 copy:
# such a copy is a temporary the size of the leaf (on CPU, fresh pages written on
# every step once the temporaries outgrow the allocator's reuse threshold), and
# it would keep the block reduction out of XLA's fusions (a separate, one-thread
# kernel on CPU). The readers index the table with distinct integer types, so
# XLA cannot merge the three lookups into one (common-subexpression elimination).
# The four loops (maxima, two encodings, update) are elementwise or row
# reductions over the leaf, which XLA's CPU backend splits across cores.
_MAXIMA_INDEX, _ENCODE_INDEX, _UPDATE_INDEX = jnp.uint8, jnp.uint16, jnp.int32


def _block_absmax_pair(m: Array, v: Array) -> tuple[Array, Array]:
  """``(max |m|, max v)`` over the last axis, in one variadic reduction.

  The maxima of non-negative floats are those of their bit patterns read as
  int32: one integer instruction per element on CPU instead of a
  NaN-propagating float maximum. Absolute values of both (``v`` is a sum of
  non-negative terms, but a NaN may carry a sign bit) keep NaN the winner: its
  pattern is above every number's.
  """
  zero = jnp.zeros((), jnp.int32)
  as_int = lambda x: jax.lax.bitcast_convert_type(x, jnp.int32)
  as_float = lambda x: jax.lax.bitcast_convert_type(x, jnp.float32)

  def combine(a, b):
    return jnp.maximum(a[0], b[0]), jnp.maximum(a[1], b[1])

  m_max, v_max = jax.lax.reduce(
      (as_int(jnp.abs(m)), as_int(jnp.abs(v))), (zero, zero), combine, (m.ndim - 1,))
  return as_float(m_max), as_float(v_max)


def _encode_moment(
    old: QuantizedArray, absmax: Array, beta: Any, term: Array, signed: bool, nonzero: bool
) -> QuantizedArray:
  """Codes of the new moment ``beta * old + (1 - beta) * term`` over its block maxima.

  The same arithmetic as :func:`adam_jax.transforms.adam.adam_leaf` followed by
  ``blockwise.encode_blocks``, regrouped (equal up to float32 rounding): the old
  scale, ``beta`` and the pre-scale are folded into one per-block coefficient,
  so each element takes one multiply fewer.
  """
  scale, pre, inv = blockwise.block_factors(absmax)
  beta = numerics.hyper(beta, jnp.float32)
  old_coef = old.scale * beta * pre  # finite: beta <= 1, pre <= 1
  new_coef = pre * (1 - beta)  # exact: pre is a power of two
  decoded = blockwise.decode(old.codes, signed, _ENCODE_INDEX)
  x = decoded * old_coef[..., None] + term * new_coef[..., None]
  # The unsigned moment is a sum of non-negative terms (or NaN): no abs needed.
  code = blockwise.encode_magnitude((jnp.abs(x) if signed else x) * inv[..., None], signed,
                                    nonzero)
  if signed:
    code = jnp.where(x < 0, code + 128, code)
  return QuantizedArray(code.astype(jnp.uint8), scale)


# The XLA program: four fused loops over each leaf, each decoding the codes it needs
# itself, with no float32 temporaries the size of the leaf: the block maxima of both
# new moments (one reduction), the encoding of each moment, and the update (which XLA
# fuses with the rest of the chain and optax.apply_updates). The CPU kernel
# (native/adam8bit_cpu.cc) does the same arithmetic reading and writing every block
# once; it is used only where built with AVX-512 (its AVX2 build measured slower than
# this program) and with one device (it has no sharding rule).
def _adam8bit_blocks(g_blocks, mu: QuantizedArray, nu: QuantizedArray, count, hyper):
  """One step on a blocked ``(*leading, num_blocks, block)`` float32 leaf."""

  def step(index_dtype):
    m = blockwise.dequantize_blocks(mu.codes, mu.scale, True, index_dtype)
    v = blockwise.dequantize_blocks(nu.codes, nu.scale, False, index_dtype)
    return adam_leaf(g_blocks, m, v, None, count, **hyper)

  _, m, v, _ = step(_MAXIMA_INDEX)
  m_max, v_max = _block_absmax_pair(m, v)
  new_mu = _encode_moment(mu, m_max, hyper["b1"], g_blocks, signed=True, nonzero=False)
  # A positive second moment never becomes 0: with a non-zero first moment the
  # update would divide by eps alone.
  new_nu = _encode_moment(nu, v_max, hyper["b2"], g_blocks * g_blocks, signed=False,
                          nonzero=True)
  u, _, _, _ = step(_UPDATE_INDEX)
  return u, new_mu, new_nu


def _adam8bit_native(g_blocks, mu: QuantizedArray, nu: QuantizedArray, count, hyper):
  """:func:`_adam8bit_blocks` as one call of the CPU kernel (``adam_jax/native``)."""
  f32 = jnp.float32
  b1, b2 = numerics.hyper(hyper["b1"], f32), numerics.hyper(hyper["b2"], f32)
  bc1 = numerics.bias_correction(hyper["b1"], count, f32)
  bc2 = numerics.bias_correction(hyper["b2"], count, f32)
  if hyper["nesterov"]:
    bc1_next = numerics.bias_correction(hyper["b1"], numerics.safe_increment(count), f32)
    a_m, a_g = b1 / bc1_next, (1 - b1) / bc1
  else:
    a_m, a_g = 1 / bc1, jnp.zeros((), f32)
  coef = jnp.stack([b1, 1 - b1, b2, 1 - b2, a_m, a_g, 1 / bc2,
                    numerics.hyper(hyper["eps"], f32), numerics.hyper(hyper["eps_root"], f32)])
  tables = [jnp.asarray(blockwise.map_table(signed)) for signed in (True, False)]
  like = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  call = jax.ffi.ffi_call(
      _native.ADAM8BIT_TARGET,
      (like(g_blocks), like(mu.codes), like(nu.codes), like(mu.scale), like(nu.scale)),
      input_output_aliases={1: 1, 2: 2, 3: 3, 4: 4},  # codes and scales in place
      vmap_method="sequential")
  u, codes_m, codes_v, scale_m, scale_v = call(
      g_blocks, mu.codes, nu.codes, mu.scale, nu.scale, *tables, coef,
      nesterov=bool(hyper["nesterov"]))
  return u, QuantizedArray(codes_m, scale_m), QuantizedArray(codes_v, scale_v)


_BLOCK_SIZE, _MIN_QUANTIZED_SIZE = 256, 4096
_STATIC_HINT = ("it sizes the state, so it must be a Python int: with optax.inject_hyperparams "
                "pass static_args=('block_size', 'min_quantized_size')")


def _static_size(name: str, value: Any, default: int, minimum: int) -> int | None:
  """``value`` as a Python int (``default`` for ``None``); ``None`` for a traced value.

  A concrete integer array counts (``optax.inject_hyperparams`` turns the numbers it
  is given into arrays). A traced one is only refused where it is needed, at
  ``init``: ``update`` reads the block layout from the state.
  """
  if value is None:
    return default
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (jax.Array, np.ndarray, np.generic)) and np.ndim(value) == 0 \
      and jnp.issubdtype(jnp.result_type(value), jnp.integer):
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    kind = "a positive" if minimum > 0 else "a non-negative"
    raise ValueError(f"{name} must be {kind} integer, got {value!r}")
  return int(value)


def _explicitly_sharded(x: Array) -> bool:
  """Whether ``x``'s type names mesh axes of explicit sharding."""
  mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
  return mesh is not None and any(t == jax.sharding.AxisType.Explicit
                                  for t in getattr(mesh, "axis_types", ()))


def scale_by_adam8bit(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    *,
    block_size: int | None = None,
    min_quantized_size: int | None = None,
    nesterov: bool = False,
    native: bool | None = None,
) -> optax.GradientTransformation:
  r"""Adam's rescaling with both moments stored as blockwise 8-bit codes.

  Each step dequantizes the moments, runs exactly the update of
  :func:`adam_jax.scale_by_adam` in float32, and requantizes the new moments:

  .. math::

    m_{t-1} &= \mathrm{deq}_{s}(Q^m_{t-1}), \qquad v_{t-1} = \mathrm{deq}_{u}(Q^v_{t-1}) \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    u_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t) + \epsilon_{root}}
           + \epsilon} \\
    Q^m_t &= \mathrm{quant}_{s}(m_t), \qquad Q^v_t = \mathrm{quant}_{u}(v_t)

  with :math:`\mathrm{quant}_s` / :math:`\mathrm{quant}_u` the blockwise signed /
  unsigned dynamic quantization of :mod:`adam_jax.quantization`. The update uses
  the fresh float32 moments; only what is stored between steps is 8-bit. A
  positive second moment is never rounded to zero. On CPU (one device) the step
  runs as a hand-written kernel (``native``, below), elsewhere as an XLA program;
  both compute the same step.

  Blocks run along each leaf's last axis (at most ``block_size`` elements,
  near-equal, never crossing a row): codes of shape
  ``(*leading, num_blocks, block)`` and scales ``(*leading, num_blocks)`` shard
  like the param on its leading axes (FSDP), also when ``init`` runs under
  ``jax.jit``, and the step needs no communication there. A last axis of ``n``
  shorter than ``block_size`` is one block (4 / n bytes of scale per element).
  Where ``init`` sees the last axis split into ``k`` shards (a placed array, or
  any array on an explicit mesh: tensor parallelism, an embedding split along
  its features), the blocks are the largest that divide each shard (at most
  ``block_size``, no padding), so ``num_blocks`` is a multiple of ``k``: codes and
  scales shard like the param there too, and so does a sharding that Flax's
  ``nnx.Optimizer`` copies from the param onto them. The layout is fixed by
  ``init``; ``update`` reads it from the state.

  Real floating leaves with at least ``min_quantized_size`` elements are
  quantized (about 2.03 bytes of state per parameter with blocks of 256);
  smaller leaves (biases, norms) and complex leaves keep float32 moments (the
  param's dtype if wider) and unused zero scales. Updates keep the gradient's
  dtype and shape.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    block_size: the most elements per quantization block (one float32 scale
      each); ``None`` for 256. It sizes the state, so it is a Python int (with
      ``optax.inject_hyperparams``, name it in ``static_args`` when you give it).
    min_quantized_size: leaves with fewer elements are not quantized; ``None``
      for 4096 (a Python int, as ``block_size``).
    nesterov: use Nesterov momentum (NAdam), as :func:`adam_jax.scale_by_adam`.
    native: on CPU, run the step as a hand-written kernel
      (:mod:`adam_jax.native`, built on first use with the system C++ compiler;
      the same arithmetic up to float32 rounding). ``None`` (default): when the
      kernel is available and JAX has one device; ``True``: always on CPU (error
      if it is unavailable); ``False``: never. Other platforms always run the XLA
      program, and so do leaves on an explicit mesh (the kernel has no sharding
      rule; its result would lose the leaf's sharding). The kernel has no
      derivative rule: differentiate through the step (meta-gradients) with
      ``native=False``.

  Returns:
    An ``optax.GradientTransformation`` with state :class:`ScaleByAdam8bitState`.

  Examples:
    >>> import jax.numpy as jnp, adam_jax
    >>> tx = adam_jax.scale_by_adam8bit(min_quantized_size=0)
    >>> params = {"w": jnp.zeros(1000)}
    >>> state = tx.init(params)
    >>> state.mu["w"].shape, state.mu["w"].dtype, state.mu_scale["w"].shape
    ((4, 250), dtype('uint8'), (4,))

  References:
    Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise
    Quantization <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.

    Dettmers, `8-Bit Approximations for Parallelism in Deep Learning
    <https://arxiv.org/abs/1511.04561>`_, ICLR 2016.

    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(eps=eps, eps_root=eps_root)
  block = _static_size("block_size", block_size, _BLOCK_SIZE, 1)
  min_size = _static_size("min_quantized_size", min_quantized_size, _MIN_QUANTIZED_SIZE, 0)
  _native.check_native(native)

  def quantized(p) -> bool:
    p = jnp.asarray(p) if not hasattr(p, "dtype") else p
    if not jnp.issubdtype(p.dtype, jnp.floating):
      return False
    if min_size is None:
      raise ValueError(f"min_quantized_size is a traced value; {_STATIC_HINT}")
    return int(np.prod(jnp.shape(p), dtype=np.int64)) >= max(min_size, 1)

  def init_fn(params):
    check_float_leaves(params, "adam_jax.scale_by_adam8bit")
    if block is None:
      raise ValueError(f"block_size is a traced value; {_STATIC_HINT}")

    def moment(p, signed):
      p = jnp.asarray(p)
      n = p.shape[-1] if p.shape else 1
      layout = blockwise.sharded_row_blocks(n, block, blockwise.last_axis_shards(p))
      # Sharded like the param, also under jit (the blocks split only its last
      # axis): zeros tied to the blocked param (reshaped zeros of the param's shape
      # would be constants that XLA places on one device). The block axis itself is
      # never split, so the scales are tied to its first element.
      blocked = blockwise.blocked(p, *layout)
      codes = zeros_like(blocked, jnp.uint8)  # code 0 is 0.0
      scale = zeros_like(blocked[..., 0], jnp.float32)
      if quantized(p):
        return codes, scale
      # A leaf kept in float32 keeps the scales of its layout too, zeros that the
      # step never reads: every field keeps the params' tree structure, and no
      # array is empty (a zero-size array is refused by orbax, and takes a sharding
      # that Flax copies from the param badly).
      dtype = numerics.compute_dtype(p.dtype)
      if not signed:
        dtype = numerics.real_dtype(dtype)
      return zeros_like(p, dtype), scale

    leaves, treedef = jax.tree.flatten(params)
    mu = [moment(p, True) for p in leaves]
    nu = [moment(p, False) for p in leaves]
    return ScaleByAdam8bitState(
        count=jnp.zeros([], jnp.int32),
        mu=treedef.unflatten([m[0] for m in mu]),
        nu=treedef.unflatten([v[0] for v in nu]),
        mu_scale=treedef.unflatten([m[1] for m in mu]),
        nu_scale=treedef.unflatten([v[1] for v in nu]),
    )

  def leaf(g, mu, nu, mu_scale, nu_scale, count, use_native):
    hyper = dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov)
    if mu.dtype != jnp.uint8:
      u, mu, nu, _ = adam_leaf(g.astype(mu.dtype), mu, nu, None, count, **hyper)
      return u.astype(g.dtype), mu, nu, mu_scale, nu_scale
    g_blocks = blockwise.blocked(g.astype(jnp.float32), *mu.shape[-2:])  # init's layout
    args = (g_blocks, QuantizedArray(mu, mu_scale), QuantizedArray(nu, nu_scale), count)
    if use_native and not _explicitly_sharded(g_blocks):
      # The kernel on CPU, the XLA program on every other platform.
      u, qm, qv = jax.lax.platform_dependent(
          *args, cpu=functools.partial(_adam8bit_native, hyper=hyper),
          default=functools.partial(_adam8bit_blocks, hyper=hyper))
    else:
      u, qm, qv = _adam8bit_blocks(*args, hyper)
    u = blockwise.from_blocks(u, jnp.shape(g)).astype(g.dtype)
    return u, qm.codes, qv.codes, qm.scale, qv.scale

  def update_fn(updates, state, params=None):
    del params
    numerics.tree_check_same_structure(updates, state.mu)
    count = numerics.safe_increment(state.count)
    # The first call builds the kernel (seconds), once.
    use_native = _native.use_kernel("adam8bit", native)
    u, mu, nu, mu_scale, nu_scale = map_leaves(
        lambda *args: leaf(*args, count, use_native), updates, state.mu, state.nu,
        state.mu_scale, state.nu_scale, num_outputs=5)
    return u, ScaleByAdam8bitState(count=count, mu=mu, nu=nu, mu_scale=mu_scale,
                                   nu_scale=nu_scale)

  return optax.GradientTransformation(init_fn, update_fn)




__all__ = ["ScaleByAdam8bitState", "scale_by_adam8bit"]
