"""Hand-written CPU kernels, compiled on first use with the system C++ compiler.

One kernel so far: the whole 8-bit Adam step of :func:`adam_jax.scale_by_adam8bit`
in one pass over each block (``adam8bit_cpu.cc``), called through the XLA FFI
(:func:`jax.ffi.ffi_call`). It is built for this machine (``-O3 -march=native``)
the first time it is needed and cached under ``$ADAM_JAX_CACHE`` (default
``~/.cache/adam_jax``), keyed by the source, the compiler, the jax version and the
CPU. It is used only on x86 CPUs with AVX-512, where it was measured faster than
the XLA program (with AVX2 alone its loops were slower). Without AVX-512, without
a C++ compiler, or with ``ADAM_JAX_NATIVE=0`` in the environment, the optimizers
use their XLA programs, which compute the same step.

Examples:
  >>> from adam_jax import native
  >>> isinstance(native.available(), bool)
  True
"""

from __future__ import annotations

import ctypes
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

_SOURCE = pathlib.Path(__file__).with_name("adam8bit_cpu.cc")
# No -ffast-math: NaN and infinity keep their meaning. Without errno and traps the
# compiler may vectorise square roots and if-convert the encoding.
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-std=c++17",
          "-shared", "-fPIC", "-w")
_reason = "not tried"


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


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    path = shutil.which(name) if name else None
    if path:
      return path
  return None


def _build(cxx: str) -> pathlib.Path:
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                           timeout=60).stdout
  key = hashlib.sha256("\0".join([
      _SOURCE.read_text(), cxx, version, " ".join(_FLAGS), jax.__version__,
      platform.machine(), _cpu_signature()]).encode()).hexdigest()[:16]
  cache = _cache_dir()
  lib = cache / f"adam8bit_cpu-{key}.so"
  if lib.exists():
    return lib
  cache.mkdir(parents=True, exist_ok=True)
  # Built under a temporary name and renamed: concurrent builds never load a
  # half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
  os.close(fd)
  try:
    cmd = [cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-2000:]}")
    os.replace(tmp, lib)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return lib


@functools.cache
def available() -> bool:
  """Whether the CPU kernels are built, loaded and registered with XLA.

  Builds them on the first call (a few seconds); later calls, and later
  processes on the same machine, reuse the build. Never raises: why a kernel is
  unavailable is in :func:`status`.
  """
  global _reason
  if os.environ.get("ADAM_JAX_NATIVE", "1") == "0":
    _reason = "disabled by ADAM_JAX_NATIVE=0"
    return False
  cxx = _compiler()
  if cxx is None:
    _reason = "no C++ compiler found (set CXX)"
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build(cxx)))
    if lib.AdamJaxAdam8bitLanes() < 16:
      # Without AVX-512 the table lookups and the encoding fall back to the
      # compiler's vectorisation, measured slower than the XLA program.
      _reason = "this CPU has no AVX-512: the XLA program is faster here"
      return False
    jax.ffi.register_ffi_target(
        ADAM8BIT_TARGET, jax.ffi.pycapsule(lib.AdamJaxAdam8bitStep), platform="cpu")
  except Exception as e:  # a failed build leaves the XLA programs in use
    _reason = f"{type(e).__name__}: {e}"
    return False
  _reason = "available"
  return True


def status() -> str:
  """``"available"``, or why the CPU kernels are not (after :func:`available`)."""
  available()
  return _reason
