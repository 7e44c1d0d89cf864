"""The store's options reach it through ``Fleet(store=URL, store_options={...})`` too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from store_urls import (
    PostgresUnreachable,
    create_pg_schema,
    drop_pg_schema,
    pg_base_url,
    pg_required,
)

from twin import Fleet, FleetModel, Store, VirtualClock

START = 1767225600.0


@pytest.fixture
def pg_url() -> Iterator[str]:
    try:
        schema = create_pg_schema(pg_base_url())
    except PostgresUnreachable as error:
        if pg_required():
            pytest.fail(f"{error}, and TWIN_REQUIRE_PG=1 requires it", pytrace=False)
        pytest.skip(f"{error}; set TWIN_TEST_PG_URL to test on PostgreSQL")
    try:
        yield schema.url
    finally:
        drop_pg_schema(schema)


def test_store_options_reach_the_store_a_url_opens(model: FleetModel, tmp_path: Path) -> None:
    with Fleet(model, clock=VirtualClock(START), store=f"sqlite:///{tmp_path / 'f.db'}",
               store_options={"busy_timeout_s": 3.0, "queue_batches": 7}) as fleet:
        assert fleet.store is not None
        assert (fleet.store.busy_timeout_s, fleet.store.statement_timeout_s) == (3.0, 3.0)
        assert fleet.store.writer.queue_batches == 7


def test_an_unknown_store_option_is_named_with_the_valid_ones(model: FleetModel,
                                                             tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"'busy_timeout' is not an option of the store; "
                                        r"valid: .*busy_timeout_s.*statement_timeout_s"):
        Fleet(model, store=f"sqlite:///{tmp_path / 'f.db'}",
              store_options={"busy_timeout": 3.0})


def test_store_options_with_a_store_object_say_where_the_options_go(
        model: FleetModel, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        with pytest.raises(TypeError, match=r"store_options needs store=URL, not Store"):
            Fleet(model, store=store, store_options={"busy_timeout_s": 3.0})
    finally:
        store.close()


def test_a_timeout_that_is_not_a_positive_number_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"statement_timeout_s must be a positive number of "
                                         r"seconds, got 0"):
        Store(f"sqlite:///{tmp_path / 'f.db'}", statement_timeout_s=0)


def test_the_statement_timeout_bounds_every_connection_of_the_fleet_on_postgresql(
        model: FleetModel, pg_url: str) -> None:
    with Fleet(model, clock=VirtualClock(START), store=pg_url,
               store_options={"busy_timeout_s": 5.0, "statement_timeout_s": 1.5}) as fleet:
        assert fleet.store is not None
        with fleet.store.engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
            with pytest.raises(Exception, match="statement timeout"):
                conn.execute(text("SELECT pg_sleep(3)"))
