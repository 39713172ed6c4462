"""The consult pages in a real Chromium against the real app (uvicorn, embedded settings),
with the people of tests/consult/test_flow.py: the township radiographer requests a read
from the upload summary's link (/consults/new?study=…), the county coordinator sees it on
the board with its priority and risk-colour badges, accepts and assigns it on its page, and
the reader writes the report in the editor (autosaved) and signs it with the signing
password: "待审核 Reported". Screenshots: /tmp/lancang-consult-*.png.
"""

from __future__ import annotations

import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.conftest import embedded_settings
from tests.dicomdata import ct_instance
from tests.web.test_upload_browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, LiveApp, login

PEOPLE = {  # username: (role, institution, display name), as in test_flow.py
    "li": ("radiographer", "TOWN", "李技师"),
    "zhou": ("coordinator", "COUNTY", "周协调"),
    "wang": ("specialist", "COUNTY", "王医生"),
    "sun": ("specialist", "COUNTY", "孙医生"),
    "chen": ("specialist", "CITY", "陈主任"),
    "shen": ("specialist", "SH", "沈教授"),  # the Shanghai partner hospital's senior
}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from consult import reports
    from imaging.service import Ingestor
    from storage.runtime import bootstrap
    from storage import service as tenancy
    from storage import identity

    settings = embedded_settings(tmp_path_factory.mktemp("consult"))
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="SH", name="上海市第六人民医院", level="partner")
        tenancy.add_institution(session=session, code="CITY", name="普洱市人民医院", level="city", parent_code="SH")
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county",
                                parent_code="CITY")
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township",
                                       parent_code="COUNTY")
        town_id = town.id
        for username, (role, code, name) in PEOPLE.items():
            identity.add_user(session=session, username=username, role=role, institution_code=code,
                              password=PASSWORD, display_name=name)
        reports.init_authority(session=session, name="普洱市影像会诊CA", organisation="普洱市卫健委",
                               password="ca-password-123")
        for username in ("wang", "chen", "shen"):
            reports.issue_credential(session=session, user=identity.get_user(session=session, username=username),
                                     ca_password="ca-password-123", signing_password=f"sign-{username}")
    study = generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(ct_instance(study_uid=study), institution_id=town_id, source="test")
    ingestor.close()
    runtime.db.dispose()
    with LiveApp(settings) as app:
        app.study, app.settings = study, settings
        yield app


@pytest.fixture(autouse=True)
def fresh_login_limit(live):
    """Each test signs in a few people from 127.0.0.1; the module as a whole would pass the
    login limit (10 a minute per address, web/pages.py), which is not what these test."""
    from web.pages import login_limiter

    live.app.state.login_limiter = login_limiter()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def person(browser, live, username, errors, **context):
    ctx = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **context})
    page = ctx.new_page()
    page.set_default_timeout(15000)
    page.on("pageerror", lambda e: errors.append(f"{username}: {e}"))
    login(page, live.url, username, "/")
    return page


def submit(page, form_selector: str) -> None:
    """Submit one of the pages' API forms; consult.js reloads the page after a success."""
    try:
        with page.expect_navigation(timeout=10000):
            page.locator(f"{form_selector} button[type=submit]").click()
    except Exception:
        said = page.locator(f"{form_selector} .form-error")
        raise AssertionError(f"{form_selector}: no reload; the form says "
                             f"{said.inner_text() if said.is_visible() else '(nothing)'}") from None


def test_request_triage_assign_report_sign(live, browser):
    errors: list[str] = []
    study = live.study

    # The township asks the county for an urgent read, from the upload summary's link.
    li = person(browser, live, "li", errors)
    li.goto(f"{live.url}/consults/new?study={study}")
    picked = li.locator(f'input[name="study_uids[]"][value="{study}"]')
    assert picked.is_checked()  # chosen from the upload summary's link
    row = li.locator("label.pick", has=picked)
    assert "张秀英" in row.inner_text() and "P001" in row.inner_text() and "女 F" in row.inner_text(), row.inner_text()
    li.fill("#study-search", "nobody-has-this-name")
    assert row.is_visible()  # a chosen study stays in view while searching
    li.fill("#study-search", "")
    # The target defaults to the township's parent, the county hospital (16.14).
    assert li.locator('select[name="target"]').input_value() == "COUNTY"
    assert "县级 County" in li.locator('select[name="target"] option[value="COUNTY"]').inner_text()
    li.screenshot(path="/tmp/lancang-consult-new.png", full_page=True)
    li.select_option('select[name="priority"]', "urgent")
    li.select_option('select[name="risk_colour"]', "red")
    li.fill('textarea[name="clinical_question"]', "咳嗽两周，请协助诊断")
    li.check('input[name="consent.obtained"]')  # 远程医疗服务管理规范: written consent first
    li.locator('form[data-api="/api/consults"] button[type=submit]').click()
    li.wait_for_url(re.compile(r".*/consults/[0-9]+$"))
    consult = int(li.url.rsplit("/", 1)[1])
    assert "待受理 Requested" in li.locator("main").inner_text()
    assert "患者本人 patient" in li.locator("#consent").inner_text()  # recorded with the request
    li.context.close()

    # The coordinator's board shows it with its badges, then the coordinator triages it.
    zhou = person(browser, live, "zhou", errors)
    zhou.goto(f"{live.url}/consults")
    row = zhou.locator("table.worklist tbody tr", has=zhou.locator(f'a[href="/consults/{consult}"]'))
    assert row.count() == 1
    assert row.locator(".badge.urgent").inner_text() == "加急 Urgent"
    assert row.locator(".risk.red").inner_text() == "红 Red"
    assert "勐朗镇卫生院" in row.inner_text() and "咳嗽两周" in row.inner_text()
    colour = row.locator(".risk.red").evaluate("e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(198, 40, 40)", colour
    zhou.screenshot(path="/tmp/lancang-consult-board.png", full_page=True)
    row.locator(f'a[href="/consults/{consult}"]').first.click()
    zhou.wait_for_url(f"{live.url}/consults/{consult}")
    submit(zhou, f'form[data-api="/api/consults/{consult}/accept"]')
    assert "已受理 Accepted" in zhou.locator("main").inner_text()
    zhou.select_option('#assign-form select[name="reader"]', "wang")
    zhou.select_option('#assign-form select[name="reviewer"]', "chen")
    submit(zhou, "#assign-form")
    text = zhou.locator("main").inner_text()
    assert "已分配 Assigned" in text and "王医生" in text and "陈主任" in text, text
    zhou.context.close()

    # The reader finds it on the worklist, writes the report (autosaved) and signs it.
    wang = person(browser, live, "wang", errors)
    wang.goto(f"{live.url}/consults")
    wang.locator(f'a[href="/consults/{consult}"]').first.click()
    wang.wait_for_url(f"{live.url}/consults/{consult}")
    assert wang.locator(f'a[href="/studies/{study}/view"]').count() == 1  # the grant opened the images
    wang.fill('#report-editor textarea[name="findings"]', "右下肺见斑片状高密度影，边界模糊。")
    wang.fill('#report-editor textarea[name="impression"]', "右下肺炎")
    wang.locator('#report-editor textarea[name="recommendation"]').press_sequentially("抗感染治疗后复查")
    wang.wait_for_function("() => document.getElementById('autosave-state').textContent.includes('已自动保存')")
    wang.screenshot(path="/tmp/lancang-consult-editor.png", full_page=True)
    wang.reload()  # the draft is on the server, not only in the page
    assert wang.locator('#report-editor textarea[name="impression"]').input_value() == "右下肺炎"
    assert "抗感染治疗后复查" in wang.locator('#report-editor textarea[name="recommendation"]').input_value()
    wang.fill(f'form[data-api="/api/consults/{consult}/report/sign"] input[name="password"]', "wrong-password")
    wang.locator(f'form[data-api="/api/consults/{consult}/report/sign"] button[type=submit]').click()
    # The refusal stands beside the password field that caused it (16.13), not at the page top.
    said = wang.locator(f'form[data-api="/api/consults/{consult}/report/sign"] .form-error')
    said.wait_for()
    assert "密码" in said.inner_text() or "password" in said.inner_text().lower(), said.inner_text()
    field = wang.locator(f'form[data-api="/api/consults/{consult}/report/sign"] input[name="password"]')
    assert abs(said.bounding_box()["y"] - field.bounding_box()["y"]) < 120
    assert wang.locator("#flash").is_hidden()
    wang.fill(f'form[data-api="/api/consults/{consult}/report/sign"] input[name="password"]', "sign-wang")
    submit(wang, f'form[data-api="/api/consults/{consult}/report/sign"]')
    text = wang.locator("main").inner_text()
    assert "待审核 Reported" in text, text
    versions = wang.locator("table tr", has_text="v1")
    assert versions.count() == 1 and "王医生" in versions.inner_text() and "初步 Preliminary" in versions.inner_text()
    wang.screenshot(path="/tmp/lancang-consult-reported.png", full_page=True)
    wang.context.close()

    # The senior of the city hospital reviews and co-signs: final, returned to the township.
    chen = person(browser, live, "chen", errors)
    chen.goto(f"{live.url}/consults/{consult}")
    chen.fill(f'form[data-api="/api/consults/{consult}/report/cosign"] input[name="password"]', "sign-chen")
    submit(chen, f'form[data-api="/api/consults/{consult}/report/cosign"]')
    assert "已回传 Delivered" in chen.locator("main").inner_text()
    chen.context.close()

    # The township sees the notification arrive, opens it, and gets the final PDF: its text
    # and its QR (decoded with zbar) say it is the final version, signed by both.
    li = person(browser, live, "li", errors)
    li.goto(f"{live.url}/notifications")
    notice = li.locator("ol.notices li.unread", has_text=f"Final report of consult #{consult}")
    assert "报告已回传" in notice.inner_text()
    notice.locator("button").click()
    li.wait_for_url(f"{live.url}/consults/{consult}")
    final_row = li.locator("table tr", has_text="终审 Final")
    pdf_url = final_row.locator("a", has_text="PDF").get_attribute("href")
    verify_url = final_row.locator("a", has_text="验证").get_attribute("href")
    pdf = li.context.request.get(live.url + pdf_url)
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    path = Path("/tmp/lancang-browser-final.pdf")
    path.write_bytes(pdf.body())
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout
    assert "终审报告 Final report" in text and "王医生" in text and "陈主任" in text and "北京时间" in text, text
    assert "待审核" not in text and "UTC" not in text
    subprocess.run(["pdftoppm", "-r", "200", "-png", "-singlefile", str(path), "/tmp/lancang-browser-final"], check=True)
    qr = subprocess.run(["zbarimg", "--raw", "-q", "/tmp/lancang-browser-final.png"], capture_output=True, text=True)
    assert qr.stdout.strip().endswith(verify_url), (qr.stdout, verify_url)
    li.goto(qr.stdout.strip().replace("http://127.0.0.1:8000", live.url))  # the printed QR's page
    assert "终审" in li.locator("main").inner_text()
    li.context.close()
    assert not errors, errors


def test_live_consult_from_request_to_signed_final_across_four_institutions(live, browser):
    """16, done when: one live consult through the pages. The township (TOWN) asks the county
    (COUNTY) for a live consult; the coordinator accepts, names the county reader and the
    Shanghai partner's senior (SH, above the city CITY in the tree), books the slot on the
    booking form in Beijing time and invites the senior; the bell tells each of them; all four
    join from the button; the reader signs, the Shanghai senior co-signs, and the township's
    final PDF says 终审 with both signers and institutions, its QR opening that version."""
    from consult import scheduling
    from storage import identity, localtime
    from storage.runtime import bootstrap

    errors: list[str] = []
    runtime = bootstrap(live.settings, component="test")
    now = datetime.now(localtime.zone()).replace(tzinfo=None, second=0, microsecond=0)
    with runtime.db.scope() as session:  # the reader's hours (the availability page has its own test)
        scheduling.add_exception(session=session, user=identity.get_user(session=session, username="wang"),
                                 starts_local=now - timedelta(hours=1), ends_local=now + timedelta(days=1),
                                 available=True, note="on call")
    runtime.db.dispose()

    li = person(browser, live, "li", errors)
    li.goto(f"{live.url}/consults/new?study={live.study}")
    li.select_option('select[name="kind"]', "live")
    li.select_option('select[name="risk_colour"]', "orange")
    li.fill('textarea[name="clinical_question"]', "孕32周，胎儿心脏超声疑室间隔缺损，请视频会诊")
    li.check('input[name="consent.obtained"]')
    li.locator('form[data-api="/api/consults"] button[type=submit]').click()
    li.wait_for_url(re.compile(r".*/consults/[0-9]+$"))
    consult = int(li.url.rsplit("/", 1)[1])

    zhou = person(browser, live, "zhou", errors)
    zhou.goto(f"{live.url}/consults/{consult}")
    submit(zhou, f'form[data-api="/api/consults/{consult}/accept"]')
    zhou.select_option('#assign-form select[name="reader"]', "wang")
    zhou.select_option('#assign-form select[name="reviewer"]', "shen")
    submit(zhou, "#assign-form")
    zhou.select_option('#schedule-form select[name="specialist"]', "wang")
    start = now + timedelta(minutes=5)
    zhou.fill('#schedule-form input[name="start"]', start.strftime("%Y-%m-%dT%H:%M"))
    zhou.check('#schedule-form input[name="invite_reviewer"]')
    submit(zhou, "#schedule-form")
    booked = zhou.locator("main").inner_text()
    assert "已预约 Scheduled" in booked and start.strftime("%H:%M") in booked and "北京时间" in booked, booked

    shen = person(browser, live, "shen", errors)
    assert int(shen.locator("#bell-count").inner_text()) >= 2  # assigned, then invited
    shen.goto(f"{live.url}/notifications")
    shen.locator("ol.notices li.unread", has_text=f"Consult #{consult}").first.locator("button").click()
    shen.wait_for_url(f"{live.url}/consults/{consult}")
    joined = {}
    for who, page in (("shen", shen), ("zhou", zhou), ("li", li)):
        page.goto(f"{live.url}/consults/{consult}")
        page.locator(".join-row a.join").click()
        page.wait_for_url(f"{live.url}/consults/{consult}/room", wait_until="commit")
        page.locator("#room").wait_for()
        joined[who] = page.locator("#room").get_attribute("data-role")
    wang = person(browser, live, "wang", errors)
    wang.goto(f"{live.url}/consults")
    wang.locator("table.worklist tbody tr", has=wang.locator(f'a[href="/consults/{consult}"]')).locator("a.join").click()
    wang.wait_for_url(f"{live.url}/consults/{consult}/room", wait_until="commit")
    wang.locator("#room").wait_for()
    joined["wang"] = wang.locator("#room").get_attribute("data-role")
    assert joined == {"shen": "reviewer", "zhou": "coordinator", "li": "presenter", "wang": "specialist"}, joined
    for page in (shen, zhou, li):
        page.goto(f"{live.url}/consults/{consult}")  # leave the room

    wang.goto(f"{live.url}/consults/{consult}")
    wang.fill('#report-editor textarea[name="findings"]', "胎儿心脏四腔心切面见室间隔膜部连续性中断约2mm。")
    wang.fill('#report-editor textarea[name="impression"]', "胎儿室间隔缺损（膜周部，小）")
    wang.fill('#report-editor textarea[name="recommendation"]', "转上级医院产前诊断中心进一步评估")
    wang.fill(f'form[data-api="/api/consults/{consult}/report/sign"] input[name="password"]', "sign-wang")
    submit(wang, f'form[data-api="/api/consults/{consult}/report/sign"]')
    shen.goto(f"{live.url}/consults/{consult}")
    shen.fill(f'form[data-api="/api/consults/{consult}/report/cosign"] input[name="password"]', "sign-shen")
    submit(shen, f'form[data-api="/api/consults/{consult}/report/cosign"]')
    assert "已回传 Delivered" in shen.locator("main").inner_text()

    li.goto(f"{live.url}/consults/{consult}")
    final_row = li.locator("table tr", has_text="终审 Final")
    pdf = li.context.request.get(live.url + final_row.locator("a", has_text="PDF").get_attribute("href"))
    verify_url = final_row.locator("a", has_text="验证").get_attribute("href")
    path = Path("/tmp/lancang-live-final.pdf")
    path.write_bytes(pdf.body())
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout
    for expected in ("终审报告 Final report", "王医生", "澜沧县人民医院", "沈教授", "上海市第六人民医院", "北京时间",
                     "胎儿室间隔缺损"):
        assert expected in text, (expected, text)
    subprocess.run(["pdftoppm", "-r", "200", "-png", "-singlefile", str(path), "/tmp/lancang-live-final"], check=True)
    qr = subprocess.run(["zbarimg", "--raw", "-q", "/tmp/lancang-live-final.png"], capture_output=True, text=True)
    assert qr.stdout.strip().endswith(verify_url), (qr.stdout, verify_url)
    for page in (li, zhou, wang, shen):
        page.context.close()
    _free_the_slot(live, consult)
    assert not errors, errors


def _free_the_slot(live, consult: int) -> None:
    """The module's other tests book the same people from now on: end this consult's slot."""
    from consult.models import Booking
    from sqlalchemy import update

    from storage.runtime import bootstrap
    from storage.types import utcnow

    runtime = bootstrap(live.settings, component="test")
    with runtime.db.scope() as session:
        session.execute(update(Booking).where(Booking.consult_id == consult).values(cancelled_at=utcnow()))
    runtime.db.dispose()


def _consult(live, question: str, *, kind: str = "read", priority: str = "routine", steps: tuple = (),
             book_in: int | None = None, invite_reviewer: bool = False) -> int:
    """A consult from the township to the county made through the services (the page flow is
    tested above), then taken through `steps`: "decline", "accept", "assign" (reader wang,
    reviewer chen); `book_in` books wang `book_in` minutes from now for a live one."""
    from datetime import datetime, timedelta

    from consult import scheduling, service
    from storage import identity, localtime
    from storage.runtime import bootstrap

    runtime = bootstrap(live.settings, component="test")
    try:
        with runtime.db.scope() as session:
            get = lambda name: identity.get_user(session=session, username=name)  # noqa: E731
            consult = service.create(session=session, requester=get("li"), kind=kind, target_code="COUNTY",
                                     study_uids=[live.study], clinical_question=question, priority=priority).id
            if "decline" in steps:
                service.decline(session=session, consult_id=consult, user=get("zhou"), reason="图像不全，请补传")
            if "accept" in steps:
                service.accept(session=session, consult_id=consult, user=get("zhou"))
            if "assign" in steps:
                service.assign(session=session, consult_id=consult, user=get("zhou"), reader_username="wang",
                               reviewer_username="chen")
            if book_in is not None:
                now = datetime.now(localtime.zone()).replace(tzinfo=None, second=0, microsecond=0)
                scheduling.add_exception(session=session, user=get("wang"), starts_local=now - timedelta(hours=1),
                                         ends_local=now + timedelta(days=1), available=True, note="test")
                scheduling.book(session=session, consult_id=consult, coordinator=get("zhou"),
                                specialist_username="wang", starts_local=now + timedelta(minutes=book_in),
                                minutes=30, invite_reviewer=invite_reviewer)
            return consult
    finally:
        runtime.db.dispose()


def test_join_button_leads_into_the_room_with_the_images_on_most_of_the_screen(live, browser):
    """16.8: a Join button on the consult page, the worklist and the calendar, active from
    15 minutes before the slot; the invited senior reviewer has a seat; the room's viewer has
    no app header of its own and most of a 1366x768 screen; an ended consult's room says so."""
    errors: list[str] = []
    booked = {"kind": "live", "steps": ("accept", "assign")}
    later = _consult(live, "孕28周，超声示胎盘低置，请会诊", book_in=120, **booked)
    soon = _consult(live, "孕28周，超声示胎盘低置，请会诊", book_in=5, invite_reviewer=True, **booked)

    wang = person(browser, live, "wang", errors, viewport={"width": 1366, "height": 768})
    wang.goto(f"{live.url}/consults/{later}")
    button = wang.locator(".join-row a.join")
    assert button.get_attribute("aria-disabled") == "true"
    opens = wang.locator(".join-row .join-when").inner_text()
    assert "开放" in opens and "UTC" not in opens, opens
    button.click(force=True)  # inactive: nothing happens
    assert wang.url.endswith(f"/consults/{later}")

    wang.goto(f"{live.url}/calendar")
    for consult in (later, soon):
        assert wang.locator("tr", has=wang.locator(f'a[href="/consults/{consult}"]')).locator("a.join").count() == 1
    wang.locator(".feed button[type=submit]").click()  # 16.15: a subscription URL, shown once
    wang.wait_for_selector("#feed-url")
    assert "/calendar/feeds/" in wang.locator("#feed-url").input_value()
    assert "更换订阅链接" in wang.locator(".feed button[type=submit]").inner_text()
    wang.screenshot(path="/tmp/lancang-calendar-1366.png", full_page=True)
    wang.goto(f"{live.url}/consults")
    row = wang.locator("table.worklist tbody tr", has=wang.locator(f'a[href="/consults/{soon}"]'))
    assert row.locator("a.join").get_attribute("aria-disabled") is None
    row.locator("a.join").click()
    wang.wait_for_url(f"{live.url}/consults/{soon}/room", wait_until="domcontentloaded")  # the canvas wait follows
    frame = wang.frame_locator("#room-frame")
    frame.locator("canvas[data-role=canvas]").wait_for()
    assert frame.locator("header.top").count() == 0  # the viewer in the room has no app header
    canvas = wang.locator("#room-frame").bounding_box()
    image = frame.locator("[data-role=viewport]").bounding_box()
    assert canvas["height"] >= 0.75 * 768 and canvas["y"] + canvas["height"] <= 768, canvas  # all on screen
    assert image["height"] >= 0.55 * 768 and image["width"] >= 0.5 * 1366, image
    wang.screenshot(path="/tmp/lancang-room-1366.png")
    wang.context.close()

    chen = person(browser, live, "chen", errors)  # the invited senior reviewer, of the city hospital
    chen.goto(f"{live.url}/consults/{soon}")
    chen.locator(".join-row a.join").click()
    chen.wait_for_url(f"{live.url}/consults/{soon}/room", wait_until="commit")
    chen.locator("#room").wait_for()
    assert chen.locator("#room").get_attribute("data-role") == "reviewer"
    chen.goto(f"{live.url}/consults/{later}/room")  # not invited to that one
    assert "仅会诊参与者" in chen.locator("body").inner_text()
    chen.context.close()

    zhou = person(browser, live, "zhou", errors)
    zhou.goto(f"{live.url}/consults/{later}")
    zhou.locator("summary", has_text="取消会诊").click()
    zhou.fill("#cancel-form input[name=reason]", "家属要求转上级医院")
    submit(zhou, "#cancel-form")
    answer = zhou.goto(f"{live.url}/consults/{later}/room")
    assert answer.status == 409
    text = zhou.locator("main").inner_text()
    assert "已结束" in text and "返回会诊" in text and "请求有误" not in text, text
    zhou.screenshot(path="/tmp/lancang-room-ended.png")
    zhou.context.close()
    assert not errors, errors


def test_board_shows_open_work_by_urgency_with_the_patient_and_ended_work_on_its_own_tab(live, browser):
    """16.12 and 16.14: the coordinator's board lists open consults by urgency, then waiting
    time, with patient (name, sex, age, ID), exam, requesting institution and reader; ended
    consults are on the "done" tab, without waiting time or due date."""
    made = {"routine": _consult(live, "board routine"), "critical": _consult(live, "board critical", priority="critical"),
            "urgent": _consult(live, "board urgent", priority="urgent", steps=("accept", "assign")),
            "declined": _consult(live, "board declined", steps=("decline",))}

    errors: list[str] = []
    zhou = person(browser, live, "zhou", errors, viewport={"width": 1366, "height": 768})
    zhou.goto(f"{live.url}/consults")
    links = zhou.locator("table.worklist tbody tr td:first-child a").all_inner_texts()
    order = [links.index(f"#{made[p]}") for p in ("critical", "urgent", "routine")]
    assert order == sorted(order), links  # critical, then urgent, then routine
    assert f"#{made['declined']}" not in links
    row = zhou.locator("table.worklist tbody tr", has=zhou.locator(f'a[href="/consults/{made["urgent"]}"]'))
    text = row.inner_text()
    assert "张秀英" in text and "P001" in text and "CT" in text and "王医生" in text and "勐朗镇卫生院" in text, text
    assert "h" in row.locator("td").nth(8).inner_text()  # waiting
    zhou.screenshot(path="/tmp/lancang-board-1366.png")

    zhou.locator(".tabs a", has_text="已完成").click()
    zhou.wait_for_url("**/consults?tab=done")
    headers = zhou.locator("table.worklist thead").inner_text()
    assert "等待" not in headers and "时限" not in headers and "完成" in headers, headers
    done = zhou.locator("table.worklist tbody tr", has=zhou.locator(f'a[href="/consults/{made["declined"]}"]'))
    assert "已退回 Declined" in done.inner_text()
    assert zhou.locator(".tabs a[aria-current=page]").inner_text().startswith("已完成")

    zhou.set_viewport_size({"width": 390, "height": 844})
    zhou.goto(f"{live.url}/consults")
    assert zhou.evaluate("document.documentElement.scrollWidth") <= 392  # the table scrolls, not the page
    zhou.screenshot(path="/tmp/lancang-board-390.png", full_page=True)
    zhou.context.close()
    assert not errors, errors


def test_bell_counts_new_notifications_and_opening_one_marks_it_read(live, browser):
    """16.9: a bell with the unread count on every page, kept current while the page is open;
    the list in local time; opening one goes to its consult and marks it read."""
    errors: list[str] = []
    zhou = person(browser, live, "zhou", errors, viewport={"width": 1366, "height": 768})
    zhou.goto(f"{live.url}/calendar")  # any page has the bell
    zhou.locator("a.bell").wait_for()
    before = int(zhou.locator("#bell-count").inner_text() or 0)

    consult = _consult(live, "bell: 右下腹痛，请协助诊断")
    zhou.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # as when the tab is looked at again
    zhou.wait_for_function(f"() => Number(document.getElementById('bell-count').textContent) === {before + 1}")
    assert zhou.locator("#bell-count").is_visible()
    assert zhou.title().startswith(f"({before + 1}) ")

    zhou.locator("a.bell").click()
    zhou.wait_for_url(f"{live.url}/notifications")
    item = zhou.locator("ol.notices li.unread", has_text=f"#{consult}")
    assert "新会诊申请 New consult request" in item.inner_text()
    assert "UTC" not in item.inner_text() and "北京时间" in item.inner_text()
    zhou.screenshot(path="/tmp/lancang-notifications-1366.png")
    item.locator("button").click()
    zhou.wait_for_url(f"{live.url}/consults/{consult}")
    assert int(zhou.locator("#bell-count").inner_text() or 0) == before
    zhou.goto(f"{live.url}/notifications")
    assert zhou.locator("ol.notices li.read", has_text=f"#{consult}").count() == 1
    zhou.set_viewport_size({"width": 390, "height": 844})
    zhou.screenshot(path="/tmp/lancang-notifications-390.png", full_page=True)
    zhou.context.close()
    assert not errors, errors


def test_the_report_editor_never_loses_a_draft(live, browser):
    """16.11: a bad measurement stays as typed, outlined, with its message, while the rest
    saves; 孕24+1周 is a gestational age; normal phrases insert on one click; switching
    templates asks before dropping measurements and keeps the texts; an ended session says
    请重新登录 and nothing typed is lost (it comes back after signing in again)."""
    consult = _consult(live, "孕24周产检，请评估胎儿生长", steps=("accept", "assign"))

    errors: list[str] = []
    wang = person(browser, live, "wang", errors, viewport={"width": 1366, "height": 768})
    page_url = f"{live.url}/consults/{consult}?template=obstetric_us"
    wang.goto(page_url)
    saved = "() => document.getElementById('autosave-state').textContent.includes('保存')"
    wang.fill('#report-editor input[name="fields.ga_weeks"]', "24+1")
    wang.fill('#report-editor input[name="fields.bpd_mm"]', "6o")  # a letter o for a zero
    wang.fill('#report-editor textarea[name="findings"]', "宫内单活胎，胎心可见。")
    wang.wait_for_function(saved)
    bpd = wang.locator('#report-editor input[name="fields.bpd_mm"]')
    assert bpd.get_attribute("aria-invalid") == "true" and bpd.input_value() == "6o"
    assert "数字" in wang.locator("#err-f-bpd_mm").inner_text()
    assert wang.locator('#report-editor input[name="fields.ga_weeks"]').get_attribute("aria-invalid") is None
    wang.screenshot(path="/tmp/lancang-editor-field-error.png", full_page=True)
    wang.reload()  # on the server: the findings, GA, and the bad value as typed with its message
    assert wang.locator('#report-editor textarea[name="findings"]').input_value() == "宫内单活胎，胎心可见。"
    assert wang.locator('#report-editor input[name="fields.ga_weeks"]').input_value() == "24+1"
    assert bpd.input_value() == "6o" and bpd.get_attribute("aria-invalid") == "true"

    # Signing a draft with a refused measurement is refused beside the button, naming it.
    sign = wang.locator(f'form[data-api="/api/consults/{consult}/report/sign"]')
    wang.fill('#report-editor textarea[name="impression"]', "宫内单活胎")
    sign.locator("input[name=password]").fill("sign-wang")
    sign.locator("button[type=submit]").click()
    sign.locator(".form-error").wait_for()
    assert "双顶径" in sign.locator(".form-error").inner_text() or "数字" in sign.locator(".form-error").inner_text()
    bpd.fill("60")

    # One click inserts the template's normal impression.
    wang.locator('button.phrase[data-insert="impression"]').click()
    assert "宫内单活胎，超声孕周与孕龄相符。" in wang.locator('#report-editor textarea[name="impression"]').input_value()
    wang.wait_for_function(saved)

    # Switching templates asks first (measurements would go), and keeps the texts.
    wang.once("dialog", lambda dialog: dialog.dismiss())
    wang.select_option("#template-chooser", "chest_xray")
    assert wang.locator("#template-chooser").input_value() == "obstetric_us"
    wang.once("dialog", lambda dialog: dialog.accept())
    with wang.expect_navigation():
        wang.select_option("#template-chooser", "chest_xray")
    assert wang.locator('#report-editor textarea[name="findings"]').input_value() == "宫内单活胎，胎心可见。"
    assert wang.locator('#report-editor input[name^="fields."]').count() == 0

    # The session ends while typing: the page says so, keeps the text, and it comes back.
    wang.context.clear_cookies()
    wang.fill('#report-editor textarea[name="recommendation"]', "两周后复查超声")
    wang.wait_for_function("() => document.getElementById('autosave-state').textContent.includes('请重新登录')")
    link = wang.locator("#autosave-state a")
    assert "/login?next=" in link.get_attribute("href")
    again = wang.context.new_page()
    login(again, live.url, "wang", f"/consults/{consult}")
    again.close()
    wang.reload()
    assert wang.locator("#draft-restored").is_visible()
    assert wang.locator('#report-editor textarea[name="recommendation"]').input_value() == "两周后复查超声"
    wang.wait_for_function("() => document.getElementById('autosave-state').textContent.includes('已自动保存')")
    wang.reload()  # now on the server, not only in this browser
    assert wang.locator('#report-editor textarea[name="recommendation"]').input_value() == "两周后复查超声"
    assert wang.locator("#draft-restored").is_hidden()
    wang.context.close()
    assert not errors, errors


def test_specialists_set_their_availability_and_the_booking_form_shows_who_is_free(live, browser):
    """16.10: a specialist's weekly pattern and leave on a page (a wrong row is refused beside
    itself, nothing saved); the coordinator's booking form marks who is free at the time."""
    from datetime import datetime, timedelta

    from storage import localtime

    errors: list[str] = []
    wang = person(browser, live, "wang", errors, viewport={"width": 1366, "height": 768})
    wang.goto(f"{live.url}/availability")
    for day in range(7):
        wang.fill(f'input[name="d{day}s0start"]', "08:00")
        wang.fill(f'input[name="d{day}s0end"]', "12:00")
    wang.fill('input[name="d2s1start"]', "17:00")
    wang.fill('input[name="d2s1end"]', "14:00")  # the end before the start
    wang.locator("#weekly button[type=submit]").click()
    wang.locator("#err-d2s1").wait_for()
    assert "结束须晚于开始" in wang.locator("#err-d2s1").inner_text()
    assert wang.locator('input[name="d2s1start"]').input_value() == "17:00"  # kept as typed
    wang.fill('input[name="d2s1start"]', "14:00")
    wang.fill('input[name="d2s1end"]', "17:30")
    wang.locator("#weekly button[type=submit]").click()
    wang.locator("#saved").wait_for()
    assert wang.locator('input[name="d2s1end"]').input_value() == "17:30"
    today = datetime.now(localtime.zone()).date()
    leave_day = today + timedelta(days=4)
    wang.fill('#exception-form input[name="starts"]', f"{leave_day}T00:00")
    wang.fill('#exception-form input[name="ends"]', f"{leave_day}T23:59")
    wang.fill('#exception-form input[name="note"]', "外出培训")
    wang.locator("#exception-form button[type=submit]").click()
    assert "外出培训" in wang.locator("ul.exceptions").inner_text()
    wang.screenshot(path="/tmp/lancang-availability-1366.png", full_page=True)
    wang.set_viewport_size({"width": 390, "height": 844})
    assert wang.evaluate("document.documentElement.scrollWidth") <= 392
    wang.context.close()

    consult = _consult(live, "availability check", kind="live", steps=("accept",))
    zhou = person(browser, live, "zhou", errors, viewport={"width": 1366, "height": 768})
    zhou.goto(f"{live.url}/consults/{consult}")
    form = zhou.locator("#schedule-form")
    form.locator('select[name="specialist"]').select_option("wang")
    day = today + timedelta(days=3)
    form.locator('input[name="start"]').fill(f"{day}T09:00")
    form.locator('input[name="start"]').dispatch_event("change")
    zhou.wait_for_function("() => document.getElementById('free-hint').textContent.includes('王医生')")
    assert form.locator('select[name="specialist"] option[value="wang"]').inner_text().startswith("✓")
    assert form.locator('select[name="specialist"] option[value="sun"]').inner_text().startswith("✗")
    form.locator('input[name="start"]').fill(f"{leave_day}T09:00")  # on leave
    form.locator('input[name="start"]').dispatch_event("change")
    zhou.wait_for_function("() => !document.getElementById('free-hint').textContent.includes('王医生')")
    assert form.locator('select[name="specialist"] option[value="wang"]').inner_text().startswith("✗")
    zhou.screenshot(path="/tmp/lancang-booking-free-1366.png", full_page=True)
    zhou.context.close()
    assert not errors, errors


def test_the_reader_reads_and_reports_in_one_window_with_a_resizable_split(live, browser):
    """18: the report editor beside the viewer (one window, resizable split), not one replacing
    the other: the viewer shows the consult's study, the draft autosaves from the same page,
    the split moves by drag and by arrow keys and is remembered; anyone but the reader lands
    on the consult page."""
    consult = _consult(live, "请评估右肺结节", steps=("accept", "assign"))
    errors: list[str] = []
    wang = person(browser, live, "wang", errors, viewport={"width": 1366, "height": 768})
    wang.goto(f"{live.url}/consults/{consult}")
    with wang.expect_navigation():
        wang.locator(f'a[href="/consults/{consult}/read"]').click()
    frame = wang.frame_locator("#read-viewer")
    frame.locator("[data-role=canvas]").wait_for()
    viewer = wang.frames[1]
    state = viewer.evaluate("window.lancangViewer.ready")
    assert state["studyUid"] == live.study
    wang.fill('#report-editor textarea[name="findings"]', "右肺上叶见一结节，直径约 8 mm。")
    wang.wait_for_function("() => document.getElementById('autosave-state').textContent.includes('保存')")

    handle = wang.locator("#read-handle")
    box = handle.bounding_box()
    before = wang.locator(".read-viewer").bounding_box()["width"]
    wang.mouse.move(box["x"] + box["width"] / 2, box["y"] + 200)
    wang.mouse.down()
    wang.mouse.move(box["x"] - 300, box["y"] + 200, steps=8)
    wang.mouse.up()
    after = wang.locator(".read-viewer").bounding_box()["width"]
    assert after < before - 250, (before, after)
    share = int(handle.get_attribute("aria-valuenow"))
    handle.focus()
    wang.keyboard.press("ArrowRight")
    assert int(handle.get_attribute("aria-valuenow")) == share + 5
    wang.screenshot(path="/tmp/lancang-read-and-report-1366.png")
    wang.reload()  # the split is remembered on this computer, the draft on the server
    assert int(wang.locator("#read-handle").get_attribute("aria-valuenow")) == share + 5
    assert "8 mm" in wang.locator('#report-editor textarea[name="findings"]').input_value()
    wang.context.close()

    li = person(browser, live, "li", errors)
    li.goto(f"{live.url}/consults/{consult}/read")
    assert li.url.endswith(f"/consults/{consult}")  # the requester is not the reader
    li.context.close()
    assert not errors, errors
