"""Consult requests: creation, routing along the referral tree, the audited state machine,
service-level deadlines and the access grants that let assigned specialists read.

Functions are keyword-only and never commit; the caller's unit of work does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from consult import policy, state
from consult.models import KINDS, PRIORITIES, RISK_COLOURS, Booking, ConsultRequest, ConsultStudy
from consult.duty import on_duty
from consult.notify import notify, notify_consult
from imaging.models import Study
from storage import access, audit
from storage import service as tenancy
from storage.errors import Conflict, Invalid, NotFound
from storage.identity import principal_for
from storage.models import AccessGrant, Institution, User
from storage.types import utcnow

# Deadlines (hours) by priority, tightened by the maternal risk colour.
PRIORITY_HOURS = {"routine": 72, "urgent": 24, "critical": 4}
COLOUR_HOURS = {"orange": 48, "red": 24, "purple": 24}
PRIORITY_RANK = {"critical": 0, "urgent": 1, "routine": 2}
COLOUR_RANK = {"red": 0, "purple": 1, "orange": 2, "yellow": 3, "green": 4, None: 5}
def due_at(*, created: datetime, priority: str, colour: str | None) -> datetime:
    """The service-level deadline: the tighter of priority and risk colour."""
    hours = min(PRIORITY_HOURS[priority], COLOUR_HOURS.get(colour or "", 10_000))
    return created + timedelta(hours=hours)


def urgency_key(consult: ConsultRequest) -> tuple:
    """Sort key: priority, then risk colour, then longest waiting first."""
    return (PRIORITY_RANK[consult.priority], COLOUR_RANK.get(consult.risk_colour, 5), consult.created_at)


def is_overdue(consult: ConsultRequest, now: datetime | None = None) -> bool:
    return consult.status in state.OPEN and (now or utcnow()) > consult.due_at


def direction_between(session: Session, source: Institution, target: Institution) -> str:
    """"up" to an ancestor or a partner hospital (上转), "down" to a descendant (下转)."""
    return tenancy.require_tree_direction(session, source, target,
                                          to_itself="请选择其他医院 / a consult goes to another institution")


@dataclass(frozen=True)
class Invitation:
    """What the invitation carries beside the purpose and the case summary (远程医疗服务管理规范
    （试行）, 2018): why it is asked, the specialty and title wanted, a preferred time."""

    reason: str = ""
    specialty: str = ""
    title: str = ""
    preferred_at: datetime | None = None


def create(*, session: Session, requester: User, kind: str, target_code: str, study_uids: list[str],
           clinical_question: str, history: str = "", priority: str = "routine",
           risk_colour: str | None = None, invitation: Invitation = Invitation(), emergency: bool = False,
           response_minutes: float = 15.0) -> ConsultRequest:
    """A township (or any member) asks another institution for a read or a live consult; an
    emergency (危重孕产妇) one is live, critical, and skips the queue (`_raise_emergency`)."""
    if emergency:
        kind, priority = _emergency_terms(priority, risk_colour)
    if kind not in KINDS:
        raise Invalid(f"会诊方式只能是远程阅片或视频会诊 / kind must be one of {', '.join(KINDS)}")
    if priority not in PRIORITIES:
        raise Invalid(f"优先级无效 / priority must be one of {', '.join(PRIORITIES)}")
    if risk_colour not in (None, "", *RISK_COLOURS):
        raise Invalid(f"风险色无效 / risk colour must be one of {', '.join(RISK_COLOURS)}")
    if not clinical_question.strip():
        raise Invalid("请填写会诊目的 / please state the clinical question")
    uids = list(dict.fromkeys(u.strip() for u in study_uids if u.strip()))
    if not uids:
        raise Invalid("请至少选择一个检查 / choose at least one study")
    principal = principal_for(requester)
    for uid in uids:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        if study is None or not access.can_see_study(session, principal, institution_id=study.institution_id,
                                                     study_uid=uid):
            raise NotFound(f"未找到该检查 / study {uid} not found")
    target = session.scalar(select(Institution).where(Institution.code == target_code))
    if target is None:
        raise NotFound(f"未找到该机构 / unknown institution {target_code!r}")
    now = utcnow()
    consult = ConsultRequest(
        kind=kind, status="requested", requesting_institution_id=requester.institution_id,
        requested_by_id=requester.id, target_institution_id=target.id,
        direction=direction_between(session, requester.institution, target),
        clinical_question=clinical_question.strip(), history=history.strip(), priority=priority,
        risk_colour=risk_colour or None, created_at=now, status_changed_at=now,
        due_at=(now + timedelta(minutes=response_minutes) if emergency
                else due_at(created=now, priority=priority, colour=risk_colour or None)),
        studies=[ConsultStudy(study_instance_uid=uid) for uid in uids], emergency=emergency,
        invite_reason=invitation.reason.strip(), specialty=invitation.specialty.strip()[:64],
        requested_title=invitation.title.strip()[:32], preferred_at=invitation.preferred_at,
    )
    session.add(consult)
    session.flush()
    state.opened(session, consult, requester)
    if emergency:
        _raise_emergency(session, consult, requester, now)
        return consult
    coordinators = users_with_roles(session, target.id, ("coordinator", "admin"))
    notify_consult(session, consult, coordinators, kind="consult.requested",
                   title=f"新会诊申请 New consult request #{consult.id}", body=consult.clinical_question[:200])
    return consult


EMERGENCY_COLOURS = ("red", "purple")
EMERGENCY_SEAT = timedelta(hours=2)


def _emergency_terms(priority: str, colour: str | None) -> tuple[str, str]:
    """An emergency is a live, critical consult of a red or purple pregnancy (or one already
    marked critical): anything less goes through the queue."""
    if colour not in EMERGENCY_COLOURS and priority != "critical":
        raise Invalid("急会诊须为红色或紫色风险，或危急优先级 / an emergency consult needs risk colour red or purple, "
                      "or critical priority")
    return "live", "critical"


def _raise_emergency(session: Session, consult: ConsultRequest, requester: User, now: datetime) -> None:
    """Everyone it needs, at once: the target's coordinators and every on-duty specialist get
    a seat in the room (it opens now, no booking), the images, and a notification whose link
    joins the room; the requester presents."""
    coordinators = users_with_roles(session, consult.target_institution_id, ("coordinator", "admin"))
    specialists = on_duty(session, consult.target_institution_id, ("specialist",), now)
    seats = [(requester.id, "presenter")] + [(u, "coordinator") for u in sorted(coordinators)] + \
        [(u, "specialist") for u in sorted(specialists)]
    for user_id, role in seats:
        session.add(Booking(consult_id=consult.id, user_id=user_id, role=role, starts_at=now,
                            ends_at=now + EMERGENCY_SEAT))
    grant(session=session, consult=consult, user_ids=specialists, granted_by=requester.username)
    colour = COLOUR_LABELS.get(consult.risk_colour or "", "")
    notify(session, coordinators | specialists, kind="consult.emergency",
           title=f"危重孕产妇急会诊 Emergency consult #{consult.id} {colour}".strip(),
           body=consult.clinical_question[:200], link=f"/consults/{consult.id}/room")
    audit.append(session, principal=principal_for(requester), action="consult.emergency", object_type="consult",
                 object_id=str(consult.id), detail={"coordinators": len(coordinators), "specialists": len(specialists)})


COLOUR_LABELS = {"red": "红色 red", "purple": "紫色 purple", "orange": "橙色 orange", "yellow": "黄色 yellow",
                 "green": "绿色 green"}


def claim(*, session: Session, consult_id: int, user: User) -> ConsultRequest:
    """The first specialist (or coordinator) of the target to accept an emergency owns it: the
    row is locked, so a second acceptance at the same moment is told who has it."""
    consult = get(session=session, consult_id=consult_id, user=user)
    session.refresh(consult, with_for_update=True)
    policy.require("claim", consult, user)
    if consult.status != "requested":
        owner = consult.reader or (session.get(User, consult.coordinator_id) if consult.coordinator_id else None)
        who = (owner.display_name or owner.username) if owner else "—"
        raise Conflict(f"已由{who}接诊 / already taken by {who}")
    state.transition(session, consult, user, "accepted", "急会诊接诊 emergency taken")
    consult.accepted_at = utcnow()
    if user.role == "specialist":
        consult.reader_id = user.id
        grant(session=session, consult=consult, user_ids={user.id}, granted_by=user.username)
    else:
        consult.coordinator_id = user.id
    notify_consult(session, consult, {consult.requested_by_id}, kind="consult.accepted",
                   title=f"急会诊已接诊 Emergency consult #{consult.id} taken by {user.display_name or user.username}")
    return consult


def get(*, session: Session, consult_id: int, user: User) -> ConsultRequest:
    """A consult the user takes part in: requesting or target institution, or assigned to them."""
    return access.get_visible(session, ConsultRequest, consult_id, lambda c: policy.can_view(session, c, user),
                              missing="未找到该会诊 / consult not found")


def accept(*, session: Session, consult_id: int, user: User) -> ConsultRequest:
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require("accept", consult, user)
    state.transition(session, consult, user, "accepted")
    consult.coordinator_id = user.id
    consult.accepted_at = consult.accepted_at or utcnow()
    notify_consult(session, consult, {consult.requested_by_id}, kind="consult.accepted",
                   title=f"会诊已受理 Consult #{consult.id} accepted")
    return consult


def decline(*, session: Session, consult_id: int, user: User, reason: str) -> ConsultRequest:
    consult = step_with_reason(session=session, consult_id=consult_id, user=user, step="decline", reason=reason)
    consult.reason = reason.strip()
    notify_consult(session, consult, {consult.requested_by_id}, kind="consult.declined",
                   title=f"会诊被退回 Consult #{consult.id} declined", body=reason)
    return consult


# The steps that need a written reason: the policy action that allows each, the state it
# leads to, and what to say when the reason is missing.
REASONED_STEPS = {
    "decline": ("decline", "declined", "请填写退回原因 / give a reason for declining"),
    "cancel": ("cancel", "cancelled", "请填写取消原因 / give a reason for cancelling"),
    "return": ("review", "in_progress", "请填写修改意见 / write what should change"),
}


def step_with_reason(*, session: Session, consult_id: int, user: User, step: str, reason: str) -> ConsultRequest:
    """Decline or cancel a consult, or send its report back: the consult, if `user` may take
    the step, moved on with the reason on record."""
    action, to, missing = REASONED_STEPS[step]
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require(action, consult, user)
    if not reason.strip():
        raise Invalid(missing)
    state.transition(session, consult, user, to, reason)
    return consult


def cancel(*, session: Session, consult_id: int, user: User, reason: str) -> ConsultRequest:
    consult = step_with_reason(session=session, consult_id=consult_id, user=user, step="cancel", reason=reason)
    consult.reason = reason.strip()
    revoke_grants(session=session, consult=consult)
    _cancel_bookings(session, consult)
    return consult


def assign(*, session: Session, consult_id: int, user: User, reader_username: str,
           reviewer_username: str) -> ConsultRequest:
    """Name the reader and the senior reviewer (two different specialists of the target institution)
    and grant exactly them access to the consult's studies."""
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require("assign", consult, user)
    reader = _specialist(session, consult, reader_username)
    reviewer = _specialist(session, consult, reviewer_username, senior=True)
    if reader.id == reviewer.id:
        raise Invalid("审核医生须为另一位专家 / the reviewer must be another specialist")
    target = "scheduled" if consult.status == "scheduled" else "assigned"
    state.transition(session, consult, user, target, f"阅片 {reader.display_name or reader.username} · 审核 "
                     f"{reviewer.display_name or reviewer.username} / reader {reader.username}, reviewer {reviewer.username}")
    revoke_grants(session=session, consult=consult, keep={reader.id, reviewer.id})
    consult.reader_id, consult.reviewer_id = reader.id, reviewer.id
    grant(session=session, consult=consult, user_ids={reader.id, reviewer.id}, granted_by=user.username)
    notify_consult(session, consult, {reader.id, reviewer.id}, kind="consult.assigned",
                   title=f"新的阅片任务 Consult #{consult.id} assigned to you",
                   body=consult.clinical_question[:200])
    return consult


def _specialist(session: Session, consult: ConsultRequest, username: str, senior: bool = False) -> User:
    """A specialist of the target institution; a senior reviewer may also sit higher up the
    tree (the county reads, the city signs)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        raise NotFound(f"未找到该用户 / unknown user {username!r}")
    allowed = {consult.target_institution_id}
    if senior:
        allowed.update(tenancy.ancestor_ids(session, consult.target_institution_id))
    if user.role != "specialist" or user.institution_id not in allowed:
        where = "the target institution or above it" if senior else "the target institution"
        raise Invalid(f"{username} 不是{where}的专家 / {username} is not a specialist of {where}")
    return user


def grant(*, session: Session, consult: ConsultRequest, user_ids: set[int], granted_by: str) -> None:
    """Explicit, audited, revocable access for these users to exactly the consult's studies."""
    source = f"consult:{consult.id}"
    existing = {(g.grantee_user_id, g.study_instance_uid) for g in session.scalars(
        select(AccessGrant).where(AccessGrant.source == source, AccessGrant.revoked_at.is_(None)))}
    for user_id in sorted(user_ids):
        for study in consult.studies:
            if (user_id, study.study_instance_uid) in existing:
                continue
            session.add(AccessGrant(study_instance_uid=study.study_instance_uid, grantee_user_id=user_id,
                                    source=source, granted_by=granted_by))
            audit.append(session, principal=None, actor=granted_by, action="access.grant", object_type="study",
                         object_id=study.study_instance_uid, detail={"user_id": user_id, "source": source})


def revoke_grants(*, session: Session, consult: ConsultRequest, keep: set[int] = frozenset()) -> None:
    source = f"consult:{consult.id}"
    grants = session.scalars(select(AccessGrant).where(AccessGrant.source == source,
                                                       AccessGrant.revoked_at.is_(None))).all()
    for item in grants:
        if item.grantee_user_id in keep:
            continue
        item.revoked_at = utcnow()
        audit.append(session, principal=None, actor="system", action="access.revoke", object_type="study",
                     object_id=item.study_instance_uid, detail={"user_id": item.grantee_user_id, "source": source})


def start(*, session: Session, consult_id: int, user: User) -> ConsultRequest:
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require("start", consult, user)
    if consult.status != "in_progress":
        state.transition(session, consult, user, "in_progress")
    return consult


def acknowledge(*, session: Session, consult_id: int, user: User) -> ConsultRequest:
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require("acknowledge", consult, user)
    state.transition(session, consult, user, "acknowledged")
    return consult


def _cancel_bookings(session: Session, consult: ConsultRequest) -> None:
    """A cancelled consult frees the specialists' booked slots (scheduling.py books them)."""
    for booking in session.scalars(select(Booking).where(Booking.consult_id == consult.id,
                                                         Booking.cancelled_at.is_(None))):
        booking.cancelled_at = utcnow()


def users_with_roles(session: Session, institution_id: int, roles: tuple[str, ...]) -> set[int]:
    return set(session.scalars(select(User.id).where(User.institution_id == institution_id, User.role.in_(roles),
                                                     User.active.is_(True))))


def audit_read(db, *, user: User, consult_id: int, action: str, source: str) -> None:
    """A read of a consult (patient names, findings, reports) is a read of patient data."""
    audit.record_read(db, principal=principal_for(user), action=action, object_type="consult",
                      object_id=str(consult_id), source=source)


def audit_list(db, *, user: User, consult_ids: list[int], action: str, source: str) -> None:
    """A list of consults shows clinical questions and patients: one record per list read,
    naming the consults shown."""
    audit.record_read(db, principal=principal_for(user), action=action, object_type="consult",
                      object_id=",".join(str(i) for i in consult_ids)[:4000], source=source,
                      detail={"count": len(consult_ids)})




def worklist(*, session: Session, user: User, statuses: list[str] | None = None, priority: str | None = None,
             colour: str | None = None, modality: str | None = None, institution: str | None = None,
             scope: str = "mine") -> list[ConsultRequest]:
    """Consults for a user, by urgency then waiting time.

    scope "mine": assigned to me (specialists); "incoming": to my institution (coordinators);
    "outgoing": requested by my institution (township inbox)."""
    query = select(ConsultRequest)
    if scope == "incoming":
        query = query.where(ConsultRequest.target_institution_id == user.institution_id)
    elif scope == "outgoing":
        query = query.where(ConsultRequest.requesting_institution_id == user.institution_id)
    else:  # assigned to me, or an emergency of my institution nobody has taken yet
        query = query.where((ConsultRequest.reader_id == user.id) | (ConsultRequest.reviewer_id == user.id) |
                            (ConsultRequest.emergency.is_(True) & (ConsultRequest.status == "requested") &
                             (ConsultRequest.target_institution_id == user.institution_id)))
    if statuses:
        query = query.where(ConsultRequest.status.in_(statuses))
    if priority:
        query = query.where(ConsultRequest.priority == priority)
    if colour:
        query = query.where(ConsultRequest.risk_colour == colour)
    if institution:
        inst = session.scalar(select(Institution.id).where(Institution.code == institution))
        query = query.where((ConsultRequest.requesting_institution_id == inst) |
                            (ConsultRequest.target_institution_id == inst))
    items = list(session.scalars(query))
    if modality:
        wanted = modality.upper()
        items = [c for c in items if any(wanted in (_modalities(session, s.study_instance_uid)) for s in c.studies)]
    return sorted(items, key=urgency_key)


def _modalities(session: Session, study_uid: str) -> str:
    return session.scalar(select(Study.modalities).where(Study.study_instance_uid == study_uid)) or ""
