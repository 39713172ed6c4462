"""One person across institutions: resident ID validation (GB 11643-1999, ISO 7064 MOD 11-2),
linking at ingest on trusted identifiers only, manual link/unlink by an admin (audited),
look-alike suggestions that never merge, and pinyin keys of names."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from imaging import persons, pinyin
from imaging.models import Patient, Person
from imaging.service import Ingestor
from storage import identity
from storage import service as tenancy
from storage.errors import Invalid, NotPermitted
from storage.models import AuditRecord, Institution
from tests.dicomdata import ct_instance

# A public example number: born 1949-12-31, 17th digit 2 (even: female), check character X.
VALID = "11010519491231002X"
BORN, SEX = "19491231", "F"


@pytest.mark.parametrize("number, birth, sex, expected", [
    (VALID, BORN, SEX, None),
    (VALID.lower(), "", "", None),                                  # x as typed on a phone
    ("110105194912310021", BORN, SEX, "校验位"),                     # wrong check digit
    (VALID, "19491230", SEX, "出生日期"),                            # birth date differs from the images
    (VALID, BORN, "M", "性别"),                                      # sex differs from the images
    ("11010519491331002" + persons.check_character("11010519491331002"), "", "", "无效"),  # month 13
    ("11010519491231002", "", "", "18位"),                           # 17 characters
    ("1101051949123100XX", "", "", "18位"),
])
def test_resident_id_validation(number, birth, sex, expected):
    problem = persons.resident_id_problem(number, birth_date=birth, sex=sex)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_check_character_matches_the_standard_weights():
    # ISO 7064 MOD 11-2: weights 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2, characters 1 0 X 9 8 7 6 5 4 3 2.
    assert persons.WEIGHTS == (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    assert persons.check_character("11010519491231002") == "X"
    assert persons.mask(VALID) == "110105********002X"


def test_pinyin_keys():
    assert pinyin.keys("张^秀英") == ("zhangxiuying", "zxy")
    assert pinyin.keys("", "Zhang^Xiuying") == ("zhangxiuying", "zx")
    assert pinyin.query_key("Zhang Xiu-ying ") == "zhangxiuying"


def _world(runtime):
    with runtime.db.scope() as session:
        county = tenancy.add_institution(session=session, code="COUNTY", name="县医院", level="county")
        town_a = tenancy.add_institution(session=session, code="TA", name="甲镇", level="township",
                                         parent_code="COUNTY")
        town_b = tenancy.add_institution(session=session, code="TB", name="乙镇", level="township",
                                         parent_code="COUNTY")
        identity.add_user(session=session, username="admin", role="admin", institution_code="COUNTY",
                          password="password-1")
        identity.add_user(session=session, username="rad", role="radiographer", institution_code="TA",
                          password="password-1")
        return county.id, town_a.id, town_b.id


def _ingest(runtime, institution_id, **kwargs):
    ingestor = Ingestor(runtime.db, runtime.store)
    try:
        return ingestor.ingest(ct_instance(study_uid=generate_uid(), birth_date=BORN, sex=SEX, **kwargs),
                               institution_id=institution_id, source="test")
    finally:
        ingestor.close()


def _patients(runtime) -> dict[str, Patient]:
    with runtime.db.scope(readonly=True) as session:
        rows = session.scalars(select(Patient)).all()
        session.expunge_all()
        return {f"{p.institution_id}:{p.patient_id}": p for p in rows}


def test_two_townships_records_join_one_person_by_resident_id(runtime):
    _county, a, b = _world(runtime)
    _ingest(runtime, a, patient_id="A-7", other_ids=(("RESIDENT_ID_CN", VALID),))
    _ingest(runtime, b, patient_id="B-99", other_ids=(("RESIDENT_ID_CN", VALID.lower()),))
    found = _patients(runtime)
    first, second = found[f"{a}:A-7"], found[f"{b}:B-99"]
    assert first.person_id is not None and first.person_id == second.person_id
    assert first.link_source == "resident_id" and first.resident_id == VALID
    assert first.name_pinyin == "zhangxiuying" and first.name_initials == "zxy"
    with runtime.db.scope(readonly=True) as session:  # each automatic link is audited, once
        links = session.scalars(select(AuditRecord).where(AuditRecord.action == "patient.link")).all()
    assert [(r.actor, r.detail["by"]) for r in links] == [("test", "resident_id")] * 2
    _ingest(runtime, b, patient_id="B-99", other_ids=(("RESIDENT_ID_CN", VALID),))  # another study: no new link
    with runtime.db.scope(readonly=True) as session:
        assert len(session.scalars(select(AuditRecord).where(AuditRecord.action == "patient.link")).all()) == 2


@pytest.mark.parametrize("number, born", [("110105194912310021", BORN),   # wrong check digit
                                          (VALID, "19500101")])            # birth date mismatch
def test_an_untrusted_number_links_nobody(runtime, number, born):
    _county, a, b = _world(runtime)
    for institution, pid in ((a, "A-7"), (b, "B-99")):
        ingestor = Ingestor(runtime.db, runtime.store)
        ingestor.ingest(ct_instance(study_uid=generate_uid(), patient_id=pid, birth_date=born, sex=SEX,
                                    other_ids=(("RESIDENT_ID_CN", number),)), institution_id=institution,
                        source="test")
        ingestor.close()
    assert all(p.person_id is None for p in _patients(runtime).values())


def test_an_unconfigured_issuer_and_a_name_link_nobody(runtime):
    _county, a, b = _world(runtime)
    _ingest(runtime, a, patient_id="A-7", other_ids=(("SOME_HOSPITAL", VALID),))
    _ingest(runtime, b, patient_id="B-99")  # the same name, birth date and sex
    assert all(p.person_id is None for p in _patients(runtime).values())
    with runtime.db.scope(readonly=True) as session:
        groups = persons.suggestions(session, None)
    assert [sorted(p.patient_id for p in group) for group in groups] == [["A-7", "B-99"]]


def test_an_institution_whose_patient_ids_are_resident_ids(runtime):
    _county, a, b = _world(runtime)
    with runtime.db.scope() as session:
        session.get(Institution, a).patient_ids_are_resident_ids = True
    _ingest(runtime, a, patient_id=VALID)
    _ingest(runtime, b, patient_id="B-99", other_ids=(("居民身份证", VALID),))
    found = _patients(runtime)
    assert found[f"{a}:{VALID}"].person_id == found[f"{b}:B-99"].person_id is not None


def test_health_card_links(runtime):
    _county, a, b = _world(runtime)
    _ingest(runtime, a, patient_id="A-7", other_ids=(("EHC_CN", "EHC-5300-0001"),))
    _ingest(runtime, b, patient_id="B-99", other_ids=(("电子健康卡", "EHC-5300-0001"),))
    found = _patients(runtime)
    assert found[f"{a}:A-7"].person_id == found[f"{b}:B-99"].person_id is not None
    assert found[f"{a}:A-7"].link_source == "health_card"


def test_manual_link_and_unlink_need_an_admin_and_a_reason_and_are_audited(runtime):
    _county, a, b = _world(runtime)
    _ingest(runtime, a, patient_id="A-7")
    _ingest(runtime, b, patient_id="B-99")
    found = _patients(runtime)
    pks = [found[f"{a}:A-7"].id, found[f"{b}:B-99"].id]
    with runtime.db.scope() as session:
        admin = identity.principal_for(identity.get_user(session=session, username="admin"))
        rad = identity.principal_for(identity.get_user(session=session, username="rad"))
        with pytest.raises(NotPermitted):
            persons.link(session=session, principal=rad, patient_pks=pks, reason="same woman")
        with pytest.raises(Invalid):
            persons.link(session=session, principal=admin, patient_pks=pks, reason="  ")
        person_id = persons.link(session=session, principal=admin, patient_pks=pks, reason="身份证复印件核对一致")
    assert {p.person_id for p in _patients(runtime).values()} == {person_id}
    with runtime.db.scope() as session:
        persons.unlink(session=session, principal=admin, patient_pk=pks[1], reason="核对有误")
    after = _patients(runtime)
    assert after[f"{b}:B-99"].person_id is None and after[f"{b}:B-99"].link_source == "manual"
    with runtime.db.scope(readonly=True) as session:
        actions = [(r.action, r.detail.get("reason")) for r in session.scalars(
            select(AuditRecord).where(AuditRecord.action.like("patient.%")).order_by(AuditRecord.id))]
        assert session.scalar(select(Person.id).where(Person.id == person_id)) == person_id
    assert actions == [("patient.link", "身份证复印件核对一致")] * 2 + [("patient.unlink", "核对有误")]


def test_a_manual_unlink_survives_new_images(runtime):
    _county, a, b = _world(runtime)
    _ingest(runtime, a, patient_id="A-7", other_ids=(("RESIDENT_ID_CN", VALID),))
    _ingest(runtime, b, patient_id="B-99", other_ids=(("RESIDENT_ID_CN", VALID),))
    pk = _patients(runtime)[f"{b}:B-99"].id
    with runtime.db.scope() as session:
        admin = identity.principal_for(identity.get_user(session=session, username="admin"))
        persons.unlink(session=session, principal=admin, patient_pk=pk, reason="号码登记错误")
    _ingest(runtime, b, patient_id="B-99", other_ids=(("RESIDENT_ID_CN", VALID),))  # a new study
    assert _patients(runtime)[f"{b}:B-99"].person_id is None
