"""Append-only, hash-chained audit trail of every access to patient data.

Each record's hash covers its own fields and the previous record's hash, so an edited
or deleted record breaks the chain at that point (`verify`). Appends are serialized:
PostgreSQL takes a transaction-scoped advisory lock, SQLite write transactions already
begin IMMEDIATE (storage/db.py). Removing records from the very end cannot be seen from
the chain alone; exporting the head hash regularly (`export`) anchors it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Iterator

from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from storage.access import Principal
from storage.db import Database
from storage.models import AuditRecord
from storage.types import utcnow

GENESIS = "0" * 64
_ADVISORY_KEY = 0x4C414E43  # "LANC"

FIELDS = (
    "seq", "at", "actor", "actor_kind", "institution", "action", "object_type",
    "object_id", "source", "outcome", "detail",
)


def _canonical(prev_hash: str, fields: dict) -> bytes:
    values = [fields[name] for name in FIELDS]
    values[1] = fields["at"].isoformat(timespec="microseconds")
    payload = json.dumps([prev_hash, values], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return payload.encode("utf-8")


def compute_hash(record: AuditRecord) -> str:
    return hashlib.sha256(_canonical(record.prev_hash, {name: getattr(record, name) for name in FIELDS})).hexdigest()


def _lock_chain(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})


def append(
    session: Session | Connection,
    *,
    principal: Principal | None,
    action: str,
    outcome: str = "ok",
    object_type: str = "",
    object_id: str = "",
    source: str = "",
    detail: dict | None = None,
    actor: str | None = None,
) -> str:
    """Append a record inside the caller's transaction (atomic with the action itself).
    Returns the record's hash. Core statements, not the ORM unit of work: every audited
    request pays for this."""
    conn = session.connection() if isinstance(session, Session) else session
    _lock_chain(conn)
    last = conn.execute(_LAST).first()
    fields = dict(
        seq=(last.seq + 1) if last else 1,
        at=utcnow(),
        actor=actor or (principal.name if principal else "anonymous"),
        actor_kind=principal.kind if principal else ("system" if (actor or "").startswith("system") else "anonymous"),
        institution=principal.institution_code if principal else "",
        action=action,
        object_type=object_type,
        object_id=object_id[:4000],
        source=source[:255],
        outcome=outcome,
        detail=detail or {},
    )
    prev_hash = last.hash if last else GENESIS
    digest = hashlib.sha256(_canonical(prev_hash, fields)).hexdigest()
    conn.execute(_INSERT, dict(fields, prev_hash=prev_hash, hash=digest))
    return digest


_LAST = select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
_INSERT = AuditRecord.__table__.insert()


def record(db: Database, **fields) -> None:
    """Append a record in its own transaction: kept even when the request itself fails.
    On disk before this returns: for security events and changes."""
    with db.scope() as session:
        append(session, **fields)


def record_read(db: Database, **fields) -> None:
    """Audit a read of patient data in its own transaction, committed before the caller answers.

    The commit does not wait for the disk (Database.relaxed_scope): the record survives a
    crash of any process at once and a power cut after at most RELAXED_FLUSH_S. Waiting for
    a flush per read would double the cost of a small query, and a read changes nothing
    that a lost record could hide; changes and security events use `record` or `append`.
    """
    with db.relaxed_scope() as conn:
        append(conn, **fields)


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_hash: str = GENESIS


def verify(session: Session) -> VerifyResult:
    """Walk the chain in order; report the first record whose hash or link does not hold."""
    prev, expected_seq, checked = GENESIS, 1, 0
    rows = session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars()
    for row in rows.yield_per(1000):
        checked += 1
        if row.seq != expected_seq:
            return VerifyResult(False, checked, row.seq, f"record {expected_seq} is missing", prev)
        if row.prev_hash != prev:
            return VerifyResult(False, checked, row.seq, "link to the previous record is broken", prev)
        if compute_hash(row) != row.hash:
            return VerifyResult(False, checked, row.seq, "record content does not match its hash", prev)
        prev, expected_seq = row.hash, expected_seq + 1
    return VerifyResult(True, checked, head_hash=prev)


def iter_since(session: Session, since: datetime | None) -> Iterator[AuditRecord]:
    query = select(AuditRecord).order_by(AuditRecord.seq)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    yield from session.execute(query).scalars().yield_per(1000)


def _as_dict(row: AuditRecord) -> dict:
    data = {name: getattr(row, name) for name in FIELDS}
    data["at"] = row.at.isoformat()
    data["prev_hash"], data["hash"] = row.prev_hash, row.hash
    return data


def export(rows: Iterable[AuditRecord], fmt: str) -> str:
    """Render records as CSV or JSON (detail as JSON text in CSV)."""
    items = [_as_dict(row) for row in rows]
    if fmt == "json":
        return json.dumps(items, ensure_ascii=False, indent=1)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*FIELDS, "prev_hash", "hash"])
    writer.writeheader()
    for item in items:
        item["detail"] = json.dumps(item["detail"], ensure_ascii=False, sort_keys=True)
        writer.writerow(item)
    return out.getvalue()
