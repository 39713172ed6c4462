"""Issue 17's walk in real Chromium, as its users would:

* an admin registers a modality's AE (allowed from 127.0.0.1) and a radiographer from the
  console pages; the modality sends a CT by C-STORE under that AE title;
* the new radiographer signs in with the temporary password, chooses their own, lands on
  today's studies, finds the study by pinyin initials with the keyboard, creates a cloud film
  and prints the film sheet: no UID typed anywhere;
* a county specialist, granted both through consults, opens the study, sees the person's
  earlier CT from another township in the priors list, opens it beside the current one, and
  scrolling one scrolls the other to the same slice position (not the same index);
* the specialist records 不互认 with a reason; the coordinator's dashboard counts it.

Screens go to $LANCANG_SCREENS when set (docs/screens/ in the repository)."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.conftest import embedded_settings
from tests.dicomdata import ct_instance
from tests.imaging.conftest import write_files
from tests.imaging.scu import send_files
from tests.services import free_port
from tests.consult.test_consult_browser import browser  # noqa: F401 (the module's Chromium fixture)
from tests.web.test_upload_browser import CHROMIUM, LiveApp, PASSWORD, login, screens_dir

RESIDENT = "53082819900101002X"  # filled in by _resident(): a valid number for 1990-01-01, female
PEOPLE = {"admin": ("admin", "COUNTY", "县管理员"), "ma": ("radiographer", "TB", "马技师"),
          "wang": ("specialist", "COUNTY", "王医生"), "sun": ("specialist", "COUNTY", "孙医生"),
          "zhou": ("coordinator", "COUNTY", "周协调")}


pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


def _resident() -> str:
    from imaging.persons import check_character
    body = "53082819900101002"
    return body + check_character(body)


def _slices(study_uid: str, day: str, z0: float, patient_id: str) -> list[bytes]:
    series = generate_uid()
    return [ct_instance(study_uid=study_uid, series_uid=series, instance_number=i + 1, size=64, seed=int(z0),
                        patient_id=patient_id, study_date=day, birth_date="19900101", sex="F", body_part="CHEST",
                        other_ids=(("RESIDENT_ID_CN", _resident()),), position=(0.0, 0.0, z0 + 5 * i))
            for i in range(5)]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from consult import reports
    from imaging.scp import Receiver, start_server
    from imaging.service import Ingestor
    from storage import identity
    from storage import service as tenancy
    from storage.runtime import bootstrap

    settings = embedded_settings(tmp_path_factory.mktemp("workspace"))
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="CITY", name="普洱市人民医院", level="city")
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county", parent_code="CITY")
        tenancy.add_institution(session=session, code="TA", name="勐朗镇卫生院", level="township", parent_code="COUNTY")
        tb = tenancy.add_institution(session=session, code="TB", name="糯福乡卫生院", level="township",
                                     parent_code="COUNTY")
        tb_id = tb.id
        for username, (role, code, name) in PEOPLE.items():
            identity.add_user(session=session, username=username, role=role, institution_code=code,
                              password=PASSWORD, display_name=name)
        reports.init_authority(session=session, name="测试CA", organisation="测试", password="ca-password-123")
    prior = generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    for blob in _slices(prior, "20260601", 10.0, "NF-0031"):  # the earlier CT, from the other township
        ingestor.ingest(blob, institution_id=tb_id, source="test")
    ingestor.close()
    receiver = Receiver(bootstrap(settings, component="dicom"))
    port = free_port()
    server = start_server(receiver, settings, host="127.0.0.1", port=port)
    with LiveApp(settings) as app:
        app.runtime, app.prior, app.dicom_port = runtime, prior, port
        yield app
    server.shutdown()
    receiver.ingestor.close()


def _page(browser, errors, width=1366, height=768):
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(20000)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def _until(check, what: str, timeout: float = 20) -> None:
    """Poll a check in Python: the pages' CSP (script-src 'self') forbids wait_for_function's eval."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.1)


def _grant_through_consults(live, current: str) -> None:
    """Each township asks the county for a read of its study; the coordinator assigns wang."""
    from consult import service
    from storage import identity

    with live.runtime.db.scope() as session:
        zhou = identity.get_user(session=session, username="zhou")
        for requester, study in (("zhao", current), ("ma", live.prior)):
            consult = service.create(session=session, requester=identity.get_user(session=session, username=requester),
                                     kind="read", target_code="COUNTY", study_uids=[study],
                                     clinical_question="咳嗽两月，对比既往 / cough for two months, compare")
            service.accept(session=session, consult_id=consult.id, user=zhou)
            service.assign(session=session, consult_id=consult.id, user=zhou, reader_username="wang",
                           reviewer_username="sun")


def test_issue_17_walk(live, browser, tmp_path):
    from film import sheet as filmsheet
    from web.pages import login_limiter

    live.app.state.login_limiter = login_limiter()
    screens = screens_dir(tmp_path)
    errors: list[str] = []

    # 1. The admin registers the modality and the new radiographer from the console.
    admin = _page(browser, errors)
    login(admin, live.url, "admin", "/admin/nodes")
    admin.fill("#add-node input[name=ae_title]", "MLCT01")
    admin.select_option("#add-node select[name=institution]", "TA")
    admin.check("#add-node input[name=can][value=store]")
    admin.fill("#add-node input[name=allow]", "127.0.0.1")
    admin.click("#add-node button.primary")
    admin.wait_for_url(re.compile(r".*/admin/nodes\?done=node$"))
    assert "MLCT01" in admin.locator("tr[data-ae=MLCT01]").inner_text()
    admin.screenshot(path=str(screens / "admin-nodes-1366.png"), full_page=True)
    admin.goto(f"{live.url}/admin/users")
    admin.fill("#add-user input[name=username]", "zhao")
    admin.fill("#add-user input[name=display_name]", "赵技师")
    admin.select_option("#add-user select[name=role]", "radiographer")
    admin.select_option("#add-user select[name=institution]", "TA")
    admin.click("#add-user button.primary")
    temporary = admin.locator("#temporary-password").inner_text()
    admin.screenshot(path=str(screens / "admin-users-1366.png"), full_page=True)
    admin.goto(f"{live.url}/admin")
    admin.screenshot(path=str(screens / "admin-tree-1366.png"), full_page=True)

    # 2. The modality sends today's CT by C-STORE under the registered title.
    today = datetime.now(__import__("zoneinfo").ZoneInfo("Asia/Shanghai")).strftime("%Y%m%d")
    current = generate_uid()
    files = write_files(tmp_path / "ct", _slices(current, today, 0.0, "ML-0101"))
    assert send_files(live.dicom_port, files, calling="MLCT01") == [0] * 5

    # 3. The new radiographer: own password, today's list, found by initials, film and sheet.
    zhao = _page(browser, errors)
    zhao.goto(f"{live.url}/login")
    zhao.fill("input[name=username]", "zhao")
    zhao.fill("input[name=password]", temporary)
    zhao.click("button[type=submit]")
    zhao.wait_for_url(re.compile(r".*/account/password\?first=1$"))
    zhao.fill("input[name=current]", temporary)
    zhao.fill("input[name=new]", "zhao-own-password-1")
    zhao.fill("input[name=again]", "zhao-own-password-1")
    zhao.click("button[type=submit]")
    zhao.goto(f"{live.url}/")
    zhao.wait_for_url(re.compile(r".*/studies\?today=1$"))
    assert zhao.locator("#study-list tbody tr").count() == 1  # today's, of her institution only
    zhao.screenshot(path=str(screens / "studies-today-1366.png"), full_page=True)
    zhao.goto(f"{live.url}/studies")
    zhao.keyboard.press("/")
    zhao.keyboard.type("zxy")
    zhao.keyboard.press("Enter")
    zhao.wait_for_url(re.compile(r".*/studies\?q=zxy$"))
    assert zhao.locator("#study-list tbody tr").count() == 1  # the other township's study is not hers
    zhao.keyboard.press("/")
    zhao.keyboard.press("ArrowDown")
    zhao.keyboard.press("Enter")
    zhao.wait_for_url(f"{live.url}/studies/{current}")
    zhao.click("text=云胶片")
    zhao.wait_for_url(f"{live.url}/studies/{current}/film")
    zhao.locator("form.film-create button").click()
    zhao.wait_for_selector(".film-created")
    zhao.goto(f"{live.url}/studies/{current}")
    href = zhao.locator("#print-film").get_attribute("href")
    assert zhao.request.get(live.url + href).status == 202  # a worker makes the sheet
    from film.models import Share
    from sqlalchemy import select
    with live.runtime.db.scope(readonly=True) as session:
        share_id = session.scalar(select(Share.id).where(Share.study_instance_uid == current))
    settings = live.runtime.settings
    filmsheet.make_film_sheet(live.runtime.db, live.runtime.store, share_id, secret_key=settings.effective_secret_key,
                              public_url=settings.effective_public_url)
    sheet = zhao.request.get(live.url + href)
    assert sheet.status == 200 and sheet.body()[:4] == b"%PDF"
    (tmp_path / "sheet.pdf").write_bytes(sheet.body())
    text = subprocess.run(["pdftotext", str(tmp_path / "sheet.pdf"), "-"], capture_output=True, text=True).stdout
    assert "张秀英" in text
    zhao.screenshot(path=str(screens / "study-page-1366.png"), full_page=True)
    phone = _page(browser, errors, 390, 844)
    login(phone, live.url, "ma", "/studies")
    phone.screenshot(path=str(screens / "studies-390.png"), full_page=True)

    # 4. The specialist compares the current CT with the other township's prior.
    _grant_through_consults(live, current)
    wang = _page(browser, errors)
    login(wang, live.url, "wang", f"/studies/{current}/view")
    wang.locator("[data-role=priors] summary").click()
    wang.locator(f"a[data-prior='{live.prior}']").click()
    wang.wait_for_url(re.compile(rf".*/studies/{re.escape(current)}/compare\?prior=.*"))
    _until(lambda: wang.evaluate("document.documentElement.dataset.compareReady") == "1", "both panes ready")
    left = wang.frame_locator("#pane-current")
    panes = {f.url.split("/studies/")[1].split("/")[0]: f for f in wang.frames if "/view?embedded=1" in f.url}
    current_pane, prior_pane = panes[current], panes[live.prior]
    assert "Linked, offset 0.0 mm" in wang.locator("#link-status").inner_text()
    left.locator("canvas").click()
    wang.keyboard.press("End")  # current z=20 (index 4): the prior has z=20 at index 2

    def settled(frame, index):
        _until(lambda: (lambda st: st["index"] == index and not st["loading"])(
            frame.evaluate("window.lancangViewer.state()")), f"slice {index} shown")
        return frame.evaluate("window.lancangViewer.state()")
    mine, theirs = settled(current_pane, 4), settled(prior_pane, 2)
    assert mine["position"] == theirs["position"] == 20.0
    wang.keyboard.press("Home")  # z=0: nothing of the prior lies lower; it shows its first slice (z=10)
    assert settled(prior_pane, 0)["position"] == 10.0
    wang.screenshot(path=str(screens / "compare-priors-1366.png"))
    wang.click("#link-toggle")
    assert wang.locator("#link-toggle").get_attribute("aria-pressed") == "false"
    left.locator("canvas").click()
    wang.keyboard.press("End")
    settled(current_pane, 4)
    wang.wait_for_timeout(400)
    assert prior_pane.evaluate("window.lancangViewer.state().index") == 0  # unlinked: it stayed

    # 5. 不互认 on the prior, counted on the coordinator's dashboard.
    wang.goto(f"{live.url}/studies/{live.prior}")
    wang.check("input[name=decision][value=not_recognised]")
    wang.click(".recognition-form button.primary")
    assert "请选择不互认的原因" in wang.locator("#recognition-error").inner_text()  # beside the form
    wang.check("input[name=decision][value=not_recognised]")
    wang.select_option("#recognition-reason", "condition_changed")
    wang.fill("input[name=reason_text]", "咳嗽加重，需复查")
    wang.click(".recognition-form button.primary")
    wang.wait_for_url(re.compile(r".*#recognition$"))
    assert "不互认 Not recognised" in wang.locator("#recognition").inner_text()
    zhou = _page(browser, errors)
    login(zhou, live.url, "zhou", "/dashboard")
    section = zhou.locator("#recognition").inner_text()
    assert re.search(r"1\s*决定", section) and "糯福乡卫生院" in section
    assert "病情变化" in zhou.locator("#chart-recognition").inner_text()
    zhou.screenshot(path=str(screens / "dashboard-recognition-1366.png"), full_page=True)
    assert errors == []
