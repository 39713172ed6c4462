"""Database engine, sessions and migrations. Services never commit: the scopes here do."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from lancang.settings import Settings

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_AFTER_COMMIT = "lancang_after_commit"


def _configure_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers; FULL sync so a commit is on disk before we acknowledge it.

    Write transactions start with BEGIN IMMEDIATE: several processes (web, DICOM, worker)
    write the same file, and a deferred transaction that reads first and writes later
    fails with SQLITE_BUSY_SNAPSHOT instead of waiting. Read-only sessions stay deferred.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = "DEFERRED" if conn.get_execution_options().get("lancang_readonly") else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """An engine plus its session factories; built from settings, never at import time."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(
            self.engine.execution_options(lancang_readonly=True), expire_on_commit=False
        )
        self._migrated = False
        self._lock = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def session(self, *, readonly: bool = False) -> Session:
        session = (self._read if readonly else self._write)()
        return session

    @contextmanager
    def scope(self, *, readonly: bool = False) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on error, then runs after-commit hooks."""
        session = self.session(readonly=readonly)
        try:
            yield session
            commit(session)
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (idempotent, cheap when current)."""
        with self._lock:
            if self._migrated:
                return
            from alembic import command
            from alembic.runtime.migration import MigrationContext
            from alembic.script import ScriptDirectory

            config = alembic_config(self.url)
            heads = set(ScriptDirectory.from_config(config).get_heads())
            with self.engine.connect() as conn:
                current = set(MigrationContext.configure(conn).get_current_heads())
            if current != heads:
                command.upgrade(config, "head")
            self._migrated = True

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run callback once the session's transaction commits; a rollback drops it.

    This is how work is announced (Celery tasks, notifications) without ever pointing
    at a row that is not committed yet.
    """
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def commit(session: Session) -> None:
    """Commit, then run the hooks collected by after_commit."""
    session.commit()
    callbacks = session.info.pop(_AFTER_COMMIT, [])
    for callback in callbacks:
        callback()


@event.listens_for(Session, "after_rollback")
def _drop_hooks(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


@lru_cache
def _database_for(url: str) -> Database:
    return Database(url)


def get_database(settings: Settings) -> Database:
    """The process-wide Database for these settings, migrated to head on first use."""
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = _database_for(settings.effective_database_url)
    db.upgrade()
    return db
