"""One person across institutions (a master patient index, IHE PIX-like).

A township's `P001` is not the county's `P001`: patients stay scoped by institution. Above
them sits a Person, and patient records of different institutions join one person only on a
trusted identifier: the 居民身份证号 (GB 11643-1999, check digit ISO 7064 MOD 11-2, birth date
and sex cross-checked against the DICOM header) or the 电子健康卡 number. Names never merge
anyone: `suggestions` lists look-alikes for an admin, who links by hand with a reason.
Linking is not access: who may see a study is still only `storage/access.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from imaging.models import Patient, Person, Series, Study
from storage import audit
from storage.access import Principal, scope_for
from storage.errors import Invalid, NotFound, NotPermitted
from storage.models import Institution

# ISO 7064 MOD 11-2 weights for the 17 body digits: 2^(17-i) mod 11.
WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
CHECK_CHARS = "10X98765432"  # the check character for (sum of weighted digits) mod 11

LINK_REASON_MAX = 200


@dataclass(frozen=True)
class IdentityRules:
    """Which OtherPatientIDsSequence issuers carry trusted identifiers (LANCANG_RESIDENT_ID_ISSUERS,
    LANCANG_HEALTH_CARD_ISSUERS)."""

    resident_issuers: frozenset[str]
    health_card_issuers: frozenset[str]

    @classmethod
    def of(cls, settings) -> "IdentityRules":
        def split(text: str) -> frozenset[str]:
            return frozenset(part.strip() for part in text.split(",") if part.strip())
        return cls(split(settings.resident_id_issuers), split(settings.health_card_issuers))


def check_character(body: str) -> str:
    """The check character (0-9 or X) of the 17-digit body of a resident ID number."""
    return CHECK_CHARS[sum(int(d) * w for d, w in zip(body, WEIGHTS)) % 11]


def resident_id_problem(number: str, *, birth_date: str = "", sex: str = "") -> str | None:
    """Why `number` is not a valid 18-digit resident ID for this person, or None when it is.
    `birth_date` (DICOM DA) and `sex` (M/F) from the header are cross-checked when present."""
    number = (number or "").strip().upper()
    if len(number) != 18 or not number[:17].isdigit() or not (number[17].isdigit() or number[17] == "X"):
        return "身份证号须为18位（末位可为X） / an ID number has 18 characters, the last may be X"
    if check_character(number[:17]) != number[17]:
        return "身份证号校验位不符 / the check digit is wrong"
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return "身份证号中的出生日期无效 / the birth date in the ID number is not a date"
    if born > date.today():
        return "身份证号中的出生日期在未来 / the birth date in the ID number is in the future"
    if birth_date and birth_date != born.strftime("%Y%m%d"):
        return (f"身份证号出生日期 {born:%Y-%m-%d} 与影像中的出生日期不符 / the ID number's birth date "
                f"does not match the images' ({birth_date})")
    coded_sex = "M" if int(number[16]) % 2 else "F"
    if sex.upper() in ("M", "F") and sex.upper() != coded_sex:
        return "身份证号中的性别与影像中的性别不符 / the ID number's sex does not match the images'"
    return None


def mask(number: str) -> str:
    """An ID number as most staff see it: region and check digit only (e.g. 110105********123X)."""
    if len(number) < 8:
        return "*" * len(number)
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


@dataclass(frozen=True)
class Identifiers:
    """The trusted identifiers found for one patient record (empty strings when none)."""

    resident_id: str = ""
    health_card: str = ""
    problem: str = ""  # why a resident ID that was present was not trusted


def identifiers_of(*, patient_id: str, other_ids: tuple[tuple[str, str], ...], birth_date: str, sex: str,
                   resident_issuers: frozenset[str], health_card_issuers: frozenset[str],
                   patient_ids_are_resident_ids: bool) -> Identifiers:
    """Trusted identifiers of one record: OtherPatientIDsSequence items whose issuer is one the
    region configured, or the PatientID itself where the institution declared that its
    PatientIDs are resident ID numbers. A resident ID that fails validation is not trusted."""
    candidates = [value for issuer, value in other_ids if issuer in resident_issuers]
    if patient_ids_are_resident_ids:
        candidates.insert(0, patient_id)
    resident, problem = "", ""
    for candidate in candidates:
        found = resident_id_problem(candidate, birth_date=birth_date, sex=sex)
        if found is None:
            resident = candidate.strip().upper()
            break
        problem = problem or found
    card = next((value.strip() for issuer, value in other_ids if issuer in health_card_issuers and value.strip()), "")
    return Identifiers(resident_id=resident, health_card=card[:64], problem="" if resident else problem)


def link_by_identifiers(conn, patient_pk: int, ids: Identifiers, *, source: str = "") -> int | None:
    """Join the patient record to the person its trusted identifier names, creating the person
    on first sight; a new link is audited (patient.link, by the sender). Returns the person's id
    (None: no trusted identifier). Core statements: it runs inside ingest's transaction."""
    if not (ids.resident_id or ids.health_card):
        return None
    conn.execute(update(Patient.__table__).where(Patient.id == patient_pk)
                 .values(resident_id=ids.resident_id, health_card=ids.health_card))
    person_id = None
    for column, value in ((Person.resident_id, ids.resident_id), (Person.health_card, ids.health_card)):
        if value and person_id is None:
            person_id = conn.execute(select(Person.id).where(column == value)).scalar()
    if person_id is None:
        person_id = conn.execute(Person.__table__.insert().values(
            resident_id=ids.resident_id or None, health_card=ids.health_card or None)
            .returning(Person.id)).scalar_one()
    current = conn.execute(select(Patient.person_id, Patient.link_source).where(Patient.id == patient_pk)).one()
    if current.link_source != "manual" and current.person_id != person_id:  # an admin's decision outlives images
        how = "resident_id" if ids.resident_id else "health_card"
        conn.execute(update(Patient.__table__).where(Patient.id == patient_pk)
                     .values(person_id=person_id, link_source=how))
        audit.append(conn, principal=None, actor=source or "system", action="patient.link", object_type="patient",
                     object_id=str(patient_pk), detail={"person": person_id, "was": current.person_id, "by": how})
    return person_id


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise NotPermitted("仅管理员可关联或解除关联患者 / only admins link patient records")


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("请填写关联或解除的原因 / give a reason")
    if len(reason) > LINK_REASON_MAX:
        raise Invalid(f"原因不超过{LINK_REASON_MAX}字 / at most {LINK_REASON_MAX} characters")
    return reason


def link(*, session: Session, principal: Principal, patient_pks: list[int], reason: str, source: str = "") -> int:
    """An admin joins patient records into one person (the first record's person, or a new one)."""
    _require_admin(principal)
    reason = _reason(reason)
    patients = session.scalars(select(Patient).where(Patient.id.in_(patient_pks))).all()
    if len(patients) != len(set(patient_pks)) or len(patients) < 2:
        raise NotFound("请选择至少两条存在的患者记录 / choose at least two patient records that exist")
    person_id = next((p.person_id for p in patients if p.person_id is not None), None)
    if person_id is None:
        person = Person()
        session.add(person)
        session.flush()
        person_id = person.id
    for patient in patients:
        before = patient.person_id
        patient.person_id, patient.link_source = person_id, "manual"
        audit.append(session, principal=principal, action="patient.link", object_type="patient",
                     object_id=str(patient.id), source=source,
                     detail={"person": person_id, "was": before, "reason": reason})
    return person_id


def unlink(*, session: Session, principal: Principal, patient_pk: int, reason: str, source: str = "") -> None:
    """An admin takes a record out of its person (it stands alone; automatic linking won't rejoin it)."""
    _require_admin(principal)
    reason = _reason(reason)
    patient = session.get(Patient, patient_pk)
    if patient is None or patient.person_id is None:
        raise NotFound("该患者记录未关联 / this record is not linked to a person")
    before = patient.person_id
    patient.person_id, patient.link_source = None, "manual"
    audit.append(session, principal=principal, action="patient.unlink", object_type="patient",
                 object_id=str(patient.id), source=source, detail={"person": before, "reason": reason})


def records_of(session: Session, patient_pk: int) -> list[Patient]:
    """The patient record and every record linked with it (itself alone when unlinked)."""
    patient = session.get(Patient, patient_pk)
    if patient is None:
        return []
    if patient.person_id is None:
        return [patient]
    return list(session.scalars(select(Patient).where(Patient.person_id == patient.person_id)
                                .order_by(Patient.id)))


def suggestions(session: Session, institution_ids: set[int] | None, limit: int = 50,
                like: Patient | None = None) -> list[list[Patient]]:
    """Look-alike records (same name, birth date and sex) in different institutions that no
    trusted identifier joined: for an admin to check, never merged automatically. `like`:
    only the look-alikes of that record (what its timeline shows; an indexed lookup)."""
    key = (Patient.name_ideographic, Patient.name_alphabetic, Patient.birth_date, Patient.sex)
    groups = (select(*key).where(Patient.birth_date != "", (Patient.name_ideographic != "") |
                                 (Patient.name_alphabetic != ""),
                                 *([c == getattr(like, c.key) for c in key] if like is not None else []))
              .group_by(*key).having(func.count(func.distinct(Patient.institution_id)) > 1)
              .having(func.count(func.distinct(func.coalesce(Patient.person_id, -Patient.id))) > 1)
              .limit(limit))
    found = []
    for row in session.execute(groups).all():
        members = session.scalars(select(Patient).where(*(c == v for c, v in zip(key, row)))
                                  .order_by(Patient.institution_id, Patient.id)).all()
        if institution_ids is not None:
            members = [m for m in members if m.institution_id in institution_ids]
        if len(members) > 1:
            found.append(members)
    return found


def priors(session: Session, principal: Principal, study, limit: int = 20) -> list[tuple]:
    """The person's other studies the principal may see, most relevant first (the hanging
    rule's order): same modality and body part, then same modality, then the rest; newest
    first within each. Returns [(Study, institution name, body parts)]. Visibility is the
    principal's own scope: a link never shows a study."""
    records = [p.id for p in records_of(session, study.patient_pk)]
    scope = scope_for(session, principal)
    rows = session.execute(select(Study, Institution.name_zh)
                           .join(Institution, Institution.id == Study.institution_id)
                           .where(Study.patient_pk.in_(records), Study.id != study.id,
                                  scope.study_filter(Study.institution_id, Study.study_instance_uid))
                           .order_by(Study.study_date.desc(), Study.id.desc()).limit(200)).all()
    parts: dict[int, set[str]] = {}
    wanted = [study.id, *(s.id for s, _ in rows)]
    for pk, part in session.execute(select(Series.study_pk, Series.body_part).where(Series.study_pk.in_(wanted))):
        if part:
            parts.setdefault(pk, set()).add(part.upper())
    mine_modalities = set(filter(None, study.modalities.split("\\")))
    mine_parts = parts.get(study.id, set())

    def relevance(row) -> int:
        other, _ = row
        same_modality = bool(mine_modalities & set(filter(None, other.modalities.split("\\"))))
        same_part = bool(mine_parts & parts.get(other.id, set()))
        return 0 if same_modality and same_part else 1 if same_modality else 2
    ordered = sorted(rows, key=relevance)  # stable: newest first within each group
    return [(other, name, "/".join(sorted(parts.get(other.id, set())))) for other, name in ordered[:limit]]
