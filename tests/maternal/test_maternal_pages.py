"""The maternal pages and JSON API server side (TestClient, signed-in cookie or bearer token):
register, grade, refer, move the transport status; refusals shown beside the form and audited
as denied; every GET route of the domain audits its read. The Chromium walk is
test_maternal_browser.py."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from maternal import service
from storage import identity
from storage.models import AuditRecord
from tests.maternal.maternal_world import PASSWORD, build
from web.app import create_app


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


@pytest.fixture
def world(runtime):
    return build(runtime)


def _client(runtime, username: str) -> TestClient:
    client = TestClient(create_app(runtime.settings))
    client.__enter__()
    answer = client.post("/login", data={"username": username, "password": PASSWORD}, follow_redirects=False)
    assert answer.status_code == 303
    return client


def _token(runtime, username: str) -> dict:
    with runtime.db.scope() as session:
        secret = identity.issue_token(session=session, user=identity.get_user(session=session, username=username))[0]
    return {"Authorization": f"Bearer {secret}"}


def _csrf(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)"', html).group(1)


def _records(runtime, action: str | None = None, outcome: str | None = None) -> int:
    with runtime.db.scope(readonly=True) as session:
        statement = select(func.count()).select_from(AuditRecord)
        if action:
            statement = statement.where(AuditRecord.action == action)
        if outcome:
            statement = statement.where(AuditRecord.outcome == outcome)
        return session.scalar(statement)


def _register_and_grade(runtime, world, client: TestClient, patient_pk: int) -> int:
    page = client.get(f"/patients/{patient_pk}/pregnancies")
    assert page.status_code == 200 and 'id="register-pregnancy"' in page.text
    lmp = service.today() - timedelta(days=165)
    made = client.post(f"/patients/{patient_pk}/pregnancies", follow_redirects=False,
                       data={"lmp": lmp.isoformat(), "gravida": "2", "para": "1", "csrf_token": _csrf(page.text)})
    assert made.status_code == 303
    pregnancy_id = int(made.headers["location"].rsplit("/", 1)[1])
    page = client.get(f"/pregnancies/{pregnancy_id}")
    assert "未评估" in page.text and "孕 23+4 周" in page.text and "G2P1" in page.text
    graded = client.post(f"/pregnancies/{pregnancy_id}/gradings", follow_redirects=False,
                         data={"criteria": ["O3.7", "P2"], "note": "血压160/110", "csrf_token": _csrf(page.text)})
    assert graded.status_code == 303
    return pregnancy_id


def test_register_grade_refer_and_arrive_through_the_pages(runtime, world):
    ma = _client(runtime, "ma")
    timeline = ma.get(f"/patients/{world.patient_pk}")
    assert f'href="/patients/{world.patient_pk}/pregnancies"' in timeline.text  # the link on her timeline
    pid = _register_and_grade(runtime, world, ma, world.patient_pk)
    page = ma.get(f"/pregnancies/{pid}")
    head = page.text.split('id="grade"')[0]
    assert 'data-colour="orange+purple"' in head and "橙色 较高风险" in head and "紫色 传染性疾病" in head
    assert "O3.7" in page.text and "马技师" in page.text and "血压160/110" in page.text
    # A refusal shows beside the grading form, with the 422 status, and changes nothing.
    refused = ma.post(f"/pregnancies/{pid}/gradings", data={"criteria": ["G0", "Y1.1"], "csrf_token": _csrf(page.text)})
    assert refused.status_code == 422 and 'class="error form-error"' in refused.text and "G0" in refused.text
    form = ma.get(f"/pregnancies/{pid}/referrals/new")
    assert form.status_code == 200 and 'value="COUNTY"' in form.text and 'value="TB"' not in form.text
    assert world.ta_studies[0] in form.text and world.tb_study not in form.text  # only what ma may see
    sent = ma.post(f"/pregnancies/{pid}/referrals", follow_redirects=False,
                   data={"to": "COUNTY", "key_findings": "重度子痫前期，建议上级医院分娩", "studies": world.ta_studies[:1],
                         "csrf_token": _csrf(form.text)})
    assert sent.status_code == 303
    rid = int(sent.headers["location"].rsplit("/", 1)[1])
    mine = ma.get(f"/referrals/{rid}")
    assert "上转" in mine.text and "重度子痫前期，建议上级医院分娩" in mine.text and "孕 23+4 周" in mine.text
    assert 'value="in_transit"' in mine.text and 'value="arrived"' not in mine.text
    refused = ma.post(f"/referrals/{rid}/transport", data={"status": "arrived", "csrf_token": _csrf(mine.text)})
    assert refused.status_code == 403 and "仅接收机构可确认到达" in refused.text
    zhou = _client(runtime, "zhou")
    theirs = zhou.get(f"/referrals/{rid}")
    assert 'value="arrived"' in theirs.text and 'value="in_transit"' not in theirs.text
    assert f'href="/studies/{world.ta_studies[0]}"' in theirs.text  # the image went with her
    assert zhou.post(f"/referrals/{rid}/transport", follow_redirects=False,
                     data={"status": "arrived", "csrf_token": _csrf(theirs.text)}).status_code == 303
    assert "已到达" in zhou.get(f"/referrals/{rid}").text
    listed = zhou.get("/referrals?side=in")
    assert f'data-referral="{rid}"' in listed.text and "张秀英" in listed.text
    assert re.search(r"<strong>1</strong> 上转人次", listed.text)
    assert zhou.get(f"/pregnancies/{pid}").status_code == 200  # the county, referred to, sees the pregnancy


def test_another_township_is_refused_and_the_refusals_are_audited(runtime, world):
    ma = _client(runtime, "ma")
    pid = _register_and_grade(runtime, world, ma, world.solo_pk)
    niu = _client(runtime, "niu")
    assert niu.get(f"/pregnancies/{pid}").status_code == 404
    assert niu.get(f"/patients/{world.solo_pk}/pregnancies").status_code == 404
    assert niu.get(f"/pregnancies/{pid}/referrals/new").status_code == 404
    assert _records(runtime, "pregnancy.view", "denied") == 1 and _records(runtime, "pregnancy.list", "denied") == 1
    assert _records(runtime, "referral.form", "denied") == 1
    form = _client(runtime, "taadmin").get(f"/pregnancies/{pid}/referrals/new")  # admins read, staff refer
    assert form.status_code == 200 and 'id="referral-form"' not in form.text and "Only staff" in form.text
    token = _csrf(niu.get("/referrals").text)
    assert niu.post(f"/pregnancies/{pid}/gradings", data={"criteria": ["Y1.1"], "csrf_token": token}).status_code == 404
    api = TestClient(create_app(runtime.settings))
    with api:
        answer = api.post(f"/api/pregnancies/{pid}/referrals", headers=_token(runtime, "niu"),
                          json={"to": "COUNTY", "key_findings": "x"})
        assert answer.status_code == 404 and answer.json()["error"] == "not_found"
        answer = api.post(f"/api/pregnancies/{pid}/gradings", headers=_token(runtime, "taadmin"),
                          json={"criteria": ["Y1.1"]})
        assert answer.status_code == 403 and "grade" in answer.json()["detail"]
    assert _records(runtime, "pregnancy.grade", "denied") == 2 and _records(runtime, "referral.create", "denied") == 1
    assert _records(runtime, "pregnancy.grade", "ok") == 1  # ma's, only


def test_the_json_api(runtime, world):
    with TestClient(create_app(runtime.settings)) as api:
        ma, zhou = _token(runtime, "ma"), _token(runtime, "zhou")
        criteria = api.get("/api/maternal/criteria", headers=ma).json()
        assert {"code": "P3", "colour": "purple", "zh": "HIV感染及艾滋病", "en": "HIV infection and AIDS",
                "needs_note": False} in criteria
        lmp = (service.today() - timedelta(days=200)).isoformat()
        made = api.post(f"/api/patients/{world.patient_pk}/pregnancies", headers=ma, json={"lmp": lmp})
        assert made.status_code == 201 and made.json()["ga_today"] == "28+4" and made.json()["colour"] is None
        pid = made.json()["id"]
        assert api.post(f"/api/pregnancies/{pid}/gradings", headers=ma, json={"criteria": ["Y1.1"]}).json()["colour"] == "yellow"
        graded = api.post(f"/api/pregnancies/{pid}/gradings", headers=ma, json={"criteria": ["R2.2", "P1"]}).json()
        assert (graded["colour"], graded["ga"]) == ("red+purple", "28+4")
        whole = api.get(f"/api/pregnancies/{pid}", headers=ma).json()
        assert whole["colour"] == "red+purple" and [g["colour"] for g in whole["gradings"]] == ["red+purple", "yellow"]
        sent = api.post(f"/api/pregnancies/{pid}/referrals", headers=ma,
                        json={"to": "COUNTY", "key_findings": "胎盘早剥", "study_uids": world.ta_studies})
        assert sent.status_code == 201 and sent.json()["direction"] == "up"
        rid = sent.json()["id"]
        assert api.post(f"/api/referrals/{rid}/transport", headers=zhou, json={"status": "in_transit"}).status_code == 403
        assert api.post(f"/api/referrals/{rid}/transport", headers=ma, json={"status": "in_transit"}).json()[
            "transport_status"] == "in_transit"
        assert api.post(f"/api/referrals/{rid}/transport", headers=zhou, json={"status": "arrived"}).json()[
            "transport_status"] == "arrived"
        assert api.post(f"/api/referrals/{rid}/transport", headers=zhou,
                        json={"status": "cancelled", "reason": "x"}).status_code == 409
        assert api.get("/api/referrals/counts", headers=zhou).json() == {"up": 1, "down": 0}
        assert [r["id"] for r in api.get("/api/referrals?side=in", headers=zhou).json()] == [rid]
        assert api.get("/api/referrals?side=in", headers=ma).json() == []
        assert [p["id"] for p in api.get(f"/api/patients/{world.tb_patient_pk}/pregnancies",
                                         headers=_token(runtime, "niu")).json()] == [pid]


NO_PATIENT_DATA = {"/api/maternal/criteria": "the criteria table", "/api/referrals/counts": "two numbers"}


def test_every_maternal_get_route_audits_its_read(runtime, world):
    """Each GET route of maternal/ is either free of patient data (listed above) or writes an
    audit record when someone who may see it reads it."""
    from tests.web.test_audit_coverage import get_routes

    app = create_app(runtime.settings)
    ours = {p for p in get_routes(app) if "pregnanc" in p or "referral" in p or p.startswith("/api/maternal")}
    assert len(ours) == 11
    with TestClient(app) as client:
        assert client.post("/login", data={"username": "ma", "password": PASSWORD},
                           follow_redirects=False).status_code == 303
        pid = _register_and_grade(runtime, world, client, world.patient_pk)
        page = client.get(f"/pregnancies/{pid}/referrals/new")
        sent = client.post(f"/pregnancies/{pid}/referrals", follow_redirects=False,
                           data={"to": "COUNTY", "key_findings": "x", "csrf_token": _csrf(page.text)})
        values = {"patient_pk": str(world.patient_pk), "pregnancy_id": str(pid),
                  "referral_id": sent.headers["location"].rsplit("/", 1)[1]}
        missing = []
        for template in sorted(ours - set(NO_PATIENT_DATA)):
            before = _records(runtime)
            answer = client.get(re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], template))
            assert answer.status_code == 200, (template, answer.text[:200])
            if _records(runtime) == before:
                missing.append(template)
        assert missing == []
