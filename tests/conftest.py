from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pg_private import PrivatePostgres, private_postgres_or_skip
from pytest_aiohttp.plugin import AiohttpClient
from store_urls import (
    BACKENDS,
    PostgresUnreachable,
    create_pg_schema,
    drop_pg_schema,
    pg_base_url,
    pg_required,
    sqlite_url,
)

from twin import Fleet, FleetModel, RecordingTransport, VirtualClock
from twin.web import create_app

START = 1767225600.0   # 2026-01-01T00:00:00Z


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=START)


@pytest.fixture
def transport() -> RecordingTransport:
    """A command transport that keeps deliveries; the test acknowledges or rejects them."""
    return RecordingTransport()


@pytest.fixture
def example_dict() -> dict[str, Any]:
    """The fleet of the issue's example, plus a second site and region."""
    return {
        "defaults": {"report_interval_s": 10, "offline_after_s": 30},
        "owners": [{"id": "acme", "regions": [
            {"id": "north", "sites": [
                {"id": "alpha", "assets": [
                    {"id": "t-01", "kind": "turbine", "rated_kw": 3000},
                    {"id": "b-01", "kind": "battery", "rated_kw": 5000, "capacity_kwh": 13500},
                    {"id": "c-01", "kind": "charger", "rated_kw": 150}]},
                {"id": "gamma", "assets": [
                    {"id": "t-02", "kind": "turbine", "rated_kw": 2000}]}]},
            {"id": "south", "sites": [
                {"id": "beta", "assets": [
                    {"id": "b-02", "kind": "battery", "rated_kw": 10, "capacity_kwh": 13.5}]}]},
        ]}],
        "groups": {"grid/ercot": ["acme/north/alpha", "b-02"]},
    }


@pytest.fixture
def model(example_dict: dict[str, Any]) -> FleetModel:
    return FleetModel.from_dict(example_dict)


@pytest.fixture
def web_fleet(model: FleetModel, clock: VirtualClock) -> Iterator[Fleet]:
    """The example fleet, embedded, for the live view's and HTTP API's tests."""
    with Fleet(model, clock=clock) as running:
        yield running


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, web_fleet: Fleet) -> TestClient:
    """An HTTP client of the live view's app over ``web_fleet`` (no token: loopback)."""
    return await aiohttp_client(create_app(web_fleet, tick_s=0.05))


@pytest.fixture(params=[1, 2], ids=["1-shard", "2-shards"])
def shards(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(params=["simpleSystemBase", "multiprocTCPBase"], ids=["embedded", "procs"])
def system(request: pytest.FixtureRequest) -> str:
    """The actor-system base: embedded (one process), or one process per shard host."""
    return str(request.param)


@pytest.fixture
def fleet(model: FleetModel, clock: VirtualClock, shards: int, system: str) -> Iterator[Fleet]:
    """The behavioural suite's fleet, on every hosting: 1 or 2 shards, embedded or in
    processes of their own."""
    with Fleet(model, clock=clock, shards=shards, system=system) as running:
        yield running


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, to stop and start (see tests/pg_private.py);
    skipped, saying why, where none can be made, unless TWIN_REQUIRE_PG=1."""
    server = private_postgres_or_skip()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A store URL: an SQLite file, or a fresh schema on the PostgreSQL test server."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    try:
        schema = create_pg_schema(pg_base_url())
    except PostgresUnreachable as error:
        if pg_required():
            pytest.fail(f"{error}, and TWIN_REQUIRE_PG=1 requires it", pytrace=False)
        pytest.skip(f"{error}; set TWIN_TEST_PG_URL to test on PostgreSQL "
                    f"(TWIN_REQUIRE_PG=1 turns this skip into a failure)")
    try:
        yield schema.url
    finally:
        drop_pg_schema(schema)
