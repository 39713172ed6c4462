"""Pregnancy risk colours (2017 规范), gestational age, who may see and do what, the audit
trail, referrals with their record and transport state machine, and the 上转/下转 counts.

Service tests run on SQLite and PostgreSQL (the `runtime` fixture's two backends)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select

from maternal import referrals, service
from maternal.criteria import CRITERIA, COLOURS, Grade, by_colour, grade_of
from maternal.models import Pregnancy
from storage import access
from storage.errors import Conflict, Invalid, NotFound, NotPermitted
from storage.models import AccessGrant, AuditRecord, Institution
from storage.types import utcnow
from tests.maternal.maternal_world import build, principal

TODAY = date(2026, 11, 20)
LMP = date(2026, 6, 8)  # 165 days before TODAY: 23+4


# -- colours and GA: pure rules ----------------------------------------------------------------


def test_the_highest_colour_applies_and_purple_combines():
    assert grade_of(["G0"]).colour == "green"
    assert grade_of(["Y1.1"]).colour == "yellow"
    assert grade_of(["Y1.1", "Y3.1", "O1.1"]).colour == "orange"  # age ≥40 outranks twins
    assert grade_of(["O3.7", "R2.2", "Y1.6"]).colour == "red"
    assert grade_of(["P2"]).colour == "purple"  # syphilis alone
    both = grade_of(["O3.7", "P3", "Y1.1"])  # severe pre-eclampsia with HIV
    assert (both.colour, both.level, both.infectious, both.colours) == ("orange+purple", "orange", True, ("orange", "purple"))
    assert both.headline == "purple"  # consult urgency: red > purple > orange
    assert grade_of(["R1.1", "P4"]).headline == "red"
    assert "橙色 较高风险" in both.label and "紫色 传染性疾病" in both.label
    for colour in ("green", "red", "purple", "yellow+purple", "red+purple"):
        assert Grade.parse(colour).colour == colour


@pytest.mark.parametrize("codes, message", [
    ([], "至少选择一项"), (["G0", "Y1.1"], "G0 cannot be chosen"), (["Y1.1", "X9"], "unknown criteria: X9")])
def test_a_grading_must_choose_sensibly(codes, message):
    with pytest.raises(Invalid, match=message):
        grade_of(codes)


def test_the_criteria_table_covers_every_colour_with_unique_codes():
    groups = by_colour()
    assert set(groups) == set(COLOURS) and all(groups[c] for c in COLOURS)
    assert {"Y1.1", "Y1.6", "Y3.1", "O1.1", "O1.2", "O3.7", "R1.1", "R2.2", "P1", "P2", "P3", "P4"} <= set(CRITERIA)
    assert all(c.zh and c.en and c.code.startswith(c.colour[0].upper()) for c in CRITERIA.values())
    with pytest.raises(Invalid):
        Grade.parse("orange+red")


def test_gestational_age_from_lmp_or_edd():
    assert str(service.gestational_age(lmp=LMP, on=TODAY)) == "23+4"
    assert str(service.gestational_age(lmp=date(2026, 6, 1), on=date(2026, 11, 19))) == "24+3"
    edd = LMP + timedelta(days=280)
    assert service.gestational_age(edd=edd, on=TODAY).days == 165  # LMP = EDD - 280 days
    assert service.gestational_age(lmp=LMP, edd=edd + timedelta(days=10), on=TODAY).days == 165  # LMP first
    assert service.gestational_age(on=TODAY) is None
    assert service.gestational_age(lmp=TODAY, on=TODAY - timedelta(days=1)) is None
    ended = Pregnancy(lmp=LMP, edd=edd, status="delivered", ended_on=LMP + timedelta(days=273))
    assert str(service.ga_of(ended, TODAY + timedelta(days=200))) == "39+0"  # frozen at delivery
    assert service.postpartum_days(ended, ended.ended_on + timedelta(days=5)) == 5


# -- the world --------------------------------------------------------------------------------


@pytest.fixture
def world(runtime):
    return build(runtime)


def _register(runtime, username: str, patient_pk: int, **kw) -> int:
    with runtime.db.scope() as session:
        return service.register(session=session, principal=principal(runtime, username), patient_pk=patient_pk,
                                lmp=kw.pop("lmp", LMP), on=TODAY, **kw).id


def _grade(runtime, username: str, pregnancy_id: int, codes: list[str], on: date = TODAY, note: str = ""):
    with runtime.db.scope() as session:
        return service.grade(session=session, principal=principal(runtime, username), pregnancy_id=pregnancy_id,
                             criteria=codes, note=note, on=on).id


def _refer(runtime, username: str, pregnancy_id: int, to: str, **kw) -> int:
    with runtime.db.scope() as session:
        return referrals.create(session=session, principal=principal(runtime, username), pregnancy_id=pregnancy_id,
                                to_code=to, key_findings=kw.pop("key_findings", "血压160/110，尿蛋白++"),
                                on=kw.pop("on", TODAY), **kw).id


def _move(runtime, username: str, referral_id: int, status: str, reason: str = ""):
    with runtime.db.scope() as session:
        return referrals.move(session=session, principal=principal(runtime, username), referral_id=referral_id,
                              to_status=status, reason=reason).transport_status


def _audit(runtime, action: str) -> list[AuditRecord]:
    with runtime.db.scope(readonly=True) as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq)))


# -- pregnancies and grading ------------------------------------------------------------------


def test_a_pregnancy_belongs_to_the_person_or_else_to_the_record(runtime, world):
    linked = _register(runtime, "ma", world.patient_pk)
    solo = _register(runtime, "ma", world.solo_pk, lmp=None, edd=date(2027, 3, 1), gravida=2, para=1)
    with runtime.db.scope(readonly=True) as session:
        a, b = session.get(Pregnancy, linked), session.get(Pregnancy, solo)
        assert a.person_id is not None and a.patient_pk is None
        assert (b.person_id, b.patient_pk, b.lmp, b.edd, b.gravida, b.para) == (None, world.solo_pk, None,
                                                                                  date(2027, 3, 1), 2, 1)
        assert a.edd == LMP + timedelta(days=280) and a.institution_id == world.institutions["TA"]
        # Her record at the other township finds the same pregnancy (one person).
        assert [p.id for p in service.of_patient(session, patient_pk=world.tb_patient_pk)] == [linked]
    with pytest.raises(Conflict, match="already has an ongoing pregnancy"):  # asked from her TB record
        _register(runtime, "niu", world.tb_patient_pk)
    for bad, message in (({"lmp": None}, "LMP or the EDD"), ({"lmp": TODAY + timedelta(days=1)}, "future"),
                         ({"gravida": 1, "para": 1}, "para below gravida")):
        with pytest.raises(Invalid, match=message):
            _register(runtime, "ma", world.solo_pk, **bad)
    assert [r.detail["patient"] for r in _audit(runtime, "pregnancy.create")] == [world.patient_pk, world.solo_pk]


def test_grading_keeps_every_grading_and_the_newest_is_current(runtime, world):
    pid = _register(runtime, "ma", world.patient_pk)
    with runtime.db.scope(readonly=True) as session:
        assert service.current_grade(session, pregnancy_id=pid) is None
    _grade(runtime, "ma", pid, ["Y1.1"])
    _grade(runtime, "li", pid, ["O3.7", "P2", "Y1.1"], on=TODAY + timedelta(days=7))
    with runtime.db.scope(readonly=True) as session:
        rows = service.gradings(session, pregnancy_id=pid)
        assert [service.grade_of_row(g).colour for g in rows] == ["orange+purple", "yellow"]
        assert [(g.graded_by.username, g.institution.code, g.criteria) for g in rows] == [
            ("li", "TA", ["O3.7", "P2", "Y1.1"]), ("ma", "TA", ["Y1.1"])]
        assert [g.ga_days for g in rows] == [172, 165]
        assert service.current_grade(session, pregnancy_id=pid).colour == "orange+purple"
        # The colour follows the woman: asked from her record at TB by someone who sees it there.
        found = service.colour_for_patient(session, principal=principal(runtime, "niu"),
                                           patient_pk=world.tb_patient_pk, on=TODAY)
        assert found.colour == "orange+purple" and found.headline == "purple"
        assert service.colour_for_patient(session, principal=principal(runtime, "niu"), patient_pk=world.other_pk,
                                          on=TODAY) is None
    with pytest.raises(Invalid, match="describe the “other” criterion"):
        _grade(runtime, "ma", pid, ["Y2.11"])
    _grade(runtime, "ma", pid, ["Y2.11"], note="甲状腺结节")
    graded = _audit(runtime, "pregnancy.grade")
    assert [(r.actor, r.detail["colour"], r.detail["criteria"]) for r in graded] == [
        ("ma", "yellow", ["Y1.1"]), ("li", "orange+purple", ["O3.7", "P2", "Y1.1"]), ("ma", "yellow", ["Y2.11"])]
    assert all(r.object_id == str(pid) and r.institution == "TA" for r in graded)


def test_another_township_cannot_see_grade_or_refer(runtime, world):
    pid = _register(runtime, "ma", world.solo_pk)  # 王芳 has images at TA only
    for username in ("niu", "tbadmin", "wang"):  # another township, its admin, the county before any referral
        with runtime.db.scope() as session:
            who = principal(runtime, username)
            with pytest.raises(NotFound, match="pregnancy not found"):
                service.get(session=session, principal=who, pregnancy_id=pid)
            with pytest.raises(NotFound):
                service.grade(session=session, principal=who, pregnancy_id=pid, criteria=["Y1.1"], on=TODAY)
            with pytest.raises(NotFound):
                referrals.create(session=session, principal=who, pregnancy_id=pid, to_code="COUNTY", key_findings="x")
            assert service.visible_of_patient(session, principal=who, patient_pk=world.solo_pk) == []
    with pytest.raises(NotPermitted, match="only staff who see one of the patient's studies"):
        _register(runtime, "niu", world.solo_pk)
    # Admins over the managing institution read, but do not grade.
    for admin in ("taadmin", "boss"):
        with runtime.db.scope() as session:
            assert service.get(session=session, principal=principal(runtime, admin), pregnancy_id=pid).id == pid
        with pytest.raises(NotPermitted, match="only staff of the managing or a referred-to institution grade"):
            _grade(runtime, admin, pid, ["Y1.1"])


def test_seeing_her_images_elsewhere_shows_the_pregnancy_but_does_not_let_you_grade(runtime, world):
    pid = _register(runtime, "ma", world.patient_pk)
    with runtime.db.scope() as session:
        assert service.get(session=session, principal=principal(runtime, "niu"), pregnancy_id=pid).id == pid
    with pytest.raises(NotPermitted, match="grade"):
        _grade(runtime, "niu", pid, ["Y1.1"])
    with pytest.raises(NotPermitted, match="refer"):
        _refer(runtime, "niu", pid, "COUNTY")


def test_grading_closes_42_days_after_the_pregnancy_ends(runtime, world):
    pid = _register(runtime, "ma", world.patient_pk)
    delivered = TODAY + timedelta(days=100)
    with runtime.db.scope() as session:
        service.close(session=session, principal=principal(runtime, "li"), pregnancy_id=pid, status="delivered",
                      ended_on=delivered, on=delivered)
    with runtime.db.scope() as session:
        with pytest.raises(Conflict, match="already closed"):
            service.close(session=session, principal=principal(runtime, "li"), pregnancy_id=pid, status="ended",
                          ended_on=delivered, on=delivered)
    _grade(runtime, "ma", pid, ["O3.9"], on=delivered + timedelta(days=42))  # 产褥感染, day 42: still open
    with pytest.raises(Conflict, match="42 days"):
        _grade(runtime, "ma", pid, ["G0"], on=delivered + timedelta(days=43))
    with pytest.raises(Conflict, match="42 days"):
        _refer(runtime, "ma", pid, "COUNTY", on=delivered + timedelta(days=43))
    with runtime.db.scope(readonly=True) as session:
        assert service.gradings(session, pregnancy_id=pid)[0].ga_days is None  # postpartum: no GA
        assert service.colour_for_patient(session, principal=principal(runtime, "ma"), patient_pk=world.patient_pk,
                                          on=delivered + timedelta(days=42)).colour == "orange"
        assert service.colour_for_patient(session, principal=principal(runtime, "ma"), patient_pk=world.patient_pk,
                                          on=delivered + timedelta(days=43)) is None
    assert _audit(runtime, "pregnancy.close")[0].detail == {"status": "delivered", "on": str(delivered)}


# -- referrals ---------------------------------------------------------------------------------


def test_direction_follows_the_tree(runtime, world):
    with runtime.db.scope(readonly=True) as session:
        inst = {code: session.get(Institution, i) for code, i in world.institutions.items()}
        assert referrals.direction_between(session, inst["TA"], inst["COUNTY"]) == "up"
        assert referrals.direction_between(session, inst["TA"], inst["CITY"]) == "up"
        assert referrals.direction_between(session, inst["TA"], inst["SH"]) == "up"  # the partner hospital
        assert referrals.direction_between(session, inst["CITY"], inst["TB"]) == "down"
        for source, target in (("TA", "TB"), ("TA", "TA")):
            with pytest.raises(Invalid):
                referrals.direction_between(session, inst[source], inst[target])
        assert [(i.code, d) for i, d in referrals.targets(session, principal(runtime, "ma"))] == [
            ("CITY", "up"), ("COUNTY", "up"), ("SH", "up")]


def test_an_up_referral_carries_the_record_and_shares_only_what_the_referrer_sees(runtime, world):
    pid = _register(runtime, "ma", world.patient_pk)
    _grade(runtime, "ma", pid, ["Y1.1"])
    _grade(runtime, "li", pid, ["O3.7", "P2"])
    with pytest.raises(NotPermitted, match="may not see"):  # her TB study: ma does not see it
        _refer(runtime, "ma", pid, "COUNTY", study_uids=[world.tb_study])
    with pytest.raises(Invalid, match="not this woman's"):
        _refer(runtime, "ma", pid, "COUNTY", study_uids=[world.solo_study])
    with pytest.raises(Invalid, match="follow-up instructions are for down-referrals"):
        _refer(runtime, "ma", pid, "COUNTY", follow_up_instructions="x")
    with pytest.raises(Invalid, match="neither above nor below"):
        _refer(runtime, "ma", pid, "TB")
    rid = _refer(runtime, "ma", pid, "COUNTY", study_uids=world.ta_studies[:1])
    with pytest.raises(Conflict, match="still open"):
        _refer(runtime, "li", pid, "COUNTY")
    _grade(runtime, "wang", pid, ["R2.2"])  # the county, now referred to, grades; the record stays as it was
    with runtime.db.scope(readonly=True) as session:
        referral = referrals.get(session=session, principal=principal(runtime, "wang"), referral_id=rid)
        record = referral.record
        assert (referral.direction, referral.transport_status, referral.to_institution.code) == ("up", "pending", "COUNTY")
        assert record["colour"] == "orange+purple" and record["ga"] == "23+4"
        assert [(c["colour"], c["by"], c["institution"]) for c in record["colours"]] == [
            ("orange+purple", "李医生", "勐朗镇卫生院"), ("yellow", "马技师", "勐朗镇卫生院")]
        assert record["colours"][0]["labels"][0].startswith("重度子痫前期")
        assert record["key_findings"] == "血压160/110，尿蛋白++"
        assert [s["uid"] for s in record["studies"]] == world.ta_studies[:1]
        assert record["patient"]["patient_id"] == "P001"
        # The receiving institution may now open the image sent with her, and only that one.
        wang = principal(runtime, "wang")
        ta = world.institutions["TA"]
        assert access.can_see_study(session, wang, institution_id=ta, study_uid=world.ta_studies[0])
        assert not access.can_see_study(session, wang, institution_id=ta, study_uid=world.ta_studies[1])
        assert service.current_grade(session, pregnancy_id=pid).colour == "red"
    made = _audit(runtime, "referral.create")[0]
    assert (made.actor, made.object_id, made.detail["direction"], made.detail["to"], made.detail["colour"]) == (
        "ma", str(rid), "up", "COUNTY", "orange+purple")


def test_a_down_referral_needs_follow_up_instructions(runtime, world):
    pid = _register(runtime, "ma", world.patient_pk)
    _grade(runtime, "ma", pid, ["O1.1"])
    up = _refer(runtime, "ma", pid, "COUNTY")
    _move(runtime, "zhou", up, "arrived")
    with pytest.raises(Invalid, match="follow-up instructions"):
        _refer(runtime, "wang", pid, "TA")
    with pytest.raises(Invalid, match="past"):
        _refer(runtime, "wang", pid, "TA", follow_up_instructions="每周测血压", follow_up_on=TODAY - timedelta(days=1))
    down = _refer(runtime, "wang", pid, "TA", follow_up_instructions="每周测血压，一周后复诊",
                  follow_up_on=TODAY + timedelta(days=7), key_findings="血压已控制")
    with runtime.db.scope(readonly=True) as session:
        referral = referrals.get(session=session, principal=principal(runtime, "ma"), referral_id=down)
        assert (referral.direction, referral.from_institution.code, referral.to_institution.code) == ("down", "COUNTY", "TA")
        assert (referral.follow_up_instructions, referral.follow_up_on) == ("每周测血压，一周后复诊", TODAY + timedelta(days=7))


def test_the_transport_state_machine_and_its_refusals(runtime, world):
    pid = _register(runtime, "ma", world.solo_pk)
    rid = _refer(runtime, "ma", pid, "COUNTY", study_uids=[world.solo_study])
    with pytest.raises(NotPermitted, match="only the referring institution marks the patient in transit"):
        _move(runtime, "wang", rid, "in_transit")
    with pytest.raises(NotPermitted, match="only the receiving institution marks arrival"):
        _move(runtime, "ma", rid, "arrived")
    with pytest.raises(NotFound, match="referral not found"):  # another township does not even see it
        _move(runtime, "niu", rid, "arrived")
    with pytest.raises(NotPermitted):  # the county's admin reads it, but staff move it
        _move(runtime, "boss", rid, "arrived")
    with pytest.raises(Invalid, match="transport status must be one of"):
        _move(runtime, "ma", rid, "flying")
    assert _move(runtime, "ma", rid, "in_transit") == "in_transit"
    with pytest.raises(Conflict, match="cannot go from in_transit to pending"):
        _move(runtime, "ma", rid, "pending")
    assert _move(runtime, "zhou", rid, "arrived") == "arrived"
    with pytest.raises(Conflict, match="no longer changes"):
        _move(runtime, "ma", rid, "cancelled", reason="x")
    # A second one to the city, cancelled: a reason is required, and the images' grant ends.
    city = _refer(runtime, "li", pid, "CITY", study_uids=[world.solo_study])
    with pytest.raises(Invalid, match="reason"):
        _move(runtime, "li", city, "cancelled")
    assert _move(runtime, "chen", city, "cancelled", reason="无床位 / no bed") == "cancelled"
    with runtime.db.scope(readonly=True) as session:
        grants = session.scalars(select(AccessGrant).where(AccessGrant.source == f"referral:{city}")).all()
        assert len(grants) == 1 and grants[0].revoked_at is not None
        assert [(e.from_status, e.to_status, e.user.username) for e in referrals.events(session, referral_id=rid)] == [
            (None, "pending", "ma"), ("pending", "in_transit", "ma"), ("in_transit", "arrived", "zhou")]
        assert referrals.get(session=session, principal=principal(runtime, "li"), referral_id=city).cancel_reason == \
            "无床位 / no bed"
    moved = _audit(runtime, "referral.transport")
    assert [(r.actor, r.detail["from"], r.detail["to"]) for r in moved] == [
        ("ma", "pending", "in_transit"), ("zhou", "in_transit", "arrived"), ("chen", "pending", "cancelled")]


def test_referral_counts_people_referred_up_and_down(runtime, world):
    pid = _register(runtime, "ma", world.patient_pk)
    solo = _register(runtime, "ma", world.solo_pk)
    up = _refer(runtime, "ma", pid, "COUNTY")
    _refer(runtime, "ma", solo, "COUNTY")
    cancelled = _refer(runtime, "ma", solo, "SH")
    _move(runtime, "ma", cancelled, "cancelled", reason="家属拒绝 / family declined")
    _move(runtime, "zhou", up, "arrived")
    _refer(runtime, "wang", pid, "TA", follow_up_instructions="产后访视")
    since = utcnow() - timedelta(days=1)
    ids = world.institutions
    with runtime.db.scope(readonly=True) as session:
        assert referrals.referral_counts(session, institution_ids={ids["TA"]}, since=since) == {"up": 2, "down": 1}
        assert referrals.referral_counts(session, institution_ids=access.subtree_ids(session, ids["CITY"]),
                                         since=since) == {"up": 2, "down": 1}  # both ends inside: counted once
        assert referrals.referral_counts(session, institution_ids={ids["TB"]}, since=since) == {"up": 0, "down": 0}
        assert referrals.referral_counts(session, institution_ids={ids["TA"]},
                                         since=utcnow() + timedelta(minutes=1)) == {"up": 0, "down": 0}
