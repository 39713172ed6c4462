"""危重孕产妇 fast path and what the invitation carries (远程医疗服务管理规范（试行）, 2018).

An emergency consult (red or purple, or critical) skips the queue: the target's coordinators
and every on-duty specialist are told at once with a link into the room, which is open from
that moment with a seat for each; the first to take it owns it, the second is told who has
it; the response time is measured. The request carries reason, purpose, specialty, title,
case summary and a preferred time; the patient's informed consent is recorded with its
scanned form (or a guardian's, with the reason)."""

from __future__ import annotations

import threading
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from consult import rooms, service
from consult.models import Booking, ConsultRequest, Notification
from storage import identity
from storage.errors import Conflict
from storage.models import AuditRecord, User
from tests.consult.region import api, backend, ok, region, seed_region  # noqa: F401 (fixtures)
from web.app import create_app

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def emergency(api, study, **extra) -> dict:
    return api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study], "emergency": True, "risk_colour": "red",
        "clinical_question": "孕34周，突发腹痛伴阴道流血，胎心减慢", "history": "G2P1，重度子痫前期", **extra})


def test_an_emergency_tells_everyone_at_once_and_opens_the_room(api, runtime, region):
    created = ok(emergency(api, region["study"]), 201)
    assert created["emergency"] and created["kind"] == "live" and created["priority"] == "critical"
    minutes = (_dt(created["due_at"]) - _dt(created["created_at"])).total_seconds() / 60
    assert minutes == pytest.approx(runtime.settings.emergency_response_minutes)
    with runtime.db.scope(readonly=True) as session:
        notes = session.scalars(select(Notification).where(Notification.kind == "consult.emergency")).all()
        told = {session.get(User, n.user_id).username: n.link for n in notes}
        consult = session.get(ConsultRequest, created["id"])
        seats = {session.get(User, b.user_id).username: b.role for b in
                 session.scalars(select(Booking).where(Booking.consult_id == consult.id))}
        wang = identity.get_user(session=session, username="wang")
        door = rooms.door(session, consult, wang)
    # Coordinator and every on-duty specialist of the county; the link joins the room.
    assert told == {u: f"/consults/{created['id']}/room" for u in ("zhou", "wang", "sun")}
    assert seats == {"li": "presenter", "zhou": "coordinator", "wang": "specialist", "sun": "specialist"}
    assert door.state == "open"  # no booking, no acceptance needed: it is open now
    # The specialists told can see the images at once (they are about to look at them together).
    assert api("GET", "sun", f"/api/studies/{region['study']}").status_code == 200
    assert api("GET", "chen", f"/api/studies/{region['study']}").status_code == 404
    # It heads the county's board.
    ok(api("POST", "li", "/api/consults", json={"kind": "read", "target": "COUNTY", "study_uids": [region["study"]],
                                                "clinical_question": "常规", "priority": "urgent"}), 201)
    assert ok(api("GET", "zhou", "/api/consults?scope=incoming"))[0]["id"] == created["id"]


def test_an_emergency_needs_red_purple_or_critical(api, region):
    refused = emergency(api, region["study"], risk_colour="green")
    assert refused.status_code == 422 and "红色或紫色" in refused.json()["detail"]
    assert emergency(api, region["study"], risk_colour="purple").status_code == 201
    assert emergency(api, region["study"], risk_colour=None, priority="critical").status_code == 201


def test_the_first_to_take_it_owns_it(api, runtime, region):
    cid = ok(emergency(api, region["study"]), 201)["id"]
    assert api("POST", "li", f"/api/consults/{cid}/claim").status_code == 403     # the requester
    assert api("POST", "chen", f"/api/consults/{cid}/claim").status_code == 404   # not part of it
    taken = ok(api("POST", "wang", f"/api/consults/{cid}/claim"))
    assert taken["status"] == "accepted" and taken["reader"] == "wang" and taken["accepted_at"]
    late = api("POST", "sun", f"/api/consults/{cid}/claim")
    assert late.status_code == 409 and "王医生" in late.json()["detail"]
    # The room stays open for everyone invited while the owner reads.
    with runtime.db.scope(readonly=True) as session:
        sun = identity.get_user(session=session, username="sun")
        assert rooms.door(session, session.get(ConsultRequest, cid), sun).state == "open"
    # An ordinary consult cannot be claimed.
    plain = ok(api("POST", "li", "/api/consults", json={"kind": "read", "target": "COUNTY", "study_uids":
                                                        [region["study"]], "clinical_question": "常规"}), 201)["id"]
    assert api("POST", "wang", f"/api/consults/{plain}/claim").status_code == 403
    figures = ok(api("GET", "zhou", "/api/dashboard"))["emergency"]
    assert figures["count"] == 1 and figures["taken"] == 1 and figures["within_target"] == 1


@pytest.mark.parametrize("backend", ["servers"], indirect=True)
def test_two_specialists_taking_it_at_the_same_moment_one_wins(runtime, region):
    """On PostgreSQL, two transactions at once: the row lock lets one through, the other is
    told who has it."""
    with runtime.db.scope() as session:
        li = identity.get_user(session=session, username="li")
        cid = service.create(session=session, requester=li, kind="live", target_code="COUNTY",
                             study_uids=[region["study"]], clinical_question="胎盘早剥？", risk_colour="red",
                             emergency=True).id
    barrier, results = threading.Barrier(2), {}

    def take(username):
        try:
            with runtime.db.scope() as session:
                user = identity.get_user(session=session, username=username)
                barrier.wait()
                service.claim(session=session, consult_id=cid, user=user)
            results[username] = "won"
        except Conflict as exc:
            results[username] = str(exc)

    threads = [threading.Thread(target=take, args=(u,)) for u in ("wang", "sun")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(v == "won" for v in results.values()) == [False, True], results
    with runtime.db.scope(readonly=True) as session:
        consult = session.get(ConsultRequest, cid)
        winner = next(u for u, v in results.items() if v == "won")
        assert consult.reader.username == winner


def test_the_invitation_carries_what_the_rules_require(api, region):
    created = ok(api("POST", "li", "/api/consults", json={
        "kind": "live", "target": "COUNTY", "study_uids": [region["study"]], "clinical_question": "明确胎盘位置",
        "history": "孕28周，无痛性阴道流血", "invite_reason": "基层无法明确诊断", "specialty": "妇产科",
        "requested_title": "主任医师", "preferred_at": "2026-12-10T09:30:00"}), 201)
    assert created["invite_reason"] == "基层无法明确诊断" and created["specialty"] == "妇产科"
    assert created["requested_title"] == "主任医师"
    assert created["preferred_at"].startswith("2026-12-10T01:30:00")  # 09:30 Beijing time, kept in UTC


def test_consent_is_recorded_with_its_form_or_a_guardian_and_the_reason(api, runtime, region):
    cid = ok(emergency(api, region["study"]), 201)["id"]
    files = {"form": ("consent.pdf", PDF, "application/pdf")}
    row = ok(api("POST", "li", f"/api/consults/{cid}/consent", data={"signer": "patient",
                                                                     "obtained_at": "2026-12-04T10:00:00"},
                 files=files), 201)
    assert row["obtained_by"] == "li" and row["obtained_at"].startswith("2026-12-04T02:00:00")
    assert row["form_url"] and len(row["form_sha256"]) == 64
    form = api("GET", "zhou", row["form_url"])
    assert form.status_code == 200 and form.content == PDF and form.headers["content-type"] == "application/pdf"
    assert api("GET", "he", row["form_url"]).status_code == 404  # another township
    with runtime.db.scope(readonly=True) as session:
        actions = [r.action for r in session.scalars(select(AuditRecord).where(AuditRecord.object_id == str(cid)))]
    assert "consult.consent" in actions and "consult.consent.read" in actions

    proxy = api("POST", "li", f"/api/consults/{cid}/consent", data={"signer": "guardian", "signer_name": "王强",
                                                                    "relationship": "丈夫"})
    assert proxy.status_code == 422 and "原因" in proxy.json()["detail"]
    ok(api("POST", "li", f"/api/consults/{cid}/consent", data={
        "signer": "relative", "signer_name": "王强", "relationship": "丈夫",
        "reason_not_patient": "患者昏迷，无法签署"}), 201)
    text = api("POST", "li", f"/api/consults/{cid}/consent", data={"signer": "patient"},
               files={"form": ("x.pdf", b"not a pdf at all", "application/pdf")})
    assert text.status_code == 422 and "PDF" in text.json()["detail"]
    big = api("POST", "li", f"/api/consults/{cid}/consent", data={"signer": "patient"},
              files={"form": ("x.pdf", PDF + b"0" * (10 * 1024 * 1024), "application/pdf")})
    assert big.status_code == 413
    assert api("POST", "zhou", f"/api/consults/{cid}/consent", data={"signer": "patient"}).status_code == 403
    future = api("POST", "li", f"/api/consults/{cid}/consent", data={"signer": "patient",
                                                                     "obtained_at": "2099-01-01T00:00:00"})
    assert future.status_code == 422


def _dt(text):
    from datetime import datetime

    return datetime.fromisoformat(text)
