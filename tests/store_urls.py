"""Store URLs for the tests that run on both databases (a helper module, not a test).

* SQLite: a file in the test's temporary directory.
* PostgreSQL: the server at ``TWIN_TEST_PG_URL`` (default :data:`DEFAULT_PG_URL`), with a
  fresh schema per test. The schema is selected through libpq's ``options`` (``-csearch_path``)
  in the URL's query, so every connection the store opens (its log connection and its writer's
  pool) sees only that schema, and ``create_all`` creates the tables there. Each test's
  connections also carry the schema's name as their ``application_name``, so a test can find
  (and terminate) its own backends in ``pg_stat_activity`` without touching anyone else's.

When the server cannot be reached, PostgreSQL tests are skipped with the URL in the reason,
unless ``TWIN_REQUIRE_PG=1`` (as in CI): then they fail.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

DEFAULT_PG_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS: Final = ("sqlite", "postgresql")


class PostgresUnreachable(Exception):
    """The test server could not be reached (the message names its URL)."""


def pg_base_url() -> str:
    return os.environ.get("TWIN_TEST_PG_URL") or DEFAULT_PG_URL


def pg_required() -> bool:
    return os.environ.get("TWIN_REQUIRE_PG") == "1"


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory}/fleet.db"


def backend_of(url: str) -> str:
    return make_url(url).get_backend_name()


def application_name(url: str) -> str:
    """The ``application_name`` a :func:`pg_schema` URL gives its connections."""
    name = make_url(url).query.get("application_name")
    if not isinstance(name, str):
        raise ValueError(f"{redacted(url)} names no application_name")
    return name


@dataclass(frozen=True, slots=True)
class PgSchema:
    base_url: str     # the server
    name: str         # the schema, also the application_name of its connections
    url: str          # the base URL, confined to this schema


def _confined(base_url: str, schema: str) -> str:
    url = make_url(base_url)
    options = url.query.get("options")
    extra = f"-csearch_path={schema}"
    merged = f"{options} {extra}" if isinstance(options, str) and options else extra
    # render_as_string percent-encodes the query: options=-csearch_path%3Dt_...
    return url.update_query_dict({"options": merged, "application_name": schema}
                                 ).render_as_string(hide_password=False)


def create_pg_schema(base_url: str) -> PgSchema:
    """A fresh, empty schema on the server at ``base_url``.

    Raises :class:`PostgresUnreachable` when the server does not answer.
    """
    name = f"t_{uuid.uuid4().hex}"
    admin = create_engine(base_url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
    except DBAPIError as error:
        raise PostgresUnreachable(
            f"PostgreSQL at {redacted(base_url)} is unreachable "
            f"({type(error.orig).__name__}: {' '.join(str(error.orig).split())})") from None
    finally:
        admin.dispose()
    return PgSchema(base_url, name, _confined(base_url, name))


def drop_pg_schema(schema: PgSchema) -> None:
    """Drop the schema and everything in it."""
    admin = create_engine(schema.base_url, poolclass=NullPool)
    try:
        with admin.begin() as conn:
            # backends a failed test left behind (a fleet never closed, a lock holder) would
            # make the drop wait: end them first
            conn.execute(text("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                              "WHERE application_name = :name AND pid <> pg_backend_pid()"),
                         {"name": schema.name})
            conn.execute(text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(text(f'DROP SCHEMA "{schema.name}" CASCADE'))
    finally:
        admin.dispose()
