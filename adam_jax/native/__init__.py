"""Hand-written CPU kernels, compiled on first use with the system C++ compiler.

One kernel, a C++ source file called through the XLA FFI (:func:`jax.ffi.ffi_call`):
``"adam8bit"`` (``adam8bit_cpu.cc``), the whole 8-bit Adam step of
:func:`adam_jax.scale_by_adam8bit` in one pass over each block. Used only on x86 CPUs
with AVX-512, where it was measured faster than the XLA program (with AVX2 alone its
loops were slower); used by default on one CPU device. (A kernel of the float32 Adam
step was removed on 2026-12-07: it was never faster than XLA's program on a quiet
machine; ``benchmarks/RESULTS.md`` keeps its numbers.)

It is built for this machine (``-O3 -march=native``) the first time it is needed
and cached under ``$ADAM_JAX_CACHE`` (default ``~/.cache/adam_jax``), keyed by the
source, the flags, the compiler, the jax version and the CPU. Without a C++
compiler, on a CPU its condition excludes, or with ``ADAM_JAX_NATIVE=0`` in the
environment, the optimizers use their XLA programs, which compute the same step.
:func:`status` says which applies. The kernels have no derivative rule:
differentiating through an optimizer step needs ``native=False``.

Examples:
  >>> from adam_jax import native
  >>> isinstance(native.available("adam8bit"), bool), native.KERNELS
  (True, ('adam8bit',))
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax

ADAM8BIT_TARGET = "adam_jax_adam8bit_step"

# No -ffast-math: NaN and infinity keep their meaning. Without errno and traps the
# compiler may vectorise square roots and if-convert the encoding.
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-std=c++17",
          "-shared", "-fPIC", "-w")


@dataclasses.dataclass(frozen=True)
class _Kernel:
  source: str  # file next to this module
  extra_flags: tuple[str, ...]
  target: str  # the name XLA knows the handler by
  handler: str  # the handler's symbol in the library
  lanes: str  # symbol of ``int f()``: float32 lanes of the widest vectors the build uses
  min_lanes: int  # used only from this vector width up (measured faster there)
  too_narrow: str  # the reason given below it


_KERNELS = {
    "adam8bit": _Kernel("adam8bit_cpu.cc", (), ADAM8BIT_TARGET, "AdamJaxAdam8bitStep",
                        "AdamJaxAdam8bitLanes", 16,
                        # Without AVX-512 the table lookups and the encoding fall back to
                        # the compiler's vectorisation, measured slower than XLA's program.
                        "this CPU has no AVX-512: the XLA program is faster here"),
}
KERNELS = tuple(sorted(_KERNELS))
_reasons = dict.fromkeys(KERNELS, "not tried")


def _cache_dir() -> pathlib.Path:
  if os.environ.get("ADAM_JAX_CACHE"):
    return pathlib.Path(os.environ["ADAM_JAX_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "adam_jax"


def _cpu_signature() -> str:
  """The CPU model and feature flags (``-march=native`` code runs only there)."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return platform.processor() or platform.machine()
  keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
  return "\n".join(sorted(set(keep)))


@functools.cache
def _compiler() -> tuple[str, str] | None:
  """The C++ compiler's path and ``--version`` text, or ``None``."""
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    path = shutil.which(name) if name else None
    if path:
      version = subprocess.run([path, "--version"], capture_output=True, text=True,
                               timeout=60).stdout
      return path, version
  return None


def _build(kernel: _Kernel, cxx: str, version: str) -> pathlib.Path:
  source = pathlib.Path(__file__).with_name(kernel.source)
  flags = (*_FLAGS, *kernel.extra_flags)
  key = hashlib.sha256("\0".join([
      source.read_text(), cxx, version, " ".join(flags), jax.__version__,
      platform.machine(), _cpu_signature()]).encode()).hexdigest()[:16]
  cache = _cache_dir()
  lib = cache / f"{source.stem}-{key}.so"
  if lib.exists():
    return lib
  cache.mkdir(parents=True, exist_ok=True)
  # Built under a temporary name and renamed: concurrent builds never load a
  # half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
  os.close(fd)
  try:
    cmd = [cxx, *flags, f"-I{jax.ffi.include_dir()}", str(source), "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-2000:]}")
    os.replace(tmp, lib)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return lib


def _check_name(kernel: str) -> None:
  if kernel not in _KERNELS:
    raise ValueError(f"unknown kernel {kernel!r}; expected one of: {', '.join(KERNELS)}")


@functools.cache
def _load(kernel: str) -> bool:
  spec = _KERNELS[kernel]
  if os.environ.get("ADAM_JAX_NATIVE", "1") == "0":
    _reasons[kernel] = "disabled by ADAM_JAX_NATIVE=0"
    return False
  try:
    found = _compiler()
    if found is None:
      _reasons[kernel] = "no C++ compiler found (set CXX)"
      return False
    lib = ctypes.cdll.LoadLibrary(str(_build(spec, *found)))
    if getattr(lib, spec.lanes)() < spec.min_lanes:
      _reasons[kernel] = spec.too_narrow
      return False
    jax.ffi.register_ffi_target(
        spec.target, jax.ffi.pycapsule(getattr(lib, spec.handler)), platform="cpu")
  except Exception as e:  # a failed build leaves the XLA programs in use
    _reasons[kernel] = f"{type(e).__name__}: {e}"
    return False
  _reasons[kernel] = "available"
  return True


def available(kernel: str | None = None) -> bool:
  """Whether a CPU kernel is built, loaded and registered with XLA.

  Builds it on the first call (a few seconds); later calls, and later processes
  on the same machine, reuse the build. Never raises for a kernel that cannot be
  built: why it is unavailable is in :func:`status`.

  Args:
    kernel: one of :data:`KERNELS` (``"adam8bit"``); ``None``: all of them.

  Returns:
    ``True`` if the kernel (every kernel, for ``None``) can be called.
  """
  if kernel is None:
    return all([_load(k) for k in KERNELS])  # a list: every kernel is tried
  _check_name(kernel)
  return _load(kernel)


def status(kernel: str | None = None) -> str:
  """``"available"``, or why a CPU kernel is not (builds it if not yet tried).

  Args:
    kernel: one of :data:`KERNELS`; ``None``: all of them, as one line
      (``"available"`` or the common reason when they agree, else
      ``"<kernel>: ...; <kernel>: ..."``).

  Returns:
    The reason, as a sentence fragment.
  """
  names = KERNELS if kernel is None else (kernel,)
  for name in names:
    available(name)
  reasons = [_reasons[k] for k in names]
  if len(set(reasons)) == 1:
    return reasons[0]
  return "; ".join(f"{k}: {r}" for k, r in zip(names, reasons))


# The kernels an optimizer uses when it leaves ``native=None``: only those measured
# faster in whole training steps.
DEFAULT_ON = frozenset({"adam8bit"})


def use_kernel(kernel: str, native: bool | None) -> bool:
  """Whether a step traced now calls ``kernel`` on CPU, for an optimizer's ``native``.

  Args:
    kernel: one of :data:`KERNELS`.
    native: ``None``: for a kernel in :data:`DEFAULT_ON`, when JAX's default
      backend is the CPU, JAX has one device
      (the kernels have no sharding rule: on several devices the XLA program,
      which shards like the params, runs) and the kernel is available; ``True``:
      always (on CPU; other platforms run the XLA program); ``False``: never.

  Returns:
    Whether to call the kernel.

  Raises:
    RuntimeError: ``native=True`` and the kernel is unavailable (with the reason).
  """
  if native is None:
    return (kernel in DEFAULT_ON and jax.default_backend() == "cpu"
            and jax.device_count() == 1 and available(kernel))
  if native and not available(kernel):
    raise RuntimeError(
        f"native=True but the CPU kernel {kernel!r} is unavailable: {status(kernel)}")
  return native


def check_native(native: object) -> None:
  """Raises ``TypeError`` unless ``native`` is ``True``, ``False`` or ``None``."""
  if native is not None and not isinstance(native, bool):
    raise TypeError(f"native must be True, False or None, got {native!r}")
