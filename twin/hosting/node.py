"""``twin node``: an actor system on another machine that joins a fleet's (DESIGN decision 1).

The fleet's own actor system is the convention leader; a node joins it over TCP with the
capability ``twin.node=<name>``, and the fleet places shard hosts on it by that name. All
machines run the same code on a trusted network: Thespian pickles every message. A node
listens on one address only (by default the one it reaches the leader from), and its actor
system stops when this command's process is gone, however it went.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import TextIO

from twin.core.errors import TwinError

# Thespian re-registers a node with its leader every 7 min 22 s by default and counts a
# member dead after three missed periods: ask for 5 s. (A node started before its leader
# still did not join within 20 s in our tests: start nodes after the fleet.)
REREGISTRATION = "0:05"


def parse_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TwinError(f"--join must be HOST:PORT (the fleet's admin port), got {value!r}")
    return host, int(port)


def route_to(leader: tuple[str, int]) -> str:
    """This machine's address on the way to ``leader`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(leader)
        except OSError as error:
            raise TwinError(f"--join {leader[0]}:{leader[1]}: no route to it "
                            f"({error.strerror}); name this node's address with --bind") from None
        host: str = probe.getsockname()[0]
        return host


def parse_capabilities(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise TwinError(f"--capability must be NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def run_node(join: str, name: str, port: int, capabilities: Mapping[str, str],
             out: TextIO = sys.stdout, bind: str | None = None) -> int:
    """Join the fleet at ``join`` as node ``name``, listening on ``bind`` only (default: the
    address that reaches the leader), and serve until SIGTERM or SIGINT."""
    leader = parse_address(join)
    if name == "local":
        raise TwinError("--name 'local' is the fleet's own machine; pick another name")
    from twin.hosting.listen import check_bind, listen_on

    host = check_bind(bind, "--bind") if bind is not None else route_to(leader)
    os.environ.setdefault("CONVENTION_REREGISTRATION_PERIOD", REREGISTRATION)
    from thespian.actors import ActorSystem

    from twin.hosting.lifeline import NODE_CAPABILITY, OwnerWatch, WatchOwner

    caps = {**capabilities, "Admin Port": port, "Convention Address.IPv4": leader,
            NODE_CAPABILITY: name}
    listen_on(host)
    system = ActorSystem("multiprocTCPBase", caps, transientUnique=True)
    try:
        # if this process dies without a word (SIGKILL), the watch stops the system
        watch = system.createActor(OwnerWatch, targetActorRequirements={NODE_CAPABILITY: name})
        system.tell(watch,
                    WatchOwner(os.getpid(), "multiprocTCPBase", port, host))
        print(f"twin node {name!r}: listening on {host}:{port}, joined "
              f"{leader[0]}:{leader[1]}; Ctrl-C to leave", file=out, flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        system.shutdown()
    print(f"twin node {name!r}: left", file=out, flush=True)
    return 0
