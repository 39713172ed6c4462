"""Who is on duty now at an institution: the people an emergency or a 危急值 reaches first.

On duty means inside one's weekly window or extra hours and not on leave (the same roster
`is_available`, which scheduling books live consults by). When nobody of the wanted roles is on
duty (a township that keeps no roster, or a night with none entered) everyone of those roles
is told: an alarm that reaches nobody is worse than one that reaches too many.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from consult.models import Availability, AvailabilityException
from storage import localtime
from storage.models import User
from storage.types import utcnow


def is_available(session: Session, user_id: int, starts: datetime, ends: datetime) -> bool:
    """Inside a weekly window (on its local day) or extra hours, and not on leave."""
    exceptions = session.scalars(select(AvailabilityException).where(
        AvailabilityException.user_id == user_id, AvailabilityException.starts_at < ends,
        AvailabilityException.ends_at > starts)).all()
    if any(not e.available for e in exceptions):
        return False
    if any(e.available and e.starts_at <= starts and e.ends_at >= ends for e in exceptions):
        return True
    local_start, local_end = starts.astimezone(localtime.zone()), ends.astimezone(localtime.zone())
    if local_start.date() != local_end.date() and local_end.time() != time(0, 0):
        return False
    first = local_start.hour * 60 + local_start.minute
    last = first + int((ends - starts).total_seconds() // 60)
    windows = session.scalars(select(Availability).where(Availability.user_id == user_id,
                                                         Availability.weekday == local_start.weekday())).all()
    return any(w.start_minute <= first and last <= w.end_minute for w in windows)


def on_duty(session: Session, institution_id: int, roles: tuple[str, ...], now: datetime | None = None) -> set[int]:
    """Ids of the active users of `roles` at the institution who are on duty at `now` (or all
    of them when none is)."""
    everyone = set(session.scalars(select(User.id).where(User.institution_id == institution_id,
                                                          User.role.in_(roles), User.active.is_(True))))
    moment = now or utcnow()
    present = {uid for uid in everyone if is_available(session, uid, moment, moment + timedelta(minutes=1))}
    return present or everyone
