"""The consult pages render for every role (server side) and the verification page answers."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from tests.consult.test_flow import PEOPLE, api, world  # noqa: F401  (fixtures)
from web.app import create_app


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


def _login(client, username):
    response = client.post("/login", data={"username": username, "password": "password-1"}, follow_redirects=False)
    assert response.status_code == 303


def test_pages_for_every_role(runtime, world, api):
    _, study = world
    created = api("POST", "li", "/api/consults", json={"kind": "live", "target": "COUNTY", "study_uids": [study],
                                                       "clinical_question": "胎儿心脏筛查", "risk_colour": "red"}).json()
    for username in PEOPLE:
        with TestClient(create_app(runtime.settings)) as client:
            _login(client, username)
            home = client.get("/menu")
            assert home.status_code == 200 and "/verify" in home.text
            listing = client.get("/consults")
            assert listing.status_code == 200, listing.text
            detail = client.get(f"/consults/{created['id']}")
            expected = 200 if PEOPLE[username][1] in ("TOWN", "COUNTY") else 404
            assert detail.status_code == expected, (username, detail.text[:300])
            if username == "zhou":
                assert "受理 Accept" in detail.text and "胎儿心脏筛查" in listing.text
                board = client.get("/dashboard")
                assert board.status_code == 200 and board.text.count("<svg role=\"img\"") == 3  # the three charts (the bell is an icon)
            # 13: one rule for the page and the API (a specialist got the page before).
            page, data = client.get("/dashboard"), client.get("/api/dashboard")
            assert page.status_code == data.status_code, username
            assert page.status_code == (200 if PEOPLE[username][0] in ("coordinator", "admin") else 403), username
            assert client.get("/calendar").status_code == 200
    with TestClient(create_app(runtime.settings)) as client:
        assert client.get("/consults", follow_redirects=False).status_code == 303  # to the login page
        page = client.get("/verify")
        assert page.status_code == 200 and "验证" in page.text
        refused = client.post("/verify", files={"file": ("x.pdf", b"%PDF-1.7 not really", "application/pdf")})
        assert refused.status_code == 200 and "报告无效" in refused.text


def test_pages_show_local_time_never_utc(runtime, world, api):
    """16.7: pages showed "08:15 UTC" for a 16:15 booking. Every consult page a coordinator and
    a specialist open shows local time, named; LANCANG_TIMEZONE moves it (and is checked)."""
    from datetime import datetime

    from pydantic import ValidationError

    from storage.settings import Settings

    _, study = world
    created = api("POST", "li", "/api/consults", json={"kind": "read", "target": "COUNTY", "study_uids": [study],
                                                       "clinical_question": "胎盘位置？", "priority": "urgent"}).json()
    due = datetime.fromisoformat(created["due_at"])
    for zone, shown in (("Asia/Shanghai", "北京时间"), ("Asia/Urumqi", "Asia/Urumqi")):
        settings = runtime.settings.model_copy(update={"timezone": zone})
        with TestClient(create_app(settings)) as client:
            _login(client, "zhou")
            pages = [client.get(path) for path in ("/consults", f"/consults/{created['id']}", "/calendar",
                                                   "/dashboard", "/")]
            assert all(p.status_code == 200 for p in pages), [p.status_code for p in pages]
            assert not [p.url for p in pages if "UTC" in p.text]
            local_due = due.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")
            assert local_due in pages[0].text, (zone, local_due)
            assert shown in pages[0].text
    with pytest.raises(ValidationError, match="IANA"):
        Settings(timezone="Beijing")
