"""The maternal emergency path in real Chromium against the real app (issue 19's "done when").

A township radiographer raises an emergency red-colour consult with the patient's consent
form attached; both on-duty county specialists see it in a red banner on the page they have
open (the bell asks every 5 s); one joins the room from the banner within seconds, takes the
case and flags a critical finding; the township sees the critical result in its banner and
acknowledges it by name; the coordinator's dashboard shows the time to acknowledge, the
emergency response and the up/down counts. Screens at 1366x768 and 390x844:
/tmp/lancang-emergency-*.png.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import embedded_settings
from tests.consult.region import seed_region
from tests.web.test_upload_browser import PASSWORD, LiveApp, login

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
MEDIA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              "--autoplay-policy=no-user-gesture-required"]
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
SCREENS = {"pc": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}
BANNER_WAIT_MS = 10000  # the bell's 5 s interval plus a page's own load


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from storage.runtime import bootstrap

    settings = embedded_settings(tmp_path_factory.mktemp("emergency"))
    runtime = bootstrap(settings, component="test")
    region = seed_region(runtime, password=PASSWORD)
    runtime.db.dispose()
    with LiveApp(settings) as app:
        app.study = region["study"]
        yield app


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *MEDIA_ARGS], headless=True)
        yield browser
        browser.close()


def person(browser, live, username, errors, screen="pc"):
    ctx = browser.new_context(viewport=SCREENS[screen])
    page = ctx.new_page()
    page.set_default_timeout(15000)
    page.on("pageerror", lambda e: errors.append(f"{username}: {e}"))
    login(page, live.url, username, "/")
    return page


def test_emergency_consult_room_critical_result_and_dashboard(live, browser, tmp_path):
    errors: list[str] = []
    wang, sun = person(browser, live, "wang", errors), person(browser, live, "sun", errors, "phone")
    for page in (wang, sun):
        page.goto(f"{live.url}/consults")

    # The township raises it, consent form attached.
    li = person(browser, live, "li", errors)
    li.goto(f"{live.url}/consults/new?emergency=1&study={live.study}")
    assert li.locator('input[name="emergency"]').is_checked()
    li.select_option('select[name="risk_colour"]', "red")
    li.fill('textarea[name="clinical_question"]', "孕34周，突发腹痛伴阴道流血，请立即会诊")
    li.fill('textarea[name="history"]', "G2P1，重度子痫前期")
    li.fill('input[name="specialty"]', "妇产科")
    li.check('input[name="consent.obtained"]')
    form_file = tmp_path / "consent.pdf"
    form_file.write_bytes(PDF)
    li.set_input_files('input[name="consent.form"]', str(form_file))
    li.screenshot(path="/tmp/lancang-emergency-new-pc.png", full_page=True)
    raised = time.monotonic()
    li.locator('form[data-api="/api/consults"] button[type=submit]').click()
    li.wait_for_url(re.compile(r".*/consults/[0-9]+$"))
    consult = int(li.url.rsplit("/", 1)[1])
    assert "危重孕产妇急会诊" in li.locator("#emergency").inner_text()
    assert "患者本人 patient" in li.locator("#consent").inner_text()  # recorded with the request
    assert li.locator('#consent a[href*="/consent/"]').count() == 1

    # Every on-duty specialist sees it at once in a banner, on whatever page they have open.
    for page in (wang, sun):
        page.locator('#urgent-banner form[data-kind="consult.emergency"]').wait_for(timeout=BANNER_WAIT_MS)
    seen_after = time.monotonic() - raised
    sun.screenshot(path="/tmp/lancang-emergency-banner-phone.png")
    wang.screenshot(path="/tmp/lancang-emergency-banner-pc.png")

    # One click from the banner into the room, joined (the room's roster arrived).
    wang.locator('#urgent-banner form[data-kind="consult.emergency"] button').click()
    wang.wait_for_url(f"{live.url}/consults/{consult}/room")
    _until(lambda: wang.locator("#room-lead").inner_text().strip() not in ("", "—"), 10)
    joined_after = time.monotonic() - raised
    print(f"emergency: banner after {seen_after:.1f} s, joined the room after {joined_after:.1f} s")
    assert joined_after < 20, joined_after
    wang.screenshot(path="/tmp/lancang-emergency-room-pc.png")

    # He takes the case and flags a critical finding from the consult page.
    wang.goto(f"{live.url}/consults/{consult}")
    with wang.expect_navigation():
        wang.locator("#claim-form button").click()
    assert "王医生" in wang.locator("#emergency").inner_text()
    wang.select_option('#critical-form select[name="category"]', "胎盘早剥")
    wang.fill('#critical-form textarea[name="statement"]', "胎盘后方见不均质低回声区，考虑胎盘早剥")
    wang.locator("#critical-form").screenshot(path="/tmp/lancang-emergency-flag-form-pc.png")
    with wang.expect_navigation():
        wang.locator("#critical-form button[type=submit]").click()
    assert "胎盘早剥" in wang.locator("#critical").inner_text()

    # The township sees the critical result in its banner and acknowledges it by name.
    li.goto(f"{live.url}/consults")
    li.locator('#urgent-banner form[data-kind="critical.flagged"]').wait_for(timeout=BANNER_WAIT_MS)
    li.locator('#urgent-banner form[data-kind="critical.flagged"] button').click()
    li.wait_for_url(re.compile(r".*/critical/[0-9]+$"))
    li.screenshot(path="/tmp/lancang-emergency-critical-pc.png", full_page=True)
    li.check('#ack-form input[value="转诊"]')
    li.fill('#ack-form textarea[name="remarks"]', "已联系120转县医院")
    with li.expect_navigation():
        li.locator("#ack-form button[type=submit]").click()
    card = li.locator(".critical-card").inner_text()
    assert "已确认 Acknowledged" in card and "李技师" in card and "转诊" in card
    li.goto(f"{live.url}/critical")
    assert "李技师" in li.locator("table.critical-log").inner_text()
    li.screenshot(path="/tmp/lancang-emergency-log-pc.png", full_page=True)

    # The coordinator's dashboard: time to acknowledge, emergency response, up/down counts.
    zhou = person(browser, live, "zhou", errors)
    zhou.goto(f"{live.url}/dashboard")
    critical_box = zhou.locator("#critical-figures").inner_text()
    assert re.search(r"\b1\s*危急值", critical_box) and "确认用时中位数" in critical_box
    assert re.search(r"\d+\.\d\s*min", critical_box), critical_box
    assert re.search(r"1/1\s*15分钟内", zhou.locator("#emergency-figures").inner_text())
    assert re.search(r"\b1\s*会诊上转", zhou.locator("#referral-figures").inner_text())
    zhou.screenshot(path="/tmp/lancang-emergency-dashboard-pc.png", full_page=True)
    for name, page_path in (("critical", "/critical"), ("dashboard", "/dashboard")):
        phone = person(browser, live, "zhou", errors, "phone")
        phone.goto(f"{live.url}{page_path}")
        phone.screenshot(path=f"/tmp/lancang-emergency-{name}-phone.png", full_page=True)
        phone.context.close()
    assert not errors, errors


def _until(check, seconds: float) -> None:
    """Poll from Python (the pages' CSP refuses the string evaluation wait_for_function uses)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)
