"""The diagnostic viewer (/studies/{uid}/view, web/static/viewer/) in a real Chromium against
OUR DICOMweb service (the real app under uvicorn, embedded settings), not Orthanc: a 20-slice
CT ingested for the radiographer's institution opens on a desktop and on a phone; the wheel,
keys and swipes page through it, a W/L drag changes the window and the canvas, a length
measurement gives millimetres from PixelSpacing (0.7 mm); a user of another institution gets
the friendly 404 page. Every DICOMweb request the viewer made is logged with its answer, so a
failure names the request. Screenshots: /tmp/lancang-viewer-*.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.conftest import embedded_settings
from tests.dicomdata import ct_instance
from tests.web.test_upload_browser import CHROMIUM, CHROMIUM_ARGS, LiveApp, login, seed

SLICES, SIZE, SPACING = 20, 128, 0.7

INIT_JS = """
window.__rendered = [];
document.addEventListener('viewer:rendered', e => window.__rendered.push(e.detail));
"""

HASH_JS = """
() => { const c = document.querySelector('[data-role=canvas]');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let h = 0, sum = 0; for (let i = 0; i < d.length; i += 4) { h = (h * 31 + d[i]) % 1000000007; sum += d[i]; }
  return {hash: h, mean: sum / (d.length / 4)}; }
"""

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from imaging.service import Ingestor
    from storage.runtime import bootstrap
    from storage.models import Institution

    settings = embedded_settings(tmp_path_factory.mktemp("viewer"))
    seed(settings, {"li": ("radiographer", "TOWN"), "zhao": ("specialist", "OTHER")})
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope(readonly=True) as session:
        town = session.query(Institution).filter_by(code="TOWN").one().id
    study, series = generate_uid(), generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    for n in range(1, SLICES + 1):
        ingestor.ingest(ct_instance(study_uid=study, series_uid=series, instance_number=n, size=SIZE, seed=7),
                        institution_id=town, source="test")
    ingestor.close()
    runtime.db.dispose()
    with LiveApp(settings) as app:
        app.study = study
        yield app


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Viewer:
    """One logged-in page on the viewer, with every /dicom-web exchange recorded."""

    def __init__(self, browser, live, username, **context):
        self.url = live.url
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15000)
        self.errors: list[str] = []
        self.exchanges: list[dict] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", self._record)
        login(self.page, live.url, username, "/")
        self.page.add_init_script(INIT_JS)

    def _record(self, response):
        if "/dicom-web/" in response.url:
            request = response.request
            self.exchanges.append({"request": f"{request.method} {response.url}",
                                   "accept": request.headers.get("accept"), "status": response.status,
                                   "content_type": response.headers.get("content-type")})

    def why(self) -> str:
        """What the server said, for assertion messages."""
        bad = [x for x in self.exchanges if x["status"] >= 400]
        return json.dumps({"failed_requests": bad[:10], "page_errors": self.errors,
                           "state": self.state_or_none()}, ensure_ascii=False, indent=1)

    def state_or_none(self):
        try:
            return self.page.evaluate("() => window.lancangViewer && window.lancangViewer.state()")
        except Exception:
            return None

    def open(self, study):
        self.page.goto(f"{self.url}/studies/{study}/view")
        try:
            return self.page.evaluate("() => window.lancangViewer.ready")
        except Exception as exc:
            raise AssertionError(f"viewer did not render: {exc}\n{self.why()}") from None

    def rendered(self, cond: str, timeout=8000) -> dict:
        try:
            self.page.wait_for_function(
                # The condition is spliced into the page function, not eval'd there: the
                # pages' CSP (script-src 'self') refuses new Function.
                "() => { const a = window.__rendered; const s = a[a.length - 1];"
                f" return s && ({cond}); }}", timeout=timeout)
        except Exception:
            raise AssertionError(f"never rendered with {cond}\n{self.why()}") from None
        return self.page.evaluate("() => window.__rendered[window.__rendered.length - 1]")

    def client(self, x, y):
        p = self.page.evaluate("([x, y]) => window.lancangViewer.imageToClient(x, y)", [x, y])
        return p["x"], p["y"]

    def canvas(self) -> dict:
        return self.page.evaluate(HASH_JS)


def measure(v: Viewer, x0, y0, x1, y1, count: int) -> dict:
    page = v.page
    page.mouse.move(*v.client(x0, y0))
    page.mouse.down()
    page.mouse.move(*v.client(x1, y1), steps=5)
    page.mouse.up()
    return v.rendered(f"s.measurements.length === {count}")["measurements"][-1]


def test_viewer_on_our_dicomweb_desktop(live, browser):
    v = Viewer(browser, live, "li", viewport={"width": 1280, "height": 800})
    page = v.page
    st = v.open(live.study)
    assert st["count"] == SLICES and st["index"] == 0, v.why()
    assert (st["windowCenter"], st["windowWidth"]) == (40, 400), st
    frames = [x for x in v.exchanges if "/frames/" in x["request"]]
    assert frames and all(x["status"] == 200 for x in frames), v.why()
    # Raw frames decoded in the browser, not server-rendered pictures.
    assert "server-rendered" not in page.locator("[data-role=ov-bl]").inner_text()

    box = page.locator("[data-role=canvas]").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, 100)
    assert v.rendered("s.index === 1")["index"] == 1
    for _ in range(3):
        page.mouse.wheel(0, 100)
    v.rendered("s.index === 4")
    page.locator("[data-role=canvas]").focus()
    page.keyboard.press("End")
    assert v.rendered(f"s.index === {SLICES - 1}")["sopInstanceUid"]
    page.keyboard.press("Home")
    v.rendered("s.index === 0")
    page.keyboard.press("ArrowDown")
    v.rendered("s.index === 1")

    before = v.canvas()
    page.locator('[data-tool="wl"]').click()
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 120, cy + 60, steps=6)
    page.mouse.up()
    wl = v.rendered("s.windowWidth !== 400 && s.windowCenter !== 40")
    page.wait_for_timeout(100)
    after = v.canvas()
    assert wl["windowWidth"] > 400 and wl["windowCenter"] > 40, wl
    assert after["hash"] != before["hash"], (before, after)

    page.locator('[data-tool="measure"]').click()
    m = measure(v, 20, 64, 100, 64, 1)
    assert m["unit"] == "mm" and abs(m["mm"] - 80 * SPACING) < 0.01 * 80 * SPACING, m
    (px0, py0), (px1, py1) = m["points"]
    assert abs(m["mm"] - math.hypot(px1 - px0, py1 - py0) * SPACING) < 0.02, m
    m = measure(v, 30, 30, 90, 110, 2)
    assert abs(m["mm"] - math.hypot(60, 80) * SPACING) < 0.01 * 100 * SPACING, m
    page.screenshot(path="/tmp/lancang-viewer-desktop.png")
    assert not v.errors, v.why()
    assert not [x for x in v.exchanges if x["status"] >= 400 and "/thumbnail" not in x["request"]], v.why()
    v.context.close()


def test_viewer_on_our_dicomweb_phone(live, browser):
    v = Viewer(browser, live, "li", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
               device_scale_factor=2)
    page = v.page
    st = v.open(live.study)
    assert st["count"] == SLICES, v.why()
    canvas = page.locator("[data-role=canvas]").bounding_box()
    assert canvas["width"] >= 380 and canvas["height"] >= 300, canvas
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 391
    cdp = page.context.new_cdp_session(page)
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2

    def touch(kind, points):
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y} for x, y in points]})

    touch("touchStart", [(cx, cy + 100)])
    for i in range(1, 9):
        touch("touchMove", [(cx, cy + 100 - 25 * i)])
    touch("touchEnd", [])
    swiped = v.rendered("s.index > 0")
    assert swiped["index"] > 0
    page.wait_for_selector(".lcv-thumb img", timeout=10000)
    page.screenshot(path="/tmp/lancang-viewer-phone.png")
    assert not v.errors, v.why()
    v.context.close()


def test_viewer_of_another_institution_is_a_friendly_404(live, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    login(page, live.url, "zhao", "/")
    response = page.goto(f"{live.url}/studies/{live.study}/view")
    assert response.status == 404
    assert "未找到" in page.locator("h1").inner_text() and page.locator("#lcv").count() == 0
    # The DICOMweb service answers the same for this user: no trace that the study exists.
    metadata = page.evaluate("(uid) => fetch(`/dicom-web/studies/${uid}/series`).then(r => r.status)", live.study)
    assert metadata == 404 or metadata == 200 and page.evaluate(
        "(uid) => fetch(`/dicom-web/studies/${uid}/series`).then(r => r.json()).then(j => j.length)", live.study) == 0
    page.screenshot(path="/tmp/lancang-viewer-404.png")
    context.close()


def _overlay(v: Viewer) -> str:
    return v.page.locator("[data-role=ov-br]").inner_text()


SAMPLE_JS = """
(points) => { const c = document.querySelector('[data-role=canvas]'); const r = c.getBoundingClientRect();
  const k = c.width / r.width, g = c.getContext('2d');
  return points.map(([x, y]) => { const p = window.lancangViewer.imageToClient(x, y);
    return g.getImageData(Math.round((p.x - r.left) * k), Math.round((p.y - r.top) * k), 1, 1).data[0]; }); }
"""
POINTS = [[x, y] for x in range(8, SIZE, 16) for y in range(8, SIZE, 16)]


def _samples(v: Viewer) -> list[int]:
    """Grey values of the canvas at fixed image points: the same slice gives the same values
    whatever the canvas size (a failure banner shrinks the viewport)."""
    return v.page.evaluate(SAMPLE_JS, POINTS)


def _same_picture(a: list[int], b: list[int]) -> bool:
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a) < 8


def test_the_whole_series_loads_by_itself_with_a_progress_bar_and_frames_come_jpeg_ls(live, browser):
    """18 (loading): without a scroll the viewer loads every slice, nearest to the shown one
    first, and the strip's progress bar says so; frames travel JPEG-LS lossless (decoded by
    the vendored WebAssembly CharLS in a worker) and show the same pixels as before."""
    import time

    v = Viewer(browser, live, "li")
    encodings = []
    v.page.on("response", lambda r: "/frames/" in r.url and not r.url.endswith("/rendered")
              and "/rendered?" not in r.url and encodings.append(r.headers.get("content-type")))
    first = v.open(live.study)
    assert first and first["count"] == SLICES, v.why()
    deadline = time.monotonic() + 20
    while v.page.evaluate("window.lancangViewer.progress().loaded") < SLICES and time.monotonic() < deadline:
        time.sleep(0.1)
    assert v.page.evaluate("window.lancangViewer.progress()") == {"loaded": SLICES, "total": SLICES}, v.why()
    bar = v.page.locator(".lcv-series[aria-current=true] .lcv-progress")
    assert bar.get_attribute("aria-valuenow") == str(SLICES) and bar.get_attribute("data-complete") == "true"
    # The first image native (it must not wait for the decoder to load), the rest JPEG-LS.
    assert len(encodings) == SLICES and 'type="application/octet-stream"' in encodings[0], encodings
    assert all('type="image/jls"' in e for e in encodings[1:]), encodings
    frames = [x["request"] for x in v.exchanges if "/frames/" in x["request"] and "/rendered" not in x["request"]]
    assert len(frames) == SLICES, frames  # each slice once: moving on does not fetch it again
    v.page.locator("[data-role=canvas]").focus()
    v.page.keyboard.press("End")  # everything is already here: the last slice shows without a request
    v.page.wait_for_timeout(300)
    shown = v.page.evaluate("window.lancangViewer.state()")
    assert shown["index"] == SLICES - 1 and not shown["loading"], shown
    assert len([x for x in v.exchanges if "/frames/" in x["request"] and "/rendered" not in x["request"]]) == SLICES
    assert not v.errors, v.errors
    v.context.close()


def test_the_label_always_belongs_to_the_pixels_on_the_canvas(live, browser):
    """16.6: on a slow link the overlay said "Im 31/60" over slice 4's pixels, and after a frame
    failed, slice 182 stood under 181's label. The frame requests are held (a link that has not
    delivered yet), then one object is missing on the server: the label, the position, a new
    measurement and the shared-view state stay those of the picture on the canvas, with a
    loading or failure mark naming the slice asked for."""
    from sqlalchemy import select

    from imaging.models import Instance, Series, Study

    runtime = live.app.state.runtime
    with runtime.db.scope(readonly=True) as session:
        eleventh = session.execute(select(Instance.sop_instance_uid, Instance.object_key)
                                   .join(Series, Series.id == Instance.series_pk)
                                   .join(Study, Study.id == Series.study_pk)
                                   .where(Study.study_instance_uid == live.study, Instance.instance_number == 11)).one()
    v = Viewer(browser, live, "li", viewport={"width": 1366, "height": 768})
    page = v.page
    # The link delivers the first slice, then nothing more for now (the viewer loads the whole
    # series by itself: without holding, every slice would be here before anyone scrolls).
    # The first slice's low-resolution preview (a /rendered request) passes too; after that,
    # previews are held like the frames, so a jump shows nothing new until the line delivers.
    held, passed, opened, flowing = [], [], [], []

    def gate(route):
        if flowing and ("all" in flowing or eleventh.sop_instance_uid not in route.request.url):
            route.continue_()  # the line delivers again, except slice 11 (still on the way)
        elif "/rendered" in route.request.url and not opened:
            route.continue_()
        elif passed:
            held.append(route)
        else:
            passed.append(route.request.url)
            route.continue_()
    page.route("**/frames/**", gate)
    first = v.open(live.study)
    opened.append(True)
    page.wait_for_timeout(300)
    slice0 = _samples(v)
    page.locator("[data-role=canvas]").focus()
    page.keyboard.press("End")
    page.wait_for_function("() => document.querySelector('[data-role=ov-br]').innerText.includes('加载中')")
    waiting = v.page.evaluate("() => window.lancangViewer.state()")
    overlay = _overlay(v)
    assert waiting["index"] == 0 and waiting["target"] == SLICES - 1 and waiting["loading"], waiting
    assert waiting["sopInstanceUid"] == first["sopInstanceUid"], waiting
    assert f"Im 1/{SLICES}" in overlay and f"Loading Im {SLICES}/{SLICES}" in overlay, overlay
    assert page.locator("[data-role=viewport]").get_attribute("data-loading") == "true"
    assert _same_picture(_samples(v), slice0)  # slice 1's pixels, under slice 1's label
    page.screenshot(path="/tmp/lancang-viewer-loading.png")

    # A measurement drawn now belongs to the slice on the canvas, not to the one loading.
    page.locator('[data-tool="measure"]').click()
    page.mouse.move(*v.client(20, 64))
    page.mouse.down()
    page.mouse.move(*v.client(100, 64), steps=5)
    page.mouse.up()
    page.wait_for_function("() => window.lancangViewer.state().measurements.length === 1")
    made = v.page.evaluate("() => window.lancangViewer.state().measurements[0]")
    assert made["index"] == 0 and made["sopInstanceUid"] == first["sopInstanceUid"], made

    flowing.append(True)
    released = [r for r in held if eleventh.sop_instance_uid not in r.request.url]
    held[:] = [r for r in held if eleventh.sop_instance_uid in r.request.url]  # the gate adds any new ones
    for route in released:
        route.continue_()
    kept = held  # slice 11's requests, still on the way
    last = v.rendered(f"s.index === {SLICES - 1} && !s.loading")
    page.wait_for_timeout(200)
    slice_last = _samples(v)
    assert not _same_picture(slice_last, slice0) and f"Im {SLICES}/{SLICES}" in _overlay(v) and "加载中" not in _overlay(v)
    assert page.locator("[data-role=viewport]").get_attribute("data-loading") == "false"

    # An object missing on the server: the picture and its label stay those of the last slice.
    runtime.store.delete(eleventh.object_key)
    flowing.append("all")  # the gate passes slice 11 now too
    for route in kept:  # slice 11's request arrives at the server now: the object is gone
        route.continue_()
    page.locator("[data-role=slider]").fill("10")
    page.wait_for_function("() => document.querySelector('[data-role=ov-br]').innerText.includes('加载失败')")
    broken = v.page.evaluate("() => window.lancangViewer.state()")
    overlay = _overlay(v)
    assert broken["index"] == SLICES - 1 and broken["target"] == 10 and broken["loading"], broken
    assert broken["sopInstanceUid"] == last["sopInstanceUid"], broken
    assert f"Im {SLICES}/{SLICES}" in overlay and "Im 11 failed to load" in overlay, overlay
    page.screenshot(path="/tmp/lancang-viewer-failed.png")
    assert _same_picture(_samples(v), slice_last)
    v.context.close()
