"""Numerics shared by every transformation: validation, dtypes, step counter.

Three concerns live here and nowhere else:

* **Validation** of concrete hyperparameters at construction time. Values that are
  JAX tracers (inside ``jit``/``vmap``) are not inspected: hyperparameters are values,
  not constants, so a grid of learning rates can be vmapped through a factory.
* **Arithmetic dtype**: every moment update runs in at least float32, whatever the
  dtype of the parameters, so float16 models do not lose ``eps`` to underflow
  (1e-8 is 0 in float16) and do not divide zero by zero.
* **Step counter**: an int32 count that saturates instead of wrapping around.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScalarOrSchedule = Any  # float | jax.Array | Callable[[jax.Array], jax.Array]

_INT32_MAX = np.iinfo(np.int32).max


def is_concrete(value: Any) -> bool:
  """True when ``value`` can be inspected on the host (not a tracer)."""
  if isinstance(value, jax.core.Tracer):
    return False
  return isinstance(value, (int, float, np.ndarray, np.generic, jax.Array))


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> None:
  """Raises ``ValueError`` naming ``name`` if a concrete ``value`` is out of range.

  Callables (schedules) and tracers are accepted unchecked: they are only known
  inside the step. Arrays are checked element-wise.

  Args:
    name: the hyperparameter's name, as the user wrote it (``"b1"``).
    value: a Python number, a NumPy/JAX array, a schedule or a tracer.
    low: lower bound, or ``None`` for none.
    high: upper bound, or ``None`` for none.
    low_inclusive: whether ``low`` itself is allowed.
    high_inclusive: whether ``high`` itself is allowed.
  """
  if callable(value) or not is_concrete(value):
    return
  if any(bound is not None and not is_concrete(bound) for bound in (low, high)):
    return  # a traced bound (another hyperparameter) is only known inside the step
  arr = np.asarray(value)
  # jnp.issubdtype knows JAX's own floats (bfloat16, float8_*), which NumPy does not
  # count as numbers.
  if arr.dtype == np.bool_ or not jnp.issubdtype(arr.dtype, jnp.number):
    raise ValueError(f"{name} must be a number, got {value!r}")
  if jnp.issubdtype(arr.dtype, jnp.complexfloating):
    raise ValueError(f"{name} must be real, got {value!r}")
  low_precision = (jnp.issubdtype(arr.dtype, jnp.floating)
                   and jnp.finfo(arr.dtype).bits < 32)
  arr = arr.astype(np.float64)
  lo_txt = "(" if not low_inclusive else "["
  hi_txt = ")" if not high_inclusive else "]"
  rng = (
      f"{lo_txt}{'-inf' if low is None else low}, "
      f"{'inf' if high is None else high}{hi_txt}"
  )
  if np.any(np.isnan(arr)):
    raise ValueError(f"{name} must be in {rng}, got NaN")
  bad = np.zeros(arr.shape, bool)
  if low is not None:
    bad |= (arr < low) if low_inclusive else (arr <= low)
  if high is not None:
    bad |= (arr > high) if high_inclusive else (arr >= high)
  if np.any(bad):
    shown = value if arr.ndim == 0 else arr[bad].ravel()[0]
    hint = ""
    if low_precision:
      # optax.inject_hyperparams casts hyperparameters to the params' dtype: 0.999
      # is 1.0 in bfloat16.
      hint = (f" ({name} is stored in {np.dtype(np.asarray(value).dtype).name}, which "
              "rounds it; with optax.inject_hyperparams pass hyperparam_dtype=jnp.float32)")
    raise ValueError(f"{name} must be in {rng}, got {shown!r}{hint}")


def check_betas(**betas: Any) -> None:
  """Checks that every decay rate given as keyword lies in [0, 1)."""
  for name, value in betas.items():
    check_range(name, value, 0.0, 1.0)


def check_nonnegative(**values: Any) -> None:
  """Checks that every value given as keyword is >= 0."""
  for name, value in values.items():
    check_range(name, value, 0.0, None)


def compute_dtype(*dtypes: Any) -> jnp.dtype:
  """The dtype an update is computed in: the join of ``dtypes`` and float32.

  float16 and bfloat16 compute in float32, float64 in float64, complex64 in
  complex64. Several dtypes (a gradient's and a moment's) are joined on the
  standard lattice, whatever the user's promotion mode.
  """
  dtypes = [jnp.dtype(d) for d in dtypes]
  is_complex = any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes)
  wide = any(d.itemsize == (16 if jnp.issubdtype(d, jnp.complexfloating) else 8)
             for d in dtypes if jnp.issubdtype(d, jnp.inexact))
  if is_complex:
    return jnp.dtype(jnp.complex128 if wide else jnp.complex64)
  return jnp.dtype(jnp.float64 if wide else jnp.float32)


def real_dtype(dtype: Any) -> jnp.dtype:
  """The real counterpart of ``dtype`` (float32 for complex64)."""
  return jnp.finfo(jnp.dtype(dtype)).dtype


def hyper(value: Any, dtype: Any) -> Array:
  """A hyperparameter as a scalar (or broadcastable array) of ``dtype``.

  Python numbers stay Python numbers (weakly typed: they take the array's dtype,
  and ``1 - b1`` is computed in double precision on the host, as optax does).
  Arrays are cast explicitly, which keeps the arithmetic valid under strict dtype
  promotion when a (traced) float32 hyperparameter meets a float64 or complex
  moment.
  """
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return value
  return jnp.asarray(value).astype(dtype)


def safe_increment(count: Array) -> Array:
  """``count + 1`` for an int32 counter, saturating at ``2**31 - 1``."""
  return jnp.where(count < _INT32_MAX, count + 1, count).astype(count.dtype)


def bias_correction(decay: Any, count: Array, dtype: Any) -> Array:
  """``1 - decay**count`` in ``dtype`` (real, at least float32).

  For a Python-number decay this is ``-expm1(count * log(decay))`` with the
  logarithm taken in double precision on the host: rounding ``decay`` to float32
  first (0.999 becomes 0.99900001) would put a relative error of ~1e-5 into
  ``1 - decay**count`` early in training.
  """
  dtype = real_dtype(compute_dtype(dtype))
  t = count.astype(dtype)
  if isinstance(decay, (int, float)) and 0 < decay < 1:
    return -jnp.expm1(t * math.log(decay))
  return 1 - hyper(decay, dtype) ** t


def resolve(value: ScalarOrSchedule, count: Array) -> Any:
  """Evaluates a schedule at ``count``; returns plain values unchanged."""
  return value(count) if callable(value) else value


def tree_check_same_structure(
    updates: Any, reference: Any, what: str = "optimizer state"
) -> None:
  """Raises ``ValueError`` if ``updates`` and ``reference`` differ in structure."""
  s_upd = jax.tree.structure(updates)
  s_ref = jax.tree.structure(reference)
  if s_upd != s_ref:
    raise ValueError(
        f"the gradient tree's structure differs from the {what}'s: gradients are "
        f"{s_upd}, but the {what} was initialised for {s_ref}. Pass gradients "
        "with the same structure as the params given to init."
    )


def mask_tree(mask: Any, params: Any) -> Any:
  """Resolves a mask (pytree of bools, or a callable of params) to a tree."""
  return mask(params) if callable(mask) else mask


__all__ = [
    "bias_correction",
    "check_betas",
    "check_nonnegative",
    "check_range",
    "compute_dtype",
    "hyper",
    "is_concrete",
    "mask_tree",
    "real_dtype",
    "resolve",
    "safe_increment",
    "tree_check_same_structure",
]
