"""The patient's cloud film in real Chromium at a phone viewport (390 x 844, touch).

The link and PIN come from `lancang share create`, as a radiographer would make them;
the pages come from the real app under uvicorn. Checked: nothing of the study before the
PIN, a wrong PIN, the right PIN, the first image and the series thumbnail shown, swiping
with touch, the next image prefetched, five wrong PINs locking the link, an expired link,
and a link revoked while the patient is looking at it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import update

from imaging import derive
from film.models import Share
from imaging.service import Ingestor
from storage import service as tenancy
from storage.types import utcnow
from tests.cli import run_cli
from tests.conftest import embedded_settings, settings_env
from tests.dicomdata import ct_instance
from tests.browser import CHROMIUM, CHROMIUM_ARGS

PHONE = dict(viewport={"width": 390, "height": 844}, device_scale_factor=3, is_mobile=True, has_touch=True,
             locale="zh-CN", user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) "
             "AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 LancangFilmTest")
SLICES = 6
IMAGE_LOADED = """() => {
  const img = document.getElementById('film-image'), stage = document.getElementById('film-stage');
  return img && img.complete && img.naturalWidth > 0 && !stage.classList.contains('loading');
}"""

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Site:
    """The app under uvicorn in a thread; public_url is its real address (signed links work)."""

    def __init__(self, tmp: Path):
        import uvicorn

        from storage.runtime import bootstrap
        from web.app import create_app

        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.settings = embedded_settings(tmp, http_port=port, public_url=self.url)
        self.runtime = bootstrap(self.settings, component="test")
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def cli(self, *args: str) -> str:
        return run_cli(settings_env(self.settings), *args).stdout

    def share(self) -> dict:
        return json.loads(self.cli("share", "create", self.study_uid, "--days", "30"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = Site(tmp_path_factory.mktemp("film"))
    runtime = site.runtime
    with runtime.db.scope() as session:
        institution_id = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院",
                                                 level="township").id
    ingestor = Ingestor(runtime.db, runtime.store)
    site.study_uid, series_uid = generate_uid(), generate_uid()
    for number in range(1, SLICES + 1):
        result = ingestor.ingest(ct_instance(study_uid=site.study_uid, series_uid=series_uid, size=256,
                                             instance_number=number, seed=number), institution_id=institution_id,
                                 source="test")
    ingestor.close()
    derive.derive_series(runtime.db, runtime.store, result.series_pk)
    site.start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def phone(browser):
    context = browser.new_context(**PHONE)
    page = context.new_page()
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    yield page
    context.close()


def _enter_pin(page, pin: str) -> None:
    page.fill("#pin", pin)
    with page.expect_navigation():
        page.tap("button[type=submit]")  # a finger, not a mouse


def _swipe(page, dx: float) -> None:
    box = page.locator("#film-stage").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for step in range(1, 6):
        # a finger's pace: a faster, sloped move would start a fling, and the next tap only stops it
        page.wait_for_timeout(30)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                              "touchPoints": [{"x": x + dx * step / 5, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def _pinch(page, start: float, end: float) -> None:
    """Two fingers moving apart (start < end) or together, centred on the image."""
    box = page.locator("#film-stage").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)

    def fingers(gap: float) -> list[dict]:
        return [{"x": x - gap / 2, "y": y, "id": 1}, {"x": x + gap / 2, "y": y, "id": 2}]

    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": fingers(start)})
    for step in range(1, 7):
        page.wait_for_timeout(30)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                              "touchPoints": fingers(start + (end - start) * step / 6)})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def _tap_twice(page) -> None:
    box = page.locator("#film-stage").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)
    for _ in range(2):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.wait_for_timeout(80)
    cdp.detach()


def _scale(page) -> float:
    return page.evaluate("(() => { const m = /scale\\(([0-9.]+)\\)/.exec("
                         "document.getElementById('film-image').style.transform); return m ? Number(m[1]) : 1; })()")


def test_the_images_open_on_a_phone_only_after_the_pin(site, phone):
    share = site.share()
    assert share["url"].startswith(site.url + "/f/") and len(share["pin"]) == 6

    phone.goto(share["url"])
    assert phone.locator("#pin").is_visible()
    body = phone.inner_text("body")
    for secret in ("张秀英", "勐朗镇卫生院", "胸部CT", "2026"):
        assert secret not in body, secret
    assert phone.locator("img").count() == 0
    assert not [u for u in phone.requests if "/img/" in u or "/objects/" in u or "/pv/" in u]

    wrong = "000000" if share["pin"] != "000000" else "111111"
    _enter_pin(phone, wrong)
    assert "提取码不正确" in phone.inner_text("body") and "还可尝试 4 次" in phone.inner_text("body")
    assert phone.locator("img").count() == 0

    _enter_pin(phone, share["pin"])
    phone.wait_for_url(share["url"] + "/view")
    phone.wait_for_function(IMAGE_LOADED, timeout=20000)
    text = phone.inner_text("body")
    for fact in ("勐朗镇卫生院", "2026年11月1日", "胸部CT平扫", "张秀英", f"1 / {SLICES}", "报告尚未出具", "下载"):
        assert fact in text, fact
    image = phone.locator("#film-image")
    box = image.bounding_box()
    assert 0 < box["width"] <= 390 and box["y"] < 844          # sized for the screen, on the first screen
    assert phone.evaluate("document.getElementById('film-image').naturalWidth") == 256
    thumbnail = phone.locator(".film-series-item img")
    assert thumbnail.count() == 1 and "/th/" in thumbnail.get_attribute("src")  # through /f/, checked per request
    phone.wait_for_function("() => document.querySelector('.film-series-item img').naturalWidth > 0")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390   # no sideways scrolling

    # The next image is fetched before the patient asks for it.
    first_src = image.get_attribute("src")
    phone.wait_for_function("() => performance.getEntriesByType('resource').filter("
                            "e => e.name.includes('/img/')).length >= 2")

    def shows(number: int) -> None:
        phone.wait_for_function(f"() => document.getElementById('film-counter').textContent === '{number} / {SLICES}'")
        phone.wait_for_function(IMAGE_LOADED)

    phone.tap("#film-next")
    shows(2)
    second_src = image.get_attribute("src")
    assert second_src != first_src and "/img/" in second_src
    phone.tap("#film-next")  # a quick second tap is a tap, not a double-tap zoom
    shows(3)
    _swipe(phone, 220)       # finger to the right: back
    shows(2)
    assert image.get_attribute("src") == second_src
    _swipe(phone, -220)      # finger to the left: on
    shows(3)
    _swipe(phone, -220)
    shows(4)
    assert phone.evaluate("document.getElementById('film-image').naturalWidth") == 256

    # 16.17: two fingers zoom the image (not the page); a swipe then moves it, not the page on.
    _pinch(phone, 60, 200)
    assert _scale(phone) > 2.5, phone.evaluate("document.getElementById('film-image').style.transform")
    _swipe(phone, -120)
    assert phone.inner_text("#film-counter") == f"4 / {SLICES}" and _scale(phone) > 2.5
    _tap_twice(phone)  # a double tap goes back to the whole image
    assert _scale(phone) == 1
    phone.tap("#film-next")  # the next image starts at its full view
    shows(5)
    assert _scale(phone) == 1
    # ...and the patient can save the image shown, at the largest screen size.
    save = phone.locator("#film-save")
    assert save.get_attribute("download").endswith("-5.jpg") and "w=1440" in save.get_attribute("href")
    saved = phone.context.request.get(site.url + save.get_attribute("href"))
    assert saved.status == 200 and saved.headers["content-type"] == "image/jpeg"


def test_five_wrong_pins_lock_the_link(site, phone):
    share = site.share()
    phone.goto(share["url"])
    wrong = "000000" if share["pin"] != "000000" else "111111"
    for attempt in range(4):
        _enter_pin(phone, wrong)
        assert f"还可尝试 {4 - attempt} 次" in phone.inner_text("body")
    _enter_pin(phone, wrong)
    assert "链接已锁定" in phone.inner_text("body")
    phone.goto(share["url"])
    assert "链接已锁定" in phone.inner_text("body") and phone.locator("#pin").count() == 0
    # Even the right PIN does nothing now.
    response = phone.request.post(share["url"] + "/unlock", form={"pin": share["pin"]}, max_redirects=0)
    assert response.status == 423


def test_an_expired_link_is_gone(site, phone):
    share = site.share()
    with site.runtime.db.scope() as session:
        session.execute(update(Share).where(Share.id == share["id"]).values(expires_at=utcnow() - timedelta(1)))
    response = phone.goto(share["url"])
    assert response.status == 410 and "链接已失效" in phone.inner_text("body")
    assert phone.locator("#pin").count() == 0


def test_revocation_stops_a_patient_who_is_looking(site, phone):
    share = site.share()
    phone.goto(share["url"])
    _enter_pin(phone, share["pin"])
    phone.wait_for_function(IMAGE_LOADED, timeout=20000)
    assert "revoked" in site.cli("share", "revoke", share["url"])
    # Further images are refused at once ...
    phone.evaluate("document.getElementById('film-scrub').value = 6;"
                   "document.getElementById('film-scrub').dispatchEvent(new Event('input'))")
    phone.wait_for_function("() => document.getElementById('film-stage').classList.contains('failed')",
                            timeout=10000)
    # ... and the page itself is gone.
    response = phone.reload()
    assert response.status == 410 and "链接已失效" in phone.inner_text("body")
