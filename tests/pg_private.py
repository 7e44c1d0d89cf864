"""A PostgreSQL server of a test's own, to stop and start at will (a helper module, not a test).

The machine's shared server (``TWIN_TEST_PG_URL``, port 5432) serves every test and must never
be stopped by one. A test that needs a database outage starts its own: ``initdb`` in a fresh
temporary directory and ``pg_ctl`` on a free loopback port, both run as the ``postgres`` OS
user (PostgreSQL refuses to run as root): directly when the tests run as that user, through
``runuser -u postgres --`` when they run as root. The server listens on 127.0.0.1 only, with
its Unix socket inside its own directory, and trusts local connections as ``postgres``.

:meth:`PrivatePostgres.stop` and :meth:`PrivatePostgres.start` make an outage and end it;
:meth:`PrivatePostgres.close` stops the server (by ``pg_ctl`` on its own data directory, or
failing that by the pid in its own ``postmaster.pid``) and deletes the directory.

:func:`private_postgres_or_skip` (behind the ``private_pg`` fixture of ``conftest.py``) is
what a test uses: it skips, saying why, where no server can be made here (no ``initdb``, no
``postgres`` user, not root), unless ``TWIN_REQUIRE_PG=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

import pytest

SHARED_PORT: Final = 5432            # the machine's server: never ours to stop
OS_USER: Final = "postgres"
_START_TIMEOUT_S: Final = 60


class PostgresUnavailable(Exception):
    """No private server can be made on this machine (the message says why)."""


def _bindir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit()
                        else 0)
    if not candidates:
        raise PostgresUnavailable("initdb is not installed (not on PATH nor in "
                                  "/usr/lib/postgresql/*/bin); install Debian's postgresql")
    return Path(candidates[-1]).parent


def _as_postgres() -> list[str]:
    """The prefix that runs a command as the postgres OS user."""
    try:
        user = pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresUnavailable(f"there is no {OS_USER!r} OS user to run the server as"
                                  ) from None
    if os.geteuid() == user.pw_uid:
        return []
    if os.geteuid() != 0:
        raise PostgresUnavailable(f"the tests run as uid {os.geteuid()}, neither root nor "
                                  f"{OS_USER!r}: cannot start a server as {OS_USER!r}")
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("runuser is not installed (util-linux)")
    return [runuser, "-u", OS_USER, "--"]


def _free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port != SHARED_PORT:
            return port


class PrivatePostgres:
    """A private server in a temporary directory; ``url`` is its SQLAlchemy URL."""

    def __init__(self) -> None:
        self._bin = _bindir()
        self._prefix = _as_postgres()
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="twin-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False
        user = pwd.getpwnam(OS_USER)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        try:
            self._run("initdb", "-D", str(self.data), "-U", OS_USER, "-A", "trust",
                      "--no-sync", "-E", "UTF8")
            self.start()
        except BaseException:
            self.close()
            raise
        self.url = f"postgresql+psycopg://{OS_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._prefix, str(self._bin / tool), *args],
                              capture_output=True, text=True, timeout=_START_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{tool} {' '.join(args)} failed ({done.returncode}): "
                                      f"{done.stderr.strip()[-2000:]} {tail}")

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        assert self.port != SHARED_PORT
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   f"-c fsync=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(_START_TIMEOUT_S), "start")
        self.running = True

    def stop(self) -> None:
        """Stop the server now (``-m fast``: sessions are ended, as a crash would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.running = False

    def close(self) -> None:
        """Stop the server if it runs, then delete its directory."""
        if self.running:
            try:
                self.stop()
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                self._kill_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        """The last resort: the pid this server wrote, and nothing else."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)                     # raises once it is gone
                time.sleep(0.05)
        self.running = False


def private_postgres_or_skip() -> PrivatePostgres:
    """A started private server; skips the test (fails it with ``TWIN_REQUIRE_PG=1``) when
    none can be made here, saying why."""
    try:
        return PrivatePostgres()
    except PostgresUnavailable as why:
        if os.environ.get("TWIN_REQUIRE_PG") == "1":
            pytest.fail(f"TWIN_REQUIRE_PG=1 but no private PostgreSQL server: {why}")
        pytest.skip(f"no private PostgreSQL server: {why}")
