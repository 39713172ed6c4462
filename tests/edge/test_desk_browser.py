"""The township's registration desk (/desk) in real Chromium, as the registrar uses it:

* she types a patient with a mistyped 身份证号: the page comes back with the reason next to the
  ID field (nothing else lost), she corrects it and registers a chest X-ray for the DR;
* the day's worklist shows the row (Chinese name, pinyin, exam, station, accession), and the DR
  pulling its worklist with dcmtk's `findscu -W` gets that patient, name in Chinese;
* the page is looked at on a township PC (1366x768) and a phone (390x844): nothing wider than
  the screen, no script errors (the CSP allows no inline script).

Screens go to $LANCANG_SCREENS when set."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from imaging.persons import check_character
from tests.conftest import embedded_settings
from tests.consult.test_consult_browser import browser  # noqa: F401 (the module's Chromium fixture)
from tests.services import free_port
from tests.web.test_upload_browser import CHROMIUM, LiveApp, PASSWORD, login, screens_dir

BODY = "53082819900101002"
RESIDENT = BODY + check_character(BODY)
MISTYPED = RESIDENT[:17] + next(c for c in "0123456789X" if c != RESIDENT[17])
FINDSCU = "/usr/bin/findscu"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from edge import mwl
    from storage import identity
    from storage import service as tenancy
    from storage.runtime import bootstrap

    settings = embedded_settings(tmp_path_factory.mktemp("desk"))
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="MLZ", name="勐朗镇卫生院", level="township")
        for aet in ("DR01", "US01"):
            tenancy.add_node(session=session, ae_title=aet, institution_code="MLZ", can="store,query",
                             allow=["127.0.0.1"])
        identity.add_user(session=session, username="desk", role="radiographer", institution_code="MLZ",
                          password=PASSWORD, display_name="李登记")
    mwl_port = free_port()
    server = mwl.start_server(mwl.WorklistSCP(runtime), settings, host="127.0.0.1", port=mwl_port)
    app = LiveApp(settings)
    with app:
        app.runtime, app.mwl_port = runtime, mwl_port
        yield app
    server.shutdown()


def _page(browser, errors, width=1366, height=768):
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(20000)
    page.on("pageerror", lambda e: errors.append(str(e)))
    # CSP refusals show as console errors; a 422 or the favicon's 404 is a "failed resource".
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    return page


def _fits(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def _type_patient(page, resident_id: str) -> None:
    page.fill("#desk-form input[name=family_name]", "张")
    page.fill("#desk-form input[name=given_name]", "秀英")
    page.check("#desk-form input[name=sex][value=F]")
    page.fill("#desk-form input[name=birth_date]", "1990-01-01")
    page.fill("#desk-form input[name=resident_id]", resident_id)
    page.fill("#desk-form input[name=phone]", "13800001234")
    page.select_option("#desk-form select[name=procedure_code]", "DX01")
    page.select_option("#desk-form select[name=station_ae]", "DR01")


def test_register_at_the_desk_and_the_modality_pulls_it(live, browser, tmp_path):
    from web.pages import login_limiter

    live.app.state.login_limiter = login_limiter()
    screens, errors = screens_dir(tmp_path), []

    # 1. A mistyped ID number: refused, the reason beside the field, the rest kept.
    desk = _page(browser, errors)
    login(desk, live.url, "desk", "/desk")
    assert "当天没有登记" in desk.locator("#worklist, .desk-list .empty").first.inner_text()
    _type_patient(desk, MISTYPED)
    desk.click("#desk-form button.primary")
    desk.wait_for_selector("#err-resident_id")
    assert "校验位不符" in desk.locator("#err-resident_id").inner_text()
    assert desk.locator("input[name=resident_id]").get_attribute("aria-invalid") == "true"
    assert desk.locator("input[name=resident_id]").get_attribute("aria-describedby") == "err-resident_id"
    assert desk.input_value("input[name=given_name]") == "秀英"
    assert desk.input_value("select[name=procedure_code]") == "DX01"
    assert desk.locator(".field-error").count() == 1
    assert _fits(desk)
    desk.screenshot(path=str(screens / "desk-error-1366.png"), full_page=True)

    # 2. Corrected: registered, and the row is on today's worklist.
    desk.fill("#desk-form input[name=resident_id]", RESIDENT)
    desk.click("#desk-form button.primary")
    desk.wait_for_url(re.compile(r".*/desk\?day=\d{4}-\d{2}-\d{2}&registered=\d+$"))
    accession = desk.url.rsplit("=", 1)[1]
    assert accession in desk.locator("#desk-notice").inner_text()
    row = desk.locator(f"#worklist tr[data-accession='{accession}']")
    text = row.inner_text()
    assert "张秀英" in text and "Zhang Xiuying" in text and "胸部正位 Chest PA" in text and "DR01" in text
    assert "530828********" in text and RESIDENT not in text  # the ID masked on the list
    assert "待检查" in text
    assert _fits(desk)
    desk.screenshot(path=str(screens / "desk-1366.png"))
    desk.screenshot(path=str(screens / "desk-1366-full.png"), full_page=True)

    # 3. The DR pulls its worklist: the patient as the desk typed her.
    if Path(FINDSCU).exists():
        out = tmp_path / "rsp"
        out.mkdir()
        done = subprocess.run([FINDSCU, "-W", "-X", "-od", str(out), "-aet", "DR01", "-aec", "LANCANG_MWL",
                               "-k", "PatientName", "-k", "PatientID", "-k", "AccessionNumber",
                               "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=DR01",
                               "127.0.0.1", str(live.mwl_port)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        answers = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
        assert [(str(a.PatientName), a.AccessionNumber) for a in answers] == [("Zhang^Xiuying=张^秀英", accession)]

    # 4. The same page on a phone.
    phone = _page(browser, errors, 390, 844)
    login(phone, live.url, "desk", "/desk")
    assert phone.locator(f"#worklist tr[data-accession='{accession}']").is_visible()
    assert _fits(phone)
    phone.screenshot(path=str(screens / "desk-390.png"))
    phone.screenshot(path=str(screens / "desk-390-full.png"), full_page=True)
    assert errors == []
