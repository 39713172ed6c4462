"""The study list, the study page, the person's timeline and 互认, server side (TestClient with
a signed-in cookie): scope, pinyin search, cursor paging, filters, masking, downloads,
decisions counted on the dashboard, admin linking. The browser walk is test_workspace_browser.py."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from imaging import derive
from imaging.models import Patient
from imaging.service import Ingestor
from storage import identity
from storage import service as tenancy
from storage.models import AuditRecord
from tests.dicomdata import ct_instance
from web.app import create_app
from workspace import service

RESIDENT = "11010519491231002X"  # valid; born 1949-12-31, female
PEOPLE = {"li": ("radiographer", "TOWN"), "ma": ("radiographer", "OTHER"), "wang": ("specialist", "COUNTY"),
          "zhou": ("coordinator", "COUNTY"), "admin": ("admin", "COUNTY")}


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


@pytest.fixture
def world(runtime):
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county")
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township",
                                       parent_code="COUNTY")
        other = tenancy.add_institution(session=session, code="OTHER", name="另一镇卫生院", level="township",
                                        parent_code="COUNTY")
        for username, (role, code) in PEOPLE.items():
            identity.add_user(session=session, username=username, role=role, institution_code=code,
                              password="password-1", display_name=username.upper())
        town_id, other_id = town.id, other.id
    ingestor = Ingestor(runtime.db, runtime.store)
    studies = {}
    for name, pid, day, modality in (("张^秀英", "T-1", "20261101", "CT"), ("李^梅", "T-2", "20261102", "DX"),
                                     ("王^芳", "T-3", "20261103", "US")):
        uid = generate_uid()
        result = ingestor.ingest(ct_instance(study_uid=uid, patient_name=name, patient_id=pid, study_date=day,
                                             modality=modality, birth_date="19491231", body_part="CHEST",
                                             other_ids=(("RESIDENT_ID_CN", RESIDENT),) if pid == "T-1" else ()),
                                 institution_id=town_id, source="test")
        studies[pid] = uid
        if pid == "T-1":
            derive.derive_series(runtime.db, runtime.store, result.series_pk)
    elsewhere = generate_uid()
    ingestor.ingest(ct_instance(study_uid=elsewhere, patient_name="张^秀英", patient_id="O-9", study_date="20260501",
                                birth_date="19491231", other_ids=(("RESIDENT_ID_CN", RESIDENT),)),
                    institution_id=other_id, source="test")
    studies["O-9"] = elsewhere
    ingestor.close()
    return studies


def _client(runtime, username):
    client = TestClient(create_app(runtime.settings))
    client.__enter__()
    answer = client.post("/login", data={"username": username, "password": "password-1"}, follow_redirects=False)
    assert answer.status_code == 303
    return client


def _csrf(page_text: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)"', page_text).group(1)


def _listed(html: str) -> list[str]:
    return re.findall(r'data-href="/studies/([0-9.]+)"', html)


def test_each_role_lands_on_its_daily_list(runtime, world):
    for username, expected in (("li", "/studies?today=1"), ("wang", "/consults"), ("zhou", "/consults"),
                               ("admin", "/studies")):
        client = _client(runtime, username)
        assert client.get("/", follow_redirects=False).headers["location"] == expected
        client.__exit__(None, None, None)


def test_the_list_shows_only_what_the_user_may_see_newest_first(runtime, world):
    li = _client(runtime, "li")
    page = li.get("/studies")
    assert page.status_code == 200
    assert _listed(page.text) == [world["T-3"], world["T-2"], world["T-1"]]  # not OTHER's study
    admin = _client(runtime, "admin")
    assert _listed(admin.get("/studies").text) == [world["T-3"], world["T-2"], world["T-1"], world["O-9"]]
    # A specialist of the county sees nothing of the townships until a consult grants it.
    assert _listed(_client(runtime, "wang").get("/studies").text) == []
    with runtime.db.scope(readonly=True) as session:
        listed = session.scalars(select(AuditRecord).where(AuditRecord.action == "study.list")).all()
    assert any(world["T-1"] in r.object_id for r in listed)


@pytest.mark.parametrize("text", ["zhangxiuying", "zxy", "ZXY", "张秀英", "zhang", "T-1", "A001"])
def test_pinyin_initials_chinese_and_id_search(runtime, world, text):
    found = _listed(_client(runtime, "li").get("/studies", params={"q": text}).text)
    if text == "A001":  # every test study has accession A001
        assert len(found) == 3
    else:
        assert found == [world["T-1"]]


def test_filters_and_a_bad_date_is_said_beside_the_filters(runtime, world):
    li = _client(runtime, "li")
    assert _listed(li.get("/studies", params={"modality": "DX"}).text) == [world["T-2"]]
    assert _listed(li.get("/studies", params={"from": "2026-11-02", "to": "2026-11-02"}).text) == [world["T-2"]]
    assert _listed(li.get("/studies", params={"report": "none"}).text) == [world["T-3"], world["T-2"], world["T-1"]]
    assert _listed(li.get("/studies", params={"report": "final"}).text) == []
    bad = li.get("/studies", params={"from": "1 Nov"})
    assert bad.status_code == 400 and 'id="filter-error"' in bad.text and "YYYY-MM-DD" in bad.text
    assert li.get("/studies", params={"cursor": "!!"}).status_code == 400


def test_cursor_pages_do_not_repeat_or_skip(runtime, world):
    with runtime.db.scope(readonly=True) as session:
        principal = identity.principal_for(identity.get_user(session=session, username="admin"))
        seen, cursor = [], ""
        while True:
            page = service.search(session, principal, service.StudyFilter(), cursor=cursor, limit=1)
            seen += [row.uid for row in page.rows]
            if not page.next_cursor:
                break
            cursor = page.next_cursor
    assert seen == [world["T-3"], world["T-2"], world["T-1"], world["O-9"]]
    li = _client(runtime, "li")
    first = li.get("/studies", params={"q": "A001"})
    assert 'rel="next"' not in first.text  # 3 rows fit one page


def test_resident_id_is_masked_except_for_the_desk_of_the_performing_institution(runtime, world):
    assert RESIDENT in _client(runtime, "li").get("/studies").text
    admin_page = _client(runtime, "admin").get("/studies").text
    assert RESIDENT not in admin_page and "110105********002X" in admin_page
    assert _listed(_client(runtime, "li").get("/studies", params={"q": RESIDENT}).text) == [world["T-1"]]


def test_study_page_actions_thumbnail_and_download(runtime, world):
    li = _client(runtime, "li")
    uid = world["T-1"]
    page = li.get(f"/studies/{uid}")
    assert page.status_code == 200
    for action in (f"/studies/{uid}/view", f"/consults/new?study={uid}", f"/studies/{uid}/film",
                   f"/studies/{uid}/download"):
        assert action in page.text
    thumb = li.get(f"/studies/{uid}/thumbnail.jpg")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert li.get(f"/studies/{world['T-2']}/thumbnail.jpg").status_code == 404  # not derived yet
    download = li.get(f"/studies/{uid}/download")
    assert download.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert names[0] == "README.txt" and any(n.endswith("IM0001.dcm") for n in names)
    # Another township's study: the same 404 as a study that does not exist, and audited as denied.
    for path in (f"/studies/{world['O-9']}", f"/studies/{world['O-9']}/download",
                 f"/studies/{world['O-9']}/thumbnail.jpg"):
        assert li.get(path).status_code == 404
    with runtime.db.scope(readonly=True) as session:
        denied = session.scalars(select(AuditRecord).where(AuditRecord.object_id == world["O-9"],
                                                           AuditRecord.outcome == "denied")).all()
    assert {r.action for r in denied} >= {"study.page", "study.download"}


def test_admin_sees_who_opened_the_study(runtime, world):
    _client(runtime, "li").get(f"/studies/{world['T-1']}")
    page = _client(runtime, "admin").get(f"/studies/{world['T-1']}").text
    assert "访问记录" in page and "li" in page and "study.page" in page
    assert "访问记录" not in _client(runtime, "li").get(f"/studies/{world['T-1']}").text


def _grant(runtime, uid, username):
    from storage.models import AccessGrant, User
    with runtime.db.scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        session.add(AccessGrant(study_instance_uid=uid, grantee_user_id=user.id, source="test"))


def test_recognition_rules_errors_and_dashboard(runtime, world):
    uid = world["T-1"]
    # A township's own radiographer: no form; the county specialist without a grant: 404.
    assert 'action="/studies/' + uid + '/recognition"' not in _client(runtime, "li").get(f"/studies/{uid}").text
    wang = _client(runtime, "wang")
    page = wang.get(f"/studies/{uid}")
    assert page.status_code == 404
    _grant(runtime, uid, "wang")
    page = wang.get(f"/studies/{uid}")
    assert f'action="/studies/{uid}/recognition"' in page.text
    token = _csrf(page.text)
    missing = wang.post(f"/studies/{uid}/recognition", data={"decision": "not_recognised", "csrf_token": token})
    assert missing.status_code == 422 and 'id="recognition-error"' in missing.text and "原因" in missing.text
    other = wang.post(f"/studies/{uid}/recognition",
                      data={"decision": "not_recognised", "reason": "other", "csrf_token": token})
    assert other.status_code == 422 and "其他" in other.text
    done = wang.post(f"/studies/{uid}/recognition", data={"decision": "not_recognised", "reason": "condition_changed",
                                                          "reason_text": "症状加重", "csrf_token": token},
                     follow_redirects=False)
    assert done.status_code == 303
    shown = wang.get(f"/studies/{uid}").text
    assert "不互认 Not recognised" in shown and "病情变化" in shown and "症状加重" in shown
    zhou = _client(runtime, "zhou")
    board = zhou.get("/dashboard").text
    section = board[board.index('id="recognition"'):]
    assert re.search(r"<strong>1</strong><br>决定", section) and re.search(r"<strong>0</strong><br>避免重复", section)
    assert "病情变化" in board  # the reasons chart
    with runtime.db.scope(readonly=True) as session:
        record = session.scalars(select(AuditRecord).where(AuditRecord.action == "study.recognition")).one()
    assert record.actor == "wang" and record.detail["reason"] == "condition_changed"


def test_timeline_follows_access_not_the_link(runtime, world):
    with runtime.db.scope(readonly=True) as session:
        town_record = session.scalar(select(Patient.id).where(Patient.patient_id == "T-1"))
    li = _client(runtime, "li")
    timeline = li.get(f"/patients/{town_record}")
    assert timeline.status_code == 200
    assert world["T-1"] in timeline.text and world["O-9"] not in timeline.text  # linked, but not visible to li
    assert "另一镇卫生院" not in timeline.text  # the other record is not even named
    admin = _client(runtime, "admin").get(f"/patients/{town_record}")
    assert world["O-9"] in admin.text and "身份证号 Resident ID" in admin.text
    with runtime.db.scope(readonly=True) as session:
        other_record = session.scalar(select(Patient.id).where(Patient.patient_id == "O-9"))
    assert li.get(f"/patients/{other_record}").status_code == 404


def test_admin_links_and_unlinks_from_the_timeline(runtime, world):
    with runtime.db.scope(readonly=True) as session:
        pks = dict(session.execute(select(Patient.patient_id, Patient.id)).all())
    admin = _client(runtime, "admin")
    page = admin.get(f"/patients/{pks['T-1']}").text
    token = _csrf(page)
    no_reason = admin.post(f"/patients/{pks['O-9']}/unlink", data={"reason": "", "csrf_token": token})
    assert no_reason.status_code == 422
    assert admin.post(f"/patients/{pks['O-9']}/unlink", data={"reason": "登记错误", "csrf_token": token},
                      follow_redirects=False).status_code == 303
    li = _client(runtime, "li")
    refused = li.post("/patients/link", data={"back": pks["T-1"], "records": [pks["T-1"], pks["O-9"]],
                                              "reason": "x", "csrf_token": _csrf(li.get("/studies").text)})
    assert refused.status_code == 403
    relinked = admin.post("/patients/link", data={"back": pks["T-1"], "records": [pks["T-1"], pks["O-9"]],
                                                  "reason": "核对身份证", "csrf_token": token}, follow_redirects=False)
    assert relinked.status_code == 303
    with runtime.db.scope(readonly=True) as session:
        persons = set(session.scalars(select(Patient.person_id).where(Patient.id.in_([pks["T-1"], pks["O-9"]]))))
        actions = [r.action for r in session.scalars(select(AuditRecord).where(AuditRecord.action.like("patient.%link"),
                                                                               AuditRecord.actor == "admin"))]
    assert len(persons) == 1 and None not in persons
    assert actions == ["patient.unlink", "patient.link", "patient.link"]
