"""The consult REST API under /api (described by the OpenAPI schema)."""

from datetime import datetime

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from consult import consent, critical, notify, reports, scheduling, service, templates
from consult.models import Booking, ConsultEvent, ConsultRequest, Notification
from consult.schemas import (Addendum, Assignment, Comments, ConsentOut, ConsultCreate, ConsultDetail, ConsultOut,
                             CriticalAck, CriticalFlag, CriticalOut, Draft, EventOut, ExceptionIn, NotificationOut,
                             Password, Reason, Slot, VersionOut, Windows)
from consult.dashboard import require_viewer, stats
from storage import audit
from storage.deps import CurrentUser, DbSession, RuntimeDep, WriteSession
from storage.identity import principal_for
from storage.errors import Invalid, NotFound
from storage.models import User


def consult_out(consult: ConsultRequest) -> ConsultOut:
    return ConsultOut(
        id=consult.id, kind=consult.kind, status=consult.status, direction=consult.direction,
        requesting_institution=consult.requesting_institution.code, target_institution=consult.target_institution.code,
        requested_by=consult.requested_by.username, clinical_question=consult.clinical_question,
        history=consult.history, priority=consult.priority, risk_colour=consult.risk_colour,
        reader=consult.reader.username if consult.reader else None,
        reviewer=consult.reviewer.username if consult.reviewer else None,
        study_uids=[s.study_instance_uid for s in consult.studies], created_at=consult.created_at,
        due_at=consult.due_at, overdue=service.is_overdue(consult), reason=consult.reason,
        emergency=consult.emergency, accepted_at=consult.accepted_at, invite_reason=consult.invite_reason,
        specialty=consult.specialty, requested_title=consult.requested_title, preferred_at=consult.preferred_at)


def consult_detail(session: Session, consult: ConsultRequest, user: User) -> ConsultDetail:
    report = reports.get_report(session=session, consult=consult)
    events = session.scalars(select(ConsultEvent).where(ConsultEvent.consult_id == consult.id)
                             .order_by(ConsultEvent.id)).all()
    bookings = session.scalars(select(Booking).where(Booking.consult_id == consult.id,
                                                     Booking.cancelled_at.is_(None))).all()
    # The working draft is the signers' business; everyone else sees signed versions only.
    show_draft = report is not None and user.id in (consult.reader_id, consult.reviewer_id)
    return ConsultDetail(
        **consult_out(consult).model_dump(),
        events=[EventOut(at=e.at, from_status=e.from_status, to_status=e.to_status, note=e.note) for e in events],
        report_status=report.status if report else None, draft=report.draft if show_draft else None,
        review_comment=report.review_comment if report else "",
        versions=[VersionOut(number=v.number, kind=v.kind, public_id=v.public_id, created_at=v.created_at,
                             signers=[s["name"] for s in v.signatures], content=v.content,
                             pdf_url=f"/api/consults/{consult.id}/report/versions/{v.number}.pdf",
                             **dict(zip(("standing", "current"), reports.version_standing(report, v))))
                  for v in (report.versions if report else [])],
        bookings=[{"user": b.user.username, "role": b.role, "starts_at": b.starts_at.isoformat(),
                   "ends_at": b.ends_at.isoformat()} for b in bookings],
        key_images=reports.key_image_lines(session, consult))


router = APIRouter(prefix="/api", tags=["consult"])


def base_url(request: Request) -> str:
    return request.app.state.runtime.settings.effective_public_url


def store(request: Request):
    return request.app.state.runtime.store


def me_in(session: Session, user: User) -> User:
    return session.get(User, user.id)


@router.post("/consults", response_model=ConsultOut, status_code=status.HTTP_201_CREATED)
def create_consult(body: ConsultCreate, session: WriteSession, user: CurrentUser, runtime: RuntimeDep):
    """Ask another institution for a read or a live consult on one or more studies; an
    emergency one (危重孕产妇) skips the queue and opens its room at once."""
    invitation = service.Invitation(reason=body.invite_reason, specialty=body.specialty, title=body.requested_title,
                                    preferred_at=scheduling.local_to_utc(body.preferred_at) if body.preferred_at else None)
    consult = service.create(session=session, requester=me_in(session, user), kind=body.kind,
                             target_code=body.target, study_uids=body.study_uids,
                             clinical_question=body.clinical_question, history=body.history,
                             priority=body.priority, risk_colour=body.risk_colour, invitation=invitation,
                             emergency=body.emergency,
                             response_minutes=runtime.settings.emergency_response_minutes)
    return consult_out(consult)


@router.post("/consults/{consult_id}/claim", response_model=ConsultDetail)
def claim(consult_id: int, session: WriteSession, user: CurrentUser):
    """The first specialist or coordinator of the target to take an emergency consult owns it
    (409 naming who has it for everyone after)."""
    me = me_in(session, user)
    service.claim(session=session, consult_id=consult_id, user=me)
    return consult_detail(session, session.get(ConsultRequest, consult_id), me)


@router.post("/consults/{consult_id}/consent", response_model=ConsentOut, status_code=status.HTTP_201_CREATED)
def record_consent(consult_id: int, session: WriteSession, user: CurrentUser, runtime: RuntimeDep,
                         signer: str = Form(...), obtained_at: datetime | None = Form(None),
                         signer_name: str = Form(""), relationship: str = Form(""),
                         reason_not_patient: str = Form(""), form: UploadFile | None = File(None)):
    """The patient's informed consent: who obtained it, when, who signed, the scanned form."""
    data = form.file.read(consent.MAX_FORM_BYTES + 1) if form is not None else b""
    when = scheduling.local_to_utc(obtained_at) if obtained_at else None
    row = consent.record(
        session=session, store=runtime.store, user=me_in(session, user), consult_id=consult_id,
        consent=consent.Consent(signer=signer, obtained_at=when, signer_name=signer_name,
                                relationship=relationship, reason_not_patient=reason_not_patient), form=data)
    return consent_out(row)


def consent_out(row) -> ConsentOut:
    return ConsentOut(id=row.id, obtained_by=row.obtained_by.username, obtained_at=row.obtained_at,
                      signer=row.signer, signer_name=row.signer_name, relationship=row.relationship_to_patient,
                      reason_not_patient=row.reason_not_patient, form_sha256=row.form_sha256,
                      form_url=f"/consults/{row.consult_id}/consent/{row.id}/form" if row.form_key else None)


# ---- 危急值 -----------------------------------------------------------------------------------

def critical_out(finding, now=None) -> CriticalOut:
    who = finding.acknowledged_by
    return CriticalOut(
        id=finding.id, study_uid=finding.study_instance_uid, consult_id=finding.consult_id,
        institution=finding.institution.code, category=finding.category, statement=finding.statement,
        flagged_by=finding.flagged_by.username, flagged_at=finding.flagged_at, due_at=finding.due_at,
        level=finding.level, steps=finding.steps, acknowledged_by=who.username if who else None,
        acknowledged_at=finding.acknowledged_at, action=finding.action, phone=finding.phone,
        remarks=finding.remarks, overdue=critical.is_overdue(finding, now))


@router.post("/critical", response_model=CriticalOut, status_code=status.HTTP_201_CREATED)
def flag_critical(body: CriticalFlag, session: WriteSession, user: CurrentUser, runtime: RuntimeDep):
    """Flag a 危急值 on a study: the requesting institution's on-duty staff are told at once."""
    finding = critical.flag(session=session, user=me_in(session, user), settings=runtime.settings,
                            study_uid=body.study_uid, category=body.category, statement=body.statement,
                            consult_id=body.consult_id)
    return critical_out(finding)


@router.post("/critical/{finding_id}/acknowledge", response_model=CriticalOut)
def acknowledge_critical(finding_id: int, body: CriticalAck, session: WriteSession, user: CurrentUser):
    """A named person of the told institution acknowledges, with the action taken."""
    finding = critical.acknowledge(session=session, user=me_in(session, user), finding_id=finding_id,
                                   action=body.action, phone=body.phone, remarks=body.remarks)
    return critical_out(finding)


@router.get("/critical", response_model=list[CriticalOut])
def critical_log(request: Request, session: DbSession, user: CurrentUser, runtime: RuntimeDep,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int = Query(200, ge=1, le=1000)):
    """The user's critical-results log, newest first."""
    me = me_in(session, user)
    found = critical.findings_for(session=session, user=me, since=since, until=until, limit=limit)
    audit.record_read(runtime.db, principal=principal_for(me), action="critical.log", object_type="critical",
                      object_id=",".join(str(f.id) for f in found)[:4000],
                      source=request.client.host if request.client else "", detail={"count": len(found)})
    return [critical_out(f) for f in found]


@router.get("/consults", response_model=list[ConsultOut])
def list_consults(request: Request, session: DbSession, user: CurrentUser, scope: str = "mine",
                  status_: list[str] = Query([], alias="status"),
                  priority: str | None = None, colour: str | None = None, modality: str | None = None,
                  institution: str | None = None, offset: int = Query(0, ge=0), limit: int = Query(100, le=500)):
    """Worklist (mine), board (incoming) or inbox (outgoing), by urgency then waiting time."""
    me = me_in(session, user)
    items = service.worklist(session=session, user=me, statuses=status_, priority=priority,
                             colour=colour, modality=modality, institution=institution, scope=scope)
    shown = [consult_out(c) for c in items[offset:offset + limit]]
    service.audit_list(request.app.state.runtime.db, user=me, consult_ids=[c.id for c in shown],
                       action="consult.list", source=request.client.host if request.client else "")
    return shown


@router.get("/consults/{consult_id}", response_model=ConsultDetail)
def get_consult(consult_id: int, request: Request, session: DbSession, user: CurrentUser):
    me = me_in(session, user)
    detail = consult_detail(session, service.get(session=session, consult_id=consult_id, user=me), me)
    service.audit_read(request.app.state.runtime.db, user=me, consult_id=consult_id, action="consult.read",
                       source=request.client.host if request.client else "")
    return detail


def simple(name: str, fn, body_field: str | None = None, keyword: str | None = None):
    """A state-machine action: call the service, answer with the consult as it now is."""

    def run(consult_id: int, session: Session, user: User, body=None) -> ConsultDetail:
        me = me_in(session, user)
        kwargs = {keyword: getattr(body, body_field)} if body_field else {}
        fn(session=session, consult_id=consult_id, user=me, **kwargs)
        return consult_detail(session, session.get(ConsultRequest, consult_id), me)

    run.__name__ = name
    return run

accept_ = simple("accept", service.accept)
decline_ = simple("decline", service.decline, "reason", "reason")
cancel_ = simple("cancel", service.cancel, "reason", "reason")
start_ = simple("start", service.start)
acknowledge_ = simple("acknowledge", service.acknowledge)


@router.post("/consults/{consult_id}/accept", response_model=ConsultDetail)
def accept(consult_id: int, session: WriteSession, user: CurrentUser):
    """Coordinator of the target institution accepts the request."""
    return accept_(consult_id, session, user)


@router.post("/consults/{consult_id}/decline", response_model=ConsultDetail)
def decline(consult_id: int, body: Reason, session: WriteSession, user: CurrentUser):
    return decline_(consult_id, session, user, body)


@router.post("/consults/{consult_id}/cancel", response_model=ConsultDetail)
def cancel(consult_id: int, body: Reason, session: WriteSession, user: CurrentUser):
    return cancel_(consult_id, session, user, body)


@router.post("/consults/{consult_id}/start", response_model=ConsultDetail)
def start(consult_id: int, session: WriteSession, user: CurrentUser):
    return start_(consult_id, session, user)


@router.post("/consults/{consult_id}/acknowledge", response_model=ConsultDetail)
def acknowledge(consult_id: int, session: WriteSession, user: CurrentUser):
    """The requesting institution confirms it has the returned report."""
    return acknowledge_(consult_id, session, user)


@router.post("/consults/{consult_id}/assign", response_model=ConsultDetail)
def assign(consult_id: int, body: Assignment, session: WriteSession, user: CurrentUser):
    """Name reader and senior reviewer; they (and only they) get access to the studies."""
    me = me_in(session, user)
    service.assign(session=session, consult_id=consult_id, user=me, reader_username=body.reader,
                   reviewer_username=body.reviewer)
    return consult_detail(session, session.get(ConsultRequest, consult_id), me)


@router.post("/consults/{consult_id}/schedule", response_model=ConsultDetail)
def schedule(consult_id: int, body: Slot, session: WriteSession, user: CurrentUser):
    """Book a live consult (one hour or less); 409 on a double booking or outside availability."""
    me = me_in(session, user)
    scheduling.book(session=session, consult_id=consult_id, coordinator=me, specialist_username=body.specialist,
                    starts_local=body.start, minutes=body.minutes, invite_reviewer=body.invite_reviewer)
    return consult_detail(session, session.get(ConsultRequest, consult_id), me)


@router.put("/consults/{consult_id}/report/draft", response_model=ConsultDetail)
def save_draft(consult_id: int, body: Draft, session: WriteSession, user: CurrentUser):
    """Autosave of the reader's draft."""
    me = me_in(session, user)
    reports.save_draft(session=session, consult_id=consult_id, user=me, template=body.template,
                       content=body.model_dump())
    return consult_detail(session, session.get(ConsultRequest, consult_id), me)


@router.post("/consults/{consult_id}/report/sign", response_model=ConsultDetail)
def sign(consult_id: int, body: Password, request: Request, session: WriteSession, user: CurrentUser):
    """The reader signs the preliminary report (PAdES + CMS)."""
    return _signed_by(reports.sign_preliminary, consult_id, body, request, session, user)


def _signed_by(sign_version, consult_id: int, body: Password, request: Request, session, user) -> ConsultDetail:
    """Sign a report version with `sign_version` (preliminary or final) and answer the consult."""
    me = me_in(session, user)
    sign_version(session=session, store=store(request), consult_id=consult_id, user=me,
                 password=body.password, base_url=base_url(request))
    return consult_detail(session, session.get(ConsultRequest, consult_id), me)


@router.post("/consults/{consult_id}/report/return", response_model=ConsultDetail)
def return_report(consult_id: int, body: Comments, session: WriteSession, user: CurrentUser):
    me = me_in(session, user)
    reports.return_for_revision(session=session, consult_id=consult_id, user=me, comments=body.comments)
    return consult_detail(session, session.get(ConsultRequest, consult_id), me)


@router.post("/consults/{consult_id}/report/cosign", response_model=ConsultDetail)
def cosign(consult_id: int, body: Password, request: Request, session: WriteSession, user: CurrentUser):
    """The senior co-signs: final, returned to the requesting institution."""
    return _signed_by(reports.co_sign_final, consult_id, body, request, session, user)


@router.post("/consults/{consult_id}/report/addendum", response_model=ConsultDetail)
def addendum(consult_id: int, body: Addendum, request: Request, session: WriteSession, user: CurrentUser):
    me = me_in(session, user)
    reports.sign_addendum(session=session, store=store(request), consult_id=consult_id, user=me,
                          password=body.password, text=body.text, base_url=base_url(request))
    return consult_detail(session, session.get(ConsultRequest, consult_id), me)


@router.get("/consults/{consult_id}/report/versions/{number}.pdf", response_class=Response)
def version_pdf(consult_id: int, number: int, request: Request, session: DbSession, user: CurrentUser):
    """A signed version as PDF (participants of the consult only)."""
    consult = service.get(session=session, consult_id=consult_id, user=me_in(session, user))
    report = reports.get_report(session=session, consult=consult)
    version = next((v for v in (report.versions if report else []) if v.number == number), None)
    if version is None:
        raise NotFound("未找到该报告版本 / no such report version")
    audit.record_read(request.app.state.runtime.db, principal=None, actor=user.username, action="report.download",
                 object_type="consult", object_id=str(consult_id), detail={"version": number})
    return Response(store(request).get(version.pdf_key), media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="report-{consult_id}-v{number}.pdf"'})


@router.get("/report-templates")
def list_templates(user: CurrentUser):
    return [{"id": t.id, "label": t.label, "modality": t.modality, "body_part": t.body_part,
             "findings_hint": t.findings_hint,
             "fields": [{"name": f.name, "label": f.label, "unit": f.unit, "kind": f.kind} for f in t.fields]}
            for t in templates.TEMPLATES.values()]


@router.put("/me/availability")
def set_availability(body: Windows, session: WriteSession, user: CurrentUser):
    """Weekly recurring availability in Asia/Shanghai time (replaces the previous one)."""
    rows = scheduling.set_weekly(session=session, user=me_in(session, user), windows=body.windows)
    return {"windows": [[r.weekday, f"{r.start_minute // 60:02d}:{r.start_minute % 60:02d}",
                         f"{r.end_minute // 60:02d}:{r.end_minute % 60:02d}"] for r in rows]}


@router.post("/me/availability/exceptions", status_code=status.HTTP_201_CREATED)
def add_exception(body: ExceptionIn, session: WriteSession, user: CurrentUser):
    row = scheduling.add_exception(session=session, user=me_in(session, user), starts_local=body.starts,
                                   ends_local=body.ends, available=body.available, note=body.note)
    return {"id": row.id, "starts_at": row.starts_at, "ends_at": row.ends_at, "available": row.available}


@router.get("/specialists/free")
def free(session: DbSession, user: CurrentUser, start: str, minutes: int = Query(30, ge=5, le=24 * 60)):
    """Specialists of my institution free in that local slot (for coordinators)."""
    try:
        starts = datetime.fromisoformat(start)
    except ValueError:
        raise Invalid("开始时间应写成 2026-11-23T09:00 / start must be an ISO date-time like 2026-11-23T09:00") from None
    people = scheduling.free_specialists(session=session, institution_id=user.institution_id,
                                         starts_local=starts, minutes=minutes)
    return [{"username": p.username, "display_name": p.display_name} for p in people]


@router.get("/me/notifications", response_model=list[NotificationOut])
def notifications(session: DbSession, user: CurrentUser, unread: bool = False):
    query = select(Notification).where(Notification.user_id == user.id)
    if unread:
        query = query.where(Notification.read_at.is_(None))
    rows = session.scalars(query.order_by(Notification.id.desc()).limit(200))
    return [NotificationOut(id=n.id, at=n.at, kind=n.kind, title=n.title, body=n.body, link=n.link,
                            read=n.read_at is not None) for n in rows]


@router.get("/me/notifications/count")
def notification_count(session: DbSession, user: CurrentUser) -> dict:
    """What the bell in every page header shows, and the urgent ones every page puts in a
    banner (an emergency consult, a critical result) with where each leads."""
    urgent = [{"id": n.id, "kind": n.kind, "title": n.title, "link": n.link, "at": n.at.isoformat()}
              for n in notify.urgent_unread(session, user.id)]
    return {"unread": notify.unread_count(session, user.id), "urgent": urgent}


@router.post("/me/notifications/{notification_id}/read", status_code=204)
def mark_read(notification_id: int, session: WriteSession, user: CurrentUser):
    notify.mark_read(session, user.id, notification_id)


@router.post("/me/calendar/feed")
def issue_calendar_feed(request: Request, session: WriteSession, user: CurrentUser) -> dict:
    """A new subscription URL for my calendar (shown once); the previous one stops working."""
    secret = scheduling.issue_feed(session=session, user=me_in(session, user))
    return {"url": f"{base_url(request)}{scheduling.FEED_PREFIX}{secret}.ics"}


@router.get("/me/calendar.ics", response_class=Response)
def calendar(request: Request, session: DbSession, user: CurrentUser):
    """My booked consults as iCalendar."""
    return Response(scheduling.ical_feed(session=session, user=me_in(session, user), base_url=base_url(request)),
                    media_type="text/calendar; charset=utf-8")


@router.get("/dashboard")
def dashboard(session: DbSession, user: CurrentUser, runtime: RuntimeDep, weeks: int = Query(8, ge=1, le=52)):
    """Volumes, turnaround, overdue items, the queue, 危急值 and emergency response times
    (coordinators and admins)."""
    require_viewer(user, weeks)
    return stats(session=session, institution_id=user.institution_id, weeks=weeks,
                 response_minutes=runtime.settings.emergency_response_minutes)

