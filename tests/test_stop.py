"""Every process twin starts ends when its service is stopped in any of the usual ways.

The services are real: ``twin serve`` with shard processes and a store (its writer is a
process too), and ``twin node``. Their processes are recorded from /proc before the stop
(see :mod:`tests.proc_tree`); the test then waits, with a deadline, for every one to end.
The ways: SIGTERM to the main process; SIGTERM to its process group; SIGTERM to every
process of the service at once (what systemd does to a unit's cgroup); SIGINT to the
process group (Ctrl-C in a terminal); SIGKILL of the main process (the parent dying). For
``twin serve`` each runs after a failover (every process of a node SIGKILLed, its shard
restarted on the fleet's own machine: the case that used to leave the supervisor behind),
and the cgroup stop without one; ``twin node`` is stopped by the cgroup stop and by SIGKILL
of its main process. Last, the mechanism underneath: an actor process dies with its parent.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.polling import wait_until
from tests.proc_tree import Procs, kill_left, running, service
from tests.test_multihost import listening
from tests.test_multiproc import parent
from twin import Fleet, FleetModel, VirtualClock
from twin.hosting.system import free_port
from twin.testing import fleet_dict

pytestmark = pytest.mark.slow

STOP_S = 30.0           # generous: 2 cores shared with other test runs


class Lines:
    """A child's stdout, read by a thread so that a test waits for a line with a deadline."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)

    def next(self, timeout_s: float = 60.0) -> str:
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout_s}s") from None


@dataclass
class Started:
    proc: subprocess.Popen[str]
    port: int                   # the admin port of its actor system
    banner: str


def twin(tmp_path: Path, name: str, *args: str) -> subprocess.Popen[str]:
    """``twin ARGS`` in a session of its own (as a service manager starts it); its log goes
    to a file beside the test's."""
    with (tmp_path / f"{name}.log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "twin.cli", *args],
                                stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True)


@contextmanager
def cleaned_up(stack: ExitStack) -> Iterator[list[Procs]]:
    """Whatever happens, kill what the test recorded and every process its services still
    run (a failed test must not leak processes)."""
    recorded: list[Procs] = []
    try:
        yield recorded
    finally:
        stack.close()
        for procs in recorded:
            kill_left(procs)


def start_fleet(tmp_path: Path, stack: ExitStack, recorded: list[Procs], *,
                node: bool) -> tuple[Started, Started | None]:
    model = tmp_path / "fleet.json"
    model.write_text(json.dumps(fleet_dict(owners=2, regions=1, sites=2, assets=3)))
    admin = free_port()
    extra = ["--nodes", "local,n2", "--heartbeat-timeout", "1"] if node else []
    proc = twin(tmp_path, "serve", "serve", "--fleet", str(model), "--port", "0",
                "--shards", "2", "--admin-port", str(admin),
                "--store", f"sqlite:///{tmp_path / 'fleet.db'}", *extra)
    stack.callback(_reap, proc)      # (callbacks run last first: record, then reap)
    stack.callback(lambda: recorded.append(service([proc.pid], [admin])))
    lines = Lines(proc.stdout)
    joined = None
    if node:
        wait_until(lambda: listening(admin), timeout_s=60)
        joined = start_node(tmp_path, stack, recorded, admin)
    banner = lines.next()
    assert "live view of" in banner, banner
    return Started(proc, admin, banner), joined


def start_node(tmp_path: Path, stack: ExitStack, recorded: list[Procs],
               leader: int) -> Started:
    port = free_port()
    proc = twin(tmp_path, "node", "node", "--join", f"127.0.0.1:{leader}", "--name", "n2",
                "--port", str(port))
    stack.callback(_reap, proc)
    stack.callback(lambda: recorded.append(service([proc.pid], [port])))
    banner = Lines(proc.stdout).next()
    assert "joined" in banner, banner
    return Started(proc, port, banner)


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=STOP_S)


def metric(banner: str, name: str) -> float | None:
    url = banner.split(" at ", 1)[1].split(maxsplit=1)[0]
    with suppress(OSError), urllib.request.urlopen(f"{url}metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return None


def fail_over(fleet: Started, node: Started) -> None:
    """SIGKILL every process of the node; wait for its shard to run again on the fleet's
    machine, refilled."""
    doomed = service([node.proc.pid], [node.port])
    assert len(doomed) >= 3                      # launcher, admin, shard host (and logger)
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    node.proc.wait(timeout=STOP_S)
    wait_until(lambda: metric(fleet.banner, "twin_shard_recoveries_total") == 1.0,
               timeout_s=60)


def signal_each(procs: Procs, signum: int) -> None:
    for pid in running(procs):
        os.kill(pid, signum)


Stop = Callable[[subprocess.Popen[str], Procs], None]
WAYS: dict[str, Stop] = {
    "sigterm-main": lambda main, procs: main.send_signal(signal.SIGTERM),
    "sigterm-group": lambda main, procs: os.killpg(main.pid, signal.SIGTERM),
    "sigterm-every-process": lambda main, procs: signal_each(procs, signal.SIGTERM),
    "sigint-group": lambda main, procs: os.killpg(main.pid, signal.SIGINT),
    "sigkill-main": lambda main, procs: main.kill(),
}


def stop_and_wait(started: Started, procs: Procs, way: str) -> None:
    WAYS[way](started.proc, procs)
    started.proc.wait(timeout=STOP_S)        # reaped: the main process is not a zombie
    wait_until(lambda: not running(procs), timeout_s=STOP_S)


def stop_fleet_and_wait(fleet: Started, recorded: list[Procs], way: str) -> None:
    procs = service([fleet.proc.pid], [fleet.port])
    recorded.append(procs)
    assert len(procs) >= 7, procs     # main, writer, admin, logger, supervisor, 2 shard hosts
    stop_and_wait(fleet, procs, way)


@pytest.mark.parametrize("way", list(WAYS))
def test_after_a_failover_no_process_of_twin_serve_outlives_its_stop(tmp_path: Path,
                                                                     way: str) -> None:
    with ExitStack() as stack, cleaned_up(stack) as recorded:
        fleet, node = start_fleet(tmp_path, stack, recorded, node=True)
        assert node is not None
        fail_over(fleet, node)
        stop_fleet_and_wait(fleet, recorded, way)


def test_no_process_of_twin_serve_outlives_a_stop_of_its_cgroup(tmp_path: Path) -> None:
    with ExitStack() as stack, cleaned_up(stack) as recorded:
        fleet, _ = start_fleet(tmp_path, stack, recorded, node=False)
        stop_fleet_and_wait(fleet, recorded, "sigterm-every-process")


@pytest.mark.parametrize("way", ["sigterm-every-process", "sigkill-main"])
def test_no_process_of_twin_node_outlives_its_stop(tmp_path: Path, way: str) -> None:
    with ExitStack() as stack, cleaned_up(stack) as recorded:
        _, node = start_fleet(tmp_path, stack, recorded, node=True)
        assert node is not None
        procs = service([node.proc.pid], [node.port])
        recorded.append(procs)
        assert len(procs) >= 4, procs       # launcher, admin, logger, watch, shard host
        stop_and_wait(node, procs, way)


def test_a_fleets_actor_processes_die_with_their_parent() -> None:
    """Nothing tells a Thespian actor that its parent died: without the kernel's
    parent-death signal a shard host whose supervisor was killed would run for ever."""
    model = FleetModel.from_dict(fleet_dict(owners=1, regions=1, sites=2, assets=2))
    with Fleet(model, clock=VirtualClock(0.0), system="multiprocTCPBase", shards=2) as fleet:
        hosts = [s["pid"] for s in fleet.shards()]
        supervisor = parent(hosts[0])
        admin = parent(supervisor)
        everything = service([admin])
        try:
            os.kill(admin, signal.SIGKILL)
            wait_until(lambda: not running({p: everything[p] for p in [supervisor, *hosts]}),
                       timeout_s=STOP_S)
        finally:
            kill_left(everything)   # Thespian's own logger does not follow its admin
