"""Availability in Asia/Shanghai time (stored in UTC), bookings of one hour or less with
no double booking of a person, rescheduling, and an iCalendar feed per user."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from consult.models import Availability, AvailabilityException, Booking, ConsultRequest
from consult.notify import notify, notify_consult
from consult import policy
from consult.service import get, grant
from consult.duty import is_available
from consult.state import transition
from storage import audit, identity, localtime
from storage.errors import Conflict, Invalid, NotFound
from storage.models import User
from storage.types import utcnow

MAX_SLOT_MINUTES = 60


def local_to_utc(value: datetime) -> datetime:
    """A naive local (Asia/Shanghai) time, or an aware one, as UTC."""
    aware = value.replace(tzinfo=localtime.zone()) if value.tzinfo is None else value
    return aware.astimezone(timezone.utc)


def _minutes(text_value: str) -> int:
    try:
        hours, minutes = text_value.split(":")
        value = int(hours) * 60 + int(minutes)
    except ValueError:
        raise Invalid(f"时间应写成 08:30 / time {text_value!r} must look like 08:30") from None
    if not 0 <= value <= 24 * 60:
        raise Invalid(f"时间超出范围 / time {text_value!r} is out of range")
    return value


def check_window(weekday: int, start: str, end: str) -> tuple[int, int]:
    """One weekly window as minutes after local midnight, or Invalid saying what is wrong."""
    if not 0 <= int(weekday) <= 6:
        raise Invalid("星期无效 / weekday must be 0 (Monday) to 6 (Sunday)")
    first, last = _minutes(start), _minutes(end)
    if last <= first:
        raise Invalid(f"{start}-{end}: 结束须晚于开始 / the end must be after the start")
    return first, last


def set_weekly(*, session: Session, user: User, windows: list[tuple[int, str, str]]) -> list[Availability]:
    """Replace the user's weekly availability: (weekday 0=Mon..6, "08:00", "12:00") in local time."""
    rows = []
    for weekday, start, end in windows:
        first, last = check_window(weekday, start, end)
        rows.append(Availability(user_id=user.id, weekday=int(weekday), start_minute=first, end_minute=last))
    for old in session.scalars(select(Availability).where(Availability.user_id == user.id)):
        session.delete(old)
    session.add_all(rows)
    session.flush()
    return rows


def add_exception(*, session: Session, user: User, starts_local: datetime, ends_local: datetime,
                  available: bool, note: str = "") -> AvailabilityException:
    """Leave (available=False) or extra hours (available=True) between two local times."""
    starts, ends = local_to_utc(starts_local), local_to_utc(ends_local)
    if ends <= starts:
        raise Invalid("结束须晚于开始 / the end must be after the start")
    row = AvailabilityException(user_id=user.id, starts_at=starts, ends_at=ends, available=available, note=note)
    session.add(row)
    session.flush()
    return row


def weekly(*, session: Session, user: User) -> list[Availability]:
    return list(session.scalars(select(Availability).where(Availability.user_id == user.id)
                                .order_by(Availability.weekday, Availability.start_minute)))


def upcoming_exceptions(*, session: Session, user: User) -> list[AvailabilityException]:
    return list(session.scalars(select(AvailabilityException).where(
        AvailabilityException.user_id == user.id, AvailabilityException.ends_at > utcnow())
        .order_by(AvailabilityException.starts_at)))


def remove_exception(*, session: Session, user: User, exception_id: int) -> None:
    row = session.get(AvailabilityException, exception_id)
    if row is None or row.user_id != user.id:
        raise NotFound("未找到该记录 / no such leave or extra hours")
    session.delete(row)
    session.flush()


def _lock_people(session: Session, user_ids: list[int]) -> None:
    # PostgreSQL: serialize bookings per person for the rest of the transaction. SQLite write
    # transactions already hold the database's single write lock.
    if session.get_bind().dialect.name == "postgresql":
        for user_id in sorted(user_ids):
            session.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": 0x424B, "b": user_id})


def conflicts(session: Session, user_id: int, starts: datetime, ends: datetime,
              ignore_consult: int | None = None) -> list[Booking]:
    query = select(Booking).where(Booking.user_id == user_id, Booking.cancelled_at.is_(None),
                                  Booking.starts_at < ends, Booking.ends_at > starts)
    if ignore_consult is not None:
        query = query.where(Booking.consult_id != ignore_consult)
    return list(session.scalars(query))


def book(*, session: Session, consult_id: int, coordinator: User, specialist_username: str,
         starts_local: datetime, minutes: int = 30, invite_reviewer: bool = False) -> list[Booking]:
    """Book a live consult: the specialist, the presenter (requester) and the coordinator, and
    the senior reviewer when invited (they then have a seat in the room).

    Refused (409) when anyone is already booked then, or the specialist is not available."""
    consult = get(session=session, consult_id=consult_id, user=coordinator)
    policy.require("book", consult, coordinator)
    if consult.kind != "live":
        raise Invalid("只有视频会诊需要预约，远程阅片直接分配 / only live consults are booked; reads are assigned")
    if not 5 <= minutes <= MAX_SLOT_MINUTES:
        raise Invalid(f"时段须在1小时以内 / a slot lasts 5 to {MAX_SLOT_MINUTES} minutes")
    specialist = session.scalar(select(User).where(User.username == specialist_username))
    if specialist is None or specialist.role != "specialist" or specialist.institution_id != consult.target_institution_id:
        raise NotFound(f"{specialist_username} 不是会诊医院的专家 / {specialist_username} is not a specialist of the target institution")
    starts = local_to_utc(starts_local)
    ends = starts + timedelta(minutes=minutes)
    if starts < utcnow():
        raise Invalid("预约时间已过 / the slot is in the past")
    people = {"specialist": specialist.id, "presenter": consult.requested_by_id, "coordinator": coordinator.id}
    if invite_reviewer:
        if consult.reviewer_id is None:
            raise Invalid("请先分配审核医生 / assign a senior reviewer before inviting one")
        if consult.reviewer_id not in people.values():
            people["reviewer"] = consult.reviewer_id
    _lock_people(session, list(people.values()))
    if not is_available(session, specialist.id, starts, ends):
        raise Conflict(f"该专家此时段不在班 / {specialist.display_name} is not available then")
    for role, user_id in people.items():
        clash = conflicts(session, user_id, starts, ends, ignore_consult=consult.id)
        if clash:
            who = session.get(User, user_id)
            raise Conflict(f"时间冲突 / {who.display_name} is already booked then (consult #{clash[0].consult_id})")
    for old in session.scalars(select(Booking).where(Booking.consult_id == consult.id, Booking.cancelled_at.is_(None))):
        old.cancelled_at = utcnow()
    bookings = [Booking(consult_id=consult.id, user_id=user_id, role=role, starts_at=starts, ends_at=ends)
                for role, user_id in people.items()]
    session.add_all(bookings)
    rescheduled = consult.status == "scheduled"
    local = starts.astimezone(localtime.zone()).strftime("%Y-%m-%d %H:%M")
    transition(session, consult, coordinator, "scheduled",
               f"{local}（{localtime.label_zh()}）{minutes} 分钟 min · {specialist.display_name or specialist.username}")
    if consult.reader_id is None:
        consult.reader_id = specialist.id
        grant(session=session, consult=consult, user_ids={specialist.id}, granted_by=coordinator.username)
    notify_consult(session, consult, set(people.values()), kind="consult.scheduled",
                   title=f"{'会诊改期' if rescheduled else '会诊已预约'} Consult #{consult.id}: "
                         f"{local} ({localtime.label_zh()})")
    session.flush()
    return bookings


def free_specialists(*, session: Session, institution_id: int, starts_local: datetime, minutes: int) -> list[User]:
    """Specialists of the institution who are available and not booked in that slot."""
    starts = local_to_utc(starts_local)
    ends = starts + timedelta(minutes=minutes)
    people = session.scalars(select(User).where(User.institution_id == institution_id, User.role == "specialist",
                                                User.active.is_(True)).order_by(User.username))
    return [u for u in people if is_available(session, u.id, starts, ends) and not conflicts(session, u.id, starts, ends)]


def bookings_for(*, session: Session, user: User, since: datetime | None = None) -> list[Booking]:
    query = select(Booking).where(Booking.user_id == user.id, Booking.cancelled_at.is_(None))
    if since is not None:
        query = query.where(Booking.ends_at >= since)
    return list(session.scalars(query.order_by(Booking.starts_at)))


def ical_feed(*, session: Session, user: User, base_url: str) -> bytes:
    """The user's booked consults as an iCalendar feed (RFC 5545)."""
    from icalendar import Calendar, Event

    calendar = Calendar()
    calendar.add("prodid", "-//Lancang//Consults//ZH")
    calendar.add("version", "2.0")
    calendar.add("x-wr-calname", f"澜沧会诊 {user.display_name}")
    for booking in bookings_for(session=session, user=user, since=utcnow() - timedelta(days=30)):
        consult = session.get(ConsultRequest, booking.consult_id)
        event = Event()
        event.add("uid", f"lancang-booking-{booking.id}@lancang")
        event.add("summary", f"远程会诊 #{consult.id} ({booking.role})")
        event.add("dtstart", booking.starts_at)
        event.add("dtend", booking.ends_at)
        event.add("dtstamp", utcnow())
        event.add("url", f"{base_url}/consults/{consult.id}")
        # No clinical question, no patient: feeds are synced to phone and cloud calendars,
        # outside the audited platform (and often outside China). The link opens the case.
        event.add("description", "请登录澜沧查看会诊详情 Open the consult in Lancang for the case")
        calendar.add_component(event)
    return calendar.to_ical()


FEED_PREFIX = "/calendar/feeds/"


def issue_feed(*, session: Session, user: User) -> str:
    """A new secret for the user's calendar feed URL; the old URL stops working at once.

    Calendar apps subscribe without a login, so the URL is the credential: only its hash is
    kept, the secret is shown once, and the feed has no clinical text (ical_feed)."""
    secret = secrets.token_urlsafe(32)
    user.calendar_feed_hash = identity.hash_token(secret)
    audit.append(session, principal=None, actor=user.username, action="consult.calendar_feed.issue",
                 object_type="user", object_id=user.username)
    session.flush()
    return secret


def user_for_feed(*, session: Session, secret: str) -> User:
    user = session.scalar(select(User).where(User.calendar_feed_hash == identity.hash_token(secret),
                                             User.active.is_(True)))
    if user is None:
        raise NotFound("订阅链接无效或已更换 / unknown or replaced calendar feed")
    return user


def due_reminders(*, session: Session, within: timedelta = timedelta(minutes=30)) -> int:
    """Notify everyone whose booking starts within `within`, once (a periodic task calls this)."""
    now = utcnow()
    due = session.scalars(select(Booking).where(Booking.cancelled_at.is_(None), Booking.reminded_at.is_(None),
                                                Booking.starts_at > now, Booking.starts_at <= now + within)).all()
    for booking in due:
        booking.reminded_at = now
        local = booking.starts_at.astimezone(localtime.zone()).strftime("%H:%M")
        # The reminder opens the room itself: its join button is active by then (rooms.JOIN_EARLY).
        notify(session, {booking.user_id}, kind="consult.reminder",
               title=f"会诊提醒 Consult #{booking.consult_id} starts at {local}（{localtime.label_zh()}）",
               link=f"/consults/{booking.consult_id}/room")
    audit_count = len(due)
    if audit_count:
        audit.append(session, principal=None, actor="system", action="consult.reminders", detail={"sent": audit_count})
    return audit_count
