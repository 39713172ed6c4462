"""Availability in Beijing time, reminders once per booking, and the periodic task's body."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from consult import scheduling
from consult.models import Notification
from tests.consult.test_flow import api, world  # noqa: F401  (fixtures)
from storage import identity, localtime


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


def test_reminder_goes_out_once_before_the_slot(api, world, runtime):
    _, study = world
    now_local = datetime.now(localtime.zone()).replace(second=0, microsecond=0, tzinfo=None)
    api("POST", "wang", "/api/me/availability/exceptions", json={
        "starts": (now_local - timedelta(minutes=5)).isoformat(), "ends": (now_local + timedelta(hours=2)).isoformat(),
        "available": True, "note": "临时加班"})
    consult = api("POST", "li", "/api/consults", json={"kind": "live", "target": "COUNTY", "study_uids": [study],
                                                       "clinical_question": "胎盘早剥？", "priority": "critical"}).json()
    api("POST", "zhou", f"/api/consults/{consult['id']}/accept")
    start = now_local + timedelta(minutes=20)
    booked = api("POST", "zhou", f"/api/consults/{consult['id']}/schedule",
                 json={"specialist": "wang", "start": start.isoformat(), "minutes": 20})
    assert booked.status_code == 200, booked.text
    with runtime.db.scope() as session:
        assert scheduling.due_reminders(session=session) == 3  # specialist, presenter, coordinator
    with runtime.db.scope() as session:
        assert scheduling.due_reminders(session=session) == 0  # never twice
        wang = identity.get_user(session=session, username="wang")
        kinds = session.scalars(select(Notification.kind).where(Notification.user_id == wang.id)).all()
    assert "consult.reminder" in kinds


def test_leave_blocks_a_weekly_window(api, world, runtime):
    monday = (datetime.now(localtime.zone()) + timedelta(days=7 - datetime.now(localtime.zone()).weekday())).date()
    api("PUT", "wang", "/api/me/availability", json={"windows": [[0, "08:00", "12:00"]]})
    api("POST", "wang", "/api/me/availability/exceptions", json={
        "starts": f"{monday}T00:00:00", "ends": f"{monday}T23:59:00", "available": False, "note": "休假"})
    free = api("GET", "zhou", f"/api/specialists/free?start={monday}T09:00:00&minutes=30").json()
    assert free == []
    bad = api("PUT", "wang", "/api/me/availability", json={"windows": [[0, "12:00", "08:00"]]})
    assert bad.status_code == 422
