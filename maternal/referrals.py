"""Referrals of pregnant and postpartum women (双向转诊): 上转 to an ancestor or a partner
hospital, 下转 to a descendant with follow-up instructions. Each carries the record the
receiving hospital needs, as it stood when she was referred (colour history, GA, key findings,
the images the referring user may see, which the receiving institution is granted), and a
transport status with its own audited state machine (TRANSITIONS). `referral_counts` gives the
dashboard its 上转/下转人次. Keyword-only functions that never commit."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import column, func, or_, select, table, update
from sqlalchemy.orm import Session

from imaging.models import Study
from maternal import policy, service
from maternal.criteria import CRITERIA
from maternal.models import TRANSPORT_STATUSES, Pregnancy, Referral, ReferralEvent
from storage import access, audit
from storage import service as tenancy
from storage.access import Principal
from storage.errors import Conflict, Invalid, NotFound, NotPermitted
from storage.models import AccessGrant, Institution
from storage.types import utcnow

TRANSPORT_LABELS = {"pending": ("待转运", "Pending"), "in_transit": ("转运中", "In transit"),
                    "arrived": ("已到达", "Arrived"), "cancelled": ("已取消", "Cancelled")}
DIRECTION_LABELS = {"up": ("上转", "Referred up"), "down": ("下转", "Referred down")}
# The only moves a transport status makes; arrived and cancelled are final.
TRANSITIONS = {"pending": ("in_transit", "arrived", "cancelled"), "in_transit": ("arrived", "cancelled")}
OPEN = ("pending", "in_transit")
TEXT_MAX = 4000
REASON_MAX = 500

_CONSULTS = table("consult_requests", column("id"))  # consult/ sits above: its table by name only


def direction_between(session: Session, source: Institution, target: Institution) -> str:
    """"up" to an ancestor or a partner hospital, "down" to a descendant; anything else is refused."""
    return tenancy.require_tree_direction(session, source, target,
                                          to_itself="请选择其他机构 / a referral goes to another institution")


def targets(session: Session, principal: Principal) -> list[tuple[Institution, str]]:
    """The active institutions the principal's institution may refer to, with the direction."""
    source = session.get(Institution, principal.institution_id)
    found = []
    for institution in session.scalars(select(Institution).where(Institution.active.is_(True))
                                       .order_by(Institution.level, Institution.code)):
        try:
            found.append((institution, direction_between(session, source, institution)))
        except Invalid:
            continue
    return found


def _texts(direction: str, key_findings: str, instructions: str, follow_up_on: date | None,
           on: date) -> tuple[str, str]:
    findings, instructions = (key_findings or "").strip(), (instructions or "").strip()
    if not findings:
        raise Invalid("请填写主要病情与检查所见 / give the key findings")
    if len(findings) > TEXT_MAX or len(instructions) > TEXT_MAX:
        raise Invalid(f"内容不超过{TEXT_MAX}字 / at most {TEXT_MAX} characters")
    if direction == "down" and not instructions:
        raise Invalid("下转须填写随访指导 / a down-referral carries follow-up instructions")
    if direction == "up" and (instructions or follow_up_on):
        raise Invalid("随访指导仅用于下转 / follow-up instructions are for down-referrals only")
    if follow_up_on is not None and follow_up_on < on:
        raise Invalid("随访日期不能早于今天 / the follow-up date cannot be in the past")
    return findings, instructions


def _studies(session: Session, principal: Principal, pregnancy: Pregnancy, uids: list[str]) -> list[Study]:
    """The chosen studies: the woman's, and each one the referring user may see (storage/access.py)."""
    wanted = list(dict.fromkeys(u.strip() for u in uids if u and u.strip()))
    studies = {s.study_instance_uid: s for s in session.scalars(select(Study).where(
        Study.study_instance_uid.in_(wanted)))} if wanted else {}
    mine = set(policy.record_pks(session, pregnancy))
    chosen = []
    for uid in wanted:
        study = studies.get(uid)
        if study is None or study.patient_pk not in mine:
            raise Invalid(f"该检查不属于本孕产妇 / study {uid} is not this woman's")
        if not access.can_see_study(session, principal, institution_id=study.institution_id, study_uid=uid):
            raise NotPermitted("无权查看该检查，不能随转诊发送 / a study you may not see cannot go with the referral")
        chosen.append(study)
    return chosen


def _colour_history(session: Session, pregnancy: Pregnancy) -> list[dict]:
    rows = []
    for grading in service.gradings(session, pregnancy_id=pregnancy.id):
        ga = service.GestationalAge(grading.ga_days) if grading.ga_days is not None else None
        rows.append({"colour": service.grade_of_row(grading).colour, "criteria": list(grading.criteria),
                     "labels": [CRITERIA[c].zh if c in CRITERIA else c for c in grading.criteria],
                     "note": grading.note, "at": grading.graded_at.isoformat(), "ga": str(ga) if ga else "",
                     "by": grading.graded_by.display_name or grading.graded_by.username,
                     "institution": grading.institution.name_zh})
    return rows


def snapshot(session: Session, principal: Principal, pregnancy: Pregnancy, findings: str, studies: list[Study],
             on: date) -> dict:
    """The record as it stands now: what the receiving hospital reads, unchanged by later gradings."""
    patient = service.patient_of(session, principal, pregnancy)
    ga, current = service.ga_of(pregnancy, on), service.current_grade(session, pregnancy_id=pregnancy.id)
    return {
        "patient": {"name": patient.name if patient else "", "patient_id": patient.patient_id if patient else "",
                    "sex": patient.sex if patient else "", "birth_date": patient.birth_date if patient else ""},
        "pregnancy": {"lmp": str(pregnancy.lmp or ""), "edd": str(pregnancy.edd or ""), "gravida": pregnancy.gravida,
                      "para": pregnancy.para, "status": pregnancy.status,
                      "ended_on": str(pregnancy.ended_on or "")},
        "ga": str(ga) if ga else "", "ga_days": ga.days if ga else None,
        "postpartum_days": service.postpartum_days(pregnancy, on),
        "colour": current.colour if current else "", "colours": _colour_history(session, pregnancy),
        "key_findings": findings,
        "studies": [{"uid": s.study_instance_uid, "date": s.study_date, "description": s.description,
                     "modality": (s.modalities or "").replace("\\", "/")} for s in studies],
        "made_at": utcnow().isoformat(),
    }


def _target(session: Session, code: str) -> Institution:
    target = session.scalar(select(Institution).where(Institution.code == (code or "").strip()))
    if target is None or not target.active:
        raise NotFound("未找到接收机构 / receiving institution not found")
    return target


def _check_links(session: Session, pregnancy: Pregnancy, target: Institution, consult_id: int | None) -> None:
    if consult_id is not None and session.scalar(select(_CONSULTS.c.id).where(_CONSULTS.c.id == consult_id)) is None:
        raise NotFound("未找到该会诊 / consult not found")
    open_one = session.scalar(select(Referral.id).where(
        Referral.pregnancy_id == pregnancy.id, Referral.to_institution_id == target.id,
        Referral.transport_status.in_(OPEN)))
    if open_one is not None:
        raise Conflict(f"已有转往该机构的转诊 #{open_one}（未到达） / referral #{open_one} to this institution is still open")


def create(*, session: Session, principal: Principal, pregnancy_id: int, to_code: str, key_findings: str,
           study_uids: list[str] | tuple[str, ...] = (), consult_id: int | None = None,
           follow_up_instructions: str = "", follow_up_on: date | None = None, on: date | None = None,
           source: str = "") -> Referral:
    """Refer the woman from the principal's institution; the receiving institution is granted the studies."""
    on = on or service.today()
    pregnancy = service.get(session=session, principal=principal, pregnancy_id=pregnancy_id)
    policy.require("refer", principal, policy.involvement(session, pregnancy))
    if not service.grading_open(pregnancy, on):
        raise Conflict("产后42天已过，孕产妇管理已结束 / maternal care ended 42 days after the pregnancy ended")
    target = _target(session, to_code)
    direction = direction_between(session, session.get(Institution, principal.institution_id), target)
    findings, instructions = _texts(direction, key_findings, follow_up_instructions, follow_up_on, on)
    studies = _studies(session, principal, pregnancy, list(study_uids))
    _check_links(session, pregnancy, target, consult_id)
    now = utcnow()
    referral = Referral(pregnancy_id=pregnancy.id, direction=direction, from_institution_id=principal.institution_id,
                        to_institution_id=target.id, consult_id=consult_id, referred_by_id=principal.user_id,
                        created_at=now, status_changed_at=now, key_findings=findings, transport_status="pending",
                        follow_up_instructions=instructions, follow_up_on=follow_up_on,
                        record=snapshot(session, principal, pregnancy, findings, studies, on))
    session.add(referral)
    session.flush()
    session.add(ReferralEvent(referral_id=referral.id, from_status=None, to_status="pending", at=now,
                              user_id=principal.user_id))
    for study in studies:
        session.add(AccessGrant(study_instance_uid=study.study_instance_uid, grantee_institution_id=target.id,
                                source=f"referral:{referral.id}", granted_by=principal.name))
    audit.append(session, principal=principal, action="referral.create", object_type="referral",
                 object_id=str(referral.id), source=source,
                 detail={"pregnancy": pregnancy.id, "direction": direction, "to": target.code,
                         "colour": referral.record["colour"], "ga": referral.record["ga"],
                         "studies": [s.study_instance_uid for s in studies], "consult": consult_id})
    return referral


def get(*, session: Session, principal: Principal, referral_id: int) -> Referral:
    """A referral the principal may see (404 otherwise)."""
    return access.get_visible(session, Referral, referral_id,
                              lambda r: policy.can_view_referral(session, principal, r),
                              missing="未找到该转诊 / referral not found")


def _refuse_move(current: str, to_status: str) -> None:
    if to_status not in TRANSPORT_STATUSES:
        raise Invalid(f"转运状态无效 / transport status must be one of {', '.join(TRANSPORT_STATUSES)}")
    if current not in TRANSITIONS:
        zh, en = TRANSPORT_LABELS[current]
        raise Conflict(f"转诊{zh}，不能再更改 / the referral is {en.lower()}: its transport status no longer changes")
    if to_status not in TRANSITIONS[current]:
        raise Conflict(f"不能从“{TRANSPORT_LABELS[current][0]}”改为“{TRANSPORT_LABELS[to_status][0]}” / "
                       f"cannot go from {current} to {to_status}")


def move(*, session: Session, principal: Principal, referral_id: int, to_status: str, reason: str = "",
         source: str = "") -> Referral:
    """The only place a transport status changes: pending → in transit → arrived, or cancelled with a reason."""
    referral = get(session=session, principal=principal, referral_id=referral_id)
    current = referral.transport_status
    _refuse_move(current, to_status)
    policy.require_referral(to_status, principal, referral)
    reason = (reason or "").strip()
    if to_status == "cancelled" and not reason:
        raise Invalid("请填写取消原因 / give the reason for cancelling")
    if len(reason) > REASON_MAX:
        raise Invalid(f"原因不超过{REASON_MAX}字 / at most {REASON_MAX} characters")
    now = utcnow()
    referral.transport_status, referral.status_changed_at = to_status, now
    if to_status == "cancelled":
        referral.cancel_reason = reason
        session.execute(update(AccessGrant).where(AccessGrant.source == f"referral:{referral.id}",
                                                  AccessGrant.revoked_at.is_(None)).values(revoked_at=now))
    session.add(ReferralEvent(referral_id=referral.id, from_status=current, to_status=to_status, at=now,
                              user_id=principal.user_id, note=reason))
    audit.append(session, principal=principal, action="referral.transport", object_type="referral",
                 object_id=str(referral.id), source=source, detail={"from": current, "to": to_status, "reason": reason})
    return referral


def next_statuses(principal: Principal, referral: Referral) -> list[str]:
    """The moves this principal may make now (the page's transport control)."""
    return [s for s in TRANSITIONS.get(referral.transport_status, ())
            if policy.REFERRAL_RULES.allows(s, principal, referral)]


def events(session: Session, *, referral_id: int) -> list[ReferralEvent]:
    return list(session.scalars(select(ReferralEvent).where(ReferralEvent.referral_id == referral_id)
                                .order_by(ReferralEvent.id)))


def of_pregnancy(session: Session, *, pregnancy_id: int) -> list[Referral]:
    return list(session.scalars(select(Referral).where(Referral.pregnancy_id == pregnancy_id)
                                .order_by(Referral.created_at.desc(), Referral.id.desc())))


def institutions_of(session: Session, principal: Principal) -> set[int]:
    """Whose referrals the principal's lists and counts cover: an admin's subtree, else the own institution."""
    if principal.institution_id is None:
        return set()
    if principal.is_admin:
        return access.subtree_ids(session, principal.institution_id)
    return {principal.institution_id}


def listing(session: Session, *, principal: Principal, side: str = "", direction: str = "",
            limit: int = 200) -> list[Referral]:
    """Referrals to or from the principal's institutions (side "in"/"out" narrows), newest first."""
    ids = institutions_of(session, principal)
    where = {"in": Referral.to_institution_id.in_(ids), "out": Referral.from_institution_id.in_(ids)}.get(
        side, or_(Referral.to_institution_id.in_(ids), Referral.from_institution_id.in_(ids)))
    statement = select(Referral).where(where).order_by(Referral.created_at.desc(), Referral.id.desc()).limit(limit)
    if direction in DIRECTION_LABELS:
        statement = statement.where(Referral.direction == direction)
    return list(session.scalars(statement))


def referral_counts(session: Session, *, institution_ids: set[int] | list[int], since: datetime) -> dict[str, int]:
    """上转/下转人次 since `since`: referrals sent or received by these institutions, each counted
    once (one woman, one referral); cancelled referrals did not happen and are not counted."""
    found = dict(session.execute(
        select(Referral.direction, func.count(Referral.id))
        .where(Referral.created_at >= since, Referral.transport_status != "cancelled",
               or_(Referral.from_institution_id.in_(list(institution_ids)),
                   Referral.to_institution_id.in_(list(institution_ids))))
        .group_by(Referral.direction)).all())
    return {"up": found.get("up", 0), "down": found.get("down", 0)}

