"""A read and a live consult end to end through the API: a township requests, the county
coordinator triages and schedules, a county specialist reports, a city senior co-signs,
the township acknowledges. Authorization follows the grants; signatures are real."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from consult import reports
from storage.localtime import zone as local_zone

LOCAL = local_zone()
from imaging.service import Ingestor
from storage import service as tenancy
from storage.models import AuditRecord
from tests.cli import run_cli
from tests.conftest import settings_env
from tests.dicomdata import ct_instance
from storage import identity
from web.app import create_app

PEOPLE = {  # username: (role, institution, display name)
    "li": ("radiographer", "TOWN", "李技师"),
    "zhou": ("coordinator", "COUNTY", "周协调"),
    "wang": ("specialist", "COUNTY", "王医生"),
    "sun": ("specialist", "COUNTY", "孙医生"),
    "chen": ("specialist", "CITY", "陈主任"),
}


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


@pytest.fixture
def world(runtime):
    tokens = {}
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="SH", name="上海对口医院", level="partner")
        tenancy.add_institution(session=session, code="CITY", name="普洱市人民医院", level="city")
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county", parent_code="CITY")
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township",
                                       parent_code="COUNTY")
        town_id = town.id
        for username, (role, code, name) in PEOPLE.items():
            user = identity.add_user(session=session, username=username, role=role, institution_code=code,
                                     password="password-1", display_name=name)
            tokens[username] = identity.issue_token(session=session, user=user)[0]
        reports.init_authority(session=session, name="普洱市影像会诊CA", organisation="普洱市卫健委",
                               password="ca-password-123")
        for username in ("wang", "chen"):
            reports.issue_credential(session=session, user=identity.get_user(session=session, username=username),
                                     ca_password="ca-password-123", signing_password=f"sign-{username}")
    ingestor = Ingestor(runtime.db, runtime.store)
    study = generate_uid()
    ingestor.ingest(ct_instance(study_uid=study), institution_id=town_id, source="test")
    ingestor.close()
    return tokens, study


@pytest.fixture
def api(runtime, world):
    tokens, _ = world
    with TestClient(create_app(runtime.settings)) as client:
        def call(method, user, path, **kwargs):
            return client.request(method, path, headers={"Authorization": f"Bearer {tokens[user]}"}, **kwargs)
        call.client = client
        yield call


def ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json()


def test_read_consult_end_to_end(api, world, runtime, tmp_path):
    _, study = world
    created = ok(api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study], "clinical_question": "咳嗽两周，请协助诊断",
        "priority": "urgent", "risk_colour": "red"}), 201)
    cid = created["id"]
    assert created["status"] == "requested" and created["direction"] == "up"
    assert [c["id"] for c in ok(api("GET", "zhou", "/api/consults?scope=incoming"))] == [cid]

    # Before assignment nobody at the county sees the images.
    assert api("GET", "wang", f"/api/studies/{study}").status_code == 404
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    assert api("POST", "wang", f"/api/consults/{cid}/accept").status_code in (403, 409)
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": "wang", "reviewer": "chen"}))
    assert api("GET", "wang", f"/api/studies/{study}").status_code == 200
    assert api("GET", "chen", f"/api/studies/{study}").status_code == 200
    assert api("GET", "sun", f"/api/studies/{study}").status_code == 404      # not assigned
    assert api("GET", "zhou", f"/api/studies/{study}").status_code == 404     # triages, does not read
    assert api("GET", "sun", f"/api/consults/{cid}").status_code == 200      # same institution: sees the request
    with runtime.db.scope(readonly=True) as session:  # 13.6: not audited on the previous code
        read = session.scalars(select(AuditRecord).where(AuditRecord.action == "consult.read")).all()
    assert [(r.actor, r.object_id) for r in read][-1] == ("sun", str(cid))

    assert [c["id"] for c in ok(api("GET", "wang", "/api/consults"))] == [cid]
    draft = {"template": "ct_head", "findings": "右下肺见斑片状高密度影。", "impression": "右下肺炎",
             "recommendation": "抗感染治疗后复查", "fields": {"midline_shift_mm": 0}}
    assert ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json=draft))["status"] == "in_progress"
    assert api("PUT", "sun", f"/api/consults/{cid}/report/draft", json=draft).status_code == 403
    assert api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "wrong"}).status_code == 403
    signed = ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))
    assert signed["status"] == "reported" and signed["versions"][0]["kind"] == "preliminary"

    # The senior sends it back once, then co-signs the corrected report.
    ok(api("POST", "chen", f"/api/consults/{cid}/report/return", json={"comments": "请补充纵隔情况"}))
    draft["findings"] += "纵隔未见肿大淋巴结。"
    ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json=draft))
    ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))
    final = ok(api("POST", "chen", f"/api/consults/{cid}/report/cosign", json={"password": "sign-chen"}))
    assert final["status"] == "returned"
    assert [v["kind"] for v in final["versions"]] == ["preliminary", "preliminary", "final"]
    assert final["versions"][-1]["signers"] == ["王医生", "陈主任"]
    assert final["versions"][0]["content"]["findings"] != final["versions"][-1]["content"]["findings"]

    # The township gets it back: inbox, notification, the signed PDF, then acknowledges.
    inbox = ok(api("GET", "li", "/api/consults?scope=outgoing"))
    assert inbox[0]["status"] == "returned"
    assert any(n["kind"] == "report.final" for n in ok(api("GET", "li", "/api/me/notifications")))
    detail = ok(api("GET", "li", f"/api/consults/{cid}"))
    assert detail["draft"] is None  # signed versions only
    pdf = api("GET", "li", detail["versions"][-1]["pdf_url"]).content
    assert pdf.startswith(b"%PDF")
    with runtime.db.scope(readonly=True) as session:
        verdict = reports.verify_upload(session=session, pdf=pdf)
    assert verdict["ok"] and [s["name"] for s in verdict["signers"]] == ["王医生", "陈主任"]
    assert ok(api("POST", "li", f"/api/consults/{cid}/acknowledge"))["status"] == "acknowledged"
    # The public verification page says the same for an uploaded copy (no login needed).
    page = api.client.post("/verify", files={"file": ("report.pdf", pdf, "application/pdf")})
    assert "报告完整" in page.text and "陈主任" in page.text
    flipped = bytearray(pdf)
    flipped[len(pdf) // 2] ^= 0x20
    page = api.client.post("/verify", files={"file": ("report.pdf", bytes(flipped), "application/pdf")})
    assert "报告无效" in page.text

    # The patient's cloud-film link shows the returned report once the PIN is entered.
    share = ok(api("POST", "li", f"/api/studies/{study}/shares", json={"days": 7}), 201)
    token = share["url"].rstrip("/").rsplit("/", 1)[-1]
    patient = TestClient(api.client.app)
    locked = patient.get(f"/f/{token}")
    assert locked.status_code == 200 and "右下肺炎" not in locked.text
    patient.post(f"/f/{token}/unlock", data={"pin": share["pin"]})
    view = patient.get(f"/f/{token}/view")
    assert "右下肺炎" in view.text and f"/f/{token}/report.pdf" in view.text
    assert patient.get(f"/f/{token}/report.pdf").content == pdf

    # A signed report is never edited; corrections are signed addenda.
    assert api("PUT", "wang", f"/api/consults/{cid}/report/draft", json=draft).status_code == 409
    added = ok(api("POST", "wang", f"/api/consults/{cid}/report/addendum",
                   json={"text": "更正：病灶位于右下肺背段。", "password": "sign-wang"}))
    assert [v["kind"] for v in added["versions"]][-1] == "addendum"

    # `lancang report verify` names the signers, and refuses an altered copy.
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    env = settings_env(runtime.settings)
    good = run_cli(env, "report", "verify", str(path), check=False)
    assert good.returncode == 0 and "王医生" in good.stdout and "陈主任" in good.stdout, good.stderr
    altered = bytearray(pdf)
    altered[len(pdf) // 3] ^= 0x01
    path.write_bytes(bytes(altered))
    bad = run_cli(env, "report", "verify", str(path), check=False)
    assert bad.returncode == 1 and "NOT VALID" in bad.stderr
    # 16.4: it says what failed; a changed byte is not a certificate problem.
    said = bad.stdout + bad.stderr
    assert "content altered" in said or "damaged" in said, said
    assert "trusted CA" not in said, said


def test_live_consult_scheduling_and_double_booking(api, world, runtime):
    _, study = world
    monday = (datetime.now(LOCAL) + timedelta(days=7 - datetime.now(LOCAL).weekday())).date()
    ok(api("PUT", "wang", "/api/me/availability", json={"windows": [[0, "08:00", "12:00"], [2, "14:00", "17:30"]]}))
    ids = []
    for question in ("孕32周，胎儿生长受限？", "孕28周，胎盘低置"):
        created = ok(api("POST", "li", "/api/consults", json={
            "kind": "live", "target": "COUNTY", "study_uids": [study], "clinical_question": question,
            "priority": "routine", "risk_colour": "orange"}), 201)
        ok(api("POST", "zhou", f"/api/consults/{created['id']}/accept"))
        ids.append(created["id"])
    slot = {"specialist": "wang", "start": f"{monday}T09:00:00", "minutes": 30}
    booked = ok(api("POST", "zhou", f"/api/consults/{ids[0]}/schedule", json=slot))
    assert booked["status"] == "scheduled" and {b["role"] for b in booked["bookings"]} == {
        "specialist", "presenter", "coordinator"}
    assert booked["bookings"][0]["starts_at"].startswith(f"{monday}T01:00")  # 09:00 Beijing = 01:00 UTC
    clash = api("POST", "zhou", f"/api/consults/{ids[1]}/schedule", json={**slot, "start": f"{monday}T09:15:00"})
    assert clash.status_code == 409
    outside = api("POST", "zhou", f"/api/consults/{ids[1]}/schedule", json={**slot, "start": f"{monday}T13:00:00"})
    assert outside.status_code == 409 and "not available" in outside.json()["detail"]
    too_long = api("POST", "zhou", f"/api/consults/{ids[1]}/schedule", json={**slot, "minutes": 90})
    assert too_long.status_code == 422
    free = ok(api("GET", "zhou", f"/api/specialists/free?start={monday}T10:00:00&minutes=30"))
    assert [p["username"] for p in free] == ["wang"]
    ok(api("POST", "zhou", f"/api/consults/{ids[1]}/schedule", json={**slot, "start": f"{monday}T10:00:00"}))
    # Rescheduling frees the old slot.
    ok(api("POST", "zhou", f"/api/consults/{ids[0]}/schedule", json={**slot, "start": f"{monday}T11:00:00"}))
    ok(api("POST", "zhou", f"/api/consults/{ids[1]}/schedule", json={**slot, "start": f"{monday}T09:00:00"}))
    ics = api("GET", "wang", "/api/me/calendar.ics")
    assert ics.status_code == 200 and ics.text.count("BEGIN:VEVENT") == 2 and "远程会诊" in ics.text
    # 16.15: calendar text leaves the platform; it carries no clinical question.
    from icalendar import Calendar

    events = [c for c in Calendar.from_ical(ics.content).walk() if c.name == "VEVENT"]
    texts = [str(e.get("summary", "")) + str(e.get("description", "")) for e in events]
    assert not [t for t in texts if "孕32周" in t or "孕28周" in t], texts
    # 16.15: a calendar app subscribes without a login, by a secret URL that can be replaced.
    first = ok(api("POST", "wang", "/api/me/calendar/feed"))["url"]
    path = first.split("://", 1)[1].split("/", 1)[1]
    subscribed = api.client.get("/" + path)  # no Authorization header
    assert subscribed.status_code == 200 and subscribed.text.count("BEGIN:VEVENT") == 2
    assert "孕32周" not in subscribed.text and "孕28周" not in subscribed.text
    second = ok(api("POST", "wang", "/api/me/calendar/feed"))["url"]
    assert second != first
    assert api.client.get("/" + path).status_code == 404  # the replaced URL stops at once
    assert api.client.get("/" + second.split("://", 1)[1].split("/", 1)[1]).status_code == 200
    assert api.client.get("/calendar/feeds/not-a-secret.ics").status_code == 404
    board = ok(api("GET", "zhou", "/api/dashboard"))
    assert board["queue_by_colour"]["orange"] == 2 and sum(board["queue_by_priority"].values()) == 2


def test_routing_and_refusals(api, world):
    _, study = world
    bad_target = api("POST", "li", "/api/consults", json={"kind": "read", "target": "TOWN", "study_uids": [study],
                                                          "clinical_question": "x"})
    assert bad_target.status_code == 422
    partner = ok(api("POST", "li", "/api/consults", json={"kind": "read", "target": "SH", "study_uids": [study],
                                                          "clinical_question": "疑难病例"}), 201)
    assert partner["direction"] == "up"
    not_mine = api("POST", "wang", "/api/consults", json={"kind": "read", "target": "CITY", "study_uids": [study],
                                                          "clinical_question": "x"})
    assert not_mine.status_code == 404  # the county cannot refer a study it cannot see
    declined = ok(api("POST", "li", "/api/consults", json={"kind": "read", "target": "COUNTY",
                                                           "study_uids": [study], "clinical_question": "x"}), 201)
    assert api("POST", "zhou", f"/api/consults/{declined['id']}/decline", json={"reason": ""}).status_code == 422
    assert ok(api("POST", "zhou", f"/api/consults/{declined['id']}/decline",
                  json={"reason": "图像质量不足，请重新拍摄"}))["status"] == "declined"
    assert api("POST", "zhou", f"/api/consults/{declined['id']}/accept").status_code == 409
    # 16.20: refusals people read are Chinese first, English beside.
    refusals = [bad_target, api("POST", "zhou", f"/api/consults/{declined['id']}/accept"),
                api("POST", "zhou", f"/api/consults/{declined['id']}/decline", json={"reason": ""}),
                api("POST", "li", "/api/consults", json={"kind": "phone", "target": "COUNTY", "study_uids": [study],
                                                         "clinical_question": "x"}),
                api("GET", "li", "/api/consults/999999")]
    for answer in refusals:
        detail = answer.json()["detail"]
        assert "\u4e00" <= detail[0] <= "\u9fff" and " / " in detail, detail
    history = ok(api("GET", "li", f"/api/consults/{declined['id']}"))["events"]
    assert all("reader=" not in (e["note"] or "") for e in history)
    assert api("GET", "chen", f"/api/consults/{declined['id']}").status_code == 404
