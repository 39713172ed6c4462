"""Migrations and sessions behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import func, inspect, select

from storage import service
from storage.db import after_commit, schema_filter
from storage.errors import Conflict, Invalid, NotFound
from storage.models import Institution


@pytest.fixture
def migrated(request, backend, tmp_path):
    """A database migrated here from empty (the other tests' databases are copies of one
    migrated once per session: tests/conftest.py)."""
    from storage.db import Database

    if backend == "servers":
        url = request.getfixturevalue("servers").postgres.create_database()
    else:
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    database = Database(url)
    database.upgrade()
    yield database
    database.dispose()


def test_migrations_create_every_table(migrated):
    tables = set(inspect(migrated.engine).get_table_names())
    assert {"institutions", "dicom_nodes", "users", "api_tokens", "access_grants", "audit_records",
            "patients", "studies", "series", "instances", "alembic_version"} <= tables


def test_models_and_migrations_describe_the_same_schema(migrated):
    """After the migrations, autogenerate finds nothing to add or drop: every index a
    migration makes is declared in a model (the PostgreSQL-only ones marked so) and back."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from lancang.models import metadata

    with migrated.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "include_object": schema_filter(conn.dialect.name)})
        assert compare_metadata(context, metadata) == []


def test_upgrade_is_idempotent(runtime):
    runtime.db._migrated = False
    runtime.db.upgrade()
    runtime.db.upgrade()


def test_utc_datetimes_roundtrip(runtime):
    with runtime.db.scope() as session:
        inst = service.add_institution(session=session, code="C1", name="普洱市人民医院", level="city")
        inst.created_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with runtime.db.scope(readonly=True) as session:
        got = session.scalar(select(Institution).where(Institution.code == "C1"))
        assert got.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        assert got.name_zh == "普洱市人民医院"


def test_after_commit_hooks_run_only_on_commit(runtime):
    ran = []
    with runtime.db.scope() as session:
        after_commit(session, lambda: ran.append("committed"))
        assert ran == []
    assert ran == ["committed"]
    with pytest.raises(RuntimeError):
        with runtime.db.scope() as session:
            after_commit(session, lambda: ran.append("rolled back"))
            raise RuntimeError
    assert ran == ["committed"]


def test_tree_and_registry_errors(runtime):
    with runtime.db.scope() as session:
        service.add_institution(session=session, code="CITY", name="市医院", level="city")
        service.add_institution(session=session, code="T1", name="镇卫生院", level="township", parent_code="CITY")
        with pytest.raises(Conflict):
            service.add_institution(session=session, code="T1", name="again", level="township")
        with pytest.raises(NotFound):
            service.add_institution(session=session, code="T2", name="x", level="township", parent_code="NOPE")
        with pytest.raises(Invalid):
            service.add_institution(session=session, code="T3", name="x", level="village")
        service.add_node(session=session, ae_title="CT01", institution_code="T1")
        with pytest.raises(Conflict):
            service.add_node(session=session, ae_title="CT01", institution_code="T1")
        with pytest.raises(Invalid):
            service.add_node(session=session, ae_title="WAY_TOO_LONG_AE_TITLE", institution_code="T1")
        with pytest.raises(Invalid):
            service.add_node(session=session, ae_title="X", institution_code="T1", host="h")


def test_relaxed_commits_skip_only_the_disk_wait(runtime):
    """SQLite: the relaxed engine runs synchronous=NORMAL beside the FULL one; PostgreSQL: the
    relaxed transaction turns synchronous_commit off for itself only."""
    db = runtime.db
    with db.relaxed_scope() as conn:
        if db.is_sqlite:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        else:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    with db.engine.connect() as conn:
        if db.is_sqlite:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        else:  # SET LOCAL ended with its transaction: the server's own setting again
            setting, configured = conn.exec_driver_sql(
                "SELECT setting, reset_val FROM pg_settings WHERE name = 'synchronous_commit'").one()
            assert setting == configured


def test_relaxed_scope_rolls_back_on_error(runtime):
    with pytest.raises(RuntimeError):
        with runtime.db.relaxed_scope() as conn:
            conn.execute(Institution.__table__.insert().values(code="RX", name_zh="x", level="city"))
            raise RuntimeError
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(Institution).where(Institution.code == "RX")) is None


def test_wal_keeper_syncs_the_wal_after_a_relaxed_commit(tmp_path, monkeypatch):
    """The keeper fdatasyncs the WAL file within its interval, and only when a relaxed
    commit happened (counted through os.fdatasync on the real file)."""
    import os
    import time

    from storage import db as dbmod

    synced = []
    real = os.fdatasync

    def counting(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(dbmod.os, "fdatasync", counting)
    database = dbmod.Database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        database.upgrade()
        time.sleep(3 * dbmod.RELAXED_FLUSH_S)
        assert synced == []  # nothing relaxed yet: nothing to flush
        with database.relaxed_scope() as conn:
            conn.execute(Institution.__table__.insert().values(code="W1", name_zh="x", level="city"))
        deadline = time.monotonic() + 5
        while not synced and time.monotonic() < deadline:
            time.sleep(0.02)
        assert synced and synced[0].endswith("x.db-wal")
        time.sleep(3 * dbmod.RELAXED_FLUSH_S)
        assert len(synced) == 1  # idle again: no further syncs
    finally:
        database.dispose()


def test_wal_keeper_restarts_a_thread_it_lost(tmp_path):
    """After a fork the child holds the parent's Thread object but no thread: the next relaxed
    commit must start a new one (modelled with a finished thread)."""
    import threading
    import time

    from storage import db as dbmod

    database = dbmod.Database(f"sqlite:///{tmp_path / 'y.db'}")
    try:
        database.upgrade()
        keeper = database._relaxed[1]
        finished = threading.Thread(target=lambda: None)
        finished.start()
        finished.join()
        keeper._thread = finished
        with database.relaxed_scope() as conn:
            conn.execute(Institution.__table__.insert().values(code="F1", name_zh="x", level="city"))
        assert keeper._thread is not finished and keeper._thread.is_alive()
        deadline = time.monotonic() + 5
        while keeper._dirty.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not keeper._dirty.is_set()  # flushed by the new thread
    finally:
        database.dispose()


def test_relaxed_commits_leave_checkpoints_to_the_keeper(tmp_path):
    """Past wal_autocheckpoint pages every commit would checkpoint (two fsyncs each): the
    relaxed engine's connections never do; the main engine keeps SQLite's default."""
    from storage import db as dbmod

    database = dbmod.Database(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        with database.relaxed_scope() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        with database.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    finally:
        database.dispose()


def test_wal_keeper_checkpoints_and_bounds_a_wal_that_readers_never_leave(tmp_path, monkeypatch):
    """A reader that stays in the WAL stops it from rewinding: PASSIVE checkpoints cannot help,
    the keeper's TRUNCATE waits only WAL_RESTART_WAIT_S for it, and truncates once it is gone."""
    import sqlite3
    import time

    from storage import db as dbmod

    path = tmp_path / "b.db"
    database = dbmod.Database(f"sqlite:///{path}")
    monkeypatch.setattr(dbmod.WalKeeper, "WAL_RESTART_PAGES", 20)
    monkeypatch.setattr(dbmod.WalKeeper, "WAL_RESTART_WAIT_S", 0.05)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        database.upgrade()
        keeper = database._relaxed[1]

        def write(code: str) -> None:
            with database.relaxed_scope() as conn:
                conn.execute(Institution.__table__.insert().values(code=code, name_zh="x", level="city"))

        write("K0")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM institutions").fetchall()  # now holds a WAL snapshot
        for n in range(40):
            write(f"K{n + 1}")
        started = time.monotonic()
        busy, pages, done = keeper.checkpoint()
        assert busy == 1 and pages > 20 and done < pages  # the reader's snapshot blocks it
        assert time.monotonic() - started < 5  # waited WAL_RESTART_WAIT_S, not the busy timeout
        reader.execute("COMMIT")
        assert keeper.checkpoint() == (0, 0, 0)  # truncated: the WAL is empty
        assert (tmp_path / "b.db-wal").stat().st_size == 0
        with database.scope(readonly=True) as session:
            assert session.scalar(select(func.count()).select_from(Institution)) >= 41
    finally:
        reader.close()
        database.dispose()


def test_prepared_statements_read_and_write_what_sqlalchemy_does(runtime):
    """storage.db.Prepared (the driver's cursor on SQLite, SQLAlchemy elsewhere): the same
    rows and types as Connection.execute, literals kept, writes in the caller's transaction,
    and the driver's errors raised as SQLAlchemy's."""
    from sqlalchemy import Column, Integer, MetaData, Table, bindparam
    from sqlalchemy.exc import DBAPIError

    from storage.db import Prepared

    with runtime.db.scope() as session:
        service.add_institution(session=session, code="PREP", name="预备", level="township")
    statement = (select(Institution.code, Institution.active, Institution.created_at)
                 .where(Institution.code == bindparam("code")).limit(1))
    with runtime.db.scope(readonly=True) as session:
        expected = [tuple(row) for row in session.connection().execute(statement, {"code": "PREP"})]
        got = Prepared(statement).execute(session.connection(), {"code": "PREP"})
    assert got == expected and got[0][1] is True and got[0][2].tzinfo is not None
    row = {column.name: "" for column in Institution.__table__.columns if column.name != "id"}
    row.update(code="PREP2", name_zh="二", level="township", active=True, parent_id=None,
               patient_ids_are_resident_ids=False,
               created_at=datetime.now(timezone.utc))
    insert = Prepared(Institution.__table__.insert(), column_keys=tuple(row))
    with runtime.db.relaxed_scope(driver=True) as conn:
        insert.execute(conn, row)
        if runtime.db.is_sqlite:
            with pytest.raises(KeyError):  # every column named: no silent NULL for a default
                insert.execute(conn, {"code": "PREP3"})
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(Institution.active).where(Institution.code == "PREP2")) is True
    nowhere = Prepared(select(Table("no_such_table", MetaData(), Column("x", Integer)).c.x))
    with pytest.raises(DBAPIError):
        with runtime.db.scope(readonly=True) as session:
            nowhere.execute(session.connection(), {})
    with pytest.raises(DBAPIError):
        with runtime.db.relaxed_scope(driver=True) as conn:
            nowhere.execute(conn, {})
