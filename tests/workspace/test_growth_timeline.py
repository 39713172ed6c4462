"""Issue 19: growth across a pregnancy's exams on the person's page (/patients/{pk}): for the
studies with a final obstetric report, a table (exam date, GA, BPD, HC, AC, FL, EFW) and an SVG
chart of EFW against GA, only for the studies the viewer may see (the timeline's own scope).
Then the page in Chromium at 1366x768 and 390x844 (screens to $LANCANG_SCREENS or tmp).

On the previous code the person's page had studies and their report states, no biometry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from imaging.models import Study
from imaging.service import Ingestor
from storage import identity
from storage.models import Institution
from tests.browser import CHROMIUM
from tests.consult import test_flow
from tests.dicomdata import ct_instance
from web.app import create_app
from workspace import service

world, api, ok = test_flow.world, test_flow.api, test_flow.ok
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
BASE = {"lmp": "2026-05-16", "presentation": "头位", "placenta": "前壁", "fhr_bpm": "146", "afi_cm": "12"}
EXAMS = (  # exam date, fields: one pregnancy seen at 24+1 and at 33+1 weeks
    ("20261101", {**BASE, "ga_weeks": "24+1", "bpd_mm": "60", "hc_mm": "222", "ac_mm": "196", "fl_mm": "44"}),
    ("20270103", {**BASE, "ga_weeks": "33+1", "bpd_mm": "84", "hc_mm": "305", "ac_mm": "290", "fl_mm": "64"}),
)


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


def _us_study(runtime, day: str) -> str:
    study_uid, series_uid = generate_uid(), generate_uid()
    with runtime.db.scope(readonly=True) as session:
        town_id = session.scalar(select(Institution.id).where(Institution.code == "TOWN"))
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(ct_instance(study_uid=study_uid, series_uid=series_uid, modality="US", sop_class=US_IMAGE,
                                body_part="PELVIS", study_date=day, size=32), institution_id=town_id, source="test")
    ingestor.close()
    return study_uid


def _consult(api, study_uid: str, reader: str = "wang") -> int:
    cid = ok(api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study_uid], "clinical_question": "胎儿生长评估"}), 201)["id"]
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": reader, "reviewer": "chen"}))
    return cid


def _final(api, study_uid: str, fields: dict) -> None:
    cid = _consult(api, study_uid)
    ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json={
        "template": "obstetric_us", "findings": "宫内单活胎。", "impression": "宫内单活胎，超声孕周与孕龄相符。",
        "recommendation": "", "fields": fields}))
    ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))
    ok(api("POST", "chen", f"/api/consults/{cid}/report/cosign", json={"password": "sign-chen"}))


@pytest.fixture
def pregnancy(runtime, world, api) -> dict:
    """张秀英's CT (no report) and two obstetric exams with final reports; sun is granted only the
    second exam (a consult of its own, never reported)."""
    uids = [_us_study(runtime, day) for day, _ in EXAMS]
    for uid, (_, fields) in zip(uids, EXAMS):
        _final(api, uid, fields)
    _consult(api, uids[1], reader="sun")
    with runtime.db.scope(readonly=True) as session:
        patient_pk = session.scalar(select(Study.patient_pk).where(Study.study_instance_uid == uids[0]))
    return {"uids": uids, "patient_pk": patient_pk}


def _timeline(runtime, username: str, patient_pk: int) -> service.Timeline:
    with runtime.db.scope(readonly=True) as session:
        principal = identity.principal_for(identity.get_user(session=session, username=username))
        return service.timeline(session, principal, patient_pk)


def test_growth_follows_the_final_reports_the_viewer_may_see(runtime, pregnancy):
    uids, pk = pregnancy["uids"], pregnancy["patient_pk"]
    full = _timeline(runtime, "li", pk)  # the township that did the exams sees all of them
    assert [p.study_uid for p in full.growth] == uids  # exam order
    first, second = full.growth
    assert (str(first.exam_date), first.ga_days, first.basis) == ("2026-11-01", 169, "stated")
    assert (first.bpd_mm, first.hc_mm, first.ac_mm, first.fl_mm) == (60.0, 222.0, 196.0, 44.0)
    assert 600 < first.efw_g < 780 and 1900 < second.efw_g < 2600 and second.ga_days == 232
    assert {p.pregnancy for p in full.growth} == {1} and str(first.edd) == "2027-02-20"
    assert full.growth_chart.count("<circle") == 2 and "妊娠 1 Pregnancy 1" in full.growth_chart
    assert len(full.rows) == 3  # the CT and the two exams are still listed; the CT has no biometry

    sun = _timeline(runtime, "sun", pk)  # granted the second exam only
    assert [row.uid for row in sun.rows] == [uids[1]]
    assert [p.study_uid for p in sun.growth] == [uids[1]] and sun.growth_chart.count("<circle") == 1
    assert _timeline(runtime, "zhou", pk).growth == []  # the coordinator triages, does not read
    _the_persons_page_shows_the_growth_table_and_chart(runtime, pregnancy)


def _page(runtime, username: str, pk: int):
    client = TestClient(create_app(runtime.settings))
    client.__enter__()
    assert client.post("/login", data={"username": username, "password": "password-1"},
                       follow_redirects=False).status_code == 303
    return client.get(f"/patients/{pk}")


def _the_persons_page_shows_the_growth_table_and_chart(runtime, pregnancy) -> None:
    page = _page(runtime, "chen", pregnancy["patient_pk"])
    assert page.status_code == 200
    html = page.text
    section = html[html.index('id="fetal-growth"'):]
    rows = re.findall(r"<tr><td class=\"nowrap\"><a href=\"/studies/([0-9.]+)\">([0-9-]+)</a>", section)
    assert rows == [(pregnancy["uids"][1], "2027-01-03"), (pregnancy["uids"][0], "2026-11-01")]  # newest first
    assert "孕24+1周" in section and "孕33+1周" in section and "<td>60</td>" in section and "<td>305</td>" in section
    assert '<svg role="img" aria-label="胎儿生长曲线' in section and "Hadlock 1991" in section


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_the_growth_section_in_chromium_on_a_desk_and_a_phone(runtime, pregnancy, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM_ARGS
    from tests.web.test_upload_browser import LiveApp, login, screens_dir

    screens, errors = screens_dir(tmp_path), []
    with LiveApp(runtime.settings) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for width, height in ((1366, 768), (390, 844)):
            page = browser.new_context(viewport={"width": width, "height": height}).new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            login(page, live.url, "chen", f"/patients/{pregnancy['patient_pk']}")
            section = page.locator("#fetal-growth")
            section.scroll_into_view_if_needed()
            assert section.locator("tbody tr").count() == 2
            chart = section.locator("svg.growth-chart")
            assert chart.is_visible() and chart.locator("circle").count() == 2
            box, frame = chart.bounding_box(), section.locator(".growth-figure .film-table").bounding_box()
            assert 480 <= box["width"] <= 640, box  # readable: a phone scrolls the chart sideways
            assert frame["x"] >= 0 and frame["x"] + frame["width"] <= width, frame  # the page itself does not
            page.screenshot(path=str(screens / f"patient-growth-{width}.png"), full_page=True)
            section.screenshot(path=str(screens / f"patient-growth-section-{width}.png"))
            page.context.close()
        browser.close()
    assert errors == []
