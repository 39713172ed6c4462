"""Pregnancies and their risk grading: registering, gestational age, grading from the 2017
规范's criteria (every grading kept, the newest is the current colour), closing with the
42-day postpartum window. Keyword-only functions that never commit; the caller's unit of
work does. Referrals are in maternal/referrals.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from imaging import persons
from imaging.models import Patient
from maternal import policy
from maternal.criteria import CRITERIA, Grade, grade_of
from maternal.models import PREGNANCY_STATUSES, Pregnancy, RiskGrading
from storage import access, audit, localtime
from storage.access import Principal
from storage.db import Database
from storage.errors import Conflict, DomainError, Invalid, NotFound, NotPermitted

TERM_DAYS = 280  # EDD = LMP + 280 days (Naegele)
POSTPARTUM_DAYS = 42  # graded from pregnancy to 42 days after it ends
LATEST_PAST_EDD = 28  # a pregnancy registered as ongoing is at most 44 weeks on
NOTE_MAX = 1000
STATUS_LABELS = {"ongoing": "孕期中 Ongoing", "delivered": "已分娩 Delivered", "ended": "已终止 Ended"}


def today() -> date:
    """The date in the deployment's zone (Beijing): what "today" means on a ward."""
    return datetime.now(localtime.zone()).date()


@dataclass(frozen=True)
class GestationalAge:
    """孕周 as written on a record: completed weeks + days, "24+3"."""

    days: int

    @property
    def weeks(self) -> int:
        return self.days // 7

    def __str__(self) -> str:
        return f"{self.days // 7}+{self.days % 7}"


def gestational_age(*, lmp: date | None = None, edd: date | None = None, on: date) -> GestationalAge | None:
    """GA on `on` from the LMP, or from the EDD (LMP = EDD - 280 days) when the LMP is unknown;
    None with neither, or before the pregnancy began."""
    start = lmp or (edd - timedelta(days=TERM_DAYS) if edd else None)
    if start is None or on < start:
        return None
    return GestationalAge((on - start).days)


def ga_of(pregnancy: Pregnancy, on: date) -> GestationalAge | None:
    """GA on `on`; once the pregnancy has ended, the GA at its end."""
    if pregnancy.ended_on is not None and on > pregnancy.ended_on:
        on = pregnancy.ended_on
    return gestational_age(lmp=pregnancy.lmp, edd=pregnancy.edd, on=on)


def postpartum_days(pregnancy: Pregnancy, on: date) -> int | None:
    """Days since delivery or end; None while ongoing."""
    return (on - pregnancy.ended_on).days if pregnancy.ended_on is not None else None


def grading_open(pregnancy: Pregnancy, on: date) -> bool:
    """Ongoing, or ended no more than 42 days before `on`."""
    if pregnancy.status == "ongoing":
        return True
    return pregnancy.ended_on is not None and on <= pregnancy.ended_on + timedelta(days=POSTPARTUM_DAYS)


def _owner(session: Session, patient_pk: int) -> Patient:
    patient = session.get(Patient, patient_pk)
    if patient is None:
        raise NotFound("未找到该患者 / patient not found")
    return patient


def of_patient(session: Session, *, patient_pk: int) -> list[Pregnancy]:
    """Every pregnancy of the patient's person (or of the record itself), newest first. No visibility check."""
    records = persons.records_of(session, patient_pk)
    if not records:
        return []
    owned = [Pregnancy.patient_pk.in_([r.id for r in records])]
    if records[0].person_id is not None:
        owned.append(Pregnancy.person_id == records[0].person_id)
    return list(session.scalars(select(Pregnancy).where(or_(*owned)).order_by(Pregnancy.id.desc())))


def visible_of_patient(session: Session, *, principal: Principal, patient_pk: int) -> list[Pregnancy]:
    """The patient's pregnancies the principal may see."""
    return [p for p in of_patient(session, patient_pk=patient_pk) if policy.can_view(session, principal, p)]


def get(*, session: Session, principal: Principal, pregnancy_id: int) -> Pregnancy:
    """A pregnancy the principal may see (404 otherwise: its existence is patient data too)."""
    return access.get_visible(session, Pregnancy, pregnancy_id, lambda p: policy.can_view(session, principal, p),
                              missing="未找到该孕产妇档案 / pregnancy not found")


def _dates(lmp: date | None, edd: date | None, on: date) -> tuple[date | None, date]:
    if lmp is None and edd is None:
        raise Invalid("请填写末次月经或预产期 / give the LMP or the EDD")
    if lmp is not None and lmp > on:
        raise Invalid("末次月经不能晚于今天 / the LMP cannot be in the future")
    edd = edd or lmp + timedelta(days=TERM_DAYS)
    if lmp is not None and not 200 <= (edd - lmp).days <= 300:
        raise Invalid("预产期与末次月经不符 / the EDD does not fit the LMP")
    if not -LATEST_PAST_EDD <= (edd - on).days <= TERM_DAYS:
        raise Invalid("预产期不在本次妊娠的合理范围内 / the EDD is not within a current pregnancy")
    return lmp, edd


def register(*, session: Session, principal: Principal, patient_pk: int, lmp: date | None = None,
             edd: date | None = None, gravida: int = 1, para: int = 0, on: date | None = None,
             source: str = "") -> Pregnancy:
    """Open a pregnancy record (孕产妇建档) managed by the principal's institution."""
    on = on or today()
    patient = _owner(session, patient_pk)
    if not policy.may_register(session, principal, patient_pk):
        raise NotPermitted("仅能看到该患者检查的技师、医师、协调员可建档 / only staff who see one of the "
                           "patient's studies register a pregnancy")
    lmp, edd = _dates(lmp, edd, on)
    if not (1 <= gravida <= 30 and 0 <= para < gravida):
        raise Invalid("孕次、产次无效（产次须小于孕次） / gravida 1–30, para below gravida")
    if any(p.status == "ongoing" for p in of_patient(session, patient_pk=patient_pk)):
        raise Conflict("该患者已有进行中的妊娠档案 / this patient already has an ongoing pregnancy")
    pregnancy = Pregnancy(person_id=patient.person_id, patient_pk=None if patient.person_id else patient.id,
                          lmp=lmp, edd=edd, gravida=gravida, para=para, status="ongoing",
                          institution_id=principal.institution_id, created_by_id=principal.user_id)
    session.add(pregnancy)
    session.flush()
    audit.append(session, principal=principal, action="pregnancy.create", object_type="pregnancy",
                 object_id=str(pregnancy.id), source=source,
                 detail={"patient": patient_pk, "person": patient.person_id, "lmp": str(lmp or ""),
                         "edd": str(edd), "gravida": gravida, "para": para})
    return pregnancy


def grade(*, session: Session, principal: Principal, pregnancy_id: int, criteria: list[str], note: str = "",
          on: date | None = None, source: str = "") -> RiskGrading:
    """Record a grading: the colour is what the chosen criteria give (maternal/criteria.grade_of)."""
    on = on or today()
    pregnancy = get(session=session, principal=principal, pregnancy_id=pregnancy_id)
    policy.require("grade", principal, policy.involvement(session, pregnancy))
    if not grading_open(pregnancy, on):
        raise Conflict("产后42天已过，不再进行妊娠风险评估 / grading closes 42 days after the pregnancy ended")
    found = grade_of(criteria)
    codes = list(dict.fromkeys(c.strip() for c in criteria if c and c.strip()))
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise Invalid(f"备注不超过{NOTE_MAX}字 / the note has at most {NOTE_MAX} characters")
    if any(CRITERIA[c].needs_note for c in codes) and not note:
        raise Invalid("选择“其他”时请在备注中写明 / describe the “other” criterion in the note")
    postpartum = pregnancy.ended_on is not None and on > pregnancy.ended_on
    ga = None if postpartum else ga_of(pregnancy, on)
    grading = RiskGrading(pregnancy_id=pregnancy.id, level=found.level, infectious=found.infectious, criteria=codes,
                          note=note, ga_days=ga.days if ga else None, graded_by_id=principal.user_id,
                          institution_id=principal.institution_id)
    session.add(grading)
    session.flush()
    audit.append(session, principal=principal, action="pregnancy.grade", object_type="pregnancy",
                 object_id=str(pregnancy.id), source=source,
                 detail={"grading": grading.id, "colour": found.colour, "criteria": codes})
    return grading


def close(*, session: Session, principal: Principal, pregnancy_id: int, status: str, ended_on: date,
          on: date | None = None, source: str = "") -> Pregnancy:
    """Delivered or ended on a date; grading stays open 42 days after it."""
    on = on or today()
    pregnancy = get(session=session, principal=principal, pregnancy_id=pregnancy_id)
    policy.require("close", principal, policy.involvement(session, pregnancy))
    if status not in PREGNANCY_STATUSES or status == "ongoing":
        raise Invalid("结案方式只能是已分娩或已终止 / close as delivered or ended")
    if pregnancy.status != "ongoing":
        raise Conflict("该妊娠已结案 / this pregnancy is already closed")
    start = pregnancy.lmp or (pregnancy.edd - timedelta(days=TERM_DAYS))
    if ended_on > on or ended_on < start:
        raise Invalid("结案日期须在末次月经之后、不晚于今天 / the date must be after the LMP and not in the future")
    pregnancy.status, pregnancy.ended_on = status, ended_on
    audit.append(session, principal=principal, action="pregnancy.close", object_type="pregnancy",
                 object_id=str(pregnancy.id), source=source, detail={"status": status, "on": str(ended_on)})
    return pregnancy


def gradings(session: Session, *, pregnancy_id: int) -> list[RiskGrading]:
    """Every grading, newest first (the first is the current colour)."""
    return list(session.scalars(select(RiskGrading).where(RiskGrading.pregnancy_id == pregnancy_id)
                                .order_by(RiskGrading.graded_at.desc(), RiskGrading.id.desc())))


def grade_of_row(grading: RiskGrading) -> Grade:
    return Grade(grading.level, grading.infectious)


def current_grade(session: Session, *, pregnancy_id: int) -> Grade | None:
    """The newest grading's colour, None when never graded. No visibility check."""
    newest = session.scalar(select(RiskGrading).where(RiskGrading.pregnancy_id == pregnancy_id)
                            .order_by(RiskGrading.graded_at.desc(), RiskGrading.id.desc()).limit(1))
    return grade_of_row(newest) if newest else None


def colour_for_patient(session: Session, *, principal: Principal, patient_pk: int,
                       on: date | None = None) -> Grade | None:
    """The current colour of the patient's pregnancy still under management (ongoing, or within
    42 days after it ended) that the principal may see; None otherwise. For a consult's urgency,
    take `.headline` (red, purple, orange, yellow, green)."""
    on = on or today()
    for pregnancy in of_patient(session, patient_pk=patient_pk):
        if grading_open(pregnancy, on) and policy.can_view(session, principal, pregnancy):
            return current_grade(session, pregnancy_id=pregnancy.id)
    return None


def patient_of(session: Session, principal: Principal, pregnancy: Pregnancy) -> Patient | None:
    """The record to show the woman by: its own record, else the first of the person's records
    whose studies the principal sees (the first record when none: a referred-to institution)."""
    pks = policy.record_pks(session, pregnancy)
    if not pks:
        return None
    shown = next((pk for pk in sorted(pks) if policy.sees_a_study(session, principal, [pk])), min(pks))
    return session.get(Patient, shown)


@contextmanager
def refusals_audited(db: Database, session: Session, *, principal: Principal, action: str, object_type: str,
                     object_id: str, source: str = "") -> Iterator[None]:
    """A refused change (403, 404) is audited as denied: after the request's own write
    transaction is rolled back (on SQLite it holds the write lock the record needs)."""
    try:
        yield
    except (NotPermitted, NotFound) as exc:
        session.rollback()
        audit.record(db, principal=principal, action=action, object_type=object_type, object_id=object_id,
                     source=source, outcome="denied", detail={"reason": exc.detail[:300]})
        raise


@contextmanager
def read_audited(db: Database, *, principal: Principal, action: str, object_type: str, object_id: str,
                 source: str = "") -> Iterator[dict]:
    """The read the block makes, audited: as denied when it is refused (the refusal goes on to the
    caller), else as done, with the detail the block put in the dict it is given."""
    detail: dict = {}
    about = dict(principal=principal, action=action, object_type=object_type, object_id=object_id, source=source)
    try:
        yield detail
    except DomainError:
        audit.record_read(db, **about, outcome="denied", detail={})
        raise
    audit.record_read(db, **about, outcome="ok", detail=detail)
