"""One writer per directory: a lock file that names its holder.

A search (``out_dir``), :func:`adam_jax.tuning.train` (``checkpoint_dir``),
:func:`adam_jax.checkpoint.save_rotating` and the ``adam-jax`` commands (``--out``) take
the lock of the directory they write: the file ``.adam_jax.lock`` in it, holding the
holder's process id, host name, start time and command line. A second writer is refused
at once with a :class:`DirectoryLockedError` that names the holder. The process that holds
a lock may take it again (a search's checkpoints are written inside its ``out_dir``).

A lock is stale, and is taken over with a one-line :class:`StaleLockWarning`, when its
holder is gone: on this host, when its process is no longer running (or its process id
now belongs to a process started later); from another host (a shared file system), when
it has not been refreshed for :data:`STALE_AFTER_S` seconds: every holder refreshes its
locks (their modification time) every :data:`REFRESH_S` seconds from a background thread.

A lock taken inside :func:`scope` is given back when the scope ends (a search, a training
run, a command); one taken outside any scope (``save_rotating`` called from a user's loop)
is held until the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

LOCK_NAME = ".adam_jax.lock"
STALE_AFTER_S = 600.0  # a lock from another host not refreshed for this long is stale
REFRESH_S = 60.0  # how often a holder refreshes its locks
_UNREADABLE_GRACE_S = 10.0  # a lock file being written (empty) is not stale before this


class DirectoryLockedError(ValueError):
  """Raised when another process holds the lock of the directory to write."""


class StaleLockWarning(UserWarning):
  """Warned when the lock of a process that is gone is taken over."""


_held: dict[str, dict[str, Any]] = {}  # directory (real path) -> the record we wrote
_owner = os.getpid()  # whose _held it is (a forked child holds nothing)
_state = threading.local()  # .scopes: the lists of directories locked in each open scope
_guard = threading.Lock()
_refresher: threading.Thread | None = None


def _locks() -> dict[str, dict[str, Any]]:
  global _held, _owner
  if _owner != os.getpid():
    _held, _owner = {}, os.getpid()
  return _held


def holds(directory: str | os.PathLike[str]) -> bool:
  """Whether this process holds the lock of ``directory`` or of a folder above it."""
  path = _real(directory)
  held = _locks()
  while True:
    if path in held:
      return True
    parent = os.path.dirname(path)
    if parent == path:
      return False
    path = parent


def acquire(directory: str | os.PathLike[str]) -> None:
  """Takes the lock of ``directory`` (created if needed), unless this process holds it.

  Raises:
    DirectoryLockedError: another process holds it.
  """
  if holds(directory):
    return
  path = _real(directory)
  os.makedirs(path, exist_ok=True)
  lock = os.path.join(path, LOCK_NAME)
  record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "process_start": _process_start(os.getpid()), "token": uuid.uuid4().hex,
            "command": " ".join(sys.argv)[:300]}
  for _ in range(5):
    if _create(lock, record):
      with _guard:
        _locks()[path] = record
      scopes = getattr(_state, "scopes", None)
      if scopes:
        scopes[-1].append(path)
      _start_refresher()
      return
    text, holder = _read(lock)
    if text is None:  # given back in the meantime
      continue
    why = _stale(lock, holder)
    if why is None:
      raise DirectoryLockedError(f"{directory} is in use by another run ({_who(holder)}); "
                                 "wait for it to end, or use another folder")
    if _take_over(lock, text):
      warnings.warn(f"took over the lock of {directory}: its holder ({_who(holder)}) {why}",
                    StaleLockWarning, stacklevel=3)
  raise DirectoryLockedError(f"{directory}: could not take its lock ({lock}); another process "
                             "keeps taking it")


def release(directory: str | os.PathLike[str]) -> None:
  """Gives back the lock of ``directory`` if this process holds it."""
  path = _real(directory)
  with _guard:
    record = _locks().pop(path, None)
  if record is None:
    return
  lock = os.path.join(path, LOCK_NAME)
  _, holder = _read(lock)
  if holder is not None and holder.get("token") == record["token"]:
    with contextlib.suppress(OSError):
      os.unlink(lock)


@contextlib.contextmanager
def scope() -> Iterator[None]:
  """Locks taken inside (by this thread) are given back when the block ends."""
  if not hasattr(_state, "scopes"):
    _state.scopes = []
  _state.scopes.append([])
  try:
    yield
  finally:
    for path in reversed(_state.scopes.pop()):
      release(path)


def scoped(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` run in a :func:`scope`: the locks it takes are given back when it returns."""

  @functools.wraps(fn)
  def wrapper(*args: Any, **kwargs: Any) -> Any:
    with scope():
      return fn(*args, **kwargs)

  return wrapper


def _real(directory: str | os.PathLike[str]) -> str:
  return os.path.realpath(os.path.expanduser(os.fspath(directory)))


def _create(lock: str, record: dict[str, Any]) -> bool:
  """Creates ``lock`` holding ``record`` unless it exists (complete the moment it appears)."""
  tmp = f"{lock}.{record['token']}.tmp"
  with open(tmp, "w") as f:
    json.dump(record, f)
    f.flush()
    os.fsync(f.fileno())
  try:
    os.link(tmp, lock)  # atomic, fails if the lock exists
    return True
  except FileExistsError:
    return False
  except OSError:  # a file system without hard links: create it exclusively
    try:
      fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(record, f)
    return True
  finally:
    with contextlib.suppress(OSError):
      os.unlink(tmp)


def _read(lock: str) -> tuple[str | None, dict[str, Any] | None]:
  """The lock file's text (None if there is none) and its record (None if unreadable)."""
  try:
    with open(lock) as f:
      text = f.read()
  except FileNotFoundError:
    return None, None
  except OSError:
    return "", None
  try:
    record = json.loads(text)
  except ValueError:
    return text, None
  return text, record if isinstance(record, dict) else None


def _stale(lock: str, holder: dict[str, Any] | None) -> str | None:
  """Why the lock's holder is gone, or None while it may still be running."""
  try:
    age = time.time() - os.stat(lock).st_mtime
  except OSError:
    return "gave it back"
  if holder is None:
    return (f"left it unreadable {age:.0f} s ago" if age > _UNREADABLE_GRACE_S else None)
  if holder.get("host") != socket.gethostname():
    return (f"has not refreshed it for {age:.0f} s (more than {STALE_AFTER_S:.0f} s)"
            if age > STALE_AFTER_S else None)
  pid = holder.get("pid")
  if not isinstance(pid, int):
    return "left it without a process id"
  if pid == os.getpid():
    return "was an earlier process with this process id"  # we would know the lock
  if not _running(pid):
    return "is no longer running"
  start = holder.get("process_start")
  if start is not None and _process_start(pid) not in (None, start):
    return "is no longer running (its process id belongs to another process now)"
  return None


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # another user's process
    return True
  return True


def _process_start(pid: int) -> int | None:
  """The process's start time in clock ticks since boot (Linux), or None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      text = f.read()
    return int(text[text.rindex(")") + 2:].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _take_over(lock: str, text: str) -> bool:
  """Moves a stale lock away, if it is still the one judged stale; True when done."""
  aside = f"{lock}.stale-{uuid.uuid4().hex}"
  try:
    os.rename(lock, aside)
  except FileNotFoundError:
    return False
  try:
    with open(aside) as f:
      moved = f.read()
    if moved != text:  # another process took it over and wrote a live lock: put it back
      with contextlib.suppress(OSError):
        os.link(aside, lock)
      return False
    return True
  finally:
    with contextlib.suppress(OSError):
      os.unlink(aside)


def _who(holder: dict[str, Any] | None) -> str:
  if holder is None:
    return "unknown: the lock file is unreadable"
  started = holder.get("started")
  when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
          if isinstance(started, (int, float)) else "?")
  command = holder.get("command")
  return (f"pid {holder.get('pid')} on {holder.get('host')}, since {when}"
          + (f": {command}" if command else ""))


def _start_refresher() -> None:
  global _refresher
  with _guard:
    if _refresher is not None and _refresher.is_alive():
      return
    _refresher = threading.Thread(target=_refresh, name="adam_jax-lock-refresh", daemon=True)
    _refresher.start()


def _refresh() -> None:
  while True:
    time.sleep(REFRESH_S)
    with _guard:
      paths = list(_locks())
    for path in paths:
      with contextlib.suppress(OSError):
        os.utime(os.path.join(path, LOCK_NAME))


@atexit.register
def _release_all() -> None:
  for path in list(_locks()):
    release(path)
