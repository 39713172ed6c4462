"""Database engine, sessions and migrations. Services never commit: the scopes here do."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from storage.settings import Settings

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
log = logging.getLogger("lancang.db")

# Relaxed commits (audit records of reads) reach the disk within this many seconds.
RELAXED_FLUSH_S = 0.1
# How long an SQLite statement waits for another connection's lock before failing.
BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: Engine, synchronous: str = "FULL", autocheckpoint: bool = True) -> None:
    """WAL for concurrent readers; FULL sync so a commit is on disk before we acknowledge it.

    Write transactions start with BEGIN IMMEDIATE: several processes (web, DICOM, worker)
    write the same file, and a deferred transaction that reads first and writes later
    fails with SQLITE_BUSY_SNAPSHOT instead of waiting. Read-only sessions stay deferred.
    Without `autocheckpoint` the connection's commits never checkpoint (WalKeeper does).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if not autocheckpoint:
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = "DEFERRED" if conn.get_execution_options().get("lancang_readonly") else "IMMEDIATE"
        # On the driver's connection: through exec_driver_sql this cost ~25 us per transaction,
        # twice per read request (bench/dicomweb.py).
        with _driver_errors(f"BEGIN {mode}"):
            conn.connection.driver_connection.execute(f"BEGIN {mode}")


def make_engine(url: str, *, synchronous: str = "FULL", autocheckpoint: bool = True) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine, synchronous, autocheckpoint)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def schema_filter(dialect_name: str):
    """Alembic's include_object for this dialect: leave out schema objects declared for
    another database only (`info={"only_on": "postgresql"}`, as the PostgreSQL pattern
    indexes on patients are), so autogenerate neither adds nor drops them elsewhere."""

    def include_object(obj, name, type_, reflected, compare_to) -> bool:
        declared = obj if not reflected else compare_to
        only_on = getattr(declared, "info", {}).get("only_on") if declared is not None else None
        return only_on is None or only_on == dialect_name

    return include_object


class Database:
    """An engine plus its session factories; built from settings, never at import time."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(
            self.engine.execution_options(lancang_readonly=True), expire_on_commit=False
        )
        self._relaxed = self._relaxed_engine()
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

    @contextmanager
    def relaxed_scope(self, *, driver: bool = False) -> Iterator[Connection]:
        """A write unit of work whose commit does not wait for the disk.

        For records whose loss in a power cut is tolerable for a fraction of a second but
        not in a crash of this process: audit records of reads. The commit is complete and
        visible, in order with every other commit, and survives the process dying at once;
        it reaches the disk within RELAXED_FLUSH_S (SQLite: synchronous=NORMAL and a
        background fdatasync of the WAL; PostgreSQL: synchronous_commit=off, flushed by its
        WAL writer within 3 x wal_writer_delay, 0.6 s by default). Any later fully synced
        commit carries it to disk too: both logs are written in commit order.

        A Core connection in a transaction, not an ORM session: its users write one row.
        With `driver=True` on SQLite, the transaction runs on the driver's connection itself
        (a DriverTransaction, for `Prepared` statements only): SQLAlchemy's begin, commit and
        connection wrapping cost more than the read audit's two statements (~80 of ~110 us).
        """
        engine, keeper = self._relaxed
        if driver and keeper is not None:
            with _driver_transaction(engine) as conn:
                yield conn
            keeper.note_commit()
            return
        with engine.begin() as conn:
            if keeper is None:
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn
        if keeper is not None:
            keeper.note_commit()

    def _relaxed_engine(self) -> tuple[Engine, WalKeeper | None]:
        if not self.is_sqlite:
            return self.engine, None
        # Relaxed commits never checkpoint themselves: past wal_autocheckpoint pages every
        # commit would, with two fsyncs each (measured: 0.8 ms instead of 0.1 ms per read
        # audit). The keeper checkpoints in the background instead.
        engine = make_engine(self.url, synchronous="NORMAL", autocheckpoint=False)
        database = engine.url.database
        wal = Path(database + "-wal") if database and database != ":memory:" else None
        return engine, WalKeeper(engine, wal)

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
        engine, keeper = self._relaxed
        if keeper is not None:
            keeper.close()
            engine.dispose()
        self.engine.dispose()


class WalKeeper:
    """Looks after the WAL for relaxed SQLite commits, in one background thread.

    Within RELAXED_FLUSH_S of a relaxed commit it checkpoints (PASSIVE: copies what no
    reader still needs into the database file, never waits) and fdatasyncs the WAL file.
    fdatasync on any descriptor of the file flushes all its written pages (Linux, POSIX
    fsync semantics); SQLite writes the WAL sequentially and ignores a torn tail after a
    power cut, so what is lost is at most the last interval's relaxed commits, never order.

    Checkpointing here rather than in the commits keeps them cheap, and it is what lets the
    WAL restart from its beginning: SQLite rewinds it at the next write once a checkpoint has
    copied everything and no reader is still in it. When readers overlap without pause and
    the WAL passes WAL_RESTART_PAGES anyway, a TRUNCATE checkpoint waits up to
    WAL_RESTART_WAIT_S for them (writers wait meanwhile) so the file stays bounded.
    """

    WAL_RESTART_PAGES = 10_000  # ~40 MB with 4 KiB pages
    WAL_RESTART_WAIT_S = 0.2

    def __init__(self, engine: Engine, wal: Path | None, interval: float = RELAXED_FLUSH_S):
        self.engine = engine
        self.wal = wal
        self.interval = interval
        self._dirty = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._closed = False

    def note_commit(self) -> None:
        if self.wal is None:
            return
        self._dirty.set()
        # (Re)start the thread if there is none alive: after a fork the child inherits the
        # Thread object but not the thread.
        if self._thread is None or not self._thread.is_alive():
            with self._start:
                if not self._closed and (self._thread is None or not self._thread.is_alive()):
                    self._thread = threading.Thread(target=self._run, name="wal-keeper", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            if self._closed:
                return
            time.sleep(self.interval)
            self.flush()

    def close(self) -> None:
        """Flush what is pending and end the thread."""
        self.flush()
        self._closed = True
        self._dirty.set()  # wakes the thread, which sees _closed and returns

    def flush(self) -> None:
        if self.wal is None or self._closed or not self._dirty.is_set():
            return
        self._dirty.clear()  # a commit during the sync sets it again: flushed next round
        try:
            self.checkpoint()
        except (sqlite3.Error, SQLAlchemyError) as exc:  # the flush below still makes them durable
            log.warning("db.wal_checkpoint.failed path=%s error=%s", self.wal, exc)
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:  # checkpointed and removed: the database file was synced
            return
        try:
            os.fdatasync(fd)
        except OSError as exc:
            log.error("db.wal_flush.failed path=%s error=%s", self.wal, exc)
            self._dirty.set()
        finally:
            os.close(fd)

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint, and a TRUNCATE one if the WAL is still past its bound.
        Returns SQLite's (busy, pages in the WAL, pages checkpointed) of the last one."""
        raw = self.engine.raw_connection()  # autocommit: a checkpoint runs outside transactions
        try:
            cursor = raw.cursor()
            result = tuple(cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
            if result[1] > self.WAL_RESTART_PAGES:
                cursor.execute(f"PRAGMA busy_timeout={int(self.WAL_RESTART_WAIT_S * 1000)}")
                try:
                    result = tuple(cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
                finally:
                    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.close()
            return result
        finally:
            raw.close()


class DriverTransaction:
    """An SQLite write transaction on the driver's own connection (Database.relaxed_scope)."""

    def __init__(self, dialect, driver):
        self.dialect, self.driver = dialect, driver


@contextmanager
def _driver_errors(statement: str) -> Iterator[None]:
    """sqlite3's errors as SQLAlchemy raises them (OperationalError for a busy database, ...):
    callers catch SQLAlchemyError, web/errors.py answers DBAPIError."""
    try:
        yield
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


@contextmanager
def _driver_transaction(engine: Engine) -> Iterator[DriverTransaction]:
    with _driver_errors("BEGIN IMMEDIATE"):
        pooled = engine.raw_connection()  # the connect event has set the engine's pragmas
    try:
        driver = pooled.driver_connection
        with _driver_errors("BEGIN IMMEDIATE"):
            driver.execute("BEGIN IMMEDIATE")  # as every write transaction here (_configure_sqlite)
        try:
            yield DriverTransaction(engine.dialect, driver)
        except BaseException:
            if driver.in_transaction:
                driver.execute("ROLLBACK")
            raise
        with _driver_errors("COMMIT"):
            driver.execute("COMMIT")
    finally:
        pooled.close()


class Prepared:
    """A Core statement compiled once per dialect and, on SQLite, run on the DBAPI cursor.

    The one-row statements every read request runs (the token lookup, the read audit's
    append) cost SQLite a few microseconds; SQLAlchemy's execution path around each (cache
    key, execution context, result wrapping) cost ~60 us more (bench/dicomweb.py: token lookup
    7 us on the cursor against ~80 us through Connection.execute; a read audit 54 against
    ~200 us). Values still go through the statement's own types (their public bind and
    result processors), so rows read and written are the same as SQLAlchemy's. Other
    databases run the statement through SQLAlchemy: a network round trip dominates there.
    No expanding (IN-list) parameters.
    """

    def __init__(self, statement, *, column_keys: tuple[str, ...] | None = None):
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._sqlite: tuple | None = None

    def _compiled(self, dialect) -> tuple:
        if self._sqlite is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
            names = tuple(compiled.positiontup or ())
            binds = tuple((name, None if compiled.binds[name].required else compiled.binds[name].value,
                           compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                          for name in names)  # the value: a literal's (LIMIT 1), else given per call
            # (no column defaults are filled in: an INSERT names every column it writes)
            selected = getattr(self.statement, "selected_columns", ())
            results = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in selected)
            self._sqlite = (compiled.string, binds, results if any(results) else None)
        return self._sqlite

    def execute(self, conn: "Connection | DriverTransaction", params: dict) -> list:
        """The statement's rows (tuples; empty for a write), inside `conn`'s transaction."""
        if conn.dialect.name != "sqlite":
            result = conn.execute(self.statement, params)
            return [tuple(row) for row in result] if result.returns_rows else []
        sql, binds, results = self._compiled(conn.dialect)
        values = [params[name] if name in params or literal is None else literal for name, literal, _ in binds]
        values = [value if process is None else process(value) for value, (_, _, process) in zip(values, binds)]
        driver = conn.driver if isinstance(conn, DriverTransaction) else conn.connection.driver_connection
        with _driver_errors(sql):
            rows = driver.execute(sql, values).fetchall()
        if results is None or not rows:
            return rows
        return [tuple(value if process is None else process(value) for value, process in zip(row, results))
                for row in rows]


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
