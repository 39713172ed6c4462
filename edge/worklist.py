"""The registration desk (登记台) of a township edge: the patient is registered once, with the
name in Chinese, sex, birth date, 居民身份证号 and phone, and the exam picked from a short list;
the row is a Scheduled Procedure Step that the modality pulls as its worklist (edge/mwl.py),
so names and IDs on the images are right without retyping them on the modality's console.

Validation collects every problem of the form at once (`FormErrors.errors`: field name ->
message, Chinese first), so the desk shows each message next to its field. Every
registration and cancellation is audited in the same transaction; reads of the day's list
are audited by the page. Functions never commit.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timezone

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from edge.worklist_models import WorklistEntry, day_bounds
from imaging import persons, pinyin
from imaging.models import Patient, Study
from maternal.criteria import COLOURS
from storage import audit, localtime
from storage.access import Principal
from storage.errors import Invalid, NotFound, NotPermitted
from storage.models import DicomNode, Institution
from storage.types import utcnow

# The exams a township offers, per modality: (code, 中文, English). Short on purpose: the
# desk picks, nobody types. Codes are in a private scheme (CODING_SCHEME).
EXAMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "DX": (("DX01", "胸部正位", "Chest PA"), ("DX02", "胸部正侧位", "Chest PA and lateral"),
           ("DX03", "腹部立位", "Abdomen erect"), ("DX04", "腰椎正侧位", "Lumbar spine AP and lateral"),
           ("DX05", "膝关节正侧位", "Knee AP and lateral")),
    "US": (("US01", "产科超声", "Obstetric ultrasound"), ("US02", "妇科超声", "Gynaecological ultrasound"),
           ("US03", "腹部超声", "Abdominal ultrasound"), ("US04", "甲状腺超声", "Thyroid ultrasound"),
           ("US05", "乳腺超声", "Breast ultrasound"), ("US06", "心脏超声", "Echocardiography")),
    "CT": (("CT01", "头颅平扫", "Head, non-contrast"), ("CT02", "胸部平扫", "Chest, non-contrast"),
           ("CT03", "腹部平扫", "Abdomen, non-contrast"), ("CT04", "腰椎平扫", "Lumbar spine, non-contrast")),
}
MODALITY_LABELS = {"DX": ("数字X线摄影", "Radiography"), "US": ("超声", "Ultrasound"), "CT": ("CT", "CT")}
SEX_LABELS = {"F": ("女", "Female"), "M": ("男", "Male"), "O": ("其他", "Other")}
DESK_ROLES = ("radiographer", "coordinator", "admin")
# Urgent exams and red (high risk) or purple (infectious) pregnancies go first: on the
# modality's list and over the line to the region (edge/forward.py reads `priority`).
URGENT_COLOURS = ("red", "purple")

# Surnames read otherwise than the character's common reading (《百家姓》). Where two readings
# are both in use (乐 le/yue, 盖 gai/ge) the desk's pinyin field decides.
SURNAME_READINGS = {"单": "shan", "曾": "zeng", "解": "xie", "仇": "qiu", "朴": "piao", "区": "ou", "查": "zha",
                    "缪": "miao", "翟": "zhai", "覃": "qin", "万俟": "moqi", "单于": "chanyu", "尉迟": "yuchi"}
_PINYIN_TYPED = re.compile(r"^[A-Za-z][A-Za-z ]{0,62}(\^[A-Za-z][A-Za-z ]{0,62})?$")
_MOBILE = re.compile(r"^1[3-9][0-9]{9}$")
_LANDLINE = re.compile(r"^0[1-9][0-9]{1,2}-?[0-9]{7,8}$")
_PATIENT_ID = re.compile(r"^[\x21-\x5b\x5d-\x7e]{1,64}$")  # printable ASCII, no backslash (LO)
NAME_MAX = 32
BOOK_AHEAD_DAYS = 90


@dataclass
class Registration:
    """The desk's form as typed (strings), kept as typed so a refused form comes back whole."""

    family_name: str = ""
    given_name: str = ""
    pinyin: str = ""  # optional: "Family^Given"; empty means generated from the Chinese
    sex: str = ""
    birth_date: str = ""  # YYYY-MM-DD; may stay empty when the resident ID gives it
    resident_id: str = ""
    phone: str = ""
    patient_id: str = ""  # optional: the institution's own number; empty means issued here
    modality: str = ""
    procedure_code: str = ""
    station_ae: str = ""
    scheduled_date: str = ""  # YYYY-MM-DD local; empty means today
    scheduled_time: str = ""  # HH:MM local; empty means now
    risk_colour: str = ""
    urgent: bool = False


class FormErrors(Invalid):
    """A registration refused, with one message per field (422)."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("请更正标出的项 / correct the marked fields: " + "; ".join(errors.values()))
        self.errors = errors


def may_register(principal: Principal) -> bool:
    """Staff of an institution register its patients; specialists read, patients and AEs never."""
    return principal.kind == "user" and principal.role in DESK_ROLES and principal.institution_id is not None


def procedure_label(code: str) -> str:
    for exams in EXAMS.values():
        for exam_code, zh, en in exams:
            if exam_code == code:
                return f"{zh} {en}"
    return ""


def priority_of(*, urgent: bool, risk_colour: str) -> int:
    return 0 if urgent or risk_colour in URGENT_COLOURS else 1


# -- the name --------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return unicodedata.normalize("NFC", " ".join((text or "").split()))


def _name_problem(value: str, *, required: bool) -> str | None:
    if not value:
        return "请填写名字 / the given name is required" if required else None
    if len(value) > NAME_MAX:
        return f"不超过{NAME_MAX}个字 / at most {NAME_MAX} characters"
    if any(ch in "^=\\" or unicodedata.category(ch).startswith("C") or ch.isdigit() for ch in value):
        return "姓名中不能有数字或 ^ = \\ / no digits or ^ = \\ in a name"
    return None


def pinyin_of(part: str, *, surname: bool) -> str | None:
    """'秀英' -> 'Xiuying', '吕' -> 'Lyu' (ü as YU, as on passports: DICOM's default repertoire
    has no ü); None when a character has no known reading (then the desk types it)."""
    if not part:
        return ""
    if part.isascii():
        return part.replace(" ", "").capitalize()
    if surname and part in SURNAME_READINGS:
        return SURNAME_READINGS[part].capitalize()
    syllables = []
    for ch in part:
        reading = SURNAME_READINGS.get(ch) if surname and not syllables else None
        reading = reading or pinyin.keys(ch)[0]
        if not reading and ch != "·":
            return None
        syllables.append(reading)
    return "".join(syllables).replace("v", "yu").capitalize()


def _names(reg: Registration, errors: dict[str, str]) -> tuple[str, str, str]:
    family, given = _clean(reg.family_name), _clean(reg.given_name)
    for field, value, required in (("family_name", family, False), ("given_name", given, True)):
        problem = _name_problem(value, required=required)
        if problem:
            errors[field] = problem
    typed = _clean(reg.pinyin)
    if typed:
        if not _PINYIN_TYPED.match(typed) or (family and "^" not in typed):
            errors["pinyin"] = "拼音只用字母，姓与名之间用 ^ 分隔 / letters only, ^ between family and given name"
        family_py, _, given_py = typed.rpartition("^")
        return family, given, f"{family_py.replace(' ', '').capitalize()}^{given_py.replace(' ', '').capitalize()}"
    family_py, given_py = pinyin_of(family, surname=True), pinyin_of(given, surname=False)
    if (family_py is None or given_py is None) and "given_name" not in errors:
        errors["pinyin"] = "有生僻字无法生成拼音，请填写拼音 / a character has no known reading: type the pinyin"
    return family, given, f"{family_py or ''}^{given_py or ''}"


# -- the person ------------------------------------------------------------------------------


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat((text or "").strip())
    except ValueError:
        return None


def _resident_id(reg: Registration, errors: dict[str, str]) -> tuple[str, date | None, str]:
    """(number, the birth date and sex it encodes), or ("", None, "") when none was typed."""
    number = (reg.resident_id or "").replace(" ", "").strip().upper()
    if not number:
        return "", None, ""
    problem = persons.resident_id_problem(number)
    if problem:
        errors["resident_id"] = problem
        return number, None, ""
    born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    return number, born, "M" if int(number[16]) % 2 else "F"


def _person(reg: Registration, errors: dict[str, str]) -> tuple[str, date | None, str]:
    """(sex, birth date, resident ID): the ID number's birth date and sex must agree with the
    form's; an empty birth date or sex is taken from a valid ID number."""
    number, id_born, id_sex = _resident_id(reg, errors)
    sex = (reg.sex or "").strip().upper() or id_sex
    if sex not in SEX_LABELS:
        errors["sex"] = "请选择性别 / choose the sex"
    born = _date(reg.birth_date) if (reg.birth_date or "").strip() else id_born
    if born is None:
        errors["birth_date"] = ("请填写出生日期（年-月-日） / the birth date is required (YYYY-MM-DD)"
                                if not (reg.birth_date or "").strip() else "出生日期格式应为 年-月-日 / use YYYY-MM-DD")
    elif born > localtime_today() or born.year < 1900:
        errors["birth_date"] = "出生日期不在合理范围 / the birth date is in the future or before 1900"
    elif id_born is not None and born != id_born:
        errors["resident_id"] = (f"身份证号中的出生日期（{id_born:%Y-%m-%d}）与所填出生日期不符 / the ID number's "
                                 f"birth date ({id_born:%Y-%m-%d}) does not match the birth date given")
    if id_sex and sex in ("M", "F") and sex != id_sex and "resident_id" not in errors:
        errors["resident_id"] = ("身份证号中的性别与所选性别不符（第17位奇数为男，偶数为女） / the ID number's sex "
                                 "does not match the sex chosen (17th digit odd: male, even: female)")
    return sex, born, number


def _phone(reg: Registration, errors: dict[str, str]) -> str:
    phone = (reg.phone or "").replace(" ", "").strip()
    phone = phone[3:] if phone.startswith("+86") else phone
    if phone and not (_MOBILE.match(phone) or _LANDLINE.match(phone)):
        errors["phone"] = "电话应为11位手机号或带区号的固话 / an 11-digit mobile or a landline with its area code"
    return phone


def localtime_today() -> date:
    """The date in the deployment's zone (Beijing): what "today" means at the desk."""
    return datetime.now(localtime.zone()).date()


# -- the exam --------------------------------------------------------------------------------


def stations(*, session: Session, institution_id: int) -> list[DicomNode]:
    """The institution's modalities: enabled AEs that may store images here."""
    nodes = session.scalars(select(DicomNode).where(DicomNode.institution_id == institution_id,
                                                    DicomNode.enabled.is_(True)).order_by(DicomNode.ae_title))
    return [node for node in nodes if "store" in node.can]


def _exam(session: Session, institution_id: int, reg: Registration, errors: dict[str, str]) -> tuple[str, str, str]:
    modality = (reg.modality or "").strip().upper()
    if modality not in EXAMS:
        errors["modality"] = "请选择检查类型 / choose the modality"
        return modality, "", ""
    code = (reg.procedure_code or "").strip().upper()
    if not any(exam[0] == code for exam in EXAMS[modality]):
        errors["procedure_code"] = f"请选择{MODALITY_LABELS[modality][0]}检查项目 / choose a {modality} exam"
    station = (reg.station_ae or "").strip()
    if station and station not in {n.ae_title for n in stations(session=session, institution_id=institution_id)}:
        errors["station_ae"] = "该设备未在本机构登记 / that station is not one of this institution's modalities"
    return modality, code, station


def _when(reg: Registration, errors: dict[str, str]) -> datetime:
    """The scheduled time, typed in local time (Beijing), kept in UTC."""
    zone = localtime.zone()
    now = datetime.now(zone)
    day = _date(reg.scheduled_date) if (reg.scheduled_date or "").strip() else now.date()
    try:
        at = time.fromisoformat(reg.scheduled_time.strip()) if (reg.scheduled_time or "").strip() else \
            now.time().replace(second=0, microsecond=0)
    except ValueError:
        at = None
    if day is None or at is None:
        errors["scheduled_date"] = "预约时间格式应为 年-月-日 时:分 / use YYYY-MM-DD and HH:MM"
        return utcnow()
    if not -1 <= (day - now.date()).days <= BOOK_AHEAD_DAYS:
        errors["scheduled_date"] = (f"预约日期须在昨天至{BOOK_AHEAD_DAYS}天内 / schedule from yesterday up to "
                                    f"{BOOK_AHEAD_DAYS} days ahead")
    return datetime.combine(day, at, tzinfo=zone).astimezone(timezone.utc)


def _colour(reg: Registration, errors: dict[str, str]) -> str:
    colour = (reg.risk_colour or "").strip().lower()
    if colour and colour not in COLOURS:
        errors["risk_colour"] = "妊娠风险颜色无效 / unknown risk colour"
    return colour


# -- the patient ID --------------------------------------------------------------------------


def _patient_id(session: Session, institution: Institution, reg: Registration, resident_id: str,
                errors: dict[str, str]) -> str:
    """The PatientID the images will carry: the ID number where the institution declared its
    PatientIDs are ID numbers; else the number typed, the one this person had here before
    (by ID number), or "" (issued from the row's id once it has one)."""
    typed = (reg.patient_id or "").strip()
    if institution.patient_ids_are_resident_ids and resident_id:
        if typed and typed.upper() != resident_id:
            errors["patient_id"] = "本机构以身份证号作为患者ID，请留空 / this institution's patient IDs are ID numbers: leave it empty"
        return resident_id
    if typed:
        if not _PATIENT_ID.match(typed):
            errors["patient_id"] = "患者ID为1-64位字母、数字或符号 / 1-64 letters, digits or signs"
        return typed
    if not resident_id:
        return ""
    known = session.scalar(select(Patient.patient_id).where(Patient.institution_id == institution.id,
                                                            Patient.resident_id == resident_id).limit(1))
    return known or session.scalar(select(WorklistEntry.patient_id).where(
        WorklistEntry.institution_id == institution.id, WorklistEntry.resident_id == resident_id)
        .order_by(WorklistEntry.id.desc()).limit(1)) or ""


# -- the services ----------------------------------------------------------------------------


def desk_institution(session: Session, principal: Principal) -> Institution:
    if not may_register(principal):
        raise NotPermitted("仅本机构的技师、协调员或管理员可登记 / only the institution's radiographers, "
                           "coordinators or admins register patients")
    return session.get(Institution, principal.institution_id)


def register(*, session: Session, principal: Principal, registration: Registration,
             source: str = "") -> WorklistEntry:
    """Registers a patient's exam on the institution's worklist (audited: worklist.register)."""
    institution = desk_institution(session, principal)
    entry = enter(session=session, institution=institution, registration=registration, registered_by=principal.name)
    audit.append(session, principal=principal, action="worklist.register", object_type="worklist",
                 object_id=entry.accession_number, source=source,
                 detail={"patient_id": entry.patient_id,
                         "resident_id": persons.mask(entry.resident_id) if entry.resident_id else "",
                         "modality": entry.modality, "procedure": entry.procedure_code, "station": entry.station_ae,
                         "priority": entry.priority, "risk_colour": entry.risk_colour,
                         "study": entry.study_instance_uid})
    return entry


def enter(*, session: Session, institution: Institution, registration: Registration,
          registered_by: str) -> WorklistEntry:
    """Validates one registration and adds it to the worklist, not audited: the caller checked
    who may register and audits (one record a desk registration, one a list imported)."""
    reg, errors = registration, {}
    family, given, name_pinyin = _names(reg, errors)
    sex, born, resident_id = _person(reg, errors)
    phone = _phone(reg, errors)
    modality, code, station = _exam(session, institution.id, reg, errors)
    scheduled_at = _when(reg, errors)
    colour = _colour(reg, errors)
    patient_id = _patient_id(session, institution, reg, resident_id, errors)
    if errors:
        raise FormErrors(errors)
    entry = WorklistEntry(
        institution_id=institution.id, study_instance_uid=f"2.25.{uuid.uuid4().int}",
        accession_number=uuid.uuid4().hex[:16], family_name=family, given_name=given, name_pinyin=name_pinyin,
        sex=sex, birth_date=born, resident_id=resident_id, phone=phone, patient_id=patient_id or "-",
        modality=modality, procedure_code=code, procedure=procedure_label(code)[:64], station_ae=station,
        scheduled_at=scheduled_at, status="scheduled", risk_colour=colour, urgent=bool(reg.urgent),
        priority=priority_of(urgent=bool(reg.urgent), risk_colour=colour), registered_by=registered_by)
    session.add(entry)
    session.flush()
    # Numbers people read and say aloud: the local date and the row's id (unique by the id).
    entry.accession_number = f"{scheduled_at.astimezone(localtime.zone()):%y%m%d}{entry.id:06d}"[-16:]
    entry.patient_id = patient_id or f"{institution.code}-{entry.id:06d}"[-64:]
    session.flush()
    return entry


def cancel(*, session: Session, principal: Principal, entry_id: int, source: str = "") -> WorklistEntry:
    """Takes a registration off the modalities' worklist (audited: worklist.cancel)."""
    institution = desk_institution(session, principal)
    entry = session.get(WorklistEntry, entry_id)
    if entry is None or entry.institution_id != institution.id:
        raise NotFound("未找到该登记 / registration not found")
    if entry.status == "scheduled":
        entry.status = "cancelled"
        audit.append(session, principal=principal, action="worklist.cancel", object_type="worklist",
                     object_id=entry.accession_number, source=source, detail={"patient_id": entry.patient_id})
    session.flush()
    return entry


@dataclass(frozen=True)
class DeskRow:
    entry: WorklistEntry
    instances: int  # images received for the exam's study (0: none yet)


def day_list(*, session: Session, principal: Principal, day: date) -> list[DeskRow]:
    """The institution's registrations scheduled on a local day, earliest first, with the
    images received so far for each (read from the index by the study's UID)."""
    if principal.institution_id is None:
        raise NotPermitted("仅机构用户可查看登记 / only an institution's staff see its registrations")
    start, end = day_bounds(day)
    rows = session.execute(
        select(WorklistEntry, Study.num_instances)
        .outerjoin(Study, and_(Study.study_instance_uid == WorklistEntry.study_instance_uid,
                               Study.institution_id == WorklistEntry.institution_id))
        .where(WorklistEntry.institution_id == principal.institution_id,
               WorklistEntry.scheduled_at >= start, WorklistEntry.scheduled_at < end)
        .order_by(WorklistEntry.priority, WorklistEntry.scheduled_at, WorklistEntry.id)).all()
    return [DeskRow(entry, instances or 0) for entry, instances in rows]


def age_on(born: date, on: date) -> str:
    """Age as Chinese forms write it: years, or months under two, or days under a month."""
    days = (on - born).days
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    if years >= 2:
        return f"{years}岁"
    months = (on.year - born.year) * 12 + on.month - born.month - (on.day < born.day)
    return f"{months}月" if months >= 1 else f"{max(days, 0)}天"
