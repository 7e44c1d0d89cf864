"""Where a fleet's actor systems listen: one address, loopback unless the user names another.

Thespian's TCP and UDP transports bind every socket they listen on (the admin's, each actor
process's, the caller's own endpoint) to all interfaces: ``IPActorAddress`` keeps the address
it advertises in ``sockname`` but binds ``bindname = ('', port)``, and thespian 4.0.1 has no
capability or environment variable to change that (``THESPIAN_BASE_IPADDR`` only changes the
advertised address). Every message is a pickle, so a listening socket there is a way to run
code as the fleet's user for anyone who can reach the machine.

:func:`listen_on` adapts that one class, in this process and every process it forks (Thespian
forks its admin and its actors without exec): an endpoint created without an explicit
address then advertises *and* binds ``host``. Addresses of other systems (a convention
leader, a remote actor) carry their own address and are left alone.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

from twin.core.errors import TwinError

LOOPBACK = "127.0.0.1"
ANY = "0.0.0.0"                 # Thespian's own behaviour: every interface


class _Setting:
    """This process's listening address, set once by its first actor system."""

    lock = threading.Lock()
    host: str | None = None


def check_bind(host: str, option: str = "bind") -> str:
    """``host`` if it is an IPv4 address this machine can listen on, else a TwinError."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise TwinError(f"{option}={host!r} is not an IPv4 address (the actor systems speak "
                        f"TCP over IPv4; use {LOOPBACK!r} or an address of this "
                        "machine)") from None
    with socket.socket() as probe:
        try:
            probe.bind((host, 0))
        except OSError as error:
            raise TwinError(f"{option}={host!r} is not an address of this machine "
                            f"({error.strerror})") from None
    return host


def listen_on(host: str) -> None:
    """Make every Thespian endpoint this process creates from now on (and every process it
    forks) listen on ``host`` only, and advertise it. One address per process: asking for
    another than the first raises (endpoints already open cannot move)."""
    check_bind(host)
    with _Setting.lock:
        if _Setting.host is not None and _Setting.host != host:
            raise TwinError(f"this process's actor systems already listen on "
                            f"{_Setting.host!r}; bind={host!r} needs a process of its own")
        if _Setting.host is None:
            _install(host)
            _Setting.host = host


def listening_host() -> str | None:
    """The address set by :func:`listen_on` in this process, if any."""
    return _Setting.host


def _install(host: str) -> None:
    from thespian.system.transport import IPBase

    original = IPBase.IPActorAddress.__init__

    def __init__(self: Any, af: int, socktype: int, proto: int, baseaddr: Any, port: Any,
                 external: Any = False) -> None:
        chosen = _Setting.host
        if baseaddr is not None or chosen is None or chosen == ANY:
            original(self, af, socktype, proto, baseaddr, port, external)
            return
        original(self, af, socktype, proto, chosen, port, external)
        self.bindname = self.sockname           # not ('', port): this address only

    IPBase.IPActorAddress.__init__ = __init__
    if host != ANY:
        IPBase.thisSystem.add_local_addr(host)  # Thespian's "is this address mine?" list
