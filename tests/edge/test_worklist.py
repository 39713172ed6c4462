"""The township desk's registration service (edge/worklist.py): every field validated with a
message for that field (身份证号 check digit, its birth date and sex against the form's), the
pinyin the modalities show, IDs and priority issued, who may register, and the audit trail.

Run on SQLite and PostgreSQL (the `runtime` fixture's two backends)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select

from edge import worklist
from edge.worklist import FormErrors, Registration
from edge.worklist_models import WorklistEntry
from imaging.persons import check_character
from storage import identity
from storage import service as tenancy
from storage.errors import NotFound, NotPermitted
from storage.models import AuditRecord
from tests.dicomdata import ct_instance

BODY = "53082819900101002"  # Lancang county, born 1990-01-01, 17th digit even: female
RESIDENT = BODY + check_character(BODY)


def _wrong_check(number: str) -> str:
    return number[:17] + next(c for c in "0123456789X" if c != number[17])


@pytest.fixture
def desk(runtime):
    """勐朗镇 (MLZ) with its modalities DR01 and US01, a desk user, a specialist; another township."""
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="MLZ", name="勐朗镇卫生院", level="township")
        tenancy.add_institution(session=session, code="NFX", name="糯福乡卫生院", level="township")
        tenancy.add_node(session=session, ae_title="DR01", institution_code="MLZ", can="store,query")
        tenancy.add_node(session=session, ae_title="US01", institution_code="MLZ", can="store,query")
        tenancy.add_node(session=session, ae_title="NF_DR", institution_code="NFX", can="store,query")
        for username, role, code in (("desk", "radiographer", "MLZ"), ("li", "specialist", "MLZ"),
                                     ("niu", "radiographer", "NFX")):
            identity.add_user(session=session, username=username, role=role, institution_code=code,
                              password="password-1")
    return runtime


def _principal(runtime, username: str):
    with runtime.db.scope(readonly=True) as session:
        return identity.principal_for(identity.get_user(session=session, username=username))


def _register(runtime, username: str = "desk", **fields) -> WorklistEntry:
    values = dict(family_name="张", given_name="秀英", sex="F", birth_date="1990-01-01", resident_id=RESIDENT,
                  phone="138 0000 1234", modality="DX", procedure_code="DX01", station_ae="DR01")
    values.update(fields)
    with runtime.db.scope() as session:
        entry = worklist.register(session=session, principal=_principal(runtime, username),
                                  registration=Registration(**values), source="127.0.0.1")
        session.expunge(entry)
        return entry


def _refused(runtime, **fields) -> dict[str, str]:
    with pytest.raises(FormErrors) as caught:
        _register(runtime, **fields)
    assert caught.value.status == 422
    return caught.value.errors


# -- validation -------------------------------------------------------------------------------


def test_a_bad_id_number_is_refused_beside_its_field_with_the_reason(desk):
    assert "校验位不符" in _refused(desk, resident_id=_wrong_check(RESIDENT))["resident_id"]
    assert "18位" in _refused(desk, resident_id="5308281990010100")["resident_id"]
    assert "出生日期无效" in _refused(desk, resident_id=(b := "53082819901301002") + check_character(b))["resident_id"]


def test_the_id_numbers_birth_date_and_sex_must_agree_with_the_form(desk):
    mismatch = _refused(desk, birth_date="1990-01-02")["resident_id"]
    assert "1990-01-01" in mismatch and "与所填出生日期不符" in mismatch and "does not match the birth date" in mismatch
    assert "性别与所选性别不符" in _refused(desk, sex="M")["resident_id"]


def test_every_problem_of_a_form_is_reported_at_once_each_at_its_field(desk):
    errors = _refused(desk, given_name="", sex="", birth_date="2990-01-01", resident_id="", phone="12345",
                      modality="DX", procedure_code="US01", station_ae="NF_DR", risk_colour="blue",
                      scheduled_date=(date.today() + timedelta(days=400)).isoformat())
    assert set(errors) == {"given_name", "sex", "birth_date", "phone", "procedure_code", "station_ae", "risk_colour",
                           "scheduled_date"}
    assert all(" / " in message for message in errors.values())  # Chinese first, English beside
    assert "请填写名字" in errors["given_name"] and "in the future" in errors["birth_date"]
    assert "未在本机构登记" in errors["station_ae"]  # another township's modality is not ours
    assert "请填写出生日期" in _refused(desk, birth_date="", resident_id="")["birth_date"]


def test_pinyin_is_generated_for_the_modalities_or_typed_when_it_cannot_be(desk):
    assert worklist.pinyin_of("秀英", surname=False) == "Xiuying"
    assert worklist.pinyin_of("吕", surname=True) == "Lyu"  # ü as YU, as on passports
    assert worklist.pinyin_of("单", surname=True) == "Shan" and worklist.pinyin_of("欧阳", surname=True) == "Ouyang"
    assert worklist.pinyin_of("𠈌", surname=False) is None
    assert "请填写拼音" in _refused(desk, given_name="𠈌")["pinyin"]
    assert _register(desk, family_name="", given_name="娜倮", resident_id="").name_pinyin == "^Naluo"
    typed = _register(desk, family_name="乐", given_name="𠈌", pinyin="yue^ying", resident_id="")
    assert (typed.family_name, typed.given_name, typed.name_pinyin) == ("乐", "𠈌", "Yue^Ying")
    assert "用 ^ 分隔" in _refused(desk, pinyin="Zhang Xiuying")["pinyin"]


# -- what a registration becomes ---------------------------------------------------------------


def test_a_registration_is_a_scheduled_step_with_ids_and_priority(desk):
    entry = _register(desk, birth_date="", sex="", risk_colour="red", procedure_code="US01", modality="US",
                      station_ae="US01")
    assert (entry.birth_date, entry.sex) == (date(1990, 1, 1), "F")  # read from the ID number
    assert entry.name_pinyin == "Zhang^Xiuying" and entry.phone == "13800001234"
    assert entry.priority == 0 and entry.status == "scheduled" and entry.registered_by == "desk"
    assert entry.procedure == "产科超声 Obstetric ultrasound" and entry.station_ae == "US01"
    assert entry.study_instance_uid.startswith("2.25.") and len(entry.study_instance_uid) <= 64
    assert entry.accession_number.endswith(f"{entry.id:06d}") and len(entry.accession_number) <= 16
    assert entry.patient_id == f"MLZ-{entry.id:06d}"
    again = _register(desk, procedure_code="DX01", urgent=False)  # the same person, another exam
    assert again.patient_id == entry.patient_id and again.priority == 1
    assert _register(desk, urgent=True).priority == 0
    assert _register(desk, resident_id="", patient_id="MZ2026-77").patient_id == "MZ2026-77"


def test_where_patient_ids_are_id_numbers_the_id_number_is_the_patient_id(desk):
    with desk.db.scope() as session:
        tenancy.set_institution_details(session=session, code="MLZ", patient_ids_are_resident_ids=True)
    assert _register(desk).patient_id == RESIDENT
    assert "请留空" in _refused(desk, patient_id="P9")["patient_id"]


def test_the_day_list_shows_the_institutions_own_entries_and_images_received(desk):
    entry = _register(desk)
    _register(desk, username="niu", station_ae="NF_DR")
    with desk.db.scope(readonly=True) as session:
        mlz = tenancy.get_institution(session=session, code="MLZ").id
    from imaging.service import Ingestor

    ingestor = Ingestor(desk.db, desk.store)
    ingestor.ingest(ct_instance(study_uid=entry.study_instance_uid, patient_id=entry.patient_id), institution_id=mlz,
                    source="DR01")
    ingestor.close()
    with desk.db.scope(readonly=True) as session:
        rows = worklist.day_list(session=session, principal=_principal(desk, "desk"), day=worklist.localtime_today())
    assert [(r.entry.accession_number, r.instances) for r in rows] == [(entry.accession_number, 1)]


# -- who may, and the audit trail --------------------------------------------------------------


def test_registrations_and_cancellations_are_audited_and_only_desk_staff_make_them(desk):
    entry = _register(desk)
    with pytest.raises(NotPermitted):
        _register(desk, username="li")
    with desk.db.scope() as session, pytest.raises(NotFound):  # another township's registration
        worklist.cancel(session=session, principal=_principal(desk, "niu"), entry_id=entry.id)
    with desk.db.scope() as session:
        worklist.cancel(session=session, principal=_principal(desk, "desk"), entry_id=entry.id, source="127.0.0.1")
    with desk.db.scope(readonly=True) as session:
        records = session.scalars(select(AuditRecord).where(AuditRecord.action.like("worklist.%"))
                                  .order_by(AuditRecord.seq)).all()
        assert session.get(WorklistEntry, entry.id).status == "cancelled"
    assert [(r.action, r.actor, r.institution, r.object_id, r.outcome) for r in records] == [
        ("worklist.register", "desk", "MLZ", entry.accession_number, "ok"),
        ("worklist.cancel", "desk", "MLZ", entry.accession_number, "ok")]
    detail = records[0].detail
    assert detail["patient_id"] == entry.patient_id and detail["study"] == entry.study_instance_uid
    assert detail["resident_id"] == "530828********" + RESIDENT[-4:]  # masked: the trail is read by many
    assert records[0].source == "127.0.0.1" and RESIDENT not in str(detail)
