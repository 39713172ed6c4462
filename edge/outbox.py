"""The edge's durable outbox: what is still to reach the region, in which order, and what may
be deleted here. Keyword-only service functions; none commits (edge/forward.py's scopes do).

The scan reads the local index, never the receiver: ingest bumps `series.last_received_at`
(indexed) for every new or replaced instance, so the series touched since the watermark are
the only ones to compare. The watermark trails by SCAN_OVERLAP because an ingest transaction
stamps its time before it commits; comparing a series twice is harmless.

Order: urgent first (the worklist's priority 0: urgent, maternal risk red or purple; a study
without a worklist entry is routine), then the oldest. Nothing is deleted locally until the
region confirmed the whole study and the retention period has passed since.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edge.models import EdgeLink, OutboxInstance, OutboxStudy
from edge.worklist_models import WorklistEntry
from imaging.models import Instance, Patient, Series, Study, SupersededInstance

SCAN_OVERLAP = timedelta(minutes=5)
QUIET = timedelta(seconds=10)  # a study is complete once no instance arrived for this long
ROUTINE = 1
# Back-off of the line (no answer from the region): short, since probing costs a few bytes
# and the radiographer waits; of the region refusing (a credential, its server): longer.
LINE_BACKOFF_S = (1, 2, 4, 8, 10)
REFUSED_BACKOFF_S = (10, 30, 60, 120, 300)
# Back-off of one study the region refused (the others go on meanwhile).
STUDY_BACKOFF_S = (10, 30, 60, 180, 600)
LINE_KINDS = ("unreachable", "timeout", "dropped", "busy")


def backoff(attempt: int, steps: tuple[int, ...]) -> float:
    """Seconds before attempt number `attempt` + 1 (attempts count from 1), forever at the last
    step; up to a fifth more at random, so edges that lost the same line do not return at once."""
    base = steps[min(max(attempt, 1), len(steps)) - 1]
    return base * (1 + random.random() / 5)


def link_row(*, session: Session) -> EdgeLink:
    """The line's one row (made on first use)."""
    row = session.get(EdgeLink, 1)
    if row is None:
        row = EdgeLink(id=1, failures=0, error_kind="", error_detail="", rate_bps=0.0, wire_ratio=0.0)
        session.add(row)
        session.flush()
    return row


# -- the scan ---------------------------------------------------------------------------------


def scan(*, session: Session, now: datetime) -> int:
    """Put new and changed local instances into the outbox. Returns how many."""
    link = link_row(session=session)
    query = (select(Series.id, Series.last_received_at, Study.study_instance_uid)
             .join(Study, Study.id == Series.study_pk))
    if link.scanned_through is not None:
        query = query.where(Series.last_received_at > link.scanned_through - SCAN_OVERLAP)
    touched = session.execute(query.order_by(Series.last_received_at)).all()
    changed = 0
    for series_pk, received_at, study_uid in touched:
        changed += _scan_series(session, series_pk, study_uid, now)
        if link.scanned_through is None or received_at > link.scanned_through:
            link.scanned_through = received_at
    return changed


def _scan_series(session: Session, series_pk: int, study_uid: str, now: datetime) -> int:
    local = session.execute(select(Instance.sop_instance_uid, Instance.object_key, Instance.sha256, Instance.size)
                            .where(Instance.series_pk == series_pk)).all()
    known = {row.sop_instance_uid: row for row in session.scalars(select(OutboxInstance).where(
        OutboxInstance.sop_instance_uid.in_([sop for sop, *_ in local])))} if local else {}
    study, changed = None, 0
    for sop, key, sha256, size in local:
        row = known.get(sop)
        if row is not None and row.sha256 == sha256:
            continue
        study = study or _outbox_study(session, study_uid, now)
        if row is None:
            session.add(OutboxInstance(study_id=study.id, sop_instance_uid=sop, object_key=key, sha256=sha256,
                                       size=size, confirmed=0, done=False))
        else:  # a corrected re-send replaced it here: the region gets the new version
            row.study_id, row.object_key, row.sha256, row.size = study.id, key, sha256, size
            row.confirmed, row.done, row.done_at = 0, False, None
        changed += 1
    if study is not None:
        session.flush()
        study.instances, study.size = session.execute(
            select(func.count(), func.coalesce(func.sum(OutboxInstance.size), 0))
            .where(OutboxInstance.study_id == study.id)).one()
        study.state, study.changed_at, study.sent_at = "queued", now, None
    return changed


def _outbox_study(session: Session, study_uid: str, now: datetime) -> OutboxStudy:
    study = session.scalar(select(OutboxStudy).where(OutboxStudy.study_instance_uid == study_uid))
    if study is None:
        study = OutboxStudy(study_instance_uid=study_uid, state="queued", queued_at=now, changed_at=now,
                            instances=0, size=0, attempts=0, error_kind="", error_detail="")
        session.add(study)
        session.flush()
    elif study.state == "purged":  # received again after it was deleted here: a new local copy
        study.queued_at, study.purged_at = now, None
    return study


# -- what to send next --------------------------------------------------------------------------

PRIORITY = func.coalesce(WorklistEntry.priority, ROUTINE)


@dataclass(frozen=True)
class Item:
    """One instance to send, as a stream needs it outside any transaction."""

    instance_id: int
    study_id: int
    study_uid: str
    sop: str
    object_key: str
    sha256: str
    size: int
    confirmed: int
    priority: int = ROUTINE


def _due(now: datetime):
    return (OutboxStudy.state == "queued") & (
        OutboxStudy.next_attempt_at.is_(None) | (OutboxStudy.next_attempt_at <= now))


def next_item(*, session: Session, now: datetime, busy: set[int] | frozenset[int] = frozenset()) -> Item | None:
    """The next instance to send, not one in `busy`: by priority, then the study's age."""
    query = (select(OutboxInstance.id, OutboxStudy.id, OutboxStudy.study_instance_uid,
                    OutboxInstance.sop_instance_uid, OutboxInstance.object_key, OutboxInstance.sha256,
                    OutboxInstance.size, OutboxInstance.confirmed, PRIORITY)
             .join(OutboxStudy, OutboxStudy.id == OutboxInstance.study_id)
             .outerjoin(WorklistEntry, WorklistEntry.study_instance_uid == OutboxStudy.study_instance_uid)
             .where(_due(now), OutboxInstance.done.is_(False))
             .order_by(PRIORITY, OutboxStudy.queued_at, OutboxStudy.id, OutboxInstance.id).limit(1))
    if busy:
        query = query.where(OutboxInstance.id.not_in(sorted(busy)))
    row = session.execute(query).first()
    return Item(*row) if row is not None else None


def ready_to_complete(*, session: Session, now: datetime) -> list[OutboxStudy]:
    """Queued studies whose every instance the region verified, quiet for QUIET: ask the
    region to confirm them, in the order they would be sent."""
    pending = select(OutboxInstance.id).where(OutboxInstance.study_id == OutboxStudy.id,
                                              OutboxInstance.done.is_(False)).exists()
    query = (select(OutboxStudy)
             .outerjoin(WorklistEntry, WorklistEntry.study_instance_uid == OutboxStudy.study_instance_uid)
             .where(_due(now), OutboxStudy.instances > 0, OutboxStudy.changed_at <= now - QUIET, ~pending)
             .order_by(PRIORITY, OutboxStudy.queued_at))
    return list(session.scalars(query))


def has_pending(*, session: Session, study_id: int) -> bool:
    """Whether an instance of the study is still to be verified by the region."""
    return session.scalar(select(OutboxInstance.id).where(
        OutboxInstance.study_id == study_id, OutboxInstance.done.is_(False)).limit(1)) is not None


def manifest_of(*, session: Session, study_id: int) -> list[dict]:
    """The study's instances as the region's manifest wants them."""
    rows = session.execute(select(OutboxInstance.sop_instance_uid, OutboxInstance.sha256, OutboxInstance.size)
                           .where(OutboxInstance.study_id == study_id).order_by(OutboxInstance.id))
    return [{"sop": sop, "sha256": sha, "size": size} for sop, sha, size in rows]


# -- what the region said ------------------------------------------------------------------------


def note_held(*, session: Session, study_id: int, held: dict[str, tuple[bool, int]], now: datetime) -> None:
    """The manifest's answer: which instances are done there and where each resumes."""
    for row in session.scalars(select(OutboxInstance).where(OutboxInstance.study_id == study_id)):
        done, offset = held.get(row.sop_instance_uid, (False, 0))
        row.done, row.confirmed = done, row.size if done else min(offset, row.size)
        row.done_at = (row.done_at or now) if done else None


def note_progress(*, session: Session, instance_id: int, sha256: str, offset: int, done: bool, now: datetime) -> None:
    """Bytes the region holds of an instance (unless its version changed here meanwhile)."""
    row = session.get(OutboxInstance, instance_id)
    if row is None or row.sha256 != sha256:
        return
    row.confirmed, row.done = (row.size, True) if done else (min(offset, row.size), False)
    row.done_at = now if done else None


def note_missing(*, session: Session, study_id: int, sops: list[str]) -> None:
    """The region's completion check found these not verified: send them again."""
    for row in session.scalars(select(OutboxInstance).where(OutboxInstance.study_id == study_id,
                                                            OutboxInstance.sop_instance_uid.in_(sops))):
        row.done, row.done_at, row.confirmed = False, None, 0


def note_sent(*, session: Session, study_id: int, now: datetime) -> OutboxStudy:
    """The region confirmed every instance: the study is sent (its retention starts now)."""
    study = session.get(OutboxStudy, study_id)
    study.state, study.sent_at, study.attempts, study.next_attempt_at = "sent", now, 0, None
    study.error_kind, study.error_detail, study.error_at = "", "", None
    return study


def note_study_failure(*, session: Session, study_id: int, kind: str, detail: str, now: datetime) -> OutboxStudy:
    """The region refused something of this study: it waits (back-off), the others go on."""
    study = session.get(OutboxStudy, study_id)
    study.attempts += 1
    study.error_kind, study.error_detail, study.error_at = kind[:32], detail[:2000], now
    study.next_attempt_at = now + timedelta(seconds=backoff(study.attempts, STUDY_BACKOFF_S))
    return study


def note_study_cleared(*, session: Session, study_id: int) -> None:
    study = session.get(OutboxStudy, study_id)
    if study is not None and (study.attempts or study.error_kind):
        study.attempts, study.error_kind, study.error_detail, study.error_at = 0, "", "", None


def note_line_failure(*, session: Session, kind: str, detail: str, now: datetime) -> EdgeLink:
    """The line (or the region's server, or our credential) failed: every stream waits."""
    link = link_row(session=session)
    link.failures += 1
    link.error_kind, link.error_detail, link.error_at = kind[:32], detail[:2000], now
    steps = LINE_BACKOFF_S if kind in LINE_KINDS else REFUSED_BACKOFF_S
    link.next_attempt_at = now + timedelta(seconds=backoff(link.failures, steps))
    return link


def note_contact(*, session: Session, now: datetime) -> EdgeLink:
    """The region answered: the line is up."""
    link = link_row(session=session)
    link.last_contact_at, link.failures, link.next_attempt_at = now, 0, None
    link.error_kind, link.error_detail, link.error_at = "", "", None
    return link


def backlog(*, session: Session) -> dict:
    """What is still to send, for the heartbeat and the status page."""
    studies, oldest = session.execute(select(func.count(), func.min(OutboxStudy.queued_at))
                                      .where(OutboxStudy.state == "queued")).one()
    remaining = session.scalar(
        select(func.coalesce(func.sum(OutboxInstance.size - OutboxInstance.confirmed), 0))
        .join(OutboxStudy, OutboxStudy.id == OutboxInstance.study_id).where(OutboxStudy.state == "queued"))
    return {"backlog_studies": int(studies), "backlog_bytes": int(remaining or 0),
            "oldest_queued_at": oldest.isoformat() if oldest else None}


def study_error(*, session: Session) -> str:
    """The kind of the newest error of a queued study ("" when none), for the heartbeat."""
    return session.scalar(select(OutboxStudy.error_kind).where(OutboxStudy.state == "queued",
                                                               OutboxStudy.error_kind != "")
                          .order_by(OutboxStudy.error_at.desc()).limit(1)) or ""


# -- retention -------------------------------------------------------------------------------------


def purgeable(*, session: Session, now: datetime, retention_days: float) -> list[OutboxStudy]:
    """Studies the region confirmed at least retention_days ago (and not changed since)."""
    return list(session.scalars(select(OutboxStudy).where(
        OutboxStudy.state == "sent", OutboxStudy.sent_at <= now - timedelta(days=retention_days))))


def purge(*, session: Session, study: OutboxStudy, now: datetime) -> list[str]:
    """Delete the study's local index rows; returns the object keys to delete once that commits.
    Refuses (returns []) when the local copy differs from what the region confirmed, or when
    something here still refers to the study (a cloud-film share, a 互认 decision)."""
    local = session.scalar(select(Study).where(Study.study_instance_uid == study.study_instance_uid))
    if local is None:
        study.state, study.purged_at = "purged", now
        return []
    series = list(session.scalars(select(Series).where(Series.study_pk == local.id)))
    instances = list(session.scalars(select(Instance).where(Instance.series_pk.in_([s.id for s in series])))) \
        if series else []
    confirmed = {sop: sha for sop, sha in session.execute(select(
        OutboxInstance.sop_instance_uid, OutboxInstance.sha256).where(OutboxInstance.study_id == study.id,
                                                                       OutboxInstance.done.is_(True)))}
    if any(confirmed.get(i.sop_instance_uid) != i.sha256 for i in instances):
        return []
    keys = [key for i in instances for key in (i.object_key, i.preview_key) if key]
    keys += [s.thumbnail_key for s in series if s.thumbnail_key]
    sops = [i.sop_instance_uid for i in instances]
    keys += list(session.scalars(select(SupersededInstance.object_key).where(
        SupersededInstance.sop_instance_uid.in_(sops)))) if sops else []
    try:
        with session.begin_nested():
            _delete_rows(session, local, series, sops)
    except IntegrityError:
        return []
    session.execute(delete(OutboxInstance).where(OutboxInstance.study_id == study.id))  # the study row says it all
    study.state, study.purged_at = "purged", now
    return keys


def _delete_rows(session: Session, local: Study, series: list[Series], sops: list[str]) -> None:
    if sops:
        session.execute(delete(SupersededInstance).where(SupersededInstance.sop_instance_uid.in_(sops)))
    if series:
        session.execute(delete(Instance).where(Instance.series_pk.in_([s.id for s in series])))
        session.execute(delete(Series).where(Series.id.in_([s.id for s in series])))
    patient_pk = local.patient_pk
    session.execute(delete(Study).where(Study.id == local.id))
    if session.scalar(select(func.count()).select_from(Study).where(Study.patient_pk == patient_pk)):
        return
    try:  # the patient record goes too, unless something else here still refers to it
        with session.begin_nested():
            session.execute(delete(Patient).where(Patient.id == patient_pk))
    except IntegrityError:
        pass
