"""Process lifetimes of a fleet's actor systems: every process ends when the service does.

Thespian forks one process per actor and detaches its admin (``setsid`` and a double fork, so
the admin's parent is init and it sits in a session of its own). Nothing ties those processes
to the service that started them, so:

- a shard host or fleet supervisor whose parent dies is killed with it (``die_with_parent``:
  Linux's parent-death signal, set race-free: if the parent is already gone, exit now);
- the process that opened an actor system (a fleet's, or ``twin node``'s) is watched from
  inside the system; when it is gone the system is stopped from outside
  (:func:`stop_actor_system`), as ``fleet.close()`` would have done. ``OwnerWatch`` is that
  watch as an actor of its own, for ``twin node``; the fleet supervisor does it itself.

Protocol (``OwnerWatch``)
-------------------------
``WatchOwner``  owner → watch: stop the actor system at ``admin_port`` once ``pid`` is gone.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from thespian.actors import Actor, ActorAddress, WakeupMessage

log = structlog.get_logger("twin.hosting")

NODE_CAPABILITY = "twin.node"   # every twin actor system on processes carries it
OWNER_CHECK_S = 1.0
_PR_SET_PDEATHSIG = 1
_SHUTDOWN = ("from twin.hosting.listen import listen_on; listen_on({host!r}); "
             "from thespian.actors import ActorSystem; "
             "ActorSystem({base!r}, {{'Admin Port': {port}}}).shutdown()")


def own_process(capabilities: dict[str, Any] | None) -> bool:
    """Whether an actor runs in a process of its own: twin's multi-process actor systems carry
    ``NODE_CAPABILITY``; the embedded one (no capabilities) runs actors in the caller's."""
    return NODE_CAPABILITY in (capabilities or {})


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the process that forked it dies (Linux; a
    no-op elsewhere and outside a forked child)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
    if os.getppid() != parent.pid:              # it died before we asked: nobody will tell
        os.kill(os.getpid(), signal.SIGKILL)


def start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), to tell it from a later reuse of its
    number; None where /proc is not there or the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int, started: str | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (a zombie does
    not: its parent just has not reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                    # alive, another user's
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return not sys.platform.startswith("linux")
    return fields[0] != "Z" and (started is None or fields[19] == started)


def stop_actor_system(base: str, admin_port: int, host: str) -> None:
    """Stop the actor system at ``host:admin_port`` from a process of its own (an actor
    cannot wait for its own system's shutdown)."""
    path = os.pathsep.join(p for p in sys.path if p)   # twin importable as it is here
    subprocess.Popen([sys.executable, "-c", _SHUTDOWN.format(host=host, base=base,
                                                            port=admin_port)],
                     start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     env={**os.environ, "PYTHONPATH": path})


@dataclass(frozen=True, slots=True)
class WatchOwner:
    pid: int
    base: str
    admin_port: int
    host: str


class OwnerWatch(Actor):  # type: ignore[misc]
    """Stops its actor system when the process that opened it is gone (``twin node``)."""

    def __init__(self, capabilities: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.watch: WatchOwner | None = None
        self.started: str | None = None
        if own_process(capabilities):
            die_with_parent()

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any],
                                   requirements: dict[str, Any]) -> bool:
        """Created on the node named in the requirements, never on another system of the
        convention."""
        wanted = (requirements or {}).get(NODE_CAPABILITY)
        return wanted is None or capabilities.get(NODE_CAPABILITY) == wanted

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, WatchOwner) and self.watch is None:
            self.watch = message
            self.started = start_time(message.pid)
            self.wakeupAfter(OWNER_CHECK_S)
        elif isinstance(message, WakeupMessage) and self.watch is not None:
            if alive(self.watch.pid, self.started):
                self.wakeupAfter(OWNER_CHECK_S)
                return
            log.error("node_process_gone", reason="owner process exited",
                      offender=f"pid-{self.watch.pid}", action="stop actor system")
            stop_actor_system(self.watch.base, self.watch.admin_port, self.watch.host)
