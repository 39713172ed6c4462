"""Issue 19's maternal walk in real Chromium:

* a township radiographer opens the woman's timeline, follows the pregnancy link, registers
  her pregnancy, grades it orange (severe pre-eclampsia) + purple (syphilis) from the
  criteria grouped by colour, and sees the two badges and today's GA;
* she refers the woman up to the county with her ultrasound and marks her in transit;
* the county coordinator finds the referral in the institution's list, opens the record with
  the colour history, and marks her arrived; the 上转人次 count shows it;
* both pages are looked at on a township PC (1366x768) and a phone (390x844).

Screens go to $LANCANG_SCREENS when set."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from tests.consult.test_consult_browser import browser  # noqa: F401 (the module's Chromium fixture)
from tests.conftest import embedded_settings
from tests.maternal.maternal_world import build
from tests.web.test_upload_browser import CHROMIUM, LiveApp, login, screens_dir

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from storage.runtime import bootstrap

    settings = embedded_settings(tmp_path_factory.mktemp("maternal"))
    runtime = bootstrap(settings, component="test")
    world = build(runtime)
    with LiveApp(settings) as app:
        app.runtime, app.world = runtime, world
        yield app


def _page(browser, errors, width=1366, height=768):
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(20000)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def _fits(page) -> bool:
    """Nothing wider than the viewport (tables scroll inside their own box)."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_grade_and_refer_in_chromium(live, browser, tmp_path):
    from maternal import service
    from web.pages import login_limiter

    live.app.state.login_limiter = login_limiter()
    screens, errors, world = screens_dir(tmp_path), [], live.world

    # 1. The radiographer registers the pregnancy from the woman's timeline.
    ma = _page(browser, errors)
    login(ma, live.url, "ma", f"/patients/{world.patient_pk}")
    ma.click("#pregnancy-link")
    ma.wait_for_url(f"{live.url}/patients/{world.patient_pk}/pregnancies")
    ma.fill("#register-pregnancy input[name=lmp]", (service.today() - timedelta(days=165)).isoformat())
    ma.fill("#register-pregnancy input[name=gravida]", "2")
    ma.fill("#register-pregnancy input[name=para]", "1")
    ma.screenshot(path=str(screens / "maternal-register-1366.png"))
    ma.click("#register-pregnancy button.primary")
    ma.wait_for_url(re.compile(r".*/pregnancies/\d+$"))
    pregnancy_url = ma.url
    assert "孕 23+4 周" in ma.locator("#ga-today").inner_text()
    assert "未评估" in ma.locator("#current-colour").inner_text()

    # 2. She grades it: the criteria are grouped by colour; purple stands beside orange.
    ma.click("details.criteria-group[data-colour=orange] summary")
    ma.check("input[name=criteria][value='O3.7']")
    ma.click("details.criteria-group[data-colour=purple] summary")
    ma.check("input[name=criteria][value=P2]")
    ma.fill("#grade-form textarea[name=note]", "血压 160/110 mmHg，梅毒抗体阳性")
    ma.click("#grade-form button.primary")
    ma.wait_for_url(pregnancy_url)
    assert ma.locator("#current-colour .risk-badges").get_attribute("data-colour") == "orange+purple"
    assert ma.locator("#current-colour .risk.orange").count() == 1 and ma.locator("#current-colour .risk.purple").count() == 1
    assert "O3.7" in ma.locator("table.grading-history").inner_text()
    assert _fits(ma)
    ma.screenshot(path=str(screens / "maternal-pregnancy-1366.png"), full_page=True)
    ma.screenshot(path=str(screens / "maternal-pregnancy-1366-fold.png"))

    # 3. She refers the woman up with her ultrasound and sends her on her way.
    ma.click("#refer-link")
    ma.wait_for_url(re.compile(r".*/referrals/new$"))
    ma.select_option("#referral-form select[name=to]", "COUNTY")
    ma.fill("#referral-form textarea[name=key_findings]", "重度子痫前期，梅毒阳性；建议上级医院住院分娩")
    ma.check(f"#referral-form input[name=studies][value='{world.ta_studies[0]}']")
    ma.screenshot(path=str(screens / "maternal-referral-form-1366.png"), full_page=True)
    ma.click("#referral-form button.primary")
    ma.wait_for_url(re.compile(r".*/referrals/\d+$"))
    referral_url = ma.url
    ma.click("button.move-in_transit")
    ma.wait_for_url(referral_url)
    assert "转运中" in ma.locator("#transport-status").inner_text()
    assert ma.locator("button.move-arrived").count() == 0  # arrival is the receiving side's

    # 4. The county coordinator finds her in the list and marks her arrived.
    zhou = _page(browser, errors)
    login(zhou, live.url, "zhou", "/referrals")
    assert zhou.locator("#referral-counts").inner_text().startswith("1")
    zhou.locator("table.referral-table a", has_text="张秀英").click()
    zhou.wait_for_url(referral_url)
    assert zhou.locator("#record-colour .risk-badges").get_attribute("data-colour") == "orange+purple"
    assert "重度子痫前期，梅毒阳性" in zhou.content()
    zhou.screenshot(path=str(screens / "maternal-referral-1366.png"), full_page=True)
    zhou.click("button.move-arrived")
    zhou.wait_for_url(referral_url)
    assert "已到达" in zhou.locator("#transport-status").inner_text()
    assert zhou.locator("#transport-control").count() == 0

    # 5. The same pages on a phone.
    phone = _page(browser, errors, 390, 844)
    login(phone, live.url, "zhou", referral_url.removeprefix(live.url))
    assert _fits(phone)
    phone.screenshot(path=str(screens / "maternal-referral-390.png"), full_page=True)
    phone.goto(pregnancy_url)
    phone.click("details.criteria-group[data-colour=red] summary")
    assert _fits(phone)
    phone.screenshot(path=str(screens / "maternal-pregnancy-390.png"), full_page=True)
    phone.goto(f"{live.url}/referrals")
    assert _fits(phone)
    phone.screenshot(path=str(screens / "maternal-referrals-390.png"), full_page=True)
    phone.goto(f"{pregnancy_url}/referrals/new")  # the county, referred to, may refer her back down
    assert phone.locator("#referral-form optgroup[label^='下转'] option[value=TA]").count() == 1
    assert _fits(phone)
    phone.screenshot(path=str(screens / "maternal-referral-form-390.png"), full_page=True)
    phone.goto(f"{live.url}/patients/{world.patient_pk}/pregnancies")
    assert _fits(phone)
    phone.screenshot(path=str(screens / "maternal-patient-390.png"), full_page=True)
    assert errors == []
