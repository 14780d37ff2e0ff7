"""``scale_by_adam``: Adam's moments, bias correction, AMSGrad and NAdam."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _numerics as numerics
from adam_jax import native as _native
from adam_jax.transforms._common import (
  ScaleByAdamState,
  adam_leaf,
  check_float_leaves,
  init_moments,
)

Array = jax.Array


class ScaleByAmsgradState(NamedTuple):
  """State of :func:`scale_by_adam` with ``amsgrad=True``.

  optax's ``ScaleByAmsgradState`` has the same fields but another meaning for
  ``nu_max``: optax keeps the maximum of the *bias-corrected* second moment, this
  state the maximum of the raw one (torch, Reddi et al.). A class of its own keeps
  the two apart (a checkpoint of one restored into the other would be silently
  wrong by the factor :math:`1 - \\beta_2^t`, and :mod:`adam_jax.diagnostics` reads
  each by its convention).
  """

  count: Array  # shape=(), dtype=int32; steps taken, saturating
  mu: optax.Updates  # like params; dtype=mu_dtype
  nu: optax.Updates  # like params, real; dtype=nu_dtype
  nu_max: optax.Updates  # like params, real; dtype=nu_dtype; max over raw nu


def _coefficients(count: Array, *, b1: Any, b2: Any, eps: Any, eps_root: Any,
                  nesterov: bool) -> Array:
  """float32[9]: b1, 1 - b1, b2, 1 - b2, a_m, a_g, 1 / bc2, eps, eps_root.

  The scalars of :func:`adam_leaf` for a float32 leaf, as XLA:CPU computes them
  there (it turns each division by a bias correction into a multiplication by the
  reciprocal): the first moment used by the update is ``a_m * m + a_g * g``, with
  ``a_m = 1 / bc1`` and ``a_g = 0``, or with Nesterov ``a_m = b1 / bc1_next`` and
  ``a_g = (1 - b1) / bc1``.
  """
  f32 = jnp.float32
  b1_c, b2_c = numerics.hyper(b1, f32), numerics.hyper(b2, f32)
  inv_bc1 = 1 / numerics.bias_correction(b1, count, f32)
  if nesterov:
    inv_bc1_next = 1 / numerics.bias_correction(b1, numerics.safe_increment(count), f32)
    a_m, a_g = inv_bc1_next * b1_c, inv_bc1 * (1 - b1_c)
  else:
    a_m, a_g = inv_bc1, 0.0
  values = [b1_c, 1 - b1_c, b2_c, 1 - b2_c, a_m, a_g,
            1 / numerics.bias_correction(b2, count, f32),
            numerics.hyper(eps, f32), numerics.hyper(eps_root, f32)]
  return jnp.stack([jnp.asarray(x, f32) for x in values])


def _steps_from_coefficients(coef, gs, ms, vs, ws, *, nesterov: bool):
  """The kernel's step as an XLA program, over the same ``coef``."""
  b1, omb1, b2, omb2, a_m, a_g, inv_bc2, eps, eps_root = (coef[i] for i in range(9))
  us, ms_out, vs_out, ws_out = [], [], [], []
  for i, (g, m, v) in enumerate(zip(gs, ms, vs)):
    m = b1 * m + omb1 * g
    v = b2 * v + omb2 * (g * g)
    w = v
    if ws:
      w = jnp.maximum(ws[i], v)
      ws_out.append(w)
    mh = m * a_m + g * a_g if nesterov else m * a_m
    us.append(mh / (jnp.sqrt(w * inv_bc2 + eps_root) + eps))
    ms_out.append(m)
    vs_out.append(v)
  return us, ms_out, vs_out, ws_out


def _kernel_steps(coef, gs, ms, vs, ws, *, nesterov: bool):
  """Every leaf's step in one call of the CPU kernel (``adam_jax/native/adam_cpu.cc``).

  The moments are results aliased to their operands: XLA updates them in place
  when the state is donated (and copies them first when it is not).
  """
  streams = [gs, ms, vs] + ([ws] if ws else [])
  n = len(gs)
  like = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  call = jax.ffi.ffi_call(
      _native.ADAM_TARGET,
      [like(x) for stream in streams for x in stream],
      # Operand 0 is coef, then g, m, v, w; results u, m, v, w.
      input_output_aliases={1 + k: k for k in range(n, len(streams) * n)})
  outs = call(coef, *(x for stream in streams for x in stream), nesterov=nesterov,
              amsgrad=bool(ws))
  us, ms_out, vs_out, ws_out = (list(outs[k * n:(k + 1) * n]) for k in range(4))
  return us, ms_out, vs_out, ws_out


def _native_steps(coef, gs, ms, vs, ws, *, nesterov: bool):
  """The kernel on CPU, the XLA program elsewhere and under ``jax.vmap``."""
  xla = functools.partial(_steps_from_coefficients, nesterov=nesterov)
  kernel = jax.custom_batching.custom_vmap(functools.partial(_kernel_steps, nesterov=nesterov))

  @kernel.def_vmap
  def _batched(axis_size, in_batched, *args):
    # Batched hyperparameters or states (a grid of configurations): the XLA
    # program, vmapped.
    del axis_size
    axes = jax.tree.map(lambda b: 0 if b else None, list(in_batched))
    out = jax.vmap(xla, in_axes=axes)(*args)
    return out, jax.tree.map(lambda _: True, out)

  return jax.lax.platform_dependent(coef, gs, ms, vs, ws, cpu=kernel, default=xla)


def _kernel_leaf(g: Array, m: Array, v: Array, w: Array | None) -> bool:
  """Whether the kernel covers this leaf: float32 everywhere, not empty."""
  arrays = [x for x in (g, m, v, w) if x is not None]
  return (all(x.dtype == jnp.float32 and x.shape == g.shape for x in arrays)
          and g.size > 0)


def _step_leaves(
    g_leaves: Sequence[Array], m_leaves, v_leaves, w_leaves, count: Array, *,
    use_kernel: bool, hyper: dict,
):
  """``(updates, mu, nu, nu_max)`` leaf lists: float32 leaves in one kernel call
  when ``use_kernel``, every other leaf through :func:`adam_leaf`."""
  n = len(g_leaves)
  out = [[None] * n for _ in range(4)]
  covered = [i for i in range(n)
             if use_kernel and _kernel_leaf(g_leaves[i], m_leaves[i], v_leaves[i], w_leaves[i])]
  for i in sorted(set(range(n)) - set(covered)):
    step = adam_leaf(g_leaves[i], m_leaves[i], v_leaves[i], w_leaves[i], count, **hyper)
    for k in range(4):
      out[k][i] = step[k]
  if covered:
    coef = _coefficients(count, **hyper)
    pick = lambda leaves: [leaves[i] for i in covered]
    ws = pick(w_leaves) if w_leaves[covered[0]] is not None else []
    results = _native_steps(coef, pick(g_leaves), pick(m_leaves), pick(v_leaves), ws,
                            nesterov=hyper["nesterov"])
    for k, column in enumerate(results):
      for i, x in zip(covered, column):
        out[k][i] = x
  return out


def scale_by_adam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
    amsgrad: bool = False,
    nesterov: bool = False,
    native: bool | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adam's bias-corrected moments.

  For gradient :math:`g_t` at step :math:`t = 1, 2, \dots`:

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2 \\
    \hat m_t &= m_t / (1 - \beta_1^t), \qquad \hat v_t = v_t / (1 - \beta_2^t) \\
    u_t &= \hat m_t / \left(\sqrt{\hat v_t + \epsilon_{root}} + \epsilon\right)

  With ``amsgrad=True``, :math:`\hat v_t` uses :math:`v^{max}_t = \max(v^{max}_{t-1},
  v_t)` in place of :math:`v_t`. With ``nesterov=True`` (NAdam as optax defines it),
  :math:`\hat m_t = \beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1) g_t / (1 -
  \beta_1^t)`.

  The arithmetic is carried out in at least float32 whatever the dtype of the
  gradients: float16 models keep ``eps`` (which underflows to zero in float16) and
  zero gradients give zero updates rather than NaN. Updates keep the gradient's
  dtype; the moments keep ``mu_dtype`` / ``nu_dtype``.

  .. warning::
    AMSGrad conventions differ. This transformation (like ``torch.optim.Adam`` and
    Reddi et al.) takes the running maximum of the *raw* second moment and then
    bias-corrects it. ``optax.scale_by_amsgrad`` takes the maximum of the
    *bias-corrected* second moment, which gives different steps early in training.

  .. warning::
    Float16 second moments underflow. ``nu_dtype`` defaults to the param's dtype,
    and :math:`(1 - \beta_2) g^2` is below float16's smallest subnormal
    (:math:`2^{-24} \approx 6 \cdot 10^{-8}`) for :math:`|g| < 7.7 \cdot 10^{-3}` at
    :math:`\beta_2 = 0.999`, so the stored :math:`v` rounds to 0 (or to that one
    subnormal). Each step's :math:`\hat v_t` then holds only the current
    gradient's term: steps come out too large (about 13 instead of 1 after 200
    steps of a constant :math:`g = 10^{-3}`), and a step whose gradient is 0
    while :math:`\hat m_t` is not has :math:`\hat v_t = 0` and an update of
    :math:`\hat m_t / \epsilon` (``inf`` in float16). For float16 params pass
    ``nu_dtype=jnp.float32`` (or ``jnp.bfloat16``, which has float32's exponent
    range).

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator outside the square root (Kingma & Ba, torch).
    eps_root: added inside the square root; make it positive to differentiate
      through the update (meta-learning).
    mu_dtype: dtype of the first moment; default the param's dtype.
    nu_dtype: dtype of the second moment (and AMSGrad's maximum); default the
      param's (real) dtype.
    amsgrad: keep the running maximum of the second moment.
    nesterov: use Nesterov momentum (NAdam).
    native: on CPU, compute the step of every leaf whose gradient and moments
      are float32 in one call of a hand-written kernel (:mod:`adam_jax.native`,
      built on first use with the system C++ compiler), the moments updated in
      place; equal to the XLA program up to float32 rounding. ``None``
      (default) and ``False``: the XLA program (the kernel is opt-in until it is
      measured faster in whole training steps, see ``benchmarks/RESULTS.md``);
      ``True``: the kernel on CPU (error if it is unavailable; it has no sharding
      rule, so keep it to one device). Other platforms, other dtypes and steps
      under ``jax.vmap`` run the XLA program. The kernel has no derivative rule:
      differentiate through the step (meta-gradients) with ``native=False``.
    bias_correction_mu: divide the first moment by :math:`1 - \beta_1^t`
      (``False``: use :math:`m_t` as it is, ``optax.scale_by_amsgrad``'s option).
    bias_correction_nu: divide the second moment by :math:`1 - \beta_2^t`. With
      ``amsgrad`` and ``False`` the step equals ``optax.amsgrad``'s with
      ``bias_correction_nu=False`` (both take the maximum of the raw moment then).

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByAdamState`` (optax's
    own class), or :class:`ScaleByAmsgradState` when ``amsgrad`` is set.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_jax
    >>> tx = optax.chain(adam_jax.scale_by_adam(), adam_jax.scale_by_learning_rate(0.1))
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([1.0, -2.0, 0.5])}, state, params)
    >>> updates["w"]  # the first step is -lr * sign(g)
    Array([-0.1,  0.1, -0.1], dtype=float32)

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.

    Reddi, Kale & Kumar, `On the Convergence of Adam and Beyond
    <https://openreview.net/forum?id=ryQu7f-RZ>`_, ICLR 2018.

    Dozat, `Incorporating Nesterov Momentum into Adam
    <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.
  """
  numerics.check_betas(b1=b1, b2=b2)
  numerics.check_nonnegative(eps=eps, eps_root=eps_root)
  _native.check_native(native)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  nu_dtype = None if nu_dtype is None else jnp.dtype(nu_dtype)
  hyper = dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov)
  corrected = bias_correction_mu and bias_correction_nu
  if not corrected:  # the kernel computes the corrected step only
    hyper.update(bias_correction_mu=bias_correction_mu, bias_correction_nu=bias_correction_nu)

  def init_fn(params):
    check_float_leaves(params, "adam_jax.scale_by_adam")
    mu, nu = init_moments(params, mu_dtype, nu_dtype)
    count = jnp.zeros([], jnp.int32)
    if amsgrad:
      return ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu)
    return ScaleByAdamState(count=count, mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    numerics.tree_check_same_structure(updates, state.mu)
    count = numerics.safe_increment(state.count)
    # The first call builds the kernel (seconds), once.
    use_kernel = corrected and _native.use_kernel("adam", native)
    g_leaves, treedef = jax.tree.flatten(updates)
    columns = [treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu),
               treedef.flatten_up_to(state.nu_max) if amsgrad else [None] * len(g_leaves)]
    u, mu, nu, nu_max = (
        treedef.unflatten(leaves) for leaves in _step_leaves(
            g_leaves, *columns, count, use_kernel=use_kernel, hyper=hyper))
    if amsgrad:
      return u, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)
    return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
