"""Append-only, hash-chained audit trail of every access to patient data.

Each record's hash covers its own fields and the previous record's hash, so an edited
or deleted record breaks the chain at that point (`verify`). Appends are serialized:
PostgreSQL takes a transaction-scoped advisory lock, SQLite write transactions already
begin IMMEDIATE (storage/db.py).

A plain hash chain can be recomputed by anyone who can write the table: delete a record,
rehash the rest, and it verifies. So each hash is an HMAC under the audit key, which is
kept outside the database (LANCANG_AUDIT_KEY, else `<data_dir>/audit_key`, 0600; set by
`storage.runtime.bootstrap` through `use_key`). Records from before keying (keyed=False)
may only form a prefix. Removing records from the very end cannot be seen from the
chain alone: `checkpoint` writes the head (seq, hash, MAC) to the object store, outside
the database, and `verify` checks the chain still reaches it. See docs/security-audit.md
for what an attacker with database write access can and cannot hide.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Iterator

from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from storage import keys
from storage.access import Principal
from storage.db import Database, DriverTransaction, Prepared
from storage.models import AuditRecord
from storage.objects import ObjectNotFound
from storage.types import utcnow

GENESIS = "0" * 64
# The actor of every change made by `lancang` on the command line (no signed-in principal).
CLI_ACTOR = "system:cli"
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


_KEY: list[bytes] = []  # the audit key of this process (use_key), empty until bootstrap


def use_key(key: str) -> None:
    """Sign every later record with this key (called once per process by bootstrap)."""
    _KEY[:] = [key.encode()]


def _digest(payload: bytes, keyed: bool) -> str:
    if keyed:
        if not _KEY:
            raise RuntimeError("no audit key: storage.runtime.bootstrap sets it")
        return hmac.new(_KEY[0], payload, hashlib.sha256).hexdigest()
    return hashlib.sha256(payload).hexdigest()


def compute_hash(record: AuditRecord) -> str:
    fields = {name: getattr(record, name) for name in FIELDS}
    return _digest(_canonical(record.prev_hash, fields), bool(record.keyed))


def _lock_chain(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})


def append(
    session: Session | Connection | DriverTransaction,
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
    Returns the record's hash. Prepared statements, not the ORM unit of work: every audited
    request pays for this."""
    conn = session.connection() if isinstance(session, Session) else session
    _lock_chain(conn)  # (PostgreSQL; SQLite write transactions begin IMMEDIATE)
    last = _LAST.execute(conn, {})
    fields = dict(
        seq=(last[0][0] + 1) if last else 1,
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
    prev_hash = last[0][1] if last else GENESIS
    keyed = bool(_KEY)
    digest = _digest(_canonical(prev_hash, fields), keyed)
    _INSERT.execute(conn, dict(fields, prev_hash=prev_hash, hash=digest, keyed=keyed))
    return digest


_LAST = Prepared(select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1))
_INSERT = Prepared(AuditRecord.__table__.insert(),
                   column_keys=(*FIELDS, "prev_hash", "hash", "keyed"))


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
    record_reads(db, [fields])


def record_reads(db: Database, records: list[dict]) -> None:
    """record_read for several records in one transaction (one commit), in their order."""
    if not records:
        return
    with db.relaxed_scope(driver=True) as conn:
        for fields in records:
            append(conn, **fields)


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_hash: str = GENESIS


def verify(session: Session, checkpoint: dict | None = None) -> VerifyResult:
    """Walk the chain in order; report the first record whose MAC or link does not hold, an
    unkeyed record after keyed ones, and a chain that no longer reaches its checkpoint."""
    prev, expected_seq, checked, keyed_seen = GENESIS, 1, 0, False
    mark = _checked_mark(checkpoint)
    rows = session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars()
    for row in rows.yield_per(1000):
        checked += 1
        if row.seq != expected_seq:
            return VerifyResult(False, checked, row.seq, f"record {expected_seq} is missing", prev)
        if row.prev_hash != prev:
            return VerifyResult(False, checked, row.seq, "link to the previous record is broken", prev)
        if keyed_seen and not row.keyed:
            return VerifyResult(False, checked, row.seq, "an unkeyed record after keyed ones: rewritten", prev)
        if compute_hash(row) != row.hash:
            return VerifyResult(False, checked, row.seq, "record content does not match its MAC "
                                "(changed, or written without the audit key)", prev)
        if mark is not None and row.seq == mark[0] and row.hash != mark[1]:
            return VerifyResult(False, checked, row.seq, "record differs from the signed checkpoint", prev)
        keyed_seen = keyed_seen or bool(row.keyed)
        prev, expected_seq = row.hash, expected_seq + 1
    if mark is not None and checked < mark[0]:
        return VerifyResult(False, checked, checked + 1,
                            f"records after {checked} were removed (the checkpoint has {mark[0]})", prev)
    return VerifyResult(True, checked, head_hash=prev)


class AuditKeyMismatch(RuntimeError):
    pass


def check_key(db: Database) -> None:
    """Refuse to start with another audit key than the chain's: the newest keyed record's
    MAC must hold (one record, at startup)."""
    with db.scope(readonly=True) as session:
        last = session.scalar(select(AuditRecord).where(AuditRecord.keyed.is_(True))
                              .order_by(AuditRecord.seq.desc()).limit(1))
        if last is not None and compute_hash(last) != last.hash:
            raise AuditKeyMismatch(
                f"the audit key does not match the audit chain (record {last.seq}): set the LANCANG_AUDIT_KEY "
                "this database was written with / 审计密钥与审计链不符")


CHECKPOINT_KEY = keys.AUDIT_CHECKPOINT


def _checkpoint_mac(seq: int, digest: str) -> str:
    return _digest(f"lancang/audit-checkpoint/{seq}/{digest}".encode(), True)


def _checked_mark(checkpoint: dict | None) -> tuple[int, str] | None:
    """(seq, hash) of a checkpoint whose MAC holds; a forged one is itself a finding."""
    if not checkpoint:
        return None
    seq, digest = int(checkpoint["seq"]), str(checkpoint["hash"])
    if not hmac.compare_digest(_checkpoint_mac(seq, digest), str(checkpoint.get("mac", ""))):
        raise ValueError("the audit checkpoint's MAC does not hold: it was changed or the audit key differs")
    return seq, digest


def read_checkpoint(store) -> dict | None:
    try:
        return json.loads(store.get(CHECKPOINT_KEY))
    except ObjectNotFound:
        return None


def verify_and_checkpoint(db: Database, store) -> VerifyResult:
    """Verify against the last checkpoint; when the chain holds, move the checkpoint to its head."""
    try:
        checkpoint = read_checkpoint(store)
        with db.scope(readonly=True) as session:
            result = verify(session, checkpoint)
    except ValueError as exc:
        return VerifyResult(False, 0, None, str(exc))
    write_checkpoint(store, result)
    return result


def write_checkpoint(store, result: VerifyResult) -> None:
    """After a good verify: anchor the head outside the database."""
    if result.ok and result.checked:
        body = {"seq": result.checked, "hash": result.head_hash, "at": utcnow().isoformat(),
                "mac": _checkpoint_mac(result.checked, result.head_hash)}
        store.put(CHECKPOINT_KEY, json.dumps(body).encode(), content_type="application/json")


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
