"""The audit trail is hash-chained: edits and deletions are detected, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, text, update

from storage import audit
from storage.access import Principal
from storage.models import AuditRecord

ALICE = Principal(kind="user", name="alice", institution_id=1, institution_code="T01", role="specialist")


def _fill(db, n=5):
    for i in range(n):
        audit.record(db, principal=ALICE, action="study.read", object_type="study",
                     object_id=f"1.2.3.{i}", source="10.0.0.1", detail={"i": i, "名字": "张秀英"})


def test_chain_verifies(runtime):
    _fill(runtime.db)
    with runtime.db.scope(readonly=True) as session:
        result = audit.verify(session)
    assert result.ok and result.checked == 5


def test_edited_record_is_detected(runtime):
    _fill(runtime.db)
    with runtime.db.scope() as session:
        session.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(actor="mallory"))
    with runtime.db.scope(readonly=True) as session:
        result = audit.verify(session)
    assert not result.ok and result.first_bad_seq == 3


def test_edited_detail_is_detected(runtime):
    _fill(runtime.db)
    with runtime.db.scope() as session:
        session.execute(update(AuditRecord).where(AuditRecord.seq == 2).values(detail={"i": 99}))
    with runtime.db.scope(readonly=True) as session:
        assert audit.verify(session).first_bad_seq == 2


def test_deleted_record_is_detected(runtime):
    _fill(runtime.db)
    with runtime.db.scope() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.seq == 2))
    with runtime.db.scope(readonly=True) as session:
        result = audit.verify(session)
    assert not result.ok and "missing" in result.reason


def test_rehashed_forgery_breaks_the_next_link(runtime):
    """An attacker who edits a record and recomputes its hash still breaks the chain after it."""
    _fill(runtime.db)
    with runtime.db.scope() as session:
        row = session.query(AuditRecord).filter_by(seq=2).one()
        row.actor = "mallory"
        row.hash = audit.compute_hash(row)
    with runtime.db.scope(readonly=True) as session:
        assert audit.verify(session).first_bad_seq == 3


def test_concurrent_appends_keep_one_chain(runtime):
    def worker():
        for _ in range(10):
            audit.record(runtime.db, principal=ALICE, action="study.read")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with runtime.db.scope(readonly=True) as session:
        result = audit.verify(session)
    assert result.ok and result.checked == 40


def test_export_csv_and_json_since(runtime):
    _fill(runtime.db, 3)
    with runtime.db.scope(readonly=True) as session:
        rows = list(audit.iter_since(session, datetime.now(timezone.utc) - timedelta(minutes=5)))
        as_json = json.loads(audit.export(rows, "json"))
        as_csv = list(csv.DictReader(io.StringIO(audit.export(rows, "csv"))))
        future = list(audit.iter_since(session, datetime.now(timezone.utc) + timedelta(minutes=5)))
    assert [r["object_id"] for r in as_json] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert as_csv[0]["actor"] == "alice" and json.loads(as_csv[0]["detail"])["名字"] == "张秀英"
    assert future == []


def test_append_rolls_back_with_its_transaction(runtime):
    try:
        with runtime.db.scope() as session:
            audit.append(session, principal=ALICE, action="consult.transition")
            raise RuntimeError("the action failed")
    except RuntimeError:
        pass
    with runtime.db.scope(readonly=True) as session:
        assert session.execute(text("SELECT COUNT(*) FROM audit_records")).scalar() == 0


def test_reads_and_changes_share_one_chain_across_threads(runtime):
    """record_read (relaxed commit) and record (synced) interleave into one valid chain."""
    def reader():
        for i in range(10):
            audit.record_read(runtime.db, principal=ALICE, action="dicomweb.search", object_id=str(i))

    def writer():
        for i in range(5):
            audit.record(runtime.db, principal=ALICE, action="consult.transition", object_id=str(i))

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with runtime.db.scope(readonly=True) as session:
        result = audit.verify(session)
        actions = [a for (a,) in session.execute(text("SELECT action FROM audit_records"))]
    assert result.ok and result.checked == 35
    assert actions.count("dicomweb.search") == 30 and actions.count("consult.transition") == 5


def test_record_read_is_committed_when_it_returns(runtime):
    audit.record_read(runtime.db, principal=ALICE, action="study.read", object_id="1.2.3",
                      detail={"名字": "张秀英"})
    with runtime.db.engine.connect() as conn:  # another connection sees it at once
        row = conn.execute(text("SELECT actor, object_id, detail FROM audit_records")).one()
    assert row.actor == "alice" and row.object_id == "1.2.3"
    detail = json.loads(row.detail) if isinstance(row.detail, str) else row.detail
    assert detail == {"名字": "张秀英"}


def _rewrite_without(runtime, victim_seq: int, key: bytes | None) -> None:
    """What an attacker with database write access does: delete one record, renumber and
    rehash every later one (plain SHA-256, or an HMAC under a key of their choosing)."""
    import hashlib
    import hmac as hmac_

    with runtime.db.scope() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.seq == victim_seq))
        rows = session.scalars(select(AuditRecord).where(AuditRecord.seq > victim_seq)
                               .order_by(AuditRecord.seq)).all()
        prev = session.scalar(select(AuditRecord.hash).where(AuditRecord.seq == victim_seq - 1)) or audit.GENESIS
        for row in rows:
            row.seq -= 1
            session.flush()
            payload = audit._canonical(prev, {name: getattr(row, name) for name in audit.FIELDS})
            row.prev_hash = prev
            row.keyed = key is not None
            row.hash = (hmac_.new(key, payload, hashlib.sha256) if key else hashlib.sha256(payload)).hexdigest()
            prev = row.hash


def test_a_rewritten_chain_is_detected(runtime):
    """13.6: deleting a record and recomputing the later hashes passed verify on the
    previous code; with the key outside the database it cannot be recomputed."""
    _fill(runtime.db)
    _rewrite_without(runtime, 2, key=None)
    with runtime.db.scope(readonly=True) as session:
        result = audit.verify(session)
    assert not result.ok and result.first_bad_seq == 2 and "unkeyed record after keyed" in result.reason


def test_a_chain_rehashed_under_another_key_is_detected(runtime):
    _fill(runtime.db)
    _rewrite_without(runtime, 3, key=b"the attacker's own key")
    with runtime.db.scope(readonly=True) as session:
        result = audit.verify(session)
    assert not result.ok and result.first_bad_seq == 3 and "MAC" in result.reason


def test_removed_tail_is_detected_by_the_checkpoint(runtime):
    _fill(runtime.db, 6)
    assert audit.verify_and_checkpoint(runtime.db, runtime.store).ok  # checkpoint at 6
    stored = json.loads(runtime.store.get(audit.CHECKPOINT_KEY))
    assert stored["seq"] == 6 and len(stored["mac"]) == 64
    with runtime.db.scope() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.seq >= 5))
    result = audit.verify_and_checkpoint(runtime.db, runtime.store)
    assert not result.ok and "removed" in result.reason
    forged = dict(stored, seq=4)
    runtime.store.put(audit.CHECKPOINT_KEY, json.dumps(forged).encode())
    assert "checkpoint's MAC" in audit.verify_and_checkpoint(runtime.db, runtime.store).reason


def test_start_is_refused_with_another_audit_key(runtime):
    _fill(runtime.db, 2)
    audit.check_key(runtime.db)
    audit.use_key("another-key-" + "x" * 40)
    try:
        import pytest

        with pytest.raises(audit.AuditKeyMismatch, match="审计密钥"):
            audit.check_key(runtime.db)
    finally:
        audit.use_key(runtime.settings.effective_audit_key)
