"""Shared fixtures: a Lancang runtime on embedded defaults or on real servers.

`backend` is parametrised by tests that must hold on both shapes: "embedded" (SQLite +
filesystem store + file broker) and "servers" (PostgreSQL + S3 that checks signatures +
Redis). Each test gets its own data dir, database and bucket.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage.settings import Settings

pytest_plugins = ["tests.fixtures_services"]


def _cheap_password_hashing() -> None:
    """argon2 at its production cost takes 135 ms a hash and as long to verify, and fixtures
    create users by the dozen (16 per test in tests/imaging/test_routes_authz.py): 0.5 ms at
    the lowest cost, in this process only. The hashes are real argon2id, so child processes
    (CLI, workers, `lancang serve`) verify them at their own cost and rehash them as the
    product would; tests/storage/test_password_cost.py checks that the product's cost stays."""
    from argon2 import PasswordHasher

    from storage import identity

    identity._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


_cheap_password_hashing()


@dataclass
class Servers:
    postgres: object
    redis: object
    s3: object


@pytest.fixture
def servers(postgres_server, redis_server, s3_server) -> Servers:
    return Servers(postgres_server, redis_server, s3_server)


def embedded_settings(tmp_path, **overrides) -> Settings:
    """Embedded settings in tmp_path/var, whose database starts at the newest migration."""
    settings = Settings(_env_file=None, data_dir=tmp_path / "var", **overrides)
    if not settings.database_url:
        _seed_migrated_sqlite(settings.data_dir / "lancang.db")
    return settings


_SQLITE_TEMPLATE: list[Path] = []


def _seed_migrated_sqlite(target: Path) -> None:
    """Put a copy of a database migrated once per session where a new data dir's database
    goes: running the migrations takes 0.44 s a database, and most tests make one or more.
    Bootstrap then finds the schema current. tests/storage/test_db.py migrates empty ones."""
    if target.exists():
        return
    if not _SQLITE_TEMPLATE:
        from storage.db import Database

        folder = Path(tempfile.mkdtemp(prefix="lancang-migrated-"))
        atexit.register(shutil.rmtree, folder, True)
        database = Database(f"sqlite:///{folder / 'template.db'}")
        try:
            database.upgrade()
        finally:
            database.dispose()
        _SQLITE_TEMPLATE.append(folder / "template.db")
    target.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(_SQLITE_TEMPLATE[0])) as source, closing(sqlite3.connect(target)) as copy:
        source.backup(copy)  # a consistent copy, WAL mode and all


def server_settings(tmp_path, servers: Servers, **overrides) -> Settings:
    s3 = servers.s3
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "var",
        database_url=servers.postgres.create_migrated_database(),
        object_store="s3",
        s3_endpoint=s3.endpoint,
        s3_public_endpoint=f"http://{s3.endpoint}",
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_bucket=f"t-{uuid.uuid4().hex[:12]}",
        s3_region=s3.region,
        broker_url=servers.redis.url,
        secret_key="test-secret-" + uuid.uuid4().hex,
        audit_key="test-audit-key-" + uuid.uuid4().hex,
        **overrides,
    )


@pytest.fixture(params=["embedded", "servers"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(request, tmp_path, backend) -> Settings:
    if backend == "servers":
        return server_settings(tmp_path, request.getfixturevalue("servers"))
    return embedded_settings(tmp_path)


@pytest.fixture
def runtime(settings):
    from storage.runtime import bootstrap

    runtime = bootstrap(settings, component="test")
    yield runtime
    runtime.db.dispose()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process (CLI, serve, worker) use these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCANG_")}
    for name, value in settings.model_dump().items():
        if value in (None, ""):
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
            if not value:
                continue
        env[f"LANCANG_{name.upper()}"] = str(value)
    return env
