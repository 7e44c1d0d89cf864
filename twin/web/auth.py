"""Bearer-token authentication for the live view, with failed attempts rate-limited.

Rules:

* bound to loopback, a token is optional; bound to anything else, one is required (there is
  no default token, and the server refuses to start without one);
* a configured token is required on the data endpoints (``/api/*``, ``/ws``, ``/metrics``);
  the page itself (static files, no data) and the probes (``/healthz``, ``/readyz``) are open;
* failed attempts draw from a per-address token bucket; an empty bucket answers 429 with
  ``Retry-After`` without checking the token, and refills by itself: no lockout for a person
  to undo;
* the token is compared in constant time and never logged or echoed.

Browsers cannot set headers on a websocket, so ``/ws`` also takes the token as the
subprotocol ``twin.bearer.<token>`` (next to ``twin.v1``); tokens are therefore restricted to
characters that are valid in an HTTP token (``secrets.token_urlsafe`` makes such tokens).
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MIN_TOKEN_LENGTH = 16
WS_PROTOCOL = "twin.v1"
WS_BEARER_PREFIX = "twin.bearer."
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")


class AuthConfigError(ValueError):
    """The server's authentication settings are unsafe or malformed."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str | None, host: str) -> str | None:
    """The token to require for a server bound to ``host``; raises :class:`AuthConfigError`
    when it is missing for a non-loopback address, or unsafe."""
    if token is None:
        if not is_loopback(host):
            raise AuthConfigError(
                f"host={host!r} is not a loopback address, so a bearer token is required "
                "(--token-file PATH or the TWIN_TOKEN environment variable)")
        return None
    if len(token) < MIN_TOKEN_LENGTH:
        raise AuthConfigError(f"the bearer token is {len(token)} characters long; use at least "
                              f"{MIN_TOKEN_LENGTH} (e.g. python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))')")
    if not _TOKEN_CHARS.fullmatch(token):
        raise AuthConfigError("the bearer token has characters outside A-Z a-z 0-9 and "
                              "!#$%&'*+-.^_`|~ (it must fit a websocket subprotocol); "
                              "secrets.token_urlsafe() makes valid tokens")
    return token


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    """A token bucket per client address, drawn from by *failed* attempts only.

    ``burst`` failures are allowed at once; then one more every ``1 / refill_per_s``
    seconds. The table of addresses is bounded (``max_clients``, oldest forgotten first).
    """

    def __init__(self, burst: int = 10, refill_per_s: float = 0.5, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        if not refill_per_s > 0:
            raise ValueError(f"refill_per_s must be positive, got {refill_per_s!r}")
        self.burst = burst
        self.refill_per_s = refill_per_s
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, address: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(float(self.burst),
                                bucket.tokens + (now - bucket.updated) * self.refill_per_s)
            bucket.updated = now
            self._buckets.move_to_end(address)
        return bucket

    def retry_after(self, address: str) -> int:
        """0 when ``address`` may try; else whole seconds until its next attempt."""
        if address not in self._buckets:
            return 0                     # never failed, or long forgiven: nothing to keep
        bucket = self._bucket(address)
        if bucket.tokens >= self.burst:
            del self._buckets[address]   # fully refilled: the address is forgiven
            return 0
        if bucket.tokens >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self.refill_per_s))

    def failed(self, address: str) -> None:
        bucket = self._bucket(address)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def __len__(self) -> int:
        return len(self._buckets)


def bearer_from(authorization: str | None, ws_protocols: str | None) -> str | None:
    """The token a request presents: ``Authorization: Bearer <t>`` or, on a websocket
    upgrade, the subprotocol ``twin.bearer.<t>``."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if ws_protocols:
        for offered in ws_protocols.split(","):
            protocol = offered.strip()
            if protocol.startswith(WS_BEARER_PREFIX):
                return protocol[len(WS_BEARER_PREFIX):]
    return None


def token_matches(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())
