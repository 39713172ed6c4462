"""危急值: a critical finding, told at once and acknowledged by a named person, or escalated.

A reader or senior flags a finding on a study with a category (the configured list) and a
short statement. It goes to the on-duty staff of the institution that asked for the exam
(the consult's requester, else the institution that made the study) through every channel
(`consult/notify.py`: in-app, then e-mail, 企业微信, SMS adapters). Someone of that
institution acknowledges it by name with the action taken (转诊, 电话告知, 复查…). Without an
acknowledgement inside `critical_ack_minutes`, it escalates to the institution's
coordinators, then to the coordinators of the region (every institution above it); each
step is a row in `steps` and an audit record. A task scheduled for the step's due time does
the escalation (`escalate_due`), and a periodic sweep repeats it for any task lost with a
worker, so steps are idempotent: one per level, decided by the due time in the row.

Hospitals keep a critical-results log with date, patient, ID, exam, result, who reported,
who was told, phone, time told, time acknowledged and remarks: `log_rows` and `log_csv`.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from consult import policy
from consult.duty import on_duty
from consult.models import ACK_ACTIONS, ConsultRequest, CriticalFinding
from consult.notify import notify
from imaging.models import Study
from imaging.summary import summarize
from storage import access, audit, jobs, localtime
from storage import service as tenancy
from storage.errors import Conflict, Invalid, NotFound, NotPermitted
from storage.identity import principal_for
from storage.models import User
from storage.settings import Settings
from storage.types import utcnow

ESCALATE_TASK = "consult.escalate_critical"
STAFF_ROLES = ("radiographer", "specialist", "coordinator", "admin")
COORDINATORS = ("coordinator", "admin")
LEVELS = {0: "值班人员 on-duty staff", 1: "本机构协调员 institution's coordinators",
          2: "区域协调员 region's coordinators"}
MAX_STATEMENT = 500


def categories(settings: Settings) -> list[str]:
    return [c.strip() for c in settings.critical_categories.split(",") if c.strip()]


# ---- flag ---------------------------------------------------------------------------------

def flag(*, session: Session, user: User, settings: Settings, study_uid: str, category: str, statement: str,
         consult_id: int | None = None, now: datetime | None = None) -> CriticalFinding:
    """Record a critical finding and tell the requesting institution's on-duty staff at once."""
    consult = _consult_for_flag(session, user, consult_id, study_uid) if consult_id else None
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None or not access.can_see_study(session, principal_for(user), institution_id=study.institution_id,
                                                 study_uid=study_uid):
        raise NotFound("未找到该检查 / study not found")
    if consult is None and user.role != "specialist":
        raise NotPermitted("仅阅片或审核医生可报告危急值 / only a reading or reviewing specialist flags a critical result")
    _check_text(settings, category, statement)
    moment = now or utcnow()
    finding = CriticalFinding(
        study_instance_uid=study_uid, consult_id=consult.id if consult else None, category=category,
        institution_id=consult.requesting_institution_id if consult else study.institution_id,
        statement=statement.strip(), flagged_by_id=user.id, flagged_at=moment, level=0, steps=[],
        due_at=moment + timedelta(minutes=settings.critical_ack_minutes))
    session.add(finding)
    session.flush()
    told = on_duty(session, finding.institution_id, STAFF_ROLES, moment)
    _tell(session, finding, told, level=0, at=moment)
    audit.append(session, principal=principal_for(user), action="critical.flag", object_type="study",
                 object_id=study_uid, detail={"finding": finding.id, "category": category,
                                              "institution_id": finding.institution_id, "told": len(told)})
    _schedule(session, finding, moment)
    return finding


def _consult_for_flag(session: Session, user: User, consult_id: int, study_uid: str) -> ConsultRequest:
    consult = access.get_visible(session, ConsultRequest, consult_id, lambda c: policy.can_view(session, c, user),
                                 missing="未找到该会诊 / consult not found")
    policy.require("flag_critical", consult, user)
    if study_uid not in {s.study_instance_uid for s in consult.studies}:
        raise Invalid("该检查不属于此会诊 / the study is not part of this consult")
    return consult


def _check_text(settings: Settings, category: str, statement: str) -> None:
    if category not in categories(settings):
        raise Invalid(f"请选择危急值类别 / choose a category from the list ({'、'.join(categories(settings))})")
    if not statement.strip():
        raise Invalid("请简述危急值所见 / write a short statement of the finding")
    if len(statement) > MAX_STATEMENT:
        raise Invalid(f"简述不超过{MAX_STATEMENT}字 / at most {MAX_STATEMENT} characters")


def _tell(session: Session, finding: CriticalFinding, user_ids: set[int], *, level: int, at: datetime) -> None:
    names = sorted(session.scalars(select(User.username).where(User.id.in_(user_ids)))) if user_ids else []
    finding.steps = [*finding.steps, {"at": at.isoformat(), "level": level, "told": names}]
    # The title goes outside the platform (SMS, 企业微信, e-mail): no finding, no patient in it.
    prefix = "危急值待确认" if level == 0 else f"危急值未确认·已升级{level}级"
    notify(session, user_ids, kind="critical.flagged" if level == 0 else "critical.escalated",
           title=f"{prefix} Critical result #{finding.id} to acknowledge",
           body=f"{finding.category}：{finding.statement}"[:300], link=f"/critical/{finding.id}")


def _schedule(session: Session, finding: CriticalFinding, now: datetime) -> None:
    """The escalation task for the step's due time, sent once the step is committed."""
    delay = max(0.0, (finding.due_at - now).total_seconds())
    jobs.send_after_commit(session, ESCALATE_TASK, finding.id, queue="notify", countdown=delay)


# ---- acknowledge and escalate -------------------------------------------------------------

def acknowledge(*, session: Session, user: User, finding_id: int, action: str, phone: str = "",
                remarks: str = "", now: datetime | None = None) -> CriticalFinding:
    """A named person of the told institution (or a coordinator it escalated to) takes it."""
    finding = get(session=session, user=user, finding_id=finding_id)
    if not may_acknowledge(finding, user):
        raise NotPermitted("仅被通知机构的人员可确认 / only the institution told (or those it escalated to) acknowledges")
    if finding.acknowledged_at is not None:
        who = finding.acknowledged_by.display_name or finding.acknowledged_by.username
        raise Conflict(f"已由{who}确认 / already acknowledged by {who}")
    if action not in ACK_ACTIONS:
        raise Invalid(f"请选择处理措施 / choose the action taken ({'、'.join(ACK_ACTIONS)})")
    finding.acknowledged_by_id, finding.acknowledged_at = user.id, now or utcnow()
    finding.action, finding.phone = action, (phone or user.mobile).strip()[:32]
    finding.remarks = remarks.strip()[:MAX_STATEMENT]
    audit.append(session, principal=principal_for(user), action="critical.acknowledge", object_type="study",
                 object_id=finding.study_instance_uid, detail={"finding": finding.id, "action": action,
                                                               "minutes": round(minutes_to_ack(finding), 1)})
    notify(session, {finding.flagged_by_id}, kind="critical.acknowledged",
           title=f"危急值已确认 Critical result #{finding.id} acknowledged", link=f"/critical/{finding.id}")
    return finding


def may_acknowledge(finding: CriticalFinding, user: User) -> bool:
    if user.institution_id == finding.institution_id:
        return True
    return any(user.username in step["told"] for step in finding.steps if step["level"] > 0)


def escalate_due(*, session: Session, settings: Settings, finding_id: int | None = None,
                 now: datetime | None = None) -> int:
    """Escalate every unacknowledged finding whose step is due (or only `finding_id`); returns
    how many moved. Idempotent: a step happens once, when the row's due time has passed."""
    moment = now or utcnow()
    query = select(CriticalFinding).where(CriticalFinding.acknowledged_at.is_(None), CriticalFinding.level < 2,
                                          CriticalFinding.due_at <= moment)
    if finding_id is not None:
        query = query.where(CriticalFinding.id == finding_id)
    moved = 0
    for finding in session.scalars(query.with_for_update()):
        _escalate(session, settings, finding, moment)
        moved += 1
    return moved


def _escalate(session: Session, settings: Settings, finding: CriticalFinding, now: datetime) -> None:
    finding.level += 1
    finding.due_at = now + timedelta(minutes=settings.critical_ack_minutes)
    if finding.level == 1:
        told = on_duty(session, finding.institution_id, COORDINATORS, now)
    else:
        told = set()
        for ancestor in tenancy.ancestor_ids(session, finding.institution_id):
            told |= on_duty(session, ancestor, COORDINATORS, now)
    _tell(session, finding, told, level=finding.level, at=now)
    audit.append(session, principal=None, actor="system", action="critical.escalate", object_type="study",
                 object_id=finding.study_instance_uid,
                 detail={"finding": finding.id, "level": finding.level, "told": len(told)})
    if finding.level < 2:
        _schedule(session, finding, now)


# ---- read: one finding, the log, the figures ----------------------------------------------

def visible_institutions(session: Session, user: User) -> set[int]:
    """Findings told to these institutions are in the user's log: their own, and for
    coordinators and admins every institution below theirs (the region watches its members)."""
    if user.role in COORDINATORS:
        return access.subtree_ids(session, user.institution_id)
    return {user.institution_id}


def get(*, session: Session, user: User, finding_id: int) -> CriticalFinding:
    return access.get_visible(session, CriticalFinding, finding_id, lambda f: _may_see(session, f, user),
                              missing="未找到该危急值 / critical result not found")


def _may_see(session: Session, finding: CriticalFinding, user: User) -> bool:
    return (finding.institution_id in visible_institutions(session, user) or finding.flagged_by_id == user.id
            or may_acknowledge(finding, user))


def minutes_to_ack(finding: CriticalFinding) -> float:
    return (finding.acknowledged_at - finding.flagged_at).total_seconds() / 60


def is_overdue(finding: CriticalFinding, now: datetime | None = None) -> bool:
    """Unacknowledged past the first acknowledgement window (an escalated one always is)."""
    return finding.acknowledged_at is None and (finding.level > 0 or (now or utcnow()) > finding.due_at)


@dataclass(frozen=True)
class LogRow:
    id: int
    flagged_at: str  # Beijing time
    patient: str
    patient_id: str
    exam: str
    category: str
    statement: str
    reported_by: str
    told: str  # who acknowledged (the person told, by name)
    phone: str
    told_at: str
    acknowledged_at: str
    minutes: str
    action: str
    remarks: str
    level: int
    overdue: bool


LOG_HEADER = ("编号 No.", "日期时间 Flagged", "患者 Patient", "患者ID ID", "检查 Exam", "类别 Category",
              "危急值内容 Result", "报告人 Reported by", "接收人 Told", "电话 Phone", "通知时间 Told at",
              "确认时间 Acknowledged", "用时(分) Minutes", "处理 Action", "备注 Remarks")


def findings_for(*, session: Session, user: User, since: datetime | None = None, until: datetime | None = None,
                 limit: int = 200) -> list[CriticalFinding]:
    """The user's log, newest first."""
    query = select(CriticalFinding).where(
        CriticalFinding.institution_id.in_(visible_institutions(session, user))
        | (CriticalFinding.flagged_by_id == user.id))
    if since is not None:
        query = query.where(CriticalFinding.flagged_at >= since)
    if until is not None:
        query = query.where(CriticalFinding.flagged_at < until)
    return list(session.scalars(query.order_by(CriticalFinding.flagged_at.desc()).limit(limit)))


def log_rows(session: Session, findings: list[CriticalFinding], now: datetime | None = None) -> list[LogRow]:
    studies = summarize(session, [f.study_instance_uid for f in findings])
    return [_row(f, studies.get(f.study_instance_uid), now) for f in findings]


def _who(user: User | None) -> str:
    return (user.display_name or user.username) if user else ""


def _row(finding: CriticalFinding, study, now: datetime | None) -> LogRow:
    acked = finding.acknowledged_at
    exam = " ".join(p for p in (study.modality, study.description, study.study_date) if p) if study else ""
    return LogRow(
        id=finding.id, flagged_at=localtime.display(finding.flagged_at), patient=study.patient_name if study else "",
        patient_id=study.patient_id if study else "", exam=exam, category=finding.category,
        statement=finding.statement, reported_by=_who(finding.flagged_by), told=_who(finding.acknowledged_by),
        phone=finding.phone, told_at=localtime.display(finding.flagged_at),
        acknowledged_at=localtime.display(acked) if acked else "",
        minutes=f"{minutes_to_ack(finding):.1f}" if acked else "", action=finding.action,
        remarks=finding.remarks, level=finding.level, overdue=is_overdue(finding, now))


def log_csv(rows: list[LogRow]) -> str:
    """The log as CSV with a BOM, so that Excel on a Chinese Windows PC opens it as UTF-8."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(LOG_HEADER)
    for r in rows:
        writer.writerow((r.id, r.flagged_at, r.patient, r.patient_id, r.exam, r.category, r.statement,
                         r.reported_by, r.told, r.phone, r.told_at, r.acknowledged_at, r.minutes, r.action,
                         r.remarks))
    return "\ufeff" + out.getvalue()


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def figures(*, session: Session, institution_ids: set[int], since: datetime,
            now: datetime | None = None) -> dict:
    """For the dashboard: count, acknowledged, median and p90 minutes to acknowledgement, and
    the unacknowledged ones past their window."""
    found = list(session.scalars(select(CriticalFinding).where(
        CriticalFinding.institution_id.in_(institution_ids), CriticalFinding.flagged_at >= since)))
    minutes = [minutes_to_ack(f) for f in found if f.acknowledged_at is not None]
    overdue = [f for f in found if is_overdue(f, now)]
    return {"count": len(found), "acknowledged": len(minutes),
            "median_min": statistics.median(minutes) if minutes else None,
            "p90_min": _percentile(minutes, 0.9), "overdue": len(overdue),
            "overdue_ids": [f.id for f in overdue]}


def findings_on(session: Session, *, consult_id: int | None = None, study_uid: str | None = None
                ) -> list[CriticalFinding]:
    """The findings flagged in one consult, or on one study, oldest first."""
    where = (CriticalFinding.consult_id == consult_id) if consult_id is not None else \
        (CriticalFinding.study_instance_uid == study_uid)
    return list(session.scalars(select(CriticalFinding).where(where).order_by(CriticalFinding.id)))
