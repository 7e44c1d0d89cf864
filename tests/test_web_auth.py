"""Bearer-token auth of the live view: required off loopback, failures rate-limited by a
bucket that refills by itself, the token never echoed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient
from pytest_aiohttp.plugin import AiohttpClient

from twin import Fleet, FleetModel, VirtualClock
from twin.web import AuthConfigError, FailureLimiter, LiveServer, create_app
from twin.web.auth import bearer_from, check_token, is_loopback

TOKEN = "s3cret-token-0123456789abcdef"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def web_fleet(model: FleetModel, clock: VirtualClock) -> Iterator[Fleet]:
    with Fleet(model, clock=clock) as running:
        yield running


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, web_fleet: Fleet, monotonic: FakeMonotonic
                 ) -> TestClient:
    limiter = FailureLimiter(burst=3, refill_per_s=0.5, clock=monotonic)
    app = create_app(web_fleet, token=TOKEN, host="0.0.0.0", limiter=limiter)
    return await aiohttp_client(app)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_public_address_without_a_token_is_refused_before_starting(web_fleet: Fleet) -> None:
    with pytest.raises(AuthConfigError, match=r"host='0\.0\.0\.0'.*TWIN_TOKEN"):
        create_app(web_fleet, host="0.0.0.0")
    with pytest.raises(AuthConfigError, match=r"10\.1\.2\.3"):
        LiveServer(web_fleet, host="10.1.2.3")
    with pytest.raises(AuthConfigError, match="at least 16"):
        check_token("short", "0.0.0.0")
    with pytest.raises(AuthConfigError, match="subprotocol"):
        check_token("a token with spaces in it", "0.0.0.0")
    assert check_token(None, "127.0.0.1") is None
    assert check_token(None, "::1") is None
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and not is_loopback("0.0.0.0")


def test_the_docs_state_the_loopback_rule_the_code_applies() -> None:
    # all of 127.0.0.0/8 is reachable from this machine only, so all of it counts as loopback
    assert is_loopback("127.255.255.254") and is_loopback("::1")
    assert not is_loopback("128.0.0.1") and not is_loopback("::2")
    root = Path(__file__).resolve().parent.parent
    for doc in (root / "README.md", root / "docs" / "live-view.md"):
        assert "`127.0.0.0/8`" in doc.read_text(), doc


async def test_without_a_token_the_data_is_refused_with_a_clear_401(client: TestClient) -> None:
    response = await client.get("/api/rollups/acme")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in (await response.json())["error"]
    wrong = await client.get("/api/rollups/acme", headers=bearer("x" * 20))
    assert wrong.status == 401
    assert (await wrong.json())["error"] == "invalid bearer token"
    assert (await client.get("/metrics")).status == 401
    # that was this address's third failure (burst=3): the fourth is not even checked
    assert (await client.post("/api/ingest", data=b"")).status == 429


async def test_with_the_token_everything_answers(client: TestClient) -> None:
    assert (await client.get("/api/rollups/acme", headers=bearer())).status == 200
    assert (await client.get("/metrics", headers=bearer())).status == 200


async def test_the_page_and_the_probes_need_no_token(client: TestClient) -> None:
    for path in ("/", "/static/app.js", "/healthz", "/readyz"):
        assert (await client.get(path)).status == 200, path


async def test_failed_attempts_are_rate_limited_then_forgiven_by_time(
        client: TestClient, monotonic: FakeMonotonic) -> None:
    for _ in range(3):
        assert (await client.get("/api/rollups/acme", headers=bearer("y" * 20))).status == 401
    limited = await client.get("/api/rollups/acme", headers=bearer())
    assert limited.status == 429           # even the right token waits: no oracle while blocked
    assert limited.headers["Retry-After"] == "2"
    assert "retry in 2 s" in (await limited.json())["error"]
    monotonic.now += 2.0                   # one attempt refilled: nobody had to unlock anything
    assert (await client.get("/api/rollups/acme", headers=bearer())).status == 200
    monotonic.now += 60.0
    assert (await client.get("/api/rollups/acme", headers=bearer())).status == 200


async def test_the_token_is_never_echoed(client: TestClient, web_fleet: Fleet) -> None:
    answers = [await client.get("/api/rollups/acme", headers=bearer(TOKEN + "x")),
               await client.get("/api/rollups/nowhere", headers=bearer()),
               await client.get("/metrics", headers=bearer())]
    for response in answers:
        assert TOKEN not in await response.text()
        assert all(TOKEN not in value for value in response.headers.values())
    assert TOKEN not in repr(LiveServer(web_fleet, host="0.0.0.0", token=TOKEN))


async def test_a_websocket_takes_the_token_as_a_header_or_a_subprotocol(client: TestClient
                                                                        ) -> None:
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect("/ws")
    assert refused.value.status == 401
    by_header = await client.ws_connect("/ws", headers=bearer())
    assert (await by_header.receive_json(timeout=5))["type"] in {"batch", "clock", "tree"}
    await by_header.close()
    by_protocol = await client.ws_connect("/ws", protocols=("twin.v1", f"twin.bearer.{TOKEN}"))
    assert by_protocol.protocol == "twin.v1"
    await by_protocol.close()


def test_bearer_is_read_from_the_header_first_then_the_subprotocol() -> None:
    assert bearer_from("Bearer abc", "twin.bearer.def") == "abc"
    assert bearer_from(None, "twin.v1, twin.bearer.def") == "def"
    assert bearer_from("Basic abc", None) is None


def test_the_limiter_keeps_a_bounded_table_and_forgets_forgiven_addresses() -> None:
    monotonic = FakeMonotonic()
    limiter = FailureLimiter(burst=2, refill_per_s=1.0, max_clients=100, clock=monotonic)
    for n in range(500):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) == 100
    monotonic.now += 10
    assert limiter.retry_after("10.0.1.243") == 0
    assert len(limiter) == 99
