"""Pages for every role: township request form and inbox, coordinator board and calendar,
specialist worklist and report editor, the public verification page. Actions call the
JSON API from the page (web/static/consult.js) with the browser session."""

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from consult import consent, critical, dashboard, notify, policy, reports, rooms, scheduling, service, state, templates
from consult.models import ACK_ACTIONS, ConsultRequest, Notification, PRIORITIES, RISK_COLOURS, Report
from consult.routes import consult_detail
from imaging import keyimages, recognition, summary
from imaging.models import Study
from maternal import service as maternal_service
from storage import access, audit, identity, localtime
from storage.deps import CurrentUser, DbSession, OptionalUser, WriteSession, sign_in_redirect
from storage.errors import Invalid, passes
from storage.models import Institution, User
from storage.types import utcnow

STATUS_LABELS = {
    "requested": "待受理 Requested", "accepted": "已受理 Accepted", "declined": "已退回 Declined",
    "assigned": "已分配 Assigned", "scheduled": "已预约 Scheduled", "in_progress": "阅片中 In progress",
    "reported": "待审核 Reported", "final": "已签发 Final", "returned": "已回传 Delivered",
    "acknowledged": "已确认 Acknowledged", "cancelled": "已取消 Cancelled",
}
ROLE_LABELS = {"presenter": "汇报 Presenter", "specialist": "专家 Specialist", "reviewer": "审核 Reviewer",
               "coordinator": "协调 Coordinator"}
LEVEL_LABELS = {"township": "乡镇卫生院 Township", "county": "县级 County", "city": "市级 City",
                "partner": "合作医院 Partner"}
PRIORITY_LABELS = {"routine": "常规 Routine", "urgent": "加急 Urgent", "critical": "危急 Critical"}
COLOUR_LABELS = {"green": "绿 Green", "yellow": "黄 Yellow", "orange": "橙 Orange", "red": "红 Red",
                 "purple": "紫 Purple"}
MAX_UPLOAD = 20 * 1024 * 1024


router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, **context):
    context.update(status_labels=STATUS_LABELS, priority_labels=PRIORITY_LABELS, colour_labels=COLOUR_LABELS,
                   role_labels=ROLE_LABELS)
    return request.app.state.templates.TemplateResponse(request, name, context)


# The two tabs of every consult list: work still to do, and what has ended.
TABS = {"open": state.OPEN, "done": (*state.DONE, "declined", "cancelled")}


@router.get("/consults", response_class=HTMLResponse)
def consult_list(request: Request, session: DbSession, user: OptionalUser, status: str = "", priority: str = "",
                 colour: str = "", tab: str = "open"):
    """The board (coordinators), the worklist (specialists) or the inbox (townships): open work
    first by urgency then waiting time; ended consults on the "done" tab, newest first."""
    if user is None:
        return sign_in_redirect(request)
    user = session.get(User, user.id)
    tab = tab if tab in TABS else "open"
    scope = {"radiographer": "outgoing", "coordinator": "incoming", "admin": "incoming"}.get(user.role, "mine")
    everything = service.worklist(session=session, user=user, scope=scope, statuses=[status] if status else None,
                                  priority=priority or None, colour=colour or None)
    counts = {name: sum(c.status in statuses for c in everything) for name, statuses in TABS.items()}
    items = [c for c in everything if c.status in TABS[tab]]
    if tab == "done":
        items.sort(key=lambda c: c.status_changed_at, reverse=True)
    outgoing = service.worklist(session=session, user=user, scope="outgoing") if scope != "outgoing" else []
    outgoing = [c for c in outgoing if c.status in TABS[tab]]
    service.audit_list(request.app.state.runtime.db, user=user, consult_ids=[c.id for c in [*items, *outgoing]],
                       action="consult.list", source=request.client.host if request.client else "")
    doors = {c.id: rooms.door(session, c, user) for c in items if c.kind == "live"}
    studies = summary.summarize(session, [s.study_instance_uid for c in [*items, *outgoing] for s in c.studies])
    return render(request, "consult/list.html", user=user, scope=scope, items=items, outgoing=outgoing,
                  tab=tab, counts=counts, doors=doors, studies=studies, now=utcnow(), overdue=service.is_overdue,
                  filters={"status": status, "priority": priority, "colour": colour},
                  priorities=PRIORITIES, colours=RISK_COLOURS)


@router.get("/consults/new", response_class=HTMLResponse)
def new_consult(request: Request, session: DbSession, user: OptionalUser, study: str = "", emergency: bool = False):
    if user is None:
        return sign_in_redirect(request)
    user = session.get(User, user.id)
    scope = access.scope_for(session, identity.principal_for(user))
    uids = session.scalars(select(Study.study_instance_uid)
                           .where(scope.study_filter(Study.institution_id, Study.study_instance_uid))
                           .order_by(Study.created_at.desc()).limit(100)).all()
    found = summary.summarize(session, list(uids))
    studies = [found[uid] for uid in uids if uid in found]
    targets = [] if user.institution is None else [
        i for i in session.scalars(select(Institution).where(Institution.active.is_(True)))
        if i.id != user.institution_id and passes(service.direction_between, session, user.institution, i)]
    grade = _pregnancy_grade(session, user, study)
    return render(request, "consult/new.html", user=user, studies=studies, targets=targets, chosen=study,
                  grade=grade, default_colour=grade.headline if grade else "",
                  level_labels=LEVEL_LABELS, priorities=PRIORITIES, colours=RISK_COLOURS,
                  signer_labels=consent.SIGNER_LABELS, emergency=emergency,
                  response_minutes=request.app.state.runtime.settings.emergency_response_minutes)


def _pregnancy_grade(session: Session, user: User, study_uid: str):
    """The current risk colour of the chosen study's patient's pregnancy (kept on the pregnancy,
    maternal/), so that the request carries it without retyping."""
    if not study_uid:
        return None
    patient_pk = session.scalar(select(Study.patient_pk).where(Study.study_instance_uid == study_uid))
    if patient_pk is None:
        return None
    return maternal_service.colour_for_patient(session, principal=identity.principal_for(user), patient_pk=patient_pk)


def _consult_context(request: Request, session: Session, consult_id: int, user: User, template: str,
                     action: str) -> dict:
    """What the consult page and the side-by-side reading page show (the read is audited)."""
    consult = service.get(session=session, consult_id=consult_id, user=user)
    detail = consult_detail(session, consult, user)
    service.audit_read(request.app.state.runtime.db, user=user, consult_id=consult_id, action=action,
                       source=request.client.host if request.client else "")
    report = reports.get_report(session=session, consult=consult)
    studies = [session.scalar(select(Study).where(Study.study_instance_uid == s.study_instance_uid))
               for s in consult.studies]
    specialists = session.scalars(select(User).where(User.role == "specialist", User.active.is_(True))
                                  .order_by(User.institution_id, User.username)).all()
    first = studies[0] if studies and studies[0] else None
    template_id = (template if template in templates.TEMPLATES else report.template if report else
                   templates.for_study((keyimages.image_modalities(first.modalities) or [""])[0] if first else "", "",
                                       first.description if first else ""))
    settings = request.app.state.runtime.settings
    return dict(user=user, consult=consult, detail=detail,
                door=rooms.door(session, consult, user),
                consents=consent.records_for(session, consult.id), signer_labels=consent.SIGNER_LABELS,
                can_consent=policy.is_requester_staff(consult, user),
                findings=critical.findings_on(session, consult_id=consult.id),
                critical_categories=critical.categories(settings), ack_actions=ACK_ACTIONS,
                can_flag=policy.is_signer(consult, user),
                can_claim=consult.emergency and consult.status == "requested"
                and policy.RULES["claim"][0](consult, user),
                response_minutes=settings.emergency_response_minutes, now=utcnow(),
                summaries=summary.summarize(session, [s.study_instance_uid for s in studies if s]),
                studies=[s for s in studies if s], specialists=specialists,
                templates=templates.TEMPLATES, template_id=template_id,
                can_read_images=[access.can_see_study(session, identity.principal_for(user),
                                                      institution_id=s.institution_id,
                                                      study_uid=s.study_instance_uid) for s in studies if s],
                is_coordinator=policy.is_target_coordinator(consult, user))


@router.get("/consults/{consult_id}", response_class=HTMLResponse)
def consult_page(consult_id: int, request: Request, session: DbSession, user: OptionalUser, template: str = ""):
    if user is None:
        return sign_in_redirect(request)
    user = session.get(User, user.id)
    context = _consult_context(request, session, consult_id, user, template, "consult.view")
    return render(request, "consult/detail.html", **context)


@router.get("/consults/{consult_id}/read", response_class=HTMLResponse)
def read_and_report(consult_id: int, request: Request, session: DbSession, user: OptionalUser, template: str = "",
                    study: str = ""):
    """The reader's one window: the viewer and the report editor side by side, the split
    resizable. Anyone else (or a consult past writing) goes to the consult page."""
    if user is None:
        return sign_in_redirect(request)
    user = session.get(User, user.id)
    context = _consult_context(request, session, consult_id, user, template, "consult.read")
    consult = context["consult"]
    readable = [s for s, ok in zip(context["studies"], context["can_read_images"]) if ok]
    if user.id != consult.reader_id or consult.status not in ("assigned", "scheduled", "in_progress") or not readable:
        return RedirectResponse(f"/consults/{consult_id}", status_code=303)
    shown = next((s for s in readable if s.study_instance_uid == study), readable[0])
    return render(request, "consult/read.html", readable=readable, shown=shown, **context)


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request, session: DbSession, user: OptionalUser, weeks: int = 8):
    if user is None:
        return sign_in_redirect(request)
    user = session.get(User, user.id)
    dashboard.require_viewer(user, weeks)  # the same rule as /api/dashboard
    data = dashboard.stats(session=session, institution_id=user.institution_id, weeks=weeks,
                           response_minutes=request.app.state.runtime.settings.emergency_response_minutes)
    charts = {
        "volumes": dashboard.stacked_weeks("每周会诊量（按申请机构） Weekly volume by institution", data["volumes"]),
        "priority": dashboard.bar_chart("待办（按优先级） Open by priority", data["queue_by_priority"],
                                        labels=PRIORITY_LABELS),
        "colour": dashboard.bar_chart("待办（按风险色） Open by risk colour", data["queue_by_colour"],
                                      labels={**COLOUR_LABELS, "none": "未分级 None"}),
    }
    mutual = recognition.stats(session, institution_ids=access.subtree_ids(session, user.institution_id),
                               since=utcnow() - timedelta(weeks=weeks))
    if mutual.reasons:
        # The bars carry the Chinese name (the label column is narrow); the hover title the full one.
        charts["recognition_reasons"] = dashboard.bar_chart(
            "不互认原因 Reasons for not recognising", mutual.reasons, width=560,
            labels={label: label.split(" ")[0][:10] for label in mutual.reasons})
    return render(request, "consult/dashboard.html", user=user, data=data, charts=charts, mutual=mutual,
                  weeks=weeks)


@router.get("/calendar", response_class=HTMLResponse)
def calendar_page(request: Request, session: DbSession, user: OptionalUser):
    if user is None:
        return sign_in_redirect(request)
    return _calendar(request, session, session.get(User, user.id))


def _calendar(request: Request, session: Session, user: User, feed_url: str = ""):
    bookings = scheduling.bookings_for(session=session, user=user, since=utcnow())
    doors = {b.consult_id: rooms.door(session, session.get(ConsultRequest, b.consult_id), user) for b in bookings}
    return render(request, "consult/calendar.html", user=user, bookings=bookings, doors=doors, feed_url=feed_url,
                  has_feed=user.calendar_feed_hash is not None,
                  local=localtime.zone(request.app.state.runtime.settings.timezone))


@router.get(scheduling.FEED_PREFIX + "{secret}.ics")
def calendar_feed(secret: str, request: Request, session: DbSession):
    """The subscribed calendar of one user, by the secret in its URL (no login: calendar apps
    cannot sign in). Bookings only, no clinical text; the URL is rotated from /calendar."""
    user = scheduling.user_for_feed(session=session, secret=secret)
    return Response(scheduling.ical_feed(session=session, user=user, base_url=_site(request)),
                    media_type="text/calendar; charset=utf-8", headers={"Cache-Control": "private, max-age=300"})


@router.post("/calendar/feed", response_class=HTMLResponse)
def rotate_calendar_feed(request: Request, session: WriteSession, user: CurrentUser):
    """Issue or replace my subscription URL and show it once."""
    me = session.get(User, user.id)
    secret = scheduling.issue_feed(session=session, user=me)
    return _calendar(request, session, me, feed_url=f"{_site(request)}{scheduling.FEED_PREFIX}{secret}.ics")


def _site(request: Request) -> str:
    return request.app.state.runtime.settings.effective_public_url.rstrip("/")


# ---- a specialist's own availability ------------------------------------------------------

WEEKDAYS = ("周一 Mon", "周二 Tue", "周三 Wed", "周四 Thu", "周五 Fri", "周六 Sat", "周日 Sun")
WINDOWS_PER_DAY = 2  # morning and afternoon clinics, as a hospital timetable has them


@router.get("/availability", response_class=HTMLResponse)
def availability_page(request: Request, session: DbSession, user: OptionalUser):
    """A specialist's weekly pattern (two windows a day) and leave or extra hours."""
    if user is None:
        return sign_in_redirect(request)
    return _availability(request, session, session.get(User, user.id))


@router.post("/availability/weekly", response_class=HTMLResponse)
async def save_weekly(request: Request, session: WriteSession, user: CurrentUser):
    """Replace the weekly pattern; a wrong row is shown beside itself and nothing is saved."""
    form = await request.form()
    me = session.get(User, user.id)
    windows, errors = [], {}
    for day in range(7):
        for slot in range(WINDOWS_PER_DAY):
            start, end = (str(form.get(f"d{day}s{slot}{edge}", "")).strip() for edge in ("start", "end"))
            if not start and not end:
                continue
            try:
                scheduling.check_window(day, start, end)
                windows.append((day, start, end))
            except Invalid as exc:
                errors[f"d{day}s{slot}"] = exc.detail
    if errors:
        return _availability(request, session, me, errors=errors, typed=dict(form), status=400)
    scheduling.set_weekly(session=session, user=me, windows=windows)
    return _availability(request, session, me, saved="weekly")


@router.post("/availability/exceptions", response_class=HTMLResponse)
def add_availability_exception(request: Request, session: WriteSession, user: CurrentUser,
                               starts: str = Form(""), ends: str = Form(""), kind: str = Form("leave"),
                               note: str = Form("")):
    me = session.get(User, user.id)
    try:
        begin, finish = datetime.fromisoformat(starts), datetime.fromisoformat(ends)
        scheduling.add_exception(session=session, user=me, starts_local=begin, ends_local=finish,
                                 available=kind == "extra", note=note.strip()[:200])
    except ValueError:
        return _availability(request, session, me, errors={"exception": "请填写开始和结束时间 / give a start and an end"},
                             status=400)
    except Invalid as exc:
        return _availability(request, session, me, errors={"exception": exc.detail}, status=400)
    return _availability(request, session, me, saved="exception")


@router.post("/availability/exceptions/{exception_id}/delete", response_class=HTMLResponse)
def delete_availability_exception(exception_id: int, request: Request, session: WriteSession, user: CurrentUser):
    me = session.get(User, user.id)
    scheduling.remove_exception(session=session, user=me, exception_id=exception_id)
    return _availability(request, session, me, saved="deleted")


def _availability(request: Request, session: Session, user: User, *, errors: dict | None = None,
                  typed: dict | None = None, saved: str = "", status: int = 200):
    shown = {}
    counts = [0] * 7
    for row in scheduling.weekly(session=session, user=user):
        if counts[row.weekday] < WINDOWS_PER_DAY:
            key = f"d{row.weekday}s{counts[row.weekday]}"
            shown[key + "start"] = f"{row.start_minute // 60:02d}:{row.start_minute % 60:02d}"
            shown[key + "end"] = f"{row.end_minute // 60:02d}:{row.end_minute % 60:02d}"
            counts[row.weekday] += 1
    response = render(request, "consult/availability.html", user=user, weekdays=WEEKDAYS, slots=WINDOWS_PER_DAY,
                      values=typed or shown, errors=errors or {}, saved=saved,
                      exceptions=scheduling.upcoming_exceptions(session=session, user=user))
    response.status_code = status
    return response


@router.get("/verify", response_class=HTMLResponse)
def verify_form(request: Request, user: OptionalUser):
    return render(request, "consult/verify.html", user=user, version=None, verdict=None)


@router.get("/verify/{public_id}", response_class=HTMLResponse)
def verify_code(public_id: str, request: Request, session: DbSession, user: OptionalUser):
    version = reports.version_by_public_id(session=session, public_id=public_id)
    standing, current = reports.version_standing(session.get(Report, version.report_id), version)
    return render(request, "consult/verify.html", user=user, version=version, verdict=None,
                  standing=standing, current=current)


@router.post("/verify", response_class=HTMLResponse)
async def verify_upload(request: Request, session: DbSession, user: OptionalUser, file: UploadFile = File(...)):
    pdf = await file.read(MAX_UPLOAD + 1)
    if len(pdf) > MAX_UPLOAD:
        raise Invalid("文件过大 / the file is larger than 20 MB")
    verdict = reports.verify_upload(session=session, pdf=pdf)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(verdict)
    return render(request, "consult/verify.html", user=user, version=None, verdict=verdict,
                  filename=file.filename)


# ---- notifications ------------------------------------------------------------------------

NOTICES_PER_PAGE = 50


@router.get("/notifications", response_class=HTMLResponse)
def notifications_page(request: Request, session: DbSession, user: OptionalUser, before: int | None = None):
    """The user's notifications, newest first, 50 a page (older ones by `before`, an id)."""
    if user is None:
        return sign_in_redirect(request)
    query = select(Notification).where(Notification.user_id == user.id)
    if before is not None:
        query = query.where(Notification.id < before)
    rows = session.scalars(query.order_by(Notification.id.desc()).limit(NOTICES_PER_PAGE + 1)).all()
    older = rows[NOTICES_PER_PAGE - 1].id if len(rows) > NOTICES_PER_PAGE else None
    return render(request, "consult/notifications.html", user=user, notices=rows[:NOTICES_PER_PAGE],
                  older=older, unread_here=any(n.read_at is None for n in rows))


@router.post("/notifications/{notification_id}/open")
def open_notification(notification_id: int, session: WriteSession, user: CurrentUser):
    """Mark it read and go where it points."""
    row = notify.mark_read(session, user.id, notification_id)
    local = row.link.startswith("/") and not row.link.startswith("//")  # never off the site
    return RedirectResponse(row.link if local else "/notifications", status_code=303)


@router.post("/notifications/read-all")
def read_all_notifications(session: WriteSession, user: CurrentUser):
    session.execute(update(Notification).where(Notification.user_id == user.id, Notification.read_at.is_(None))
                    .values(read_at=utcnow()))
    return RedirectResponse("/notifications", status_code=303)


@router.get("/consults/{consult_id}/consent/{consent_id}/form")
def consent_form(consult_id: int, consent_id: int, request: Request, session: DbSession, user: CurrentUser):
    """The scanned consent form (a read of patient data: audited)."""
    me = session.get(User, user.id)
    row = consent.form_of(session=session, user=me, consult_id=consult_id, consent_id=consent_id)
    runtime = request.app.state.runtime
    audit.record_read(runtime.db, principal=identity.principal_for(me), action="consult.consent.read",
                      object_type="consult", object_id=str(consult_id),
                      source=request.client.host if request.client else "", detail={"consent": consent_id})
    return Response(runtime.store.get(row.form_key), media_type=row.form_type,
                    headers={"Content-Disposition": f'inline; filename="consent-{consult_id}-{consent_id}"',
                             "Cache-Control": "private, no-store"})


# ---- 危急值 --------------------------------------------------------------------------------------

@router.get("/critical", response_class=HTMLResponse)
def critical_log_page(request: Request, session: DbSession, user: OptionalUser, month: str = ""):
    """The institution's critical-results log: unacknowledged first to act on, then the month."""
    if user is None:
        return sign_in_redirect(request)
    me = session.get(User, user.id)
    since, until = _month_range(month)
    found = critical.findings_for(session=session, user=me, since=since, until=until, limit=500)
    _audit_log_read(request, me, found, "critical.log")
    return render(request, "consult/critical_log.html", user=me, rows=critical.log_rows(session, found),
                  month=localtime.display(since, "%Y-%m"), header=critical.LOG_HEADER)


@router.get("/critical.csv")
def critical_log_csv(request: Request, session: DbSession, user: CurrentUser, month: str = ""):
    """The month's log as CSV (Excel opens it: UTF-8 with a BOM)."""
    me = session.get(User, user.id)
    since, until = _month_range(month)
    found = critical.findings_for(session=session, user=me, since=since, until=until, limit=10_000)
    _audit_log_read(request, me, found, "critical.export")
    name = f"critical-{localtime.display(since, '%Y-%m')}.csv"
    return Response(critical.log_csv(critical.log_rows(session, found)), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


@router.get("/critical/{finding_id}", response_class=HTMLResponse)
def critical_page(finding_id: int, request: Request, session: DbSession, user: OptionalUser):
    """One critical result: what, on whom, who was told at each step, and the acknowledgement."""
    if user is None:
        return sign_in_redirect(request)
    me = session.get(User, user.id)
    finding = critical.get(session=session, user=me, finding_id=finding_id)
    _audit_log_read(request, me, [finding], "critical.view")
    row = critical.log_rows(session, [finding])[0]
    told = {name for step in finding.steps for name in step["told"]}
    names = {u.username: u.display_name or u.username
             for u in session.scalars(select(User).where(User.username.in_(told)))} if told else {}
    return render(request, "consult/critical.html", user=me, finding=finding, row=row, ack_actions=ACK_ACTIONS,
                  names=names,
                  can_ack=finding.acknowledged_at is None and critical.may_acknowledge(finding, me),
                  level_labels=critical.LEVELS)


def _audit_log_read(request: Request, user: User, found: list, action: str) -> None:
    audit.record_read(request.app.state.runtime.db, principal=identity.principal_for(user), action=action,
                      object_type="critical", object_id=",".join(str(f.id) for f in found)[:4000],
                      source=request.client.host if request.client else "", detail={"count": len(found)})


def _month_range(month: str) -> tuple[datetime, datetime]:
    """A local month "2026-12" (default: this one) as UTC bounds."""
    today = localtime.display(utcnow(), "%Y-%m")
    try:
        year, number = (int(part) for part in (month or today).split("-"))
        start = datetime(year, number, 1, tzinfo=localtime.zone())
    except ValueError:
        raise Invalid("月份请写成 2026-12 / month as YYYY-MM") from None
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=localtime.zone())
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)
