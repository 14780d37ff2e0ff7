"""Fingerprints: what a run is made of, as short strings that change when it changes.

A run that is resumed must be the run that was interrupted. Its parts are recorded as
fingerprints (``"name #digest"``) and compared field by field; :func:`changes` names the
fields that differ. The rules, documented in ``docs/tuning.md`` ("Run identity"):

* **Arrays** (NumPy, JAX, Python scalars, and pytrees of them): the SHA-256 of the tree's
  structure and each array's shape, dtype and bytes, exactly, for arrays of up to
  :data:`EXACT_BYTES`. A larger array is digested by its shape, dtype, the sum (wrapping)
  of its 64-bit words, which any change of a single value changes, and
  :data:`SAMPLED_BLOCKS` blocks of :data:`BLOCK_BYTES` spread evenly over it (the first
  and the last included): about 0.1 s for 64 MiB hashed, whatever the array's size.
* **A function or class of the user's**: its qualified name and the SHA-256 of its source
  text (of its compiled code where there is no source: ``python -c``, ``exec``), of the
  values it closes over, of its default arguments and of the module-level names it reads
  (values, and functions and classes of the user's, followed the same way).
* **A function or class of a library** (JAX, optax, Flax, NumPy, adam_jax, anything
  installed in site-packages or the standard library): its qualified name and the values
  it closes over (an optax transformation keeps its hyperparameters there, so
  ``adam(3e-3)`` and ``adam(3e-2)`` differ), not its source.
* **Other objects**: their type, and their attributes (the user's) or array leaves.

Fingerprints are meant to tell runs apart, not to resist an attacker: code a function
reaches through an attribute of an object or module (``helpers.f``) is named, not digested.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
import sys
import sysconfig
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

EXACT_BYTES = 256 << 20  # arrays up to this size are digested exactly
SAMPLED_BLOCKS = 4096  # blocks of a larger array that are hashed ...
BLOCK_BYTES = 16 << 10  # ... each this long
_DEPTH = 12  # how deep closures, globals and containers are followed
_LIBRARIES = ("adam_jax", "jax", "jaxlib", "optax", "flax", "numpy", "orbax", "chex")


def fingerprint(obj: Any, name: str | None = None) -> str:
  """``"<name> #<digest>"``: ``obj``'s name (or ``name``) and the digest of what it is made of.

  Examples:
    >>> import adam_jax
    >>> from adam_jax._fingerprint import fingerprint
    >>> fingerprint(adam_jax.adam(1e-3)) == fingerprint(adam_jax.adam(1e-3))
    True
    >>> fingerprint(adam_jax.adam(1e-3)) == fingerprint(adam_jax.adam(1e-2))
    False
  """
  described = _describe(obj, set(), 0)
  return f"{name or _label(obj)} #{_digest(described)[:16]}"


def data_fingerprint(tree: Any) -> str:
  """``"<arrays summary> #<digest>"`` of a pytree of arrays (see the module's rules)."""
  import jax

  leaves, treedef = jax.tree.flatten(tree)
  arrays = [np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf) for leaf in leaves]
  digest = hashlib.sha256(str(treedef).encode())
  for a in arrays:
    digest.update(_array_digest(a).encode())
  shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in arrays[:4])
  more = f", ... ({len(arrays)} arrays)" if len(arrays) > 4 else ""
  return f"{shapes}{more} #{digest.hexdigest()[:16]}"


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """One phrase per field of ``new`` whose value in ``old`` differs (or is missing).

  Examples:
    >>> from adam_jax._fingerprint import changes
    >>> changes({"steps": 100, "seeds": [0]}, {"steps": 200, "seeds": [0]})
    ['steps was 100, is now 200']
  """
  out = []
  for key, value in new.items():
    if key not in old:
      out.append(f"{key} was not recorded (is now {_shown(value)})")
    elif _canonical(old[key]) != _canonical(value):
      out.append(f"{key} was {_shown(old[key])}, is now {_shown(value)}")
  return out


def _shown(value: Any) -> str:
  return value if isinstance(value, str) else json.dumps(_canonical(value))


def _canonical(value: Any) -> Any:
  """``value`` as JSON would give it back (tuples as lists), for comparing records."""
  return json.loads(json.dumps(value, default=str))


def _digest(described: Any) -> str:
  return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _label(obj: Any) -> str:
  if isinstance(obj, functools.partial):
    return f"partial({_label(obj.func)})"
  target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
  qualname = getattr(target, "__qualname__", type(target).__name__)
  module = getattr(target, "__module__", None)
  return qualname if module in (None, "builtins", "__main__") else f"{module}.{qualname}"


def _is_key(leaf: Any) -> bool:
  import jax

  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _array_digest(a: np.ndarray) -> str:
  """The digest of one array: exact up to :data:`EXACT_BYTES`, sampled above."""
  a = np.ascontiguousarray(a)
  digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
  raw = a.reshape(-1).view(np.uint8)
  if raw.size <= EXACT_BYTES:
    digest.update(raw)
    return digest.hexdigest()
  words = raw[: raw.size - raw.size % 8].view(np.uint64)
  digest.update(np.add.reduce(words, dtype=np.uint64).tobytes())
  digest.update(raw[raw.size - raw.size % 8:])
  starts = np.linspace(0, raw.size - BLOCK_BYTES, SAMPLED_BLOCKS).astype(np.int64)
  for start in starts:
    digest.update(raw[start:start + BLOCK_BYTES])
  return "sampled:" + digest.hexdigest()


@functools.cache
def _library_roots() -> tuple[str, ...]:
  paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
  return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def _is_library(obj: Any) -> bool:
  """Whether ``obj`` (a function, class or module) comes from a library, not the user."""
  name = getattr(obj, "__name__", "") if isinstance(obj, types.ModuleType) else getattr(
      obj, "__module__", None) or ""
  top = name.split(".")[0]
  if top in _LIBRARIES:
    return True
  if top in ("", "__main__"):
    return False
  module = sys.modules.get(top)
  file = getattr(module, "__file__", None)
  if file is None:  # built into the interpreter
    return module is not None
  return os.path.realpath(file).startswith(_library_roots())


def _source_digest(obj: Any) -> str:
  try:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
  except (OSError, TypeError):  # no source (python -c, exec): the compiled code
    code = getattr(obj, "__code__", None)
    if code is None:
      codes = [getattr(f, "__code__", None) for f in vars(obj).values()] if isinstance(
          obj, type) else []
      return _digest([_code(c) for c in codes if c is not None])
    return _digest(_code(code))


def _code(code: types.CodeType) -> Any:
  return [code.co_code.hex(), list(code.co_names), list(code.co_varnames),
          [_code(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]]


def _global_names(code: types.CodeType) -> list[str]:
  names = list(code.co_names)
  for const in code.co_consts:
    if isinstance(const, types.CodeType):
      names += _global_names(const)
  return list(dict.fromkeys(names))


def _globals(fn: Any, seen: set[int], depth: int) -> dict[str, Any]:
  """The module-level names ``fn`` reads, described (modules only named)."""
  namespace = getattr(fn, "__globals__", {})
  out = {}
  for name in _global_names(fn.__code__):
    if name in namespace:
      value = namespace[name]
      out[name] = (f"module {value.__name__}" if isinstance(value, types.ModuleType)
                   else _describe(value, seen, depth + 1))
  return out


def _describe(obj: Any, seen: set[int], depth: int) -> Any:
  """``obj`` as a JSON-able structure that changes when ``obj`` changes (see the module)."""
  import jax

  if obj is None or isinstance(obj, (bool, int, str)):
    return obj
  if isinstance(obj, (float, complex)):
    return repr(obj) if not (isinstance(obj, float) and math.isnan(obj)) else "nan"
  if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
    return {"array": _array_digest(np.asarray(jax.random.key_data(obj) if _is_key(obj) else obj))}
  if isinstance(obj, np.dtype):
    return {"dtype": str(obj)}
  if depth > _DEPTH:
    return {"deep": _label(obj)}
  if id(obj) in seen:
    return {"cycle": _label(obj)}
  seen = seen | {id(obj)}
  down = functools.partial(_describe, seen=seen, depth=depth + 1)
  if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple
    return {"type": _label(obj), "fields": [down(v) for v in obj]}
  if isinstance(obj, (list, tuple)):
    return [type(obj).__name__] + [down(v) for v in obj]
  if isinstance(obj, Mapping):
    return {"mapping": sorted([str(k), down(v)] for k, v in obj.items())}
  if isinstance(obj, (set, frozenset)):
    return {"set": sorted(json.dumps(down(v), sort_keys=True, default=str) for v in obj)}
  if isinstance(obj, functools.partial):
    return {"partial": down(obj.func), "args": down(obj.args), "keywords": down(obj.keywords)}
  if isinstance(obj, types.MethodType):
    return {"method": down(obj.__func__), "self": down(obj.__self__)}
  if isinstance(obj, types.ModuleType):
    return {"module": obj.__name__}
  wrapped = getattr(obj, "__wrapped__", None)
  if wrapped is not None and callable(obj):  # jax.jit, functools.wraps
    return {"wraps": down(wrapped)}
  if inspect.isfunction(obj):
    out: dict[str, Any] = {"function": _label(obj)}
    if not _is_library(obj):
      out["source"] = _source_digest(obj)
      out["globals"] = _globals(obj, seen, depth)
    cells = []
    for cell in obj.__closure__ or ():
      try:
        cells.append(down(cell.cell_contents))
      except ValueError:  # an empty cell
        cells.append(None)
    out.update(closure=cells, defaults=down(obj.__defaults__),
               kwdefaults=down(obj.__kwdefaults__))
    return out
  if inspect.isclass(obj):
    if _is_library(obj):
      return {"class": _label(obj)}
    methods = [f for f in vars(obj).values() if inspect.isfunction(f)]
    return {"class": _label(obj), "source": _source_digest(obj),
            "bases": [down(b) for b in obj.__bases__ if b is not object],
            "globals": [_globals(f, seen, depth) for f in methods]}
  if callable(obj) and inspect.isbuiltin(obj):
    return {"builtin": _label(obj)}
  kind = type(obj)
  if not _is_library(kind) and hasattr(obj, "__dict__"):
    return {"object": down(kind), "attributes": down(vars(obj))}
  leaves = [leaf for leaf in jax.tree.leaves(obj) if leaf is not obj]
  return {"object": _label(obj), "leaves": down(leaves)} if leaves else {"object": _label(obj)}
