"""Files that are rewritten whole (the old contents or the new ones, never a part), and
writes that an interrupt does not cut."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
  """Writes ``text`` to ``path`` through a synced temporary file and an atomic rename.

  Whatever interrupts the process (Ctrl-C, ``SIGKILL``, a full disk), ``path`` holds
  either what it held before or ``text``.
  """
  path = os.fspath(path)
  folder, name = os.path.split(path)
  tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
  try:
    with open(tmp, "w", newline="") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
  """``rows`` as CSV text (the :mod:`csv` module's default dialect)."""
  out = io.StringIO()
  csv.writer(out).writerows(rows)
  return out.getvalue()


@contextlib.contextmanager
def interrupts_held(hold: bool = True, *, second_raises: bool = False) -> Iterator[None]:
  """Holds Ctrl-C (SIGINT) until the block ends, then raises ``KeyboardInterrupt``.

  For work that must not stop half-way: an import of a compiled extension, a checkpoint
  being written (orbax's threads and event loop, stopped mid-write, print dozens of
  tracebacks). With ``second_raises``, a second Ctrl-C raises at once (the user insists).
  Only when ``hold``, in the main thread, and where the handler is Python's own or ours.
  """
  if not hold or threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.getsignal(signal.SIGINT)
  if previous not in (signal.default_int_handler, None) and not getattr(previous, "_held", False):
    yield  # the program handles Ctrl-C itself
    return
  caught: list[int] = []

  def handler(signum: int, frame: Any) -> None:
    del frame
    if caught and second_raises:
      raise KeyboardInterrupt
    caught.append(signum)

  handler._held = True  # type: ignore[attr-defined]
  signal.signal(signal.SIGINT, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
  if caught:
    raise KeyboardInterrupt
