"""Issue 19, the reader's side: typing the obstetric fields into the report editor in Chromium
(a date picker for the LMP, choices from a list, numbers), the draft autosaves, and the page
shows what the server worked out from it: GA by each measurement, the composite GA, EDD, EFW,
the flagged measurement and the warnings (shown, the draft still saves and signs).
Screens of the summary at 1366x768 and 390x844 go to $LANCANG_SCREENS (or tmp)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from imaging.service import Ingestor
from storage.models import Institution
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.consult import test_flow
from tests.dicomdata import ct_instance

world, api, ok = test_flow.world, test_flow.api, test_flow.ok
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


def _assigned_obstetric_consult(runtime, api) -> int:
    study_uid = generate_uid()
    with runtime.db.scope(readonly=True) as session:
        town_id = session.scalar(select(Institution.id).where(Institution.code == "TOWN"))
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(ct_instance(study_uid=study_uid, modality="US", sop_class="1.2.840.10008.5.1.4.1.1.6.1",
                                body_part="PELVIS", size=32), institution_id=town_id, source="test")
    ingestor.close()
    cid = ok(api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study_uid], "clinical_question": "孕24周产检"}), 201)["id"]
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": "wang", "reviewer": "chen"}))
    return cid


def _until(check, what: str, timeout: float = 20) -> None:
    """Poll in Python: the pages' CSP (script-src 'self') forbids a page-side wait function."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.1)


def test_the_editor_shows_what_the_server_works_out_from_the_measurements(runtime, world, api, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.web.test_upload_browser import LiveApp, login

    cid = _assigned_obstetric_consult(runtime, api)
    screens = Path(os.environ.get("LANCANG_SCREENS") or tmp_path)
    screens.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with LiveApp(runtime.settings) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        login(page, live.url, "wang", f"/consults/{cid}?template=obstetric_us")
        editor = page.locator("#report-editor")
        assert editor.locator('input[name="fields.lmp"]').get_attribute("type") == "date"
        assert editor.locator("#opts-presentation option").count() == 4
        for name, value in (("ga_weeks", "24+1"), ("lmp", "2026-05-16"), ("bpd_mm", "60"), ("hc_mm", "222"),
                            ("ac_mm", "196"), ("fl_mm", "33"), ("fhr_bpm", "176"), ("presentation", "臀位 Breech"),
                            ("placenta", "前壁 Anterior"), ("placenta_grade", "II级 Grade II")):
            editor.locator(f'input[name="fields.{name}"]').fill(value)
        state = page.locator("#autosave-state")
        _until(lambda: "已自动保存" in state.inner_text(), "the draft saved")
        assert page.locator("#err-f-fl_mm").is_hidden()  # small for dates is a warning, not an error
        page.reload()
        summary = page.locator("#biometry-summary")
        rows = summary.locator("tbody tr")
        assert rows.count() == 6  # BPD HC AC FL, the EFW, the FHR
        assert "股骨长 FL" in rows.nth(3).inner_text() and rows.nth(3).get_attribute("class") == "flagged"
        assert "偏小" in rows.nth(3).inner_text() and "孕24+" in rows.nth(0).inner_text()
        text = summary.inner_text()
        for shown in ("预产期 EDD 2027-02-20", "臀位 Breech", "前壁 Anterior", "II级 Grade II", "Hadlock 1985"):
            assert shown in text, shown
        warnings = summary.locator("ul.warn-box li")
        assert any("FHR 176 bpm is outside 110-160" in w for w in warnings.all_inner_texts())
        assert any("FL small for dates" in w for w in warnings.all_inner_texts())
        assert editor.locator('input[name="fields.presentation"]').input_value() == "臀位 Breech"
        assert editor.locator('input[name="fields.lmp"]').input_value() == "2026-05-16"
        summary.screenshot(path=str(screens / "editor-biometry-1366.png"))
        page.set_viewport_size({"width": 390, "height": 844})
        summary.screenshot(path=str(screens / "editor-biometry-390.png"))
        browser.close()
    assert errors == []
