"""危急值: a reader flags a critical finding, the requesting township's on-duty staff are told,
a named person acknowledges with the action taken; unacknowledged it escalates to the
township's coordinators, then to the region's, each step audited, on schedule in a real
worker. The log has the fields hospitals keep and exports as CSV; the dashboard counts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from consult import critical, scheduling, service
from consult.models import CriticalFinding, Notification
from storage import identity
from storage.localtime import zone as local_zone
from storage.models import AuditRecord, User
from storage.types import utcnow
from tests.conftest import embedded_settings, settings_env
from tests.consult.region import api, backend, ok, region, seed_region  # noqa: F401 (fixtures)
from tests.consult.test_notify import Robot, robot, smtp  # noqa: F401 (fixtures)
from web.app import create_app


def assigned_consult(api, study) -> int:
    """A read from TOWN to COUNTY, read by wang, reviewed by chen (CITY)."""
    cid = ok(api("POST", "li", "/api/consults", json={"kind": "read", "target": "COUNTY", "study_uids": [study],
                                                      "clinical_question": "停经8周，腹痛，请会诊"}), 201)["id"]
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": "wang", "reviewer": "chen"}))
    return cid


def told(runtime, finding_id: int, kind: str) -> set[str]:
    with runtime.db.scope(readonly=True) as session:
        rows = session.scalars(select(Notification).where(Notification.link == f"/critical/{finding_id}",
                                                          Notification.kind == kind)).all()
        return {session.get(User, r.user_id).username for r in rows}


def flag(api, study, cid, user="wang", category="异位妊娠破裂"):
    return api("POST", user, "/api/critical", json={"study_uid": study, "consult_id": cid, "category": category,
                                                    "statement": "盆腔大量积液，考虑异位妊娠破裂出血"})


def test_a_flag_reaches_the_township_and_a_named_person_acknowledges(api, runtime, region):
    study = region["study"]
    cid = assigned_consult(api, study)
    finding = ok(flag(api, study, cid), 201)
    assert finding["institution"] == "TOWN" and finding["level"] == 0
    # Nobody at the township keeps a roster: everyone there is on duty and told at once.
    assert told(runtime, finding["id"], "critical.flagged") == {"li", "ma"}
    assert finding["steps"][0]["told"] == ["li", "ma"]

    # Only the requesting institution acknowledges; another township does not even see it.
    assert api("POST", "he", f"/api/critical/{finding['id']}/acknowledge", json={"action": "转诊"}).status_code == 404
    assert api("POST", "wang", f"/api/critical/{finding['id']}/acknowledge",
               json={"action": "转诊"}).status_code == 403
    bad = api("POST", "li", f"/api/critical/{finding['id']}/acknowledge", json={"action": "看过了"})
    assert bad.status_code == 422 and "电话告知" in bad.json()["detail"]
    done = ok(api("POST", "li", f"/api/critical/{finding['id']}/acknowledge",
                  json={"action": "转诊", "remarks": "已联系120转县医院"}))
    assert done["acknowledged_by"] == "li" and done["action"] == "转诊" and done["phone"] == "13800000001"
    again = api("POST", "ma", f"/api/critical/{finding['id']}/acknowledge", json={"action": "复查"})
    assert again.status_code == 409 and "李技师" in again.json()["detail"]
    assert told(runtime, finding["id"], "critical.acknowledged") == {"wang"}  # the reporter hears back
    with runtime.db.scope(readonly=True) as session:
        actions = [r.action for r in session.scalars(select(AuditRecord).where(AuditRecord.action.like("critical.%")))]
    assert actions == ["critical.flag", "critical.acknowledge"]


def test_who_may_flag_and_what_a_flag_must_carry(api, region):
    study = region["study"]
    cid = assigned_consult(api, study)
    assert flag(api, study, cid, user="sun").status_code == 403   # same county, not on this consult
    assert flag(api, study, cid, user="li").status_code == 403    # the requester does not flag
    wrong = flag(api, study, cid, category="感冒")
    assert wrong.status_code == 422 and "胎盘早剥" in wrong.json()["detail"]
    empty = api("POST", "wang", "/api/critical", json={"study_uid": study, "consult_id": cid,
                                                       "category": "胎盘早剥", "statement": "  "})
    assert empty.status_code == 422 and "简述" in empty.json()["detail"]
    other = api("POST", "wang", "/api/critical", json={"study_uid": "1.2.3", "consult_id": cid,
                                                       "category": "胎盘早剥", "statement": "x"})
    assert other.status_code == 422  # a study not in the consult


def test_on_duty_staff_are_told_first_when_a_roster_exists(api, runtime, region):
    study = region["study"]
    cid = assigned_consult(api, study)
    now_local = utcnow().astimezone(local_zone())
    with runtime.db.scope() as session:  # li is on duty now; ma keeps a roster but is off now
        li = identity.get_user(session=session, username="li")
        ma = identity.get_user(session=session, username="ma")
        scheduling.set_weekly(session=session, user=li, windows=[(now_local.weekday(), "00:00", "23:59")])
        scheduling.set_weekly(session=session, user=ma, windows=[((now_local.weekday() + 1) % 7, "08:00", "12:00")])
    finding = ok(flag(api, study, cid), 201)
    assert told(runtime, finding["id"], "critical.flagged") == {"li"}


def test_unacknowledged_it_escalates_to_the_coordinators_then_the_region(api, runtime, region):
    study = region["study"]
    cid = assigned_consult(api, study)
    fid = ok(flag(api, study, cid), 201)["id"]
    settings = runtime.settings
    with runtime.db.scope() as session:  # not yet due: nothing moves
        assert critical.escalate_due(session=session, settings=settings) == 0
    later = utcnow() + timedelta(minutes=settings.critical_ack_minutes, seconds=1)
    with runtime.db.scope() as session:
        assert critical.escalate_due(session=session, settings=settings, now=later) == 1
        assert critical.escalate_due(session=session, settings=settings, now=later) == 0  # once per step
    assert told(runtime, fid, "critical.escalated") == {"ma"}
    even_later = later + timedelta(minutes=settings.critical_ack_minutes, seconds=1)
    with runtime.db.scope() as session:
        assert critical.escalate_due(session=session, settings=settings, now=even_later) == 1
        assert critical.escalate_due(session=session, settings=settings, now=even_later + timedelta(hours=5)) == 0
    assert told(runtime, fid, "critical.escalated") == {"ma", "zhou", "gao"}  # county and city coordinators
    with runtime.db.scope(readonly=True) as session:
        row = session.get(CriticalFinding, fid)
        assert [s["level"] for s in row.steps] == [0, 1, 2] and row.steps[2]["told"] == ["gao", "zhou"]
        escalations = session.scalars(select(AuditRecord).where(AuditRecord.action == "critical.escalate")).all()
        assert [r.detail["level"] for r in escalations] == [1, 2]
    # A region coordinator it reached may take it (and it shows as overdue until then).
    assert ok(api("GET", "gao", "/api/critical"))[0]["overdue"] is True
    assert ok(api("POST", "zhou", f"/api/critical/{fid}/acknowledge", json={"action": "电话告知"}))["level"] == 2


def test_the_log_has_the_hospital_fields_and_exports_as_csv(api, runtime, region):
    study = region["study"]
    cid = assigned_consult(api, study)
    fid = ok(flag(api, study, cid), 201)["id"]
    ok(api("POST", "ma", f"/api/critical/{fid}/acknowledge", json={"action": "电话告知", "phone": "0879-1234567",
                                                                   "remarks": "已通知家属"}))
    with TestClient(create_app(runtime.settings)) as client:
        answer = client.get("/critical.csv", headers={"Authorization": f"Bearer {region['tokens']['ma']}"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    text = answer.content.decode("utf-8")
    assert text.startswith("\ufeff编号 No.,日期时间 Flagged,患者 Patient,患者ID ID,检查 Exam,类别 Category")
    row = text.splitlines()[1].split(",")
    assert row[0] == str(fid) and row[2] == "张秀英" and row[3] == "P001" and row[5] == "异位妊娠破裂"
    assert row[7] == "王医生" and row[8] == "马院长" and row[9] == "0879-1234567" and row[13] == "电话告知"
    flagged_local = utcnow().astimezone(local_zone()).strftime("%Y-%m-%d %H")
    assert row[1].startswith(flagged_local)  # Beijing time
    assert api("GET", "he", "/api/critical").json() == []  # another township's log is its own
    with runtime.db.scope(readonly=True) as session:
        exports = session.scalars(select(AuditRecord).where(AuditRecord.action == "critical.export")).all()
    assert exports and exports[-1].actor == "ma"


def test_the_dashboard_counts_time_to_acknowledge(api, runtime, region):
    study = region["study"]
    cid = assigned_consult(api, study)
    with runtime.db.scope() as session:
        wang = identity.get_user(session=session, username="wang")
        li = identity.get_user(session=session, username="li")
        start = utcnow() - timedelta(hours=2)
        for minutes in (4, 10, 20, 50):
            finding = critical.flag(session=session, user=wang, settings=runtime.settings, study_uid=study,
                                    category="胎盘早剥", statement="胎盘后方低回声", consult_id=cid, now=start)
            critical.acknowledge(session=session, user=li, finding_id=finding.id, action="转诊",
                                 now=start + timedelta(minutes=minutes))
        critical.flag(session=session, user=wang, settings=runtime.settings, study_uid=study, category="胎心消失",
                      statement="未见胎心搏动", consult_id=cid, now=start)  # never acknowledged
    figures = ok(api("GET", "zhou", "/api/dashboard"))["critical"]
    assert figures["count"] == 5 and figures["acknowledged"] == 4
    assert figures["median_min"] == pytest.approx(15.0) and figures["p90_min"] == pytest.approx(50.0)
    assert figures["overdue"] == 1


def test_escalation_runs_on_schedule_in_a_real_worker(tmp_path):
    """A 3-second window: the worker escalates at 3 s and again at 6 s, from the task sent for
    each step's due time (the periodic sweep's first round is at 10 s)."""
    from storage.runtime import bootstrap

    settings = embedded_settings(tmp_path, critical_ack_minutes=0.05)
    runtime = bootstrap(settings, component="test")
    region = seed_region(runtime)
    with runtime.db.scope() as session:
        li, zhou = (identity.get_user(session=session, username=u) for u in ("li", "zhou"))
        consult = service.create(session=session, requester=li, kind="read", target_code="COUNTY",
                                 study_uids=[region["study"]], clinical_question="孕32周，阴道流血")
        service.accept(session=session, consult_id=consult.id, user=zhou)
        service.assign(session=session, consult_id=consult.id, user=zhou, reader_username="wang",
                       reviewer_username="chen")
        cid = consult.id
    worker = subprocess.Popen([sys.executable, "-m", "lancang.cli", "worker", "--concurrency", "1"],
                              env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(4)  # the worker is up before the clock starts
        with runtime.db.scope() as session:
            wang = identity.get_user(session=session, username="wang")
            fid = critical.flag(session=session, user=wang, settings=settings, study_uid=region["study"],
                                category="胎盘早剥", statement="胎盘增厚，后方血肿", consult_id=cid).id
        steps = _wait_for_level(runtime, fid, 2, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    at = [_seconds(steps[0]["at"], s["at"]) for s in steps]
    assert 2.9 <= at[1] <= 8 and 5.8 <= at[2] <= 14, at  # 3 s apart, on the task's schedule
    assert steps[1]["told"] == ["ma"] and steps[2]["told"] == ["gao", "zhou"]


def _seconds(first: str, later: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(later) - datetime.fromisoformat(first)).total_seconds()


def _wait_for_level(runtime, fid: int, level: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with runtime.db.scope(readonly=True) as session:
            row = session.get(CriticalFinding, fid)
            if row.level >= level:
                return list(row.steps)
        time.sleep(0.2)
    raise AssertionError(f"finding {fid} never reached level {level}")


def test_every_channel_carries_the_alarm_but_never_the_finding(tmp_path, smtp, robot):
    """In-app, e-mail, 企业微信 and the SMS gateway: each gets the title and the link; the
    finding and the patient stay behind the login (the in-app body has them)."""
    from consult import notify
    from storage.runtime import bootstrap

    controller, inbox = smtp
    sms = Robot()
    settings = embedded_settings(tmp_path, notify_smtp_host="127.0.0.1", notify_smtp_port=controller.port,
                                 notify_wecom_webhook=robot.url, notify_sms_url=sms.url.replace("/cgi-bin/webhook/send",
                                                                                                "/sms/send"),
                                 notify_sms_token="gateway-token", notify_timeout_s=5)
    runtime = bootstrap(settings, component="test")
    region = seed_region(runtime)
    with runtime.db.scope() as session:
        for username, email in (("li", "li@town.example.cn"), ("ma", "")):
            identity.set_contact(session=session, user=identity.get_user(session=session, username=username),
                                 email=email or None)
    with TestClient(create_app(settings)) as client:
        def call(method, user, path, **kwargs):
            return client.request(method, path, headers={"Authorization": f"Bearer {region['tokens'][user]}"},
                                  **kwargs)
        cid = assigned_consult(call, region["study"])
        fid = ok(flag(call, region["study"], cid), 201)["id"]
    with runtime.db.scope() as session:
        rows = session.scalars(select(Notification).where(Notification.kind == "critical.flagged")).all()
        assert all("异位妊娠破裂" in r.body for r in rows)  # in the app, behind the login
        for row in rows:
            assert notify.deliver(session, row.id, notify.senders_for(settings), "https://yxy.example.cn") == []
    texts = [p["text"]["content"] for _, p in robot.posts] + [p["text"] for _, p in sms.posts]
    texts += [m.get_payload(decode=True).decode() for _, m in inbox.messages]
    assert len(robot.posts) == 2 and len(sms.posts) == 2 and len(inbox.messages) == 1
    assert {p["mobile"] for _, p in sms.posts} == {"13800000001", "13800000002"}
    assert sms.headers[0]["Authorization"] == "Bearer gateway-token"
    for text in texts:
        assert f"https://yxy.example.cn/critical/{fid}" in text and "危急值待确认" in text
        assert "异位妊娠" not in text and "张秀英" not in text and "积液" not in text
    sms.server.shutdown()
    runtime.db.dispose()


def test_a_specialist_who_may_see_a_study_flags_it_from_the_study_page(api, runtime, region):
    """Without a consult: the institution that made the study is told; only specialists flag."""
    study = region["study"]
    assigned_consult(api, study)  # grants wang the study
    finding = ok(api("POST", "wang", "/api/critical", json={"study_uid": study, "category": "颅内出血",
                                                            "statement": "右额叶高密度影"}), 201)
    assert finding["consult_id"] is None and finding["institution"] == "TOWN"
    assert api("POST", "li", "/api/critical", json={"study_uid": study, "category": "颅内出血",
                                                    "statement": "x"}).status_code == 403
    assert api("POST", "sun", "/api/critical", json={"study_uid": study, "category": "颅内出血",
                                                     "statement": "x"}).status_code == 404  # cannot see it
    with TestClient(create_app(runtime.settings)) as client:
        page = client.get(f"/studies/{study}", headers={"Authorization": f"Bearer {region['tokens']['wang']}"})
    assert page.status_code == 200 and 'id="critical-form"' in page.text and "颅内出血" in page.text
