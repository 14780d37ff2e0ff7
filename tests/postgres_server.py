"""A throw-away PostgreSQL server for the tests, started and removed by the test run itself.

Debian's ``postgresql`` package provides the binaries (``/usr/lib/postgresql/<version>/bin``;
``.ci/run`` installs it when missing). A cluster is created with ``initdb`` in a temporary
folder, listens on a free port of 127.0.0.1 only, takes a password (given to clients as
``PGPASSWORD``, as the docs advise) and is stopped and deleted at the end. initdb and
postgres refuse to run as root: under root they run as the package's ``postgres`` user.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

REQUIRED = "ADAM_JAX_REQUIRE_POSTGRES"  # set by .ci/run: a missing server fails, not skips
USER = "adam"  # the cluster's superuser, with a password


def binaries() -> str | None:
  """The folder of ``initdb``, ``pg_ctl`` and ``postgres``: on PATH, or Debian's newest."""
  found = shutil.which("initdb")
  folders = [os.path.dirname(os.path.realpath(found))] if found else []
  folders += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda d: [int(n) for n in re.findall(r"\d+", d)], reverse=True)
  for folder in folders:
    if all(os.access(os.path.join(folder, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
      return folder
  return None


def _unprivileged_user() -> str | None:
  for name in ("postgres", "nobody"):
    try:
      pwd.getpwnam(name)
      return name
    except KeyError:
      continue
  return None


def why_not() -> str | None:
  """Why no server can be started here, or None."""
  if binaries() is None:
    return ("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs "
            "it): the real-database tests need its initdb and pg_ctl")
  if importlib.util.find_spec("psycopg") is None:
    return "psycopg is not installed: pip install -e '.[postgres]' (or '.[dev]')"
  if os.geteuid() == 0:
    if _unprivileged_user() is None:
      return "running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as"
    if shutil.which("runuser") is None and shutil.which("setpriv") is None:
      return "running as root without runuser or setpriv to run PostgreSQL as another user"
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """One PostgreSQL cluster in a temporary folder: ``with Server() as server: ...``."""

  def __init__(self) -> None:
    self.bin = binaries()
    self.password = secrets.token_hex(12)
    # Under root the folder is handed to another user, who must reach it: /tmp, not a
    # TMPDIR below root's home.
    root = os.geteuid() == 0 and os.path.isdir("/tmp")
    self.dir = tempfile.mkdtemp(prefix="adam-jax-pg-", dir="/tmp" if root else None)
    self.data = os.path.join(self.dir, "data")
    self.log = os.path.join(self.dir, "server.log")
    self.port = 0
    self._as: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse root
      user = _unprivileged_user()
      entry = pwd.getpwnam(user)
      os.chown(self.dir, entry.pw_uid, entry.pw_gid)
      if shutil.which("runuser"):
        self._as = ["runuser", "-u", user, "--"]
      else:
        self._as = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                    "--init-groups", "--"]
    os.chmod(self.dir, 0o700)

  def _run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    done = subprocess.run(self._as + list(command), cwd=self.dir, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode:
      log = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
      raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): "
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}{log}")
    return done

  def __enter__(self) -> Server:
    try:
      pwfile = os.path.join(self.dir, "password")
      with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o644), "w") as f:
        f.write(self.password + "\n")
      self._run(os.path.join(self.bin, "initdb"), "-D", self.data, "-U", USER,
                "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8",
                "--locale=C")
      os.remove(pwfile)
      for attempt in range(3):  # a free port can be taken before the server binds it
        self.port = _free_port()
        try:
          self.start()
          break
        except RuntimeError:
          if attempt == 2:
            raise
      return self
    except BaseException:
      self.close()
      raise

  def __exit__(self, *exc: object) -> None:
    self.close()

  def start(self) -> None:
    # fsync off: a stopped server loses nothing (the OS holds its writes); commits stay
    # synchronous, so that an immediate stop keeps every transaction a client saw commit.
    options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c full_page_writes=off -c max_connections=60")
    self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l", self.log, "-w",
              "-t", "60", "-o", options, "start", timeout=90)

  def stop(self, mode: str = "fast") -> None:
    """Stops the server (``fast``: sessions cut at once; ``immediate``: as in a crash)."""
    self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop")

  def restart(self, seconds: float) -> None:
    """Stops the server, waits ``seconds``, starts it again."""
    self.stop()
    time.sleep(seconds)
    self.start()

  def close(self) -> None:
    if os.path.exists(os.path.join(self.data, "postmaster.pid")):
      try:
        self.stop("immediate")
      except Exception:  # noqa: BLE001 - stopped already; the folder goes anyway
        pass
    shutil.rmtree(self.dir, ignore_errors=True)

  def env(self) -> dict[str, str]:
    """What a client needs besides the URL: the password, as libpq reads it."""
    return {"PGPASSWORD": self.password}

  def create_database(self, name: str) -> str:
    """Creates database ``name``; returns its URL (no password in it: see :meth:`env`)."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                         password=self.password, autocommit=True) as conn:
      conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"
