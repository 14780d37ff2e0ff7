"""How many members train at once: XLA's own memory figures against a budget.

The compiler knows what a program needs: ``Compiled.memory_analysis()`` gives the bytes
of its arguments, outputs and temporaries. A group's programs are compiled for all its
members first; when they need more than the budget, they are compiled again for one
member, the cost per member is read off the two figures (the programs grow linearly
with the members, which are ``jax.vmap``-ed), and the members are split into as many
programs of equal size as it takes, run one after another.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax

# The share of what is free that a search may plan for: on a CPU the process also holds
# the data, results and Python's own memory beside the programs; on an accelerator XLA's
# allocator already holds its pool, of which the programs may use most.
CPU_FRACTION = 0.5
ACCELERATOR_FRACTION = 0.8

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


class MemoryBudgetError(ValueError):
  """A configuration needs more memory than the budget (``max_memory``), even alone.

  Attributes:
    needed: the bytes its programs need (XLA's memory analysis).
    budget: the bytes allowed.
  """

  def __init__(self, message: str, needed: int, budget: int):
    super().__init__(message)
    self.needed = needed
    self.budget = budget


def parse_bytes(max_memory: int | float | str | None, name: str = "max_memory") -> int | None:
  """``max_memory`` in bytes: a number of bytes, or a string like ``"4GB"`` or ``"512MiB"``.

  ``None`` stays None (the default budget, :func:`default_budget`).

  Examples:
    >>> parse_bytes("4GB"), parse_bytes("1.5 GiB"), parse_bytes(10**6)
    (4000000000, 1610612736, 1000000)
  """
  if max_memory is None:
    return None
  if isinstance(max_memory, str):
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", max_memory)
    if m is None or m.group(2).lower() not in _UNITS:
      raise ValueError(f"{name} must be a number of bytes or a string like '4GB' or '512MiB', "
                       f"got {max_memory!r}")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
  elif isinstance(max_memory, (int, float)) and not isinstance(max_memory, bool):
    value = float(max_memory)
  else:
    raise ValueError(f"{name} must be a number of bytes or a string like '4GB', "
                     f"got {max_memory!r}")
  if not value >= 1:
    raise ValueError(f"{name} must be at least one byte, got {max_memory!r}")
  return int(value)


def available_memory(device: jax.Device | None = None) -> int | None:
  """Bytes still free: an accelerator's ``bytes_limit - bytes_in_use``; a CPU's MemAvailable.

  None when the platform does not say.
  """
  device = device or jax.local_devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
      return None
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, AttributeError):
    return None


def default_budget(device: jax.Device | None = None) -> int | None:
  """The budget when ``max_memory`` is not given: a share of what is free now.

  :data:`CPU_FRACTION` (half) of the available RAM on a CPU, :data:`ACCELERATOR_FRACTION`
  of an accelerator's free memory; None (no limit) when the platform does not say.
  """
  device = device or jax.local_devices()[0]
  free = available_memory(device)
  if free is None:
    return None
  return int(free * (CPU_FRACTION if device.platform == "cpu" else ACCELERATOR_FRACTION))


def program_bytes(compiled: Any) -> int:
  """The bytes a compiled program holds while it runs, by XLA's own analysis.

  Arguments + outputs - donated (aliased) buffers + temporaries; 0 where the backend
  gives no analysis.
  """
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError, AttributeError):
    return 0
  if m is None:
    return 0
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes + m.generated_code_size_in_bytes)


def members_per_program(need_all: int, members: int, need_one: int, budget: int) -> int:
  """How many members fit ``budget``, from the programs' needs at ``members`` and at one.

  The need grows linearly: ``need(k) = base + k * per_member``.

  Examples:
    >>> members_per_program(need_all=1000, members=10, need_one=100, budget=500)
    5
  """
  if need_all <= budget:
    return members
  per_member = max((need_all - need_one) / max(members - 1, 1), 1.0)
  base = need_one - per_member
  return max(0, min(members, int((budget - base) // per_member)))


def check_fits(compiled: Any, max_memory: int | str | None, what: str) -> None:
  """Refuses compiled programs of one run that need more than ``max_memory`` (or the default).
  """
  budget = parse_bytes(max_memory)
  budget = default_budget() if budget is None else budget
  if budget is None:
    return
  need = max((program_bytes(c) for c in compiled), default=0)
  if need > budget:
    raise too_large(need, budget, what)


def too_large(need_one: int, budget: int, what: str) -> MemoryBudgetError:
  """The error for a configuration that does not fit ``budget`` even alone."""
  return MemoryBudgetError(
      f"{what} needs {format_bytes(need_one)} (XLA's memory analysis of its training and "
      f"evaluation programs) but max_memory allows {format_bytes(budget)}; raise max_memory, "
      "or use a smaller batch_size, eval_batch_size or model", need_one, budget)


def format_bytes(n: float) -> str:
  """``n`` bytes in the largest binary unit that keeps it >= 1 (``"1.5 GiB"``)."""
  for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.3g} {unit}"
  return f"{int(n)} B"
