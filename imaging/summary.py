"""A study as people tell studies apart in lists and pickers: whose it is (name, ID, sex,
age at the exam), what it is (modality, description, date) and where it was made.

Two CTs of two women called 张秀英 look alike by title; these lines do not."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging.dataset import display_name
from imaging.models import Patient, Study
from storage.models import Institution

SEX_LABELS = {"F": "女 F", "M": "男 M", "O": "其他 O"}


@dataclass(frozen=True)
class StudySummary:
    uid: str
    patient_name: str
    patient_id: str
    sex: str
    age: str
    modality: str
    description: str
    study_date: str  # YYYY-MM-DD, or "" when the study has none
    institution: str
    instances: int

    @property
    def label(self) -> str:
        """One line for a <select> or a search index: everything above that tells it apart."""
        who = " ".join(part for part in (self.patient_name, self.patient_id, self.sex, self.age) if part)
        what = " · ".join(part for part in (self.modality, self.description, self.study_date) if part)
        return f"{who} | {what} | {self.institution}"


def _parse(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except (ValueError, IndexError, TypeError):
        return None


def age_at(birth: str, on: str) -> str:
    """Age at the exam as a Chinese record writes it: 32岁, 8月 under a year, 12天 under a month."""
    born, seen = _parse(birth), _parse(on) or date.today()
    if born is None or seen < born:
        return ""
    months = (seen.year - born.year) * 12 + seen.month - born.month - (seen.day < born.day)
    if months >= 12:
        return f"{months // 12}岁"
    return f"{months}月" if months >= 1 else f"{(seen - born).days}天"


def summarize(session: Session, uids: list[str]) -> dict[str, StudySummary]:
    """Summaries of the studies with these UIDs (those that exist), in one query."""
    if not uids:
        return {}
    rows = session.execute(select(Study, Patient, Institution.name_zh)
                           .join(Patient, Patient.id == Study.patient_pk)
                           .join(Institution, Institution.id == Study.institution_id)
                           .where(Study.study_instance_uid.in_(set(uids)))).all()
    return {study.study_instance_uid: summary_of(study, patient, institution) for study, patient, institution in rows}


def summary_of(study: Study, patient: Patient, institution: str) -> StudySummary:
    day = _parse(study.study_date)
    return StudySummary(
        uid=study.study_instance_uid, patient_name=display_name(patient.name), patient_id=patient.patient_id,
        sex=SEX_LABELS.get(patient.sex.upper(), patient.sex), age=age_at(patient.birth_date, study.study_date),
        modality=(study.modalities or "").replace("\\", "/"), description=study.description,
        study_date=day.isoformat() if day else "", institution=institution or study.institution_name,
        instances=study.num_instances)
