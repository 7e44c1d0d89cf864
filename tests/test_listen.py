"""The actor systems' own sockets: a fleet on one machine accepts nothing from off it; a fleet
across machines listens on the address it is told, and so does each node.

Thespian alone binds every socket to all interfaces and unpickles what arrives; see
:mod:`twin.hosting.listen`. The listening sockets of every process are read from /proc, and a
connection is tried from each of the machine's other addresses. The two-machine case runs
the node in a network namespace joined by a veth pair (root only; skipped otherwise).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.polling import wait_until
from tests.proc_tree import (
    Procs,
    in_netns,
    kill_left,
    listening,
    local_addresses,
    netns,
    service,
)
from tests.test_multihost import listening as admin_listening
from tests.test_multiproc import actor_system_processes
from tests.test_stop import Lines, twin
from twin import Fleet, FleetModel, TwinError, VirtualClock
from twin.hosting.listen import LOOPBACK, listen_on, listening_host
from twin.hosting.system import free_port
from twin.testing import fleet_dict

START = 1767225600.0


def small_model() -> FleetModel:
    return FleetModel.from_dict(fleet_dict(owners=1, regions=1, sites=2, assets=2))


@pytest.mark.slow
def test_a_one_machine_fleet_on_processes_accepts_nothing_from_off_the_machine() -> None:
    with Fleet(small_model(), clock=VirtualClock(START), system="multiprocTCPBase",
               shards=2) as fleet:
        admin = actor_system_processes([s["pid"] for s in fleet.shards()])
        sockets = {pid: listening(pid) for pid in admin | {os.getpid()}}
        ports = {port for found in sockets.values() for _, port in found}
        assert fleet._core.hosting.admin_port in ports
        assert len(ports) >= 5             # ours, admin, logger, supervisor, 2 shard hosts
        exposed = {pid: found for pid, found in sockets.items()
                   if any(address != LOOPBACK for address, _ in found)}
        assert exposed == {}
        for address in local_addresses():  # try to get in as another machine would
            for port in ports:
                with socket.socket() as probe:
                    probe.settimeout(2)
                    assert probe.connect_ex((address, port)) != 0, (address, port)


def test_the_adaptation_leaves_other_systems_addresses_alone() -> None:
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    listen_on(LOOPBACK)
    local = TCPv4ActorAddress(None, 0, external=True)
    assert local.bindname == local.sockname == (LOOPBACK, 0)
    remote = TCPv4ActorAddress("10.1.2.3", 1900, external=True)
    assert remote.sockname == ("10.1.2.3", 1900)


def test_bind_must_be_an_ipv4_address_of_this_machine() -> None:
    with pytest.raises(TwinError, match=r"bind='fleet\.example' is not an IPv4 address"):
        Fleet(small_model(), system="multiprocTCPBase", shards=2, bind="fleet.example")
    with pytest.raises(TwinError, match=r"bind='192\.0\.2\.254' is not an address of this "
                                        r"machine"):
        Fleet(small_model(), system="multiprocTCPBase", shards=2, bind="192.0.2.254")


def test_one_process_listens_on_one_address() -> None:
    listen_on(LOOPBACK)
    other = sorted(local_addresses())
    if not other:
        pytest.skip("this machine has no address but loopback")
    with pytest.raises(TwinError, match=r"already listen on '127\.0\.0\.1'; bind=.* needs a "
                                        r"process of its own"):
        Fleet(small_model(), system="multiprocTCPBase", shards=2, bind=other[0])
    assert listening_host() == LOOPBACK


@dataclass(frozen=True)
class Link:
    """A network namespace (another "machine") joined to this one by a veth pair."""

    namespace: str
    host: str                   # this machine's end
    peer: str                   # the namespace's end

    @property
    def netns(self) -> str:
        """The namespace as /proc/PID/ns/net names it."""
        return f"net:[{os.stat(f'/run/netns/{self.namespace}').st_ino}]"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def link() -> Iterator[Link]:
    tag = uuid.uuid4().hex[:6]
    name, veth = f"twin-{tag}", f"tw{tag}"
    subnet = f"10.{200 + os.getpid() % 50}.{int(tag, 16) % 250}"
    try:
        ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot make a network namespace here (needs root and iproute2): {error}")
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        ip("link", "set", f"{veth}p", "netns", name)
        ip("addr", "add", f"{subnet}.1/24", "dev", veth)
        ip("link", "set", veth, "up")
        ip("-n", name, "addr", "add", f"{subnet}.2/24", "dev", f"{veth}p")
        ip("-n", name, "link", "set", f"{veth}p", "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield Link(name, f"{subnet}.1", f"{subnet}.2")
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30,
                       check=False)                 # gone with the namespace already
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                       check=True)


@pytest.mark.slow
def test_a_fleet_and_its_node_on_two_machines_listen_only_where_they_are_told(
        tmp_path: Path, link: Link) -> None:
    model = tmp_path / "fleet.json"
    model.write_text(json.dumps(fleet_dict(owners=1, regions=1, sites=2, assets=2)))
    admin, node_port = free_port(), free_port()
    with ExitStack() as stack:
        serve = twin(tmp_path, "serve", "serve", "--fleet", str(model), "--port", "0",
                     "--shards", "2", "--nodes", "local,n2", "--admin-port", str(admin),
                     "--bind", link.host)
        stack.callback(serve.wait, 30)
        stack.callback(serve.kill)
        leader = stack.enter_context(killed_at_exit(lambda: service([serve.pid], [admin])))
        wait_until(lambda: _listens(link.host, admin), timeout_s=60)
        assert not admin_listening(admin)          # nothing on loopback: only where told
        with (tmp_path / "node.log").open("w") as log:
            node = subprocess.Popen(
                ["ip", "netns", "exec", link.namespace, sys.executable, "-m", "twin.cli",
                 "node", "--join", f"{link.host}:{admin}", "--name", "n2",
                 "--port", str(node_port)],
                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        stack.callback(node.wait, 30)
        stack.callback(node.kill)
        assert link.netns != netns(os.getpid())
        stack.enter_context(killed_at_exit(lambda: in_netns(link.netns)))
        assert f"listening on {link.peer}:{node_port}" in Lines(node.stdout).next()
        banner = Lines(serve.stdout).next()       # printed once n2 joined and hosts shard 1
        assert "live view of" in banner, banner
        http_port = int(banner.split(" at ", 1)[1].split("/")[2].rsplit(":", 1)[1])

        leader_sockets = {(a, p) for pid in leader() for a, p in listening(pid)}
        node_sockets = {(a, p) for pid in in_netns(link.netns) for a, p in listening(pid)}
        assert (LOOPBACK, http_port) in leader_sockets          # the live view: its own --host
        assert {a for a, p in leader_sockets if p != http_port} == {link.host}
        assert {a for a, _ in node_sockets} == {link.peer}
        assert len(node_sockets) >= 3               # its admin, logger, watch, shard host


def _listens(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


@contextmanager
def killed_at_exit(find: Callable[[], Procs]) -> Iterator[Callable[[], Procs]]:
    """``find`` the processes of a group, remembering every one seen; at exit, SIGKILL
    those left (a failed test must not leak processes)."""
    seen: Procs = {}

    def current() -> Procs:
        found = find()
        seen.update(found)
        return found

    try:
        yield current
    finally:
        current()
        kill_left(seen)
