"""What runs and what listens, read from /proc (a helper module, not a test).

A service's processes are found the way an operator would: everything below the process the
test started, plus everything in the session of the process holding a known listening port
(Thespian detaches its admin with ``setsid`` and a double fork: its parent is init, but its
session leads back to the service). Tests record these processes (pid, start time and
session, so that a reused pid is never mistaken for one of them) before they stop anything,
then wait for every one to end; :func:`kill_left` cleans up after a failed test, sessions
included (a process forked after the recording still sits in its parent's session).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

LISTEN = "0A"                   # TCP_LISTEN in /proc/net/tcp


@dataclass(frozen=True, slots=True)
class Stat:
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    started: int                # clock ticks after boot


Procs = dict[int, Stat]         # processes as recorded


def stat(pid: int) -> Stat | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return Stat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[3]),
                int(fields[19]))


def processes() -> Procs:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := stat(int(entry.name))) is not None:
            out[found.pid] = found
    return out


def alive(pid: int, recorded: Stat | None = None) -> bool:
    """Running (not gone, not a zombie waiting for its parent to reap it), and if
    ``recorded`` is given, the very process recorded then."""
    found = stat(pid)
    return (found is not None and found.state != "Z" and
            (recorded is None or found.started == recorded.started))


def running(procs: Procs) -> Procs:
    return {pid: recorded for pid, recorded in procs.items() if alive(pid, recorded)}


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _ipv4(hex_addr: str) -> str:
    return socket.inet_ntoa(bytes.fromhex(hex_addr)[::-1])


def _ipv6(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1]
                                                      for i in range(0, 16, 4)))


def listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket ``pid`` holds open in the listen state, read
    in its own network namespace; bound UDP sockets are listed too (any of them receives)."""
    inodes = socket_inodes(pid)
    found: set[tuple[str, int]] = set()
    for table, parse in (("tcp", _ipv4), ("tcp6", _ipv6), ("udp", _ipv4), ("udp6", _ipv6)):
        with suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and (fields[3] == LISTEN or table.startswith("udp")):
                    address, port = fields[1].split(":")
                    found.add((parse(address), int(port, 16)))
    return found


def holders(port: int) -> set[int]:
    """Every process of this network namespace holding a socket that listens on TCP
    ``port`` (forked children inherit their parent's sockets, so there may be several)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return {pid for pid in processes() if inodes & socket_inodes(pid)} if inodes else set()


def _with_descendants_and_sessions(table: Procs, tops: set[int], sessions: set[int]) -> Procs:
    sessions = sessions - {os.getsid(0)}        # never the test's own
    children: dict[int, list[int]] = {}
    for found in table.values():
        children.setdefault(found.ppid, []).append(found.pid)
    out = {p for p in tops if p in table}
    out |= {p for p, found in table.items() if found.sid in sessions}
    stack = list(out)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out:
                out.add(child)
                stack.append(child)
    return {p: table[p] for p in out if table[p].state != "Z"}


def service(roots: Iterable[int], ports: Iterable[int] = ()) -> Procs:
    """Live processes below ``roots`` or below a holder of ``ports``, and every process in
    the sessions of those holders."""
    table = processes()
    roots = set(roots)
    tops = set(roots)
    for port in ports:
        tops |= holders(port)
    return _with_descendants_and_sessions(
        table, tops, {table[p].sid for p in tops if p in table and p not in roots})


def netns(pid: int) -> str | None:
    with suppress(OSError):
        return os.readlink(f"/proc/{pid}/ns/net")
    return None


def in_netns(namespace: str) -> Procs:
    """Every live process in the network namespace ``namespace`` (as :func:`netns` names
    it)."""
    return {pid: found for pid, found in processes().items()
            if found.state != "Z" and netns(pid) == namespace}


def kill_left(procs: Procs) -> Procs:
    """SIGKILL those of ``procs`` still running and everything in their sessions and below
    them (a failed test must not leak processes; one forked after the recording is found
    by its session); returns what was killed."""
    killed: Procs = {}
    for _ in range(5):                          # until a round finds nothing new
        table = processes()
        left = _with_descendants_and_sessions(
            table, set(running(procs)), {found.sid for found in procs.values()})
        if not left:
            break
        for pid, found in left.items():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed[pid] = found
    return killed


def local_addresses() -> set[str]:
    """This machine's own IPv4 addresses other than loopback (from the kernel's routing
    table: each ``/32 host LOCAL`` entry)."""
    found: set[str] = set()
    with suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for above, line in pairwise(lines):
            if line.strip() == "/32 host LOCAL":
                address = above.strip().removeprefix("|-- ")
                if not address.startswith("127."):
                    found.add(address)
    return found
