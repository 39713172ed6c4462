"""The study list: what a user may see (storage/access.py), newest first, paged by cursor.

A cursor, not an offset: page N costs the same as page 1 at a million instances, because
the next page starts where the last row was in the (study_date, id) order an index serves.
Report and share states are read for the page's rows only.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import and_, or_, select, tuple_
from sqlalchemy.orm import Session

from consult import obstetrics
from consult.templates import OBSTETRIC
from consult.models import ConsultRequest, ConsultStudy, Report, ReportVersion
from consult.state import DONE, OPEN
from film.models import Share
from imaging import persons, pinyin
from imaging.models import Patient, RecognitionDecision, Series, Study
from imaging.summary import SEX_LABELS, age_at
from imaging.dataset import display_name
from storage import access, localtime
from storage.access import Principal
from storage.errors import Invalid
from storage.models import Institution
from storage.types import utcnow

PAGE_SIZE = 50
REPORT_STATES = {"none": "无报告 No report", "consult": "会诊中 In consult", "final": "已出报告 Final"}
# Who reads a full 身份证号 in lists: the performing institution's desk and coordinators, who
# register and refer patients. Readers elsewhere and admins see it masked.
FULL_ID_ROLES = ("radiographer", "coordinator")


@dataclass(frozen=True)
class StudyFilter:
    date_from: str = ""   # YYYY-MM-DD
    date_to: str = ""
    modality: str = ""
    institution_id: int | None = None  # that institution and its subtree
    report: str = ""      # none | consult | final
    text: str = ""        # name (Chinese, pinyin, initials), patient ID, accession, 身份证号
    today: bool = False

    def as_query(self) -> dict:
        """The filter as URL parameters (for the next page's link)."""
        found = {"from": self.date_from, "to": self.date_to, "modality": self.modality,
                 "institution": self.institution_id or "", "report": self.report, "q": self.text,
                 "today": "1" if self.today else ""}
        return {key: value for key, value in found.items() if value}


@dataclass
class StudyRow:
    uid: str
    patient_pk: int
    patient_name: str
    patient_id: str
    resident_id: str  # masked unless the viewer's role needs it
    sex: str
    age: str
    modality: str
    body_part: str
    description: str
    institution: str
    study_date: str
    instances: int
    report: str = "none"
    shared: bool = False
    recognition: str = ""  # "", recognised, not_recognised (the viewer institution's latest decision)
    consults: list[int] = field(default_factory=list)  # consults covering the study (each checks its own access)


@dataclass
class StudyPage:
    rows: list[StudyRow] = field(default_factory=list)
    next_cursor: str = ""


def encode_cursor(study_date: str, pk: int) -> str:
    return base64.urlsafe_b64encode(f"{study_date}|{pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        day, pk = text.split("|")
        return day, int(pk)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("翻页参数无效 / the page cursor is not valid") from None


def _dicom_date(text: str, name: str) -> str:
    if not text:
        return ""
    try:
        return date.fromisoformat(text).strftime("%Y%m%d")
    except ValueError:
        raise Invalid(f"{name}须为 YYYY-MM-DD / {name} must be a date like 2026-12-04") from None


# Above this many matching patient records a search is broad: the date-ordered scan meets 50
# matches early, so the list goes as a subquery; below it, as values (an index lookup per id).
PATIENT_LIST_MAX = 1000


def _text_condition(session: Session, text: str):
    """Free text: a prefix of the name's pinyin or initials (Chinese typed is turned into pinyin
    too), a patient ID prefix, a whole 身份证号, or a whole accession number. The patients are
    found first (prefix indexes on their own table): one OR across the join made PostgreSQL walk
    every study by date (0.4 s at a million instances, bench/workspace.py)."""
    text = text.strip()
    key = pinyin.query_key(text) if text.isascii() else pinyin.keys(text)[0]
    conditions = [Patient.patient_id.startswith(text, autoescape=True)]
    if key:
        conditions += [Patient.name_pinyin.startswith(key, autoescape=True),
                       Patient.name_initials.startswith(key, autoescape=True)]
    if len(text) == 18:
        conditions.append(Patient.resident_id == text.upper())
    matching = select(Patient.id).where(or_(*conditions))
    found = session.scalars(matching.limit(PATIENT_LIST_MAX + 1)).all()
    by_patient = Study.patient_pk.in_(found if len(found) <= PATIENT_LIST_MAX else matching)
    return or_(by_patient, Study.accession_number == text)


def _report_condition(state: str):
    covering = select(ConsultStudy.study_instance_uid).join(
        ConsultRequest, ConsultRequest.id == ConsultStudy.consult_id)
    final = covering.where(ConsultRequest.status.in_(DONE))
    open_ = covering.where(ConsultRequest.status.in_(OPEN))
    if state == "final":
        return Study.study_instance_uid.in_(final)
    if state == "consult":
        return and_(Study.study_instance_uid.in_(open_), Study.study_instance_uid.not_in(final))
    if state == "none":
        return and_(Study.study_instance_uid.not_in(final), Study.study_instance_uid.not_in(open_))
    raise Invalid("报告状态须为 none、consult 或 final / report must be none, consult or final")


def search(session: Session, principal: Principal, wanted: StudyFilter, *, cursor: str = "",
           limit: int = PAGE_SIZE) -> StudyPage:
    """One page of the studies the principal may see, newest first."""
    scope = access.scope_for(session, principal)
    statement = (select(Study, Patient, Institution.name_zh)
                 .join(Patient, Patient.id == Study.patient_pk)
                 .join(Institution, Institution.id == Study.institution_id)
                 .where(scope.study_filter(Study.institution_id, Study.study_instance_uid)))
    for condition in _conditions(session, wanted):
        statement = statement.where(condition)
    if cursor:
        statement = statement.where(tuple_(Study.study_date, Study.id) < decode_cursor(cursor))
    rows = session.execute(statement.order_by(Study.study_date.desc(), Study.id.desc()).limit(limit + 1)).all()
    page = StudyPage(rows=[_row(principal, study, patient, name) for study, patient, name in rows[:limit]])
    if len(rows) > limit:
        last = rows[limit - 1][0]
        page.next_cursor = encode_cursor(last.study_date, last.id)
    annotate(session, principal, page.rows)
    return page


def _conditions(session: Session, wanted: StudyFilter) -> list:
    found = []
    if wanted.today:
        found.append(Study.study_date == datetime.now(localtime.zone()).strftime("%Y%m%d"))
    if (start := _dicom_date(wanted.date_from, "起始日期")):
        found.append(Study.study_date >= start)
    if (end := _dicom_date(wanted.date_to, "截止日期")):
        found.append(Study.study_date <= end)
    if wanted.modality:
        found.append(Study.modalities.contains(wanted.modality.upper()[:16], autoescape=True))
    if wanted.institution_id is not None:
        found.append(Study.institution_id.in_(sorted(access.subtree_ids(session, wanted.institution_id))))
    if wanted.report:
        found.append(_report_condition(wanted.report))
    if wanted.text.strip():
        found.append(_text_condition(session, wanted.text))
    return found


def shows_full_resident_id(principal: Principal, study_institution_id: int) -> bool:
    return principal.role in FULL_ID_ROLES and principal.institution_id == study_institution_id


def _row(principal: Principal, study: Study, patient: Patient, institution: str) -> StudyRow:
    resident = patient.resident_id
    if resident and not shows_full_resident_id(principal, study.institution_id):
        resident = persons.mask(resident)
    day = study.study_date
    return StudyRow(
        uid=study.study_instance_uid, patient_pk=patient.id, patient_name=display_name(patient.name),
        patient_id=patient.patient_id if not patient.patient_id.startswith("~") else "",
        resident_id=resident, sex=SEX_LABELS.get(patient.sex.upper(), patient.sex),
        age=age_at(patient.birth_date, study.study_date), modality=(study.modalities or "").replace("\\", "/"),
        body_part="", description=study.description, institution=institution or study.institution_name,
        study_date=f"{day[:4]}-{day[4:6]}-{day[6:8]}" if len(day) == 8 else day, instances=study.num_instances)


def annotate(session: Session, principal: Principal, rows: list[StudyRow]) -> None:
    """Report state, share state, body part and the viewer institution's 互认 decision of these
    rows: a few queries over the page's UIDs, not one per row."""
    uids = [row.uid for row in rows]
    if not uids:
        return
    states = session.execute(select(ConsultStudy.study_instance_uid, ConsultRequest.status, ConsultRequest.id)
                             .join(ConsultRequest, ConsultRequest.id == ConsultStudy.consult_id)
                             .where(ConsultStudy.study_instance_uid.in_(uids))
                             .order_by(ConsultRequest.id)).all()
    report, consults = {}, {}
    for uid, status, consult_id in states:
        consults.setdefault(uid, []).append(consult_id)
        if status in DONE:
            report[uid] = "final"
        elif status in OPEN and report.get(uid) != "final":
            report[uid] = "consult"
    now = utcnow()
    shared = set(session.scalars(select(Share.study_instance_uid).where(
        Share.study_instance_uid.in_(uids), Share.revoked_at.is_(None), Share.expires_at > now)))
    parts = _body_parts(session, uids)
    decisions = _latest_decisions(session, principal, uids)
    for row in rows:
        row.report, row.shared = report.get(row.uid, "none"), row.uid in shared
        row.consults = consults.get(row.uid, [])
        row.body_part, row.recognition = parts.get(row.uid, ""), decisions.get(row.uid, "")


def _body_parts(session: Session, uids: list[str]) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for uid, part in session.execute(select(Study.study_instance_uid, Series.body_part)
                                     .join(Series, Series.study_pk == Study.id)
                                     .where(Study.study_instance_uid.in_(uids), Series.body_part != "")).all():
        if part not in found.setdefault(uid, []):
            found[uid].append(part)
    return {uid: "/".join(parts) for uid, parts in found.items()}


def _latest_decisions(session: Session, principal: Principal, uids: list[str]) -> dict[str, str]:
    if principal.institution_id is None:
        return {}
    rows = session.execute(select(RecognitionDecision.study_instance_uid, RecognitionDecision.recognised)
                           .where(RecognitionDecision.study_instance_uid.in_(uids),
                                  RecognitionDecision.deciding_institution_id == principal.institution_id)
                           .order_by(RecognitionDecision.id)).all()
    return {uid: "recognised" if ok else "not_recognised" for uid, ok in rows}


def landing(role: str) -> str:
    """Where each role starts after signing in."""
    return {"radiographer": "/studies?today=1", "specialist": "/consults", "coordinator": "/consults",
            "admin": "/studies"}.get(role, "/studies")


def study_row(session: Session, principal: Principal, study: Study) -> StudyRow:
    """One study as the list shows it (the caller has checked that the principal may see it)."""
    patient = session.get(Patient, study.patient_pk)
    institution = session.get(Institution, study.institution_id)
    row = _row(principal, study, patient, institution.name_zh if institution else "")
    annotate(session, principal, [row])
    return row


@dataclass
class LinkedRecord:
    pk: int
    institution: str
    patient_id: str
    link_source: str


@dataclass
class Timeline:
    patient_pk: int
    person_id: int | None
    rows: list[StudyRow] = field(default_factory=list)
    records: list[LinkedRecord] = field(default_factory=list)
    # Fetal growth from the final obstetric reports of the studies above, by exam date, and its
    # chart (EFW against GA per pregnancy, an inline SVG; "" when nothing to plot).
    growth: list[obstetrics.GrowthPoint] = field(default_factory=list)
    growth_chart: str = ""


LINK_LABELS = {"resident_id": "身份证号 Resident ID", "health_card": "电子健康卡 Health card",
               "manual": "人工关联 Linked by an admin", "": "—"}


def timeline(session: Session, principal: Principal, patient_pk: int, *, annotated: bool = True) -> Timeline:
    """Every study of the person the principal may see, newest first. Cross-institution
    visibility is the principal's own scope (a consult grant, the referral tree), never the link:
    records the principal sees no study of are not even named. Empty when the principal sees no
    study of `patient_pk` itself (nothing to say about a record one cannot see)."""
    records = persons.records_of(session, patient_pk)
    if not records:
        return Timeline(patient_pk, None)
    scope = access.scope_for(session, principal)
    by_pk = {record.id: record for record in records}
    found = session.execute(select(Study, Institution.name_zh)
                            .join(Institution, Institution.id == Study.institution_id)
                            .where(Study.patient_pk.in_(list(by_pk)),
                                   scope.study_filter(Study.institution_id, Study.study_instance_uid))
                            .order_by(Study.study_date.desc(), Study.id.desc()).limit(500)).all()
    if not any(study.patient_pk == patient_pk for study, _ in found):
        return Timeline(patient_pk, None)
    rows = [_row(principal, study, by_pk[study.patient_pk], name) for study, name in found]
    growth = []
    if annotated:
        annotate(session, principal, rows)
        growth = obstetrics.by_pregnancy(growth_points(session, {study.study_instance_uid: study.study_date
                                                                 for study, _ in found}))
    seen = {study.patient_pk: name for study, name in found}
    return Timeline(patient_pk, records[0].person_id, rows,
                    [LinkedRecord(pk, seen[pk], by_pk[pk].patient_id, by_pk[pk].link_source)
                     for pk in by_pk if pk in seen], growth, obstetrics.growth_svg(growth))


def growth_points(session: Session, dates: dict[str, str]) -> list[obstetrics.GrowthPoint]:
    """The biometry of these studies' final obstetric reports (studies the caller has already
    filtered by what the viewer may see), the newest final of each: two queries, not one per
    study. A consult's report is about its first study (as its PDF says), so only that one."""
    if not dates:
        return []
    found = session.execute(
        select(ConsultStudy.consult_id, ConsultStudy.study_instance_uid, ReportVersion.content)
        .join(Report, Report.consult_id == ConsultStudy.consult_id)
        .join(ReportVersion, ReportVersion.report_id == Report.id)
        .where(ConsultStudy.study_instance_uid.in_(list(dates)), Report.template == OBSTETRIC,
               Report.status == "final", ReportVersion.kind.in_(("final", "addendum")))
        .order_by(ReportVersion.id)).all()
    consults = {consult_id for consult_id, _, _ in found}
    first = {}
    for consult_id, uid in session.execute(select(ConsultStudy.consult_id, ConsultStudy.study_instance_uid)
                                           .where(ConsultStudy.consult_id.in_(consults)).order_by(ConsultStudy.id)):
        first.setdefault(consult_id, uid)
    newest = {uid: content for consult_id, uid, content in found if first.get(consult_id) == uid}
    return [obstetrics.growth_point(uid, content.get("fields") or {}, dates[uid]) for uid, content in newest.items()]


def linked_records(session: Session, principal: Principal, patient_pk: int) -> list[LinkedRecord]:
    """The records joined with this one that the principal sees a study of (for the study page)."""
    found = timeline(session, principal, patient_pk, annotated=False)  # the records only: no row states
    return found.records if found.person_id is not None else []
