"""The consult's state machine: the one place a consult changes status.

Every move is checked against TRANSITIONS, recorded as a ConsultEvent (the consult's own
history, shown on its page) and audited in the same transaction."""

from __future__ import annotations

from sqlalchemy.orm import Session

from consult.models import ConsultEvent, ConsultRequest
from storage import audit
from storage.errors import Conflict
from storage.identity import principal_for
from storage.models import User
from storage.types import utcnow

OPEN = ("requested", "accepted", "assigned", "scheduled", "in_progress", "reported")
DONE = ("final", "returned", "acknowledged")

# status -> statuses it may move to
TRANSITIONS = {
    "requested": {"accepted", "declined", "cancelled"},
    "accepted": {"assigned", "scheduled", "cancelled"},
    "assigned": {"assigned", "scheduled", "in_progress", "cancelled"},
    "scheduled": {"scheduled", "in_progress", "cancelled"},
    "in_progress": {"reported", "cancelled"},
    "reported": {"final", "in_progress", "cancelled"},
    "final": {"returned"},
    "returned": {"acknowledged"},
    "acknowledged": set(),
    "declined": set(),
    "cancelled": set(),
}


def transition(session: Session, consult: ConsultRequest, actor: User | None, to: str, note: str = "") -> None:
    """Move along the state machine (or raise Conflict), recording event and audit."""
    if to not in TRANSITIONS[consult.status]:
        raise Conflict(f"会诊当前状态不允许此操作 / a consult that is {consult.status} cannot become {to}")
    before = consult.status
    consult.status = to
    consult.status_changed_at = utcnow()
    if to == "final":
        consult.final_at = consult.status_changed_at
    _record(session, consult, actor, before, to, note)


def opened(session: Session, consult: ConsultRequest, actor: User) -> None:
    """A new consult's first event: from nothing to requested."""
    _record(session, consult, actor, "new", "requested", "")


def _record(session: Session, consult: ConsultRequest, actor: User | None, before: str, after: str, note: str):
    session.add(ConsultEvent(consult_id=consult.id, actor_id=actor.id if actor else None,
                             from_status=before, to_status=after, note=note))
    audit.append(session, principal=principal_for(actor) if actor else None, actor=None if actor else "system",
                 action="consult.transition", object_type="consult", object_id=str(consult.id),
                 detail={"from": before, "to": after, "note": note[:500]})
