"""The radiographer's upload page (/upload, web/static/upload.js) in a real Chromium against
the real app (uvicorn on a loopback port, embedded settings): a folder of CT instances with a
text file and a zip archive (stored and deflated entries) is sent with STOW-RS, one instance
per request; two files whose connection breaks are retried automatically, then by the
"retry failed" button, which sends only those; a second run of the same folder sends nothing
(the server already has it); a damaged file is rejected with its FailureReason; and the page
works on a phone. Screenshots: /tmp/lancang-upload-*.png.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
import threading
import time
import zipfile
import os
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.conftest import embedded_settings
from tests.dicomdata import ct_instance
from tests.browser import CHROMIUM, CHROMIUM_ARGS

PASSWORD = "password-1"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveApp:
    """The real FastAPI app served by uvicorn in a thread on 127.0.0.1:<free port>."""

    def __init__(self, settings):
        import uvicorn

        from web.app import create_app

        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveApp":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        from imaging import dicomweb

        self.server.should_exit = True
        self.thread.join(15)
        dicomweb.close(self.app)


def seed(settings, people: dict[str, tuple[str, str]]) -> None:
    """Institutions TOWN and OTHER and the given users {username: (role, institution code)}."""
    from storage.runtime import bootstrap
    from storage import service as tenancy
    from storage import identity

    runtime = bootstrap(settings, component="test")
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township")
        tenancy.add_institution(session=session, code="OTHER", name="另一镇卫生院", level="township")
        for username, (role, code) in people.items():
            identity.add_user(session=session, username=username, role=role, institution_code=code,
                              password=PASSWORD, display_name=username)
    runtime.db.dispose()


def screens_dir(tmp_path: Path) -> Path:
    """Where a browser test writes its screenshots: $LANCANG_SCREENS when set (to look at them)."""
    target = Path(os.environ.get("LANCANG_SCREENS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def login(page, base: str, username: str, next_path: str) -> None:
    page.goto(f"{base}/login?next={next_path}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    if next_path == "/":  # "/" sends each role on to its daily list
        page.wait_for_url(lambda url: url.startswith(base) and "/login" not in url)
    else:
        page.wait_for_url(f"{base}{next_path}")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upload")
    settings = embedded_settings(tmp)
    seed(settings, {"li": ("radiographer", "TOWN")})
    with LiveApp(settings) as app:
        app.settings = settings
        yield app


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def exam(tmp_path_factory):
    """A folder as a township PC has it: 12 CT slices without extension, a note, and a zip of
    3 more slices (one stored, two deflated, in a sub-folder) — all one study."""
    root = tmp_path_factory.mktemp("exam") / "CT20261101"
    root.mkdir()
    study, series = generate_uid(), generate_uid()
    sops = {}
    for n in range(1, 13):
        sop = generate_uid()
        (root / f"IM{n:04d}").write_bytes(ct_instance(study_uid=study, series_uid=series, sop_uid=sop,
                                                      instance_number=n, size=96))
        sops[f"IM{n:04d}"] = sop
    (root / "说明.txt").write_text("患者已签署知情同意书。\n", encoding="utf-8")
    buffer = io.BytesIO()
    second = generate_uid()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n in range(1, 4):
            sop = generate_uid()
            method = zipfile.ZIP_STORED if n == 1 else zipfile.ZIP_DEFLATED
            archive.writestr(zipfile.ZipInfo(f"增强/IM{n:04d}.dcm", date_time=(2026, 11, 1, 9, 30, 0)),
                             ct_instance(study_uid=study, series_uid=second, sop_uid=sop, instance_number=n,
                                         size=96), compress_type=method)
            sops[f"增强/IM{n:04d}.dcm"] = sop
    (root / "enhanced.zip").write_bytes(buffer.getvalue())
    damaged = root.parent / "damaged.dcm"
    damaged.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\0" + b"\xff" * 300)
    return {"dir": root, "study": study, "sops": sops, "damaged": damaged}


def summary(page, timeout=30000) -> dict:
    """Wait for the summary, then {state: count} from it."""
    page.wait_for_selector("#up-summary:not([hidden])", timeout=timeout)
    return {li.get_attribute("data-state"): int(li.get_attribute("data-count"))
            for li in page.locator("#up-counts li").all()}


def upload_state(page) -> dict:
    return page.evaluate("() => window.lancangUpload.state()")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, on the damaged file in the server thread
def test_upload_folder_zip_retry_and_resend(live, browser, exam):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15000)
    login(page, live.url, "li", "/")
    assert page.locator('a[href="/upload"]').count() == 1  # the radiographer's menu offers it
    page.click('a[href="/upload"]')
    page.wait_for_url(f"{live.url}/upload")

    # Two files lose their connection on every attempt until the link "comes back".
    broken = {exam["sops"]["IM0003"].encode(), exam["sops"]["增强/IM0002.dcm"].encode()}
    link = {"down": True}
    posts: list[str] = []
    queries: list[str] = []

    def on_stow(route):
        body = route.request.post_data_buffer or b""
        sop = next((s.decode() for s in broken if s in body), "other")
        posts.append(sop)
        if link["down"] and sop != "other":
            return route.abort("connectionreset")
        return route.continue_()

    def on_qido(route):
        queries.append(route.request.url)
        return route.continue_()

    page.route(re.compile(r".*/dicom-web/studies$"), on_stow)
    page.route(re.compile(r".*/dicom-web/instances\?.*"), on_qido)
    page.evaluate("() => { window.lancangUpload.config.retryDelaysMs = [200, 300]; }")

    page.locator("#up-folder").set_input_files(exam["dir"])
    counts = summary(page)
    state = upload_state(page)
    by_name = {Path(i["name"]).name if "›" not in i["name"] else i["name"].split(" › ")[1]: i
               for i in state["items"]}
    assert counts == {"stored": 13, "rejected": 1, "failed": 2}, state["items"]
    assert by_name["说明.txt"]["state"] == "rejected" and "DICM" in by_name["说明.txt"]["reason"]
    failed = {i["sop"] for i in state["items"] if i["state"] == "failed"}
    assert failed == {s.decode() for s in broken}
    assert all(i["attempts"] == 3 for i in state["items"] if i["state"] == "failed")  # 1 + 2 automatic
    assert page.locator("#up-retry").is_visible() and page.locator("#up-retry-count").inner_text() == "2"
    problems = page.locator(".up-problem-table tbody tr").all_inner_texts()
    assert len(problems) == 3 and any("网络中断" in p for p in problems) and any("not a DICOM file" in p for p in problems)
    assert queries and "SOPInstanceUID=" in queries[0]  # asked what the server has before sending
    assert len([p for p in posts if p == "other"]) == 13
    page.screenshot(path="/tmp/lancang-upload-failed.png", full_page=True)

    # The link is back: "retry failed" sends exactly the two failed files, nothing stored.
    link["down"] = False
    before = len(posts)
    page.click("#up-retry")
    page.wait_for_function("() => window.lancangUpload.state().totals.pending === 0 "
                           "&& window.lancangUpload.state().totals.failed === 0")
    counts = summary(page)
    assert counts == {"stored": 15, "rejected": 1}
    assert sorted(posts[before:]) == sorted(s.decode() for s in broken)
    study = exam["study"]
    row = page.locator(f'#up-studies tr[data-study="{study}"]')
    assert row.locator(f'a[href="/studies/{study}/view"]').count() == 1
    assert row.locator(f'a[href="/consults/new?study={study}"]').count() == 1
    assert "15" in row.inner_text()
    page.wait_for_selector(f'#up-studies tr[data-study="{study}"] .up-patient')
    assert "张秀英 · P001 · 2026-11-01" in row.inner_text()
    overall = page.locator("#up-overall").get_attribute("aria-valuenow")
    assert overall == "100"
    page.screenshot(path="/tmp/lancang-upload-done.png", full_page=True)

    # The server holds exactly the 15 instances, in the radiographer's institution.
    from sqlalchemy import func, select

    from imaging.models import Instance, Study
    from storage.runtime import bootstrap

    runtime = bootstrap(live.settings, component="test")
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 15
        assert session.scalar(select(Study.study_instance_uid)) == study
    runtime.db.dispose()

    # A second run of the same folder (another day, another page load) sends nothing again.
    page.reload()
    page.evaluate("() => { window.lancangUpload.config.retryDelaysMs = [200, 300]; }")
    before = len(posts)
    page.locator("#up-folder").set_input_files(exam["dir"])
    counts = summary(page)
    assert counts == {"stored": 0, "already": 15, "rejected": 1}
    assert len(posts) == before
    assert page.locator(f'#up-studies tr[data-study="{study}"] a[href="/studies/{study}/view"]').count() == 1

    # A damaged file (DICM, but no readable data set) is refused by the server with its reason.
    page.locator("#up-files").set_input_files(exam["damaged"])
    page.wait_for_function("() => window.lancangUpload.state().totals.pending === 0 "
                           "&& window.lancangUpload.state().totals.rejected === 2")
    counts = summary(page)
    assert counts["rejected"] == 2
    damaged = next(i for i in upload_state(page)["items"] if i["name"] == "damaged.dcm")
    assert damaged["state"] == "rejected" and damaged["code"] in (0xC000, 0xA900), damaged
    assert re.search(r"0x(C000|A900) ", damaged["reason"]), damaged
    assert len(posts) == before + 1
    page.screenshot(path="/tmp/lancang-upload-rerun.png", full_page=True)
    assert not errors, errors
    context.close()


def test_upload_page_on_a_phone(live, browser, exam, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15000)
    page.goto(f"{live.url}/upload")  # signed out: the page sends people to sign in first
    assert page.url == f"{live.url}/login?next=/upload"
    page.fill("input[name=username]", "li")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/upload")
    button = page.locator("label.up-button").first.bounding_box()
    assert button["height"] >= 44 and button["width"] >= 300
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 391
    # Three new slices from the phone's file chooser (a zip of them among the files).
    study = generate_uid()
    files = []
    for n in range(1, 3):
        path = tmp_path / f"phone{n}.dcm"
        path.write_bytes(ct_instance(study_uid=study, instance_number=n, size=64))
        files.append(path)
    with zipfile.ZipFile(tmp_path / "phone.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM3", ct_instance(study_uid=study, instance_number=3, size=64))
    files.append(tmp_path / "phone.zip")
    page.locator("#up-files").set_input_files(files)
    counts = summary(page)
    assert counts == {"stored": 3}
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 391
    link = page.locator(f'#up-studies a[href="/studies/{study}/view"]')
    assert link.is_visible() and link.bounding_box()["height"] >= 30
    page.screenshot(path="/tmp/lancang-upload-phone.png", full_page=True)
    assert not errors, errors
    context.close()
    shutil.rmtree(tmp_path, ignore_errors=True)


def gbk_zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A zip as Windows Explorer on a Chinese system makes it: names in GBK, no UTF-8 flag.
    zipfile writes non-ASCII names as UTF-8, so ASCII stand-ins of the same length are
    written and then replaced byte for byte in the local headers and the central directory."""
    buffer = io.BytesIO()
    swaps = []
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, (name, data, method) in enumerate(entries):
            encoded = name.encode("gbk")
            stand_in = f"{i:0{len(encoded)}d}".encode()
            swaps.append((stand_in, encoded))
            archive.writestr(zipfile.ZipInfo(stand_in.decode(), date_time=(2026, 11, 1, 0, 0, 0)), data,
                             compress_type=method)
    raw = buffer.getvalue()
    for stand_in, encoded in swaps:
        assert raw.count(stand_in) == 2
        raw = raw.replace(stand_in, encoded)
    return raw


def test_zip_archives_from_chinese_windows_and_damaged_entries(live, browser, tmp_path):
    """GBK names are decoded, __MACOSX and folders skipped, a damaged entry (CRC) is rejected
    without being sent, and a zip renamed without .zip is still unpacked."""
    study = generate_uid()
    good = ct_instance(study_uid=study, instance_number=1, size=64)
    second = ct_instance(study_uid=study, instance_number=2, size=64)
    archive = bytearray(gbk_zip([("胸部增强/图像1.dcm", good, zipfile.ZIP_DEFLATED),
                                 ("胸部增强/图像2.dcm", second, zipfile.ZIP_STORED)]))
    # Damage the stored entry's pixel data after the CRC was written: the header still reads well.
    offset = archive.find(second[-120:-80])
    assert offset > 0
    archive[offset + 20] ^= 0x55
    archive = bytes(archive)
    (tmp_path / "exam.zip").write_bytes(archive)
    with zipfile.ZipFile(tmp_path / "renamed", "w", zipfile.ZIP_DEFLATED) as extra:
        extra.writestr("__MACOSX/._IM3", b"\0\5\x16\7")
        extra.writestr("series/", b"")
        extra.writestr("series/IM3", ct_instance(study_uid=study, instance_number=3, size=64))

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15000)
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and "/dicom-web/studies" in r.url and posts.append(r.url))
    login(page, live.url, "li", "/upload")
    page.locator("#up-files").set_input_files([tmp_path / "exam.zip", tmp_path / "renamed"])
    counts = summary(page)
    items = {i["name"]: i for i in upload_state(page)["items"]}
    assert counts == {"stored": 2, "rejected": 1, "skipped": 1}, items
    assert items["exam.zip › 胸部增强/图像1.dcm"]["state"] == "stored"
    bad = items["exam.zip › 胸部增强/图像2.dcm"]
    assert bad["state"] == "rejected" and "CRC" in bad["reason"] and bad["attempts"] == 1
    assert items["renamed"]["state"] == "skipped" and "zip" in items["renamed"]["reason"]
    assert items["renamed › series/IM3"]["state"] == "stored"
    assert not [name for name in items if "__MACOSX" in name or name.endswith("/")]
    assert len(posts) == 2  # the damaged entry never left the browser
    assert not errors, errors
    context.close()


DROP_JS = """
([name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name));
  const zone = document.getElementById('up-drop');
  zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
  zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
}
"""


def test_drop_and_a_session_that_ends_mid_upload(live, browser):
    """A file dropped on the zone is sent; when the session has ended (401) the page says so,
    stops, and "retry failed" after signing in again sends the file."""
    import base64

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15000)
    login(page, live.url, "li", "/upload")
    study = generate_uid()
    expired = {"on": True}

    def on_stow(route):
        if expired["on"]:
            return route.fulfill(status=401, content_type="application/json",
                                 body='{"error":"not_authenticated","detail":"login required / 请先登录"}')
        return route.continue_()

    page.route(re.compile(r".*/dicom-web/studies$"), on_stow)
    data = ct_instance(study_uid=study, instance_number=1, size=64)
    page.evaluate(DROP_JS, ["dropped.dcm", base64.b64encode(data).decode()])
    counts = summary(page)
    assert counts == {"stored": 0, "failed": 1}
    assert page.locator("#up-auth").is_visible()
    item = upload_state(page)["items"][0]
    assert item["attempts"] == 1 and "登录已过期" in item["reason"]  # no automatic retries: it cannot help
    expired["on"] = False
    page.click("#up-retry")
    page.wait_for_function("() => window.lancangUpload.state().totals.stored === 1")
    assert summary(page) == {"stored": 1}
    assert page.locator("#up-auth").is_hidden()
    assert not errors, errors
    context.close()


def test_a_corrected_resend_says_replaced_and_what_changed(live, browser, tmp_path):
    """14.5: the upload page reports a corrected re-send as "replaced", naming each value
    that changed (it showed only "warning: 0xB000 coercion of data elements")."""
    import base64

    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15000)
    login(page, live.url, "li", "/upload")
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = ct_instance(study_uid=study, series_uid=series, sop_uid=sop, patient_name="赵^甲", size=64, seed=3)
    page.evaluate(DROP_JS, ["first.dcm", base64.b64encode(first).decode()])
    page.wait_for_function("() => window.lancangUpload.state().totals.stored === 1")
    page.reload()  # the correction comes later (in one batch a second file of the same SOP is a duplicate)
    page.uncheck("#up-skip-existing")  # a corrected version has the same SOP Instance UID
    corrected = ct_instance(study_uid=study, series_uid=series, sop_uid=sop, patient_name="钱^乙",
                            study_date="20261102", size=64, seed=3)
    page.evaluate(DROP_JS, ["corrected.dcm", base64.b64encode(corrected).decode()])
    try:
        page.wait_for_function("() => window.lancangUpload.state().totals.stored === 1")
    except Exception:
        raise AssertionError(upload_state(page))
    reason = upload_state(page)["items"][0]["reason"]
    assert "已替换此前版本" in reason and "replaced the earlier version" in reason, reason
    assert "姓名 name 赵^甲 → 钱^乙" in reason and "检查日期 study date 2026-11-01 → 2026-11-02" in reason, reason
    assert page.get_by_text("钱^乙").first.is_visible()
    page.screenshot(path="/tmp/lancang-upload-replaced.png", full_page=True)
    assert not errors, errors
    context.close()
